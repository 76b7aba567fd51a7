//! For tests that load real plugins (the loader's, and each backend's own):
//! build the plugins and `hyper-plugin-host` with the cargo that runs the
//! test, into the target directory and profile the test was built in.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` and `hyper-plugin-host`; returns `target/<profile>/`,
/// where the plugins and the host binary are.
pub fn cargo_build(packages: &[&str]) -> Result<PathBuf, String> {
    // A test binary is target/<profile>/deps/NAME-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("unexpected target layout {}", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => return Err(format!("unexpected profile dir {}", profile_dir.display())),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--profile", &profile])
        .args(["-p", "hyper-hypervisor", "--bins", "--lib"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // Captured, so a passing run stays quiet and a failing one says why.
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(profile_dir.to_path_buf())
}

/// A VM spec whose files do not exist: for plugins that never boot it, and
/// for checking that real ones refuse it.
pub fn unbootable_spec(id: &str) -> crate::VmSpec {
    crate::VmSpec {
        id: id.into(),
        kernel: "/nonexistent/vmlinux".into(),
        initrd: "/nonexistent/initrd".into(),
        cmdline: String::new(),
        vcpus: 1,
        memory_mib: 64,
        disks: Vec::new(),
        console_log: "/nonexistent/console.log".into(),
        run_dir: "/nonexistent/vm".into(),
        nics: Vec::new(),
        shares: Vec::new(),
        cgroup: None,
        save_as_template: false,
    }
}
