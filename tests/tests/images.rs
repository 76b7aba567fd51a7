//! Images end to end: pull from a real registry (Debian's docker-registry on
//! loopback, seeded by tests/registry/seed.py), run them in real VMs, load,
//! tag and remove them. Hostile images are refused and leave nothing behind.

use std::path::PathBuf;

use hyper_tests::{files_under, text, Hyperd, Setup};

fn var(name: &str) -> String {
    hyper_tests::registry_var(name)
}

fn reg() -> String {
    var("HYPER_TEST_REGISTRY")
}

/// A hyperd that may reach the test registries over plain HTTP.
fn hyperd() -> Hyperd {
    let auth = var("HYPER_TEST_REGISTRY_AUTH");
    Hyperd::start_with(&Setup {
        extra_toml: format!(
            "[images]\ninsecure_registries = [\"{}\", \"{auth}\"]\n",
            reg()
        ),
        ..Setup::default()
    })
}

fn ok(d: &Hyperd, out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}\nlog:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        d.log_text()
    );
}

fn image_files(d: &Hyperd) -> usize {
    files_under(&d.state_dir.join("images"))
        .into_iter()
        .filter(|p| {
            // Lock files and the empty store layout are not content.
            !p.to_string_lossy().ends_with(".lock")
        })
        .count()
}

#[test]
fn pull_run_and_docker_override_rules() {
    let d = hyperd();
    let busybox = format!("{}/hyper/busybox", reg());
    let out = d.hyper(&["pull", &busybox]);
    ok(&d, &out);
    let listing = text(&out.stdout);
    assert!(listing.contains("Pulling"), "{listing}");
    assert!(listing.contains("Status: downloaded"), "{listing}");

    let out = d.hyper(&["images", "--json"]);
    ok(&d, &out);
    let images: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(images[0]["repo_tags"][0]
        .as_str()
        .unwrap()
        .ends_with("hyper/busybox:latest"));
    let out = d.hyper(&["images"]);
    assert!(
        text(&out.stdout).contains("hyper/busybox"),
        "{}",
        text(&out.stdout)
    );

    // A command replaces the image's Cmd.
    let out = d.hyper(&["run", "--rm", &busybox, "echo", "hello from an image"]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "hello from an image\n");
    // No command: the image's Cmd (["sh"]) reads stdin.
    let out = d.hyper_with_stdin(
        &["run", "--rm", "-i", &busybox],
        Some(b"echo from-cmd; exit 4\n"),
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-cmd\n");
    // --entrypoint replaces the Entrypoint; args follow it.
    let out = d.hyper(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/echo",
        &busybox,
        "a",
        "b",
    ]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "a b\n");

    // Docker schema2 image with Entrypoint ["/bin/sh","-c"], Cmd, WorkingDir.
    let docker = format!("{}/hyper/docker", reg());
    let out = d.hyper(&["run", "--rm", &docker]);
    ok(&d, &out);
    // `run` pulled it first, saying so on stderr.
    assert!(
        text(&out.stderr).contains("Unable to find image"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "schema2\n");
    let out = d.hyper(&["run", "--rm", "-e", "X=1", &docker, "pwd; echo $X"]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "/tmp\n1\n");

    // A zstd-compressed image, and a multi-arch index (amd64 picked).
    let out = d.hyper(&[
        "run",
        "--rm",
        &format!("{}/hyper/zstd", reg()),
        "cat",
        "/zstd.txt",
    ]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "zstd layer\n");
    let out = d.hyper(&[
        "run",
        "--rm",
        &format!("{}/hyper/multiarch", reg()),
        "cat",
        "/arch",
    ]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "amd64\n");
}

#[test]
fn layers_apply_whiteouts_and_pods_share_one_rootfs_image() {
    let d = hyperd();
    let layers = format!("{}/hyper/layers", reg());
    // Cmd is `cat /data/b`.
    let out = d.hyper(&["run", "--rm", &layers]);
    ok(&d, &out);
    assert_eq!(text(&out.stdout), "b\n");
    let script = "ls /data; ls /opq; test -e /etc/motd && echo motd-present; echo changed > /data/b; cat /data/b";
    let out = d.hyper(&["run", "--rm", &layers, "sh", "-c", script]);
    ok(&d, &out);
    // a whited out, c added later; the opaque dir hides old and sub; motd removed.
    assert_eq!(text(&out.stdout), "b\nc\nnew\nchanged\n");
    // The write went to that pod's own upper layer, not the shared image.
    let out = d.hyper(&["run", "--rm", &layers]);
    assert_eq!(text(&out.stdout), "b\n");
    let erofs: Vec<PathBuf> = files_under(&d.state_dir.join("images/rootfs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "img"))
        .collect();
    assert_eq!(erofs.len(), 1, "one rootfs image per image: {erofs:?}");
}

#[test]
fn rmi_refuses_an_image_in_use_then_collects_everything() {
    let d = hyperd();
    let busybox = format!("{}/hyper/busybox:1.35", reg());
    ok(&d, &d.hyper(&["pull", &busybox]));
    ok(&d, &d.hyper(&["tag", &busybox, "mine:v1"]));
    let out = d.hyper(&["run", "-d", "--name", "user", &busybox, "sleep", "600"]);
    ok(&d, &out);

    // Untagging one name is fine; deleting the image under a pod is not.
    let out = d.hyper(&["rmi", "mine:v1"]);
    ok(&d, &out);
    assert!(
        text(&out.stdout).contains("Untagged"),
        "{}",
        text(&out.stdout)
    );
    let out = d.hyper(&["rmi", &busybox]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("in use") || text(&out.stderr).contains("used by"),
        "{}",
        text(&out.stderr)
    );
    assert!(image_files(&d) > 0);

    ok(&d, &d.hyper(&["rm", "-f", "user"]));
    let out = d.hyper(&["rmi", &busybox]);
    ok(&d, &out);
    assert!(
        text(&out.stdout).contains("Deleted"),
        "{}",
        text(&out.stdout)
    );
    let left: Vec<PathBuf> = files_under(&d.state_dir.join("images"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");
}

#[test]
fn hostile_and_unavailable_images_are_refused_and_leave_nothing() {
    let d = hyperd();
    for (name, expect) in [
        ("evil-traversal", "hyper-evil-traversal"),
        ("evil-symlink", "esc"),
        ("evil-hardlink", "passwd"),
        ("evil-digest", "digest"),
        ("evil-truncated", ""),
    ] {
        let image = format!("{}/hyper/{name}", reg());
        // Pulling is enough for blob checks; running forces the unpack.
        let out = d.hyper(&["run", "--rm", &image, "true"]);
        assert_ne!(out.status.code(), Some(0), "{name} was accepted");
        assert!(
            text(&out.stderr).contains(expect),
            "{name}: {}",
            text(&out.stderr)
        );
        let images: Vec<serde_json::Value> =
            serde_json::from_slice(&d.hyper(&["images", "--json"]).stdout).unwrap();
        // Blob checks keep a bad image out entirely; an unsafe layer is found
        // at unpack time, and the image then stays refused to run.
        if name == "evil-digest" || name == "evil-truncated" {
            assert!(images.is_empty(), "{name} left an image: {images:?}");
        }
    }
    assert!(!std::path::Path::new("/tmp/hyper-evil-traversal").exists());
    assert!(!std::path::Path::new("/tmp/hyper-evil-symlink").exists());
    assert!(files_under(&d.state_dir.join("pods")).is_empty());

    let out = d.hyper(&["pull", &format!("{}/hyper/armonly", reg())]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("linux/amd64") && err.contains("arm64"),
        "{err}"
    );

    let out = d.hyper(&["pull", &format!("{}/hyper/no-such-image", reg())]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no-such-image"),
        "{}",
        text(&out.stderr)
    );

    // Nothing listens on port 9: the registry is down.
    let out = d.hyper(&["pull", "127.0.0.1:9/hyper/busybox"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("127.0.0.1:9"),
        "{}",
        text(&out.stderr)
    );

    let out = d.hyper(&["run", "--rm", "--rootfs", "/nonexistent", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn login_to_an_auth_registry_and_load_archives() {
    let d = hyperd();
    let auth_image = format!("{}/hyper/busybox", var("HYPER_TEST_REGISTRY_AUTH"));
    let out = d.hyper(&["pull", &auth_image]);
    assert_ne!(out.status.code(), Some(0), "pulled without credentials");
    let out = d.hyper_with_stdin(
        &[
            "login",
            "-u",
            &var("HYPER_TEST_REGISTRY_USER"),
            "--password-stdin",
            &var("HYPER_TEST_REGISTRY_AUTH"),
        ],
        Some(format!("{}\n", var("HYPER_TEST_REGISTRY_PASSWORD")).as_bytes()),
    );
    ok(&d, &out);
    ok(&d, &d.hyper(&["pull", &auth_image]));

    let archives = PathBuf::from(var("HYPER_TEST_ARCHIVES"));
    for input in ["busybox-docker.tar", "busybox-oci"] {
        let path = archives.join(input);
        assert!(
            path.exists(),
            "{} was not made by seed.py (skopeo missing?)",
            path.display()
        );
        let out = d.hyper(&["load", "-i", &path.to_string_lossy()]);
        ok(&d, &out);
        assert!(
            text(&out.stdout).contains("Loaded image"),
            "{}",
            text(&out.stdout)
        );
    }
    let out = d.hyper(&["load", "-i", "/nonexistent.tar"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("/nonexistent.tar"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 13 H2: a lure carrying busybox's exact config (so busybox's image
/// id) over another layer is refused at pull and at run; a digest-pinned
/// pull of the real busybox then runs busybox's layers in a real VM.
#[test]
fn a_lure_with_a_trusted_config_cannot_capture_the_image_id() {
    let d = hyperd();
    let lure = format!("{}/hyper/evil-lure", reg());
    let out = d.hyper(&["pull", &lure]);
    assert_ne!(out.status.code(), Some(0), "the lure was pulled");
    let err = text(&out.stderr);
    assert!(err.contains("does not match the image config"), "{err}");
    let out = d.hyper(&["run", "--rm", &lure, "cat", "/lure"]);
    assert_ne!(out.status.code(), Some(0), "the lure ran");
    let images: Vec<serde_json::Value> =
        serde_json::from_slice(&d.hyper(&["images", "--json"]).stdout).unwrap();
    assert!(images.is_empty(), "the lure left an image: {images:?}");
    // The real busybox, pinned by its manifest digest (from the registry).
    let pinned = {
        let other = hyperd();
        let busybox = format!("{}/hyper/busybox", reg());
        ok(&other, &other.hyper(&["pull", &busybox]));
        let out = other.hyper(&["images", "--json"]);
        let images: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        images[0]["repo_digests"][0].as_str().unwrap().to_string()
    };
    let out = d.hyper(&[
        "run",
        "--rm",
        &pinned,
        "sh",
        "-c",
        "ls /lure; cat /etc/passwd",
    ]);
    assert!(
        text(&out.stdout).contains("root:x:0:0:root"),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("No such file"),
        "the lure's file is there: {}",
        text(&out.stderr)
    );
}
