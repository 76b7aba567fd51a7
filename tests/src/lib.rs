//! The end-to-end harness: a real hyperd with its own state directory,
//! socket and plugin directory, driven through the real `hyper` binary.
//! Every test that uses it boots real VMs on the backend named by
//! `HYPER_E2E_BACKEND` (default `qemu`) with the real payload.
//!
//! Artifacts come from `make test` (which builds them first):
//! * binaries and plugins: `HYPER_BIN_DIR` or `<workspace>/target/release`;
//! * payload: `HYPER_PAYLOAD_DIR` or `<workspace>/build` (`hyperkernel`, `hyperstart.img`);
//! * rootfs: `<workspace>/build/rootfs/busybox`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The default CNI conflist (`config/cni/10-hyper.conflist`);
/// `HYPER_CNI_CONFLIST` names another copy (the Xen leg's dom0 has one in
/// /etc/hyper/cni/net.d, not the source tree).
pub fn default_conflist() -> PathBuf {
    std::env::var_os("HYPER_CNI_CONFLIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("config/cni/10-hyper.conflist"))
}

fn required(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} {} is missing: run the tests through `make test`, which builds it",
        path.display()
    );
    path
}

pub fn bin_dir() -> PathBuf {
    std::env::var_os("HYPER_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release"))
}

pub fn bin(name: &str) -> PathBuf {
    required(bin_dir().join(name), "binary")
}

pub fn plugin(name: &str) -> PathBuf {
    required(
        bin_dir().join(format!("lib{}.so", name.replace('-', "_"))),
        "plugin",
    )
}

pub fn payload_dir() -> PathBuf {
    std::env::var_os("HYPER_PAYLOAD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build"))
}

/// The test rootfs: `HYPER_TEST_ROOTFS` (e.g. a copy shared into a Xen
/// dom0) or `<workspace>/build/rootfs/busybox`.
pub fn busybox_rootfs() -> PathBuf {
    let path = std::env::var_os("HYPER_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build/rootfs/busybox"));
    required(path, "test rootfs")
}

pub fn backend() -> String {
    std::env::var("HYPER_E2E_BACKEND").unwrap_or_else(|_| "qemu".into())
}

/// The backend's own table for the test config. Xen: `xl` from
/// `HYPER_XEN_XL` (default Debian's /usr/lib/xen-4.17/bin/xl), guest type
/// from `HYPER_XEN_TYPE` (default pv). KVM: `hyper-vmm` from `HYPER_KVM_VMM`
/// (default the one beside the other binaries); no `allow_pvm`, so on a
/// kvm_pvm host the cases fail instead of testing an unusable setup.
pub fn backend_toml(backend: &str) -> String {
    match backend {
        "kvm" => {
            let vmm = std::env::var_os("HYPER_KVM_VMM")
                .map(PathBuf::from)
                .unwrap_or_else(|| bin_dir().join("hyper-vmm"));
            format!("[hypervisor.kvm]\nvmm = \"{}\"\n\n", vmm.display())
        }
        "xen" => {
            let xl = xen_xl();
            let guest_type = std::env::var("HYPER_XEN_TYPE").unwrap_or_else(|_| "pv".into());
            format!("[hypervisor.xen]\nxl = \"{xl}\"\ntype = \"{guest_type}\"\n\n")
        }
        _ => String::new(),
    }
}

fn xen_xl() -> String {
    std::env::var("HYPER_XEN_XL").unwrap_or_else(|_| "/usr/lib/xen-4.17/bin/xl".into())
}

/// The VMs of the pods under `state_dir`, sorted, as the backend knows
/// them: on Xen the domains (`name/domid` from `xl list`; a domain is no
/// host process), elsewhere the pids of the processes naming `state_dir`.
pub fn vms_of(state_dir: &Path) -> Vec<String> {
    let mut vms: Vec<String> = if backend() == "xen" {
        xen_domains(state_dir)
            .expect("xl list")
            .into_iter()
            .map(|(name, domid)| format!("{name}/{domid}"))
            .collect()
    } else {
        processes_mentioning(&state_dir.to_string_lossy())
            .into_iter()
            .map(|pid| pid.to_string())
            .collect()
    };
    vms.sort();
    vms
}

/// Those of `vms` (from [`vms_of`]) that still exist.
pub fn vms_still_there(vms: &[String]) -> Vec<String> {
    let listed: Vec<String> = if backend() == "xen" {
        let out = Command::new(xen_xl())
            .arg("list")
            .output()
            .expect("xl list");
        assert!(out.status.success(), "xl list: {}", text(&out.stderr));
        parse_xl_list(&text(&out.stdout))
            .into_iter()
            .map(|(name, domid)| format!("{name}/{domid}"))
            .collect()
    } else {
        vms.iter()
            .filter(|pid| Path::new("/proc").join(pid).exists())
            .cloned()
            .collect()
    };
    vms.iter().filter(|v| listed.contains(v)).cloned().collect()
}

/// (name, domid) rows of `xl list`, past its header.
fn parse_xl_list(out: &str) -> Vec<(String, u32)> {
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?.to_string();
            let domid = cols.next()?.parse().ok()?;
            Some((name, domid))
        })
        .collect()
}

/// The Xen domains (name, domid) of the pods under `state_dir`: a pod's
/// domain is named after its id. `Err` when `xl list` fails (no panic here:
/// [`Hyperd`]'s drop uses it).
pub fn xen_domains(state_dir: &Path) -> Result<Vec<(String, u32)>, String> {
    let pods: Vec<String> = std::fs::read_dir(state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    if pods.is_empty() {
        return Ok(Vec::new());
    }
    let out = Command::new(xen_xl())
        .arg("list")
        .output()
        .map_err(|e| format!("xl list: {e}"))?;
    if !out.status.success() {
        return Err(format!("xl list: {}", text(&out.stderr)));
    }
    Ok(parse_xl_list(&text(&out.stdout))
        .into_iter()
        .filter(|(name, _)| pods.contains(name))
        .collect())
}

/// Destroys the Xen domains of the pods under `state_dir`.
pub fn destroy_xen_domains(state_dir: &Path) {
    for (name, _) in xen_domains(state_dir).unwrap_or_default() {
        let _ = Command::new(xen_xl()).args(["destroy", &name]).output();
    }
}

/// Options for one hyperd.
pub struct Setup {
    /// `[runtime] hypervisor`.
    pub hypervisor: String,
    /// Plugins (crate names) placed in the plugin directory.
    pub plugins: Vec<String>,
    /// Extra TOML appended to the config.
    pub extra_toml: String,
    /// Extra keys of the `[runtime]` table.
    pub runtime_toml: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Mount a tmpfs of this many MiB at the state directory before hyperd
    /// starts (a disk that can be filled); unmounted when the Hyperd drops.
    pub state_tmpfs_mib: Option<u64>,
}

impl Default for Setup {
    fn default() -> Self {
        let backend = backend();
        Self {
            plugins: vec![format!("hyper-backend-{backend}")],
            hypervisor: backend,
            extra_toml: String::new(),
            runtime_toml: String::new(),
            kernel: payload_dir().join("hyperkernel"),
            initrd: payload_dir().join("hyperstart.img"),
            state_tmpfs_mib: None,
        }
    }
}

pub struct Hyperd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    state_mount: Option<Tmpfs>,
}

/// Where the config is written; hyperd is not started.
pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

pub fn prepare(setup: &Setup) -> Prepared {
    // Short paths: unix socket paths are limited to 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("hy")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    for p in &setup.plugins {
        let src = plugin(p);
        let name = src.file_name().map(|n| n.to_owned()).unwrap_or_default();
        std::os::unix::fs::symlink(&src, plugin_dir.join(name)).expect("plugin link");
    }
    let socket = dir.path().join("hyperd.sock");
    let state_dir = dir.path().join("state");
    let config = dir.path().join("config.toml");
    // HYPER_TEST_START=auto|template runs a suite's pods from templates
    // (`make e2e-template`).
    let start = match std::env::var("HYPER_TEST_START") {
        Ok(mode) if !mode.is_empty() => format!("start = \"{mode}\"\n"),
        _ => String::new(),
    };
    let toml = format!(
        "[runtime]\nhypervisor = \"{}\"\nplugin_dir = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\n{}\n\
         [payload]\nkernel = \"{}\"\ninitrd = \"{}\"\n\n[vm]\nboot_timeout_secs = 120\n{start}\n{}{}",
        setup.hypervisor,
        plugin_dir.display(),
        state_dir.display(),
        socket.display(),
        setup.runtime_toml,
        setup.kernel.display(),
        setup.initrd.display(),
        backend_toml(&setup.hypervisor),
        setup.extra_toml
    );
    // Pods get the default network of `[network] cni_conf_dir`: a test
    // that does not set one sees none (an empty directory), whatever the
    // host has installed.
    let toml = if setup.extra_toml.contains("[network]") {
        toml
    } else {
        let conf = dir.path().join("cni");
        std::fs::create_dir(&conf).expect("cni dir");
        format!("{toml}\n[network]\ncni_conf_dir = \"{}\"\n", conf.display())
    };
    std::fs::write(&config, toml).expect("config");
    Prepared {
        dir,
        config,
        socket,
        state_dir,
    }
}

impl Hyperd {
    pub fn start() -> Self {
        Self::start_with(&Setup::default())
    }

    pub fn start_with(setup: &Setup) -> Self {
        let p = prepare(setup);
        let state_mount = setup
            .state_tmpfs_mib
            .map(|mib| Tmpfs::mount(&p.state_dir, mib));
        let log = p.dir.path().join("hyperd.log");
        let child = spawn_hyperd(&p.config, &log);
        let mut hyperd = Self {
            socket: p.socket,
            state_dir: p.state_dir,
            config: p.config,
            log,
            dir: p.dir,
            child: Some(child),
            state_mount,
        };
        hyperd.wait_ready();
        hyperd
    }

    fn wait_ready(&mut self) {
        self.wait_serving();
        // A restarted hyperd serves at once and lists the pods it is taking
        // over as `recovering` (on Xen under TCG ≈15 s each): wait for them.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let out = self.hyper(&["ps", "-a", "--json"]);
            let pods: Vec<serde_json::Value> =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            if out.status.success() && !pods.iter().any(|p| p["recovering"] == true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "hyperd did not finish its takeovers within 90 s:\n{}",
            self.log_text()
        );
    }

    /// Starts a new hyperd on the same config, state and socket, and
    /// returns once it serves, takeovers possibly still under way.
    pub fn restart_serving(&mut self) {
        self.stop();
        self.child = Some(spawn_hyperd(&self.config, &self.log));
        self.wait_serving();
    }

    /// Waits until hyperd accepts connections.
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("hyperd exited with {status}:\n{}", self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("hyperd did not listen within 90 s:\n{}", self.log_text());
    }
    /// Fails the test with the command's stderr and hyperd's log unless
    /// `out` exited 0.
    pub fn succeeded(&self, out: &std::process::Output) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            text(&out.stderr),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `hyper ARGS…` against this hyperd.
    pub fn hyper(&self, args: &[&str]) -> Output {
        self.hyper_with_stdin(args, None)
    }

    pub fn hyper_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        hyper_at(&self.socket, args, stdin)
    }

    /// `hyper run --rm --rootfs <busybox> -- CMD…` with extra options before `--rootfs`.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        self.run_with_stdin(opts, cmd, None)
    }

    pub fn run_with_stdin(&self, opts: &[&str], cmd: &[&str], stdin: Option<&[u8]>) -> Output {
        let rootfs = busybox_rootfs();
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(opts);
        let rootfs = rootfs.to_string_lossy().into_owned();
        args.extend(["--rootfs", rootfs.as_str(), "--"]);
        args.extend_from_slice(cmd);
        self.hyper_with_stdin(&args, stdin)
    }

    /// `hyper run -d [opts] --rootfs <busybox> CMD…` → the pod id.
    pub fn run_detached(&self, opts: &[&str], cmd: &[&str]) -> String {
        let rootfs = busybox_rootfs().to_string_lossy().into_owned();
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(opts);
        args.extend(["--rootfs", rootfs.as_str(), "--"]);
        args.extend_from_slice(cmd);
        let out = self.hyper(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run -d failed: {}\nlog:\n{}",
            text(&out.stderr),
            self.log_text()
        );
        let id = text(&out.stdout).trim().to_string();
        assert_eq!(id.len(), 12, "not a pod id: {id:?}");
        id
    }

    /// `hyper ARGS…` left running, its stdin, stdout and stderr piped.
    pub fn hyper_spawn(&self, args: &[&str]) -> Child {
        Command::new(bin("hyper"))
            .args(args)
            .env("HYPER_HOST", &self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hyper")
    }

    /// `hyper ps [-a] --json`.
    pub fn ps_json(&self, all: bool) -> Vec<serde_json::Value> {
        let args: &[&str] = if all {
            &["ps", "-a", "--json"]
        } else {
            &["ps", "--json"]
        };
        let out = self.hyper(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("ps --json")
    }

    /// Polls `hyper logs POD` until its stdout contains `needle`.
    pub fn wait_for_log(&self, pod: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = text(&self.hyper(&["logs", pod]).stdout);
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared in the logs of {pod}: {out:?}\nlog:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `hyper exec ARGS…`, which must succeed; its stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["exec"];
        all.extend_from_slice(args);
        let out = self.hyper(&all);
        assert_eq!(
            out.status.code(),
            Some(0),
            "exec {args:?}: {}\nlog:\n{}",
            text(&out.stderr),
            self.log_text()
        );
        text(&out.stdout)
    }

    /// hyperd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A field of hyperd's `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self.pid().expect("hyperd is running");
        proc_status_kib(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    /// Kills hyperd with SIGKILL, as a crash would, and reaps it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new hyperd on the same config, state and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_hyperd(&self.config, &self.log));
        self.wait_ready();
    }

    /// Stops hyperd with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child, which has not been reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = wait_with_timeout(&mut child, Duration::from_secs(30));
        }
    }
}

impl Drop for Hyperd {
    fn drop(&mut self) {
        self.stop();
        // A failed test must not leak VMs into the next ones (hyperd leaves
        // running pods to the next one when it stops).
        if backend() == "xen" {
            destroy_xen_domains(&self.state_dir);
        }
        for pid in processes_mentioning(&self.dir.path().to_string_lossy()) {
            // SAFETY: kill(2) on a process started for this test's directory.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // Before the temp dir goes, so it can be removed whole.
        drop(self.state_mount.take());
    }
}

/// A tmpfs mounted for a test (tests run as root): a small disk to fill.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB at `dir`, created if missing.
    pub fn mount(dir: &Path, size_mib: u64) -> Self {
        std::fs::create_dir_all(dir).expect("tmpfs mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs at {}: {} (the test needs root)",
            dir.display(),
            text(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Writes `name` in `dir` until the file system is full (ENOSPC); its size.
    pub fn fill(dir: &Path, name: &str) -> u64 {
        let mut f = std::fs::File::create(dir.join(name)).expect("filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(path) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // Lazy: a VM process still closing its files must not keep it mounted.
        // SAFETY: umount2 with a NUL-terminated path we own and a plain flag.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

pub fn spawn_hyperd(config: &Path, log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    Command::new(bin("hyperd"))
        .arg("--config")
        .arg(config)
        .env("HYPER_LOG", "info,hyper_core=debug")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn hyperd")
}

pub fn hyper_at(socket: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(bin("hyper"))
        .args(args)
        .env("HYPER_HOST", socket)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hyper");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out_pipe = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || read_all(out_pipe));
    let err = std::thread::spawn(move || read_all(err_pipe));
    let status = wait_with_timeout(&mut child, RUN_TIMEOUT)
        .unwrap_or_else(|| panic!("hyper {args:?} timed out"));
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Processes whose command line mentions `needle` (e.g. a test's temp dir).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`…).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The hostile guest init (tests/hostile-init), a static musl binary:
/// `HYPER_HOSTILE_INIT` or `<workspace>/target/x86_64-unknown-linux-musl/release/hostile-init`
/// (`make hostile-init`).
pub fn hostile_init() -> PathBuf {
    let path = std::env::var_os("HYPER_HOSTILE_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace().join("target/x86_64-unknown-linux-musl/release/hostile-init")
        });
    required(path, "hostile init (make hostile-init)")
}

/// Writes an initramfs at `out` with the hostile init as `/init` and
/// `attack` in `/attack`: give it to a hyperd as `Setup::initrd`.
pub fn hostile_initrd(out: &Path, attack: &str) {
    let init = std::fs::read(hostile_init()).expect("read the hostile init");
    let mut cpio = Vec::new();
    for dir in ["dev", "proc", "sys", "tmp"] {
        newc_entry(&mut cpio, dir, 0o040755, &[]);
    }
    newc_entry(&mut cpio, "init", 0o100755, &init);
    newc_entry(&mut cpio, "attack", 0o100644, attack.as_bytes());
    newc_entry(&mut cpio, "TRAILER!!!", 0, &[]);
    std::fs::write(out, cpio).expect("write the hostile initrd");
}

/// One entry of a newc ("070701") cpio archive, as the kernel unpacks it.
fn newc_entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let ino = (out.len() as u32) | 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Every file under `dir` (recursive), for leftover checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            // Symlinks are listed, never followed (a tree may hold links
            // that leave it, or loop).
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The seeded test registry's environment (HYPER_TEST_REGISTRY, _AUTH, _USER, …).
/// Started and seeded here when the caller (make test) did not.
fn registry_env() -> &'static Vec<(String, String)> {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = std::env::var("HYPER_REGISTRY_DIR")
            .unwrap_or_else(|_| "/tmp/hyper-test-registry".into());
        let env_file = PathBuf::from(&dir).join("env");
        if std::env::var("HYPER_TEST_REGISTRY").is_err() {
            let root = workspace();
            let started = Command::new(root.join("tests/registry/start.sh"))
                .status()
                .expect("run tests/registry/start.sh");
            assert!(started.success(), "tests/registry/start.sh failed");
            let script = format!(
                ". {} && python3 {}",
                env_file.display(),
                root.join("tests/registry/seed.py").display()
            );
            let seeded = Command::new("sh")
                .args(["-c", &script])
                .status()
                .expect("run seed.py");
            assert!(seeded.success(), "tests/registry/seed.py failed");
        }
        let mut vars = Vec::new();
        for name in [
            "HYPER_TEST_REGISTRY",
            "HYPER_TEST_REGISTRY_AUTH",
            "HYPER_TEST_REGISTRY_USER",
            "HYPER_TEST_REGISTRY_PASSWORD",
            "HYPER_TEST_ARCHIVES",
        ] {
            if let Ok(v) = std::env::var(name) {
                vars.push((name.to_string(), v));
            }
        }
        if vars.is_empty() {
            let text = std::fs::read_to_string(&env_file).expect("registry env file");
            for line in text.lines() {
                if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                    vars.push((k.to_string(), v.to_string()));
                }
            }
        }
        vars
    })
}

pub fn registry_var(name: &str) -> String {
    registry_env()
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} is not set by tests/registry/start.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_table_names_hyper_vmm_and_nothing_else() {
        let text = backend_toml("kvm");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("[hypervisor.kvm]"), "{text}");
        let vmm = lines
            .next()
            .and_then(|l| l.strip_prefix("vmm = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no vmm line in {text}"));
        assert!(vmm.ends_with("hyper-vmm"), "{text}");
        assert!(!text.contains("allow_pvm"), "{text}");
    }

    #[test]
    fn qemu_needs_no_table() {
        assert_eq!(backend_toml("qemu"), "");
    }
}
