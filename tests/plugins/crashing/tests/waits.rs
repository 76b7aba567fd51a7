//! A waiter costs no thread: many `Vm::wait()` futures dropped before the
//! VM ends leave the thread count of this process (hyperd's side) and of the
//! plugin's host process where it was. Its own test binary, so no other test
//! starts threads meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_hypervisor::plugin::{testing, LoadedPlugin, HOST_BINARY};
use hyper_hypervisor::Hypervisor;

fn threads(status: &Path) -> usize {
    let text = std::fs::read_to_string(status)
        .unwrap_or_else(|e| panic!("reading {}: {e}", status.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Threads: line in {}", status.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cancelled_waits_leave_the_thread_count_flat() {
    let dir = testing::cargo_build(&["hyper-test-plugin-crashing"])
        .unwrap_or_else(|e| panic!("building the test plugin: {e}"));
    let plugin = Arc::new(
        LoadedPlugin::load_with_host(
            &dir.join("libhyper_test_plugin_crashing.so"),
            &dir.join(HOST_BINARY),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let hv = plugin
        .configure(serde_json::json!({}))
        .unwrap_or_else(|e| panic!("{e}"));
    let vm = hv
        .launch(testing::unbootable_spec("waits"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let host_status = Path::new("/proc")
        .join(plugin.host_pid().expect("a host runs").to_string())
        .join("status");
    let own_status = Path::new("/proc/self/status");
    // The VM's one exit watcher is armed at launch; one round first so
    // everything lazily started (the watch, the stats call) is counted.
    vm.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(tokio::time::timeout(Duration::ZERO, vm.wait())
        .await
        .is_err());
    let (own_before, host_before) = (threads(own_status), threads(&host_status));

    for round in 0..200 {
        assert!(
            tokio::time::timeout(Duration::ZERO, vm.wait())
                .await
                .is_err(),
            "round {round}: the VM ended on its own"
        );
    }
    // And 200 waiters parked at once, then dropped.
    let parked: Vec<_> = (0..200).map(|_| Box::pin(vm.wait())).collect();
    let mut parked = parked;
    for w in &mut parked {
        assert!(tokio::time::timeout(Duration::ZERO, w).await.is_err());
    }
    drop(parked);

    let (own_after, host_after) = (threads(own_status), threads(&host_status));
    assert!(
        own_after <= own_before,
        "this process went from {own_before} to {own_after} threads"
    );
    assert!(
        host_after <= host_before,
        "the plugin's host went from {host_before} to {host_after} threads"
    );
    // The watcher still delivers the end to a new waiter.
    vm.kill().await.unwrap_or_else(|e| panic!("{e}"));
    let exit = vm.wait().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.signal, Some(9));
}
