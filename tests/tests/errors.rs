//! Bad input gets a clear error and loses nothing.

use hyper_hypervisor::plugin::PLUGIN_ABI_VERSION;
use hyper_tests::{
    busybox_rootfs, hyper_at, prepare, spawn_hyperd, text, wait_with_timeout, Hyperd, Setup,
};
use std::time::Duration;

/// Starts hyperd expecting it to refuse its config; returns its output.
fn hyperd_refuses(setup: &Setup, tweak: impl FnOnce(&std::path::Path)) -> String {
    let p = prepare(setup);
    tweak(&p.config);
    let log = p.dir.path().join("hyperd.log");
    let mut child = spawn_hyperd(&p.config, &log);
    let status =
        wait_with_timeout(&mut child, Duration::from_secs(30)).expect("hyperd should exit");
    assert!(!status.success());
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn hyper_without_hyperd_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("nobody.sock");
    let out = hyper_at(
        &socket,
        &["run", "--rm", "--rootfs", "/", "--", "true"],
        None,
    );
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot connect to hyperd") && err.contains("Is hyperd running?"),
        "{err}"
    );
    assert!(err.contains(&socket.display().to_string()), "{err}");
}

#[test]
fn unknown_backend_lists_the_plugins_found() {
    let setup = Setup {
        hypervisor: "vmware".into(),
        ..Setup::default()
    };
    let log = hyperd_refuses(&setup, |_| {});
    assert!(log.contains("unknown backend `vmware`"), "{log}");
    assert!(log.contains(&hyper_tests::backend()), "{log}");
    assert!(log.contains("runtime.hypervisor"), "{log}");
}

#[test]
fn unknown_or_mistyped_config_keys_name_file_line_and_key() {
    let log = hyperd_refuses(&Setup::default(), |config| {
        let text = std::fs::read_to_string(config).expect("config");
        std::fs::write(config, text.replace("[vm]\n", "[vm]\nmemory_mb = 64\n")).expect("write");
    });
    assert!(
        log.contains("config.toml") && log.contains("memory_mb") && log.contains("line"),
        "{log}"
    );

    let log = hyperd_refuses(&Setup::default(), |config| {
        let text = std::fs::read_to_string(config).expect("config");
        std::fs::write(config, text.replace("[vm]\n", "[vm]\nvcpus = \"two\"\n")).expect("write");
    });
    assert!(
        log.contains("config.toml") && log.contains("expected type"),
        "{log}"
    );

    // The backend validates its own table.
    let backend = hyper_tests::backend();
    let setup = Setup {
        extra_toml: format!("[hypervisor.{backend}]\nno_such_knob = 1\n"),
        ..Setup::default()
    };
    let log = hyperd_refuses(&setup, |_| {});
    assert!(
        log.contains("config.toml")
            && log.contains(&format!(
                "key `hypervisor.{backend}.no_such_knob`: unknown key"
            ))
            && log.contains(&format!("the valid keys in [hypervisor.{backend}] are")),
        "{log}"
    );

    // A mistyped backend key reads like the core's own: file, full key,
    // what was wrong, the fix (the backend kit's typed tables).
    if backend == "qemu" {
        let setup = Setup {
            extra_toml: "[hypervisor.qemu]\ntcg_tb_size_mib = \"big\"\n".into(),
            ..Setup::default()
        };
        let log = hyperd_refuses(&setup, |_| {});
        assert!(
            log.contains("config.toml")
                && log.contains(
                    "key `hypervisor.qemu.tcg_tb_size_mib`: invalid type: string \"big\""
                )
                && log.contains("expected a whole number")
                && log.contains("e.g. tcg_tb_size_mib = 16"),
            "{log}"
        );
    }
}

#[test]
fn missing_kernel_initrd_or_rootfs_is_named() {
    let setup = Setup {
        kernel: "/nonexistent/hyperkernel".into(),
        ..Setup::default()
    };
    let d = Hyperd::start_with(&setup);
    let out = d.run(&[], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains("payload.kernel") && err.contains("/nonexistent/hyperkernel"),
        "{err}"
    );

    let setup = Setup {
        initrd: "/nonexistent/hyperstart.img".into(),
        ..Setup::default()
    };
    let d = Hyperd::start_with(&setup);
    let err = text(&d.run(&[], &["true"]).stderr);
    assert!(err.contains("payload.initrd"), "{err}");

    let out = d.hyper(&[
        "run",
        "--rm",
        "--rootfs",
        "/nonexistent/rootfs",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("/nonexistent/rootfs"),
        "{}",
        text(&out.stderr)
    );
    // Nothing was left behind by the refused runs.
    assert!(hyper_tests::files_under(&d.state_dir.join("pods")).is_empty());
}

#[test]
fn a_plugin_of_another_abi_is_refused_with_both_versions() {
    let setup = Setup {
        plugins: vec![
            format!("hyper-backend-{}", hyper_tests::backend()),
            "hyper-test-plugin-wrong-abi".into(),
        ],
        ..Setup::default()
    };
    let d = Hyperd::start_with(&setup);
    let out = d.hyper(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let failures = info["plugin_failures"].to_string();
    assert!(
        failures.contains("libhyper_test_plugin_wrong_abi.so"),
        "{failures}"
    );
    assert!(
        failures.contains(&format!("ABI version {}", PLUGIN_ABI_VERSION + 1000))
            && failures.contains(&format!("speaks version {PLUGIN_ABI_VERSION};")),
        "{failures}"
    );
    // The good plugin still serves.
    assert_eq!(info["hypervisor"], hyper_tests::backend());
}

#[test]
fn a_panicking_plugin_fails_the_call_and_hyperd_keeps_serving() {
    let setup = Setup {
        hypervisor: "panicking".into(),
        plugins: vec!["hyper-test-plugin-panicking".into()],
        ..Setup::default()
    };
    let d = Hyperd::start_with(&setup);
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    for _ in 0..2 {
        let out = d.hyper(&["run", "--rm", "--rootfs", &rootfs, "--", "true"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(
            text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
        let info = d.hyper(&["info", "--json"]);
        assert_eq!(info.status.code(), Some(0), "hyperd died: {}", d.log_text());
        assert!(text(&info.stdout).contains("panicked"));
    }
}
