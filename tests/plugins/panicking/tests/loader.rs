//! The plugin loader (`hyper_hypervisor::plugin`) against real plugin files:
//! a plugin of another ABI version is refused with a clear message, a
//! panicking plugin turns its panics into errors (the host survives and can
//! call again), a plugin that aborts or dereferences a null pointer costs
//! the call in flight (its host process dies, the caller gets a typed error
//! naming the plugin and the signal, and the host is restarted with its VMs
//! taken back), and the real QEMU plugin loads and validates its own table.
//!
//! The plugins are cdylibs of this workspace; the test builds them first
//! (with the cargo that runs it, into the target directory and profile it
//! was itself built in), so it works from a clean checkout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_hypervisor::plugin::{
    testing, ConfigureError, LoadError, LoadedPlugin, BUILD_ID, HOST_BINARY, PLUGIN_ABI_VERSION,
};
use hyper_hypervisor::{Hypervisor, HypervisorError, VmSpec};
use serde_json::json;

const PLUGIN_PACKAGES: &[&str] = &[
    "hyper-test-plugin-wrong-abi",
    "hyper-test-plugin-panicking",
    "hyper-test-plugin-crashing",
    "hyper-backend-qemu",
];

/// Builds the plugins and the host once per test binary; returns `target/<profile>/`.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(|| testing::cargo_build(PLUGIN_PACKAGES)) {
        Ok(dir) => dir,
        Err(e) => panic!("building the test plugins: {e}"),
    }
}

fn plugin(file: &str) -> PathBuf {
    let path = plugin_dir().join(file);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn load_path(path: &Path) -> Result<LoadedPlugin, LoadError> {
    LoadedPlugin::load_with_host(path, &plugin_dir().join(HOST_BINARY))
}

fn load(file: &str) -> Arc<LoadedPlugin> {
    let path = plugin(file);
    match load_path(&path) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("loading {}: {e}", path.display()),
    }
}

fn spec() -> VmSpec {
    testing::unbootable_spec("loader-test")
}

#[test]
fn wrong_abi_is_refused_naming_the_file_and_both_versions() {
    let path = plugin("libhyper_test_plugin_wrong_abi.so");
    let err = load_path(&path).expect_err("a plugin of another ABI must be refused");
    let message = err.to_string();
    match err {
        LoadError::AbiMismatch {
            path: p,
            plugin,
            host,
        } => {
            assert_eq!(p, path);
            assert_eq!(plugin, PLUGIN_ABI_VERSION + 1000);
            assert_eq!(host, PLUGIN_ABI_VERSION);
        }
        other => panic!("expected AbiMismatch, got {other:?}"),
    }
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("version {}", PLUGIN_ABI_VERSION + 1000)),
        "{message}"
    );
    assert!(
        message.contains(&format!("version {PLUGIN_ABI_VERSION}")),
        "{message}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = std::env::temp_dir().join(format!("hyper-loader-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("libnot_a_plugin.so");
    std::fs::write(&path, b"not an ELF file").unwrap();
    let err = load_path(&path).expect_err("must be refused");
    assert!(
        matches!(&err, LoadError::Open { path: p, .. } if *p == path),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_a_plugin_become_errors_and_the_host_survives() {
    let plugin = load("libhyper_test_plugin_panicking.so");
    assert_eq!(plugin.name(), "panicking");
    assert_eq!(plugin.build_id(), BUILD_ID);
    let hv = plugin
        .configure(json!({"anything": ["goes", 1]}))
        .expect("the panicking plugin accepts any table");
    for round in 0..2 {
        let report = hv.probe().await;
        assert!(!report.usable, "round {round}: {report:?}");
        assert!(
            report.reason.contains("panicked"),
            "round {round}: {}",
            report.reason
        );
        assert!(
            report.reason.contains("probe panicked on purpose"),
            "round {round}: {}",
            report.reason
        );

        let err = match hv.launch(spec()).await {
            Ok(_) => panic!("round {round}: launch of the panicking plugin succeeded"),
            Err(e) => e,
        };
        match &err {
            HypervisorError::Plugin(m) => {
                assert!(m.contains("panicked"), "round {round}: {m}");
                assert!(
                    m.contains("launch panicked on purpose (vm loader-test)"),
                    "round {round}: {m}"
                );
            }
            other => panic!("round {round}: expected HypervisorError::Plugin, got {other:?}"),
        }
    }
    // Still here, and the plugin still answers calls that do not panic.
    assert_eq!(hv.name(), "panicking");
    plugin
        .configure(json!({}))
        .expect("configure after the panics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qemu_plugin_loads_and_checks_its_table() {
    let plugin = load("libhyper_backend_qemu.so");
    assert_eq!(plugin.name(), "qemu");
    assert_eq!(plugin.build_id(), BUILD_ID);

    match plugin.configure(json!({"machin": "q35", "accel": "tcg"})) {
        Err(ConfigureError::Rejected(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "machin");
            assert_eq!(problems[0].message, "unknown key");
            assert!(problems[0].fix.contains("`machine`"), "{}", problems[0].fix);
        }
        Err(other) => panic!("expected Rejected, got {other}"),
        Ok(_) => panic!("an unknown key was accepted"),
    }

    let hv = match plugin.configure(json!({"accel": "tcg"})) {
        Ok(hv) => hv,
        Err(e) => panic!("a valid table was refused: {e}"),
    };
    assert_eq!(hv.name(), "qemu");
    assert!(hv.capabilities().recover);
    let report = hv.probe().await;
    if Path::new("/usr/bin/qemu-system-x86_64").exists() {
        assert!(report.usable, "{report:?}");
        assert_eq!(report.details.get("accel").map(String::as_str), Some("tcg"));
    } else {
        assert!(!report.usable, "{report:?}");
    }
    // Errors from inside the plugin cross the boundary typed.
    match hv.launch(spec()).await {
        Err(HypervisorError::InvalidSpec(m)) => assert!(m.contains("/nonexistent/vmlinux"), "{m}"),
        Err(other) => panic!("expected InvalidSpec, got {other:?}"),
        Ok(_) => panic!("launched a VM from a nonexistent kernel"),
    }
}

fn spec_named(id: &str) -> VmSpec {
    testing::unbootable_spec(id)
}

/// A plugin that crashes in `probe()` (`mode`): the probe fails with a
/// `PluginDied` naming the plugin and `signal`, this process lives on, the
/// host is restarted, and a VM launched before the crash is taken back:
/// still running, still answering, and its waiter sees its real end.
async fn crash_costs_only_the_call(mode: &str, signal: &str) {
    let plugin = load("libhyper_test_plugin_crashing.so");
    assert_eq!(plugin.name(), "crashing");
    let crashing = plugin
        .configure(json!({ "crash": mode }))
        .unwrap_or_else(|e| panic!("{e}"));
    let fine = plugin
        .configure(json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    let vm = fine
        .launch(spec_named(&format!("crash-{mode}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first_host = plugin.host_pid().expect("a host process runs");

    let report = crashing.probe().await;
    assert!(!report.usable, "{report:?}");
    for part in ["backend plugin crashing died", signal] {
        assert!(
            report.reason.contains(part),
            "{part:?} not in: {}",
            report.reason
        );
    }

    // The restart runs in the background: calls meanwhile fail with
    // PluginDied too. Retried a bounded number of times, never timed.
    let mut answered = None;
    for _ in 0..600 {
        match vm.stats().await {
            Ok(stats) => {
                answered = Some(stats);
                break;
            }
            Err(HypervisorError::PluginDied { plugin, .. }) => {
                assert_eq!(plugin, "crashing");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("expected PluginDied while restarting, got {other:?}"),
        }
    }
    assert!(answered.is_some(), "the plugin's host was never restarted");
    let second_host = plugin.host_pid().expect("a host process runs again");
    assert_ne!(first_host, second_host);
    assert!(fine.probe().await.usable);
    // The VM outlived its host: its waiter has seen no end.
    assert!(
        tokio::time::timeout(Duration::ZERO, vm.wait())
            .await
            .is_err(),
        "the VM was reported ended by the plugin's crash"
    );
    vm.kill().await.unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.signal, Some(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_aborts_costs_only_the_call_in_flight() {
    crash_costs_only_the_call("abort", "SIGABRT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_dereferences_null_costs_only_the_call_in_flight() {
    crash_costs_only_the_call("null", "SIGSEGV").await;
}
