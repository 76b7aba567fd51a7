//! Pods of several containers from a pod file: a shared volume between two
//! containers of one VM, per-container exec and logs, the pod's lifecycle,
//! and bad pod files. Real hyperd, real backend plugin, real VMs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_tests::{busybox_rootfs, text, Hyperd};

/// Writes `body` as a pod file in hyperd's temp dir, with `ROOTFS` replaced
/// by the busybox test rootfs.
fn pod_file(d: &Hyperd, name: &str, body: &str) -> PathBuf {
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let path = d.dir.path().join(name);
    std::fs::write(&path, body.replace("ROOTFS", &rootfs)).expect("write the pod file");
    path
}

fn create(d: &Hyperd, file: &Path, extra: &[&str]) -> String {
    let file = file.to_string_lossy().into_owned();
    let mut args = vec!["pod", "create", "-f", file.as_str()];
    args.extend_from_slice(extra);
    let out = d.hyper(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pod create failed: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 12, "not a pod id: {id:?}");
    id
}

fn inspect(d: &Hyperd, pod: &str) -> serde_json::Value {
    let out = d.hyper(&["inspect", pod]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("inspect json");
    all.into_iter().next().expect("one pod")
}

const SHARED: &str = r#"
name = "pair"
memory_mib = 256

[labels]
tier = "test"

[[volume]]
name = "shared"
size_mib = 8

# The writer publishes atomically (write, then rename) and exits.
[[container]]
name = "writer"
rootfs = "ROOTFS"
command = ["sh", "-c", "echo hello-from-writer > /data/.tmp && mv /data/.tmp /data/msg && echo wrote"]
mounts = [{ volume = "shared", path = "/data" }]

# The reader waits for it through its own read-only view of the volume.
[[container]]
name = "reader"
rootfs = "ROOTFS"
command = ["sh", "-c", "i=0; while [ ! -f /in/msg ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; cat /in/msg; touch /in/x 2>/dev/null || echo read-only; exit 3"]
mounts = [{ volume = "shared", path = "/in", readonly = true }]
"#;

#[test]
fn two_containers_share_a_volume_and_the_pod_exits_with_the_first_failure() {
    let d = Hyperd::start();
    let file = pod_file(&d, "pod.toml", SHARED);
    let id = create(&d, &file, &[]);

    let out = d.hyper(&["wait", "pair"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The writer exited 0, the reader 3: the pod's code is the reader's.
    assert_eq!(text(&out.stdout).trim(), "3", "log:\n{}", d.log_text());

    let pod = inspect(&d, &id);
    assert_eq!(pod["name"], "pair");
    assert_eq!(pod["labels"]["tier"], "test");
    assert_eq!(pod["state"], "exited");
    assert_eq!(pod["exit_code"], 3);
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["name"], "writer");
    assert_eq!(containers[0]["exit_code"], 0);
    assert_eq!(containers[1]["name"], "reader");
    assert_eq!(containers[1]["exit_code"], 3);
    assert_eq!(containers[1]["state"], "exited");

    // Logs per container; the pod's own log is its first container's.
    let out = d.hyper(&["logs", "pair/reader"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello-from-writer\nread-only\n");
    let out = d.hyper(&["logs", "pair/writer"]);
    assert_eq!(text(&out.stdout), "wrote\n");
    let out = d.hyper(&["logs", &id]);
    assert_eq!(text(&out.stdout), "wrote\n");
    let out = d.hyper(&["logs", "pair/nope"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no container nope"),
        "{}",
        text(&out.stderr)
    );

    let out = d.hyper(&["rm", "pair"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!d.state_dir.join("pods").join(&id).exists());
}

#[test]
fn exec_reaches_each_container_and_stop_ends_them_all() {
    let d = Hyperd::start();
    let file = pod_file(
        &d,
        "pod.toml",
        r#"
[[volume]]
name = "v"

[[container]]
name = "a"
rootfs = "ROOTFS"
command = ["sh", "-c", "trap 'exit 0' TERM; echo from-a > /v/a; while true; do sleep 1; done"]
env = ["WHO=a"]
mounts = [{ volume = "v", path = "/v" }]

[[container]]
name = "b"
rootfs = "ROOTFS"
command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
env = ["WHO=b"]
workdir = "/tmp"
mounts = [{ volume = "v", path = "/shared/v" }]
"#,
    );
    let id = create(&d, &file, &["--name", "duo"]);
    assert_eq!(inspect(&d, "duo")["id"], id.as_str());

    // Each container's env and workdir; the volume seen from both.
    let out = d.hyper(&["exec", "duo/b", "sh", "-c", "echo $WHO $(pwd)"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "b /tmp\n");
    let out = d.hyper(&["exec", "duo", "sh", "-c", "echo $WHO"]);
    assert_eq!(text(&out.stdout), "a\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.hyper(&["exec", "duo/b", "cat", "/shared/v/a"]);
        if text(&out.stdout) == "from-a\n" {
            break;
        }
        assert!(Instant::now() < deadline, "b never saw a's file");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = d.hyper(&["exec", "duo/b", "sh", "-c", "echo from-b > /shared/v/b"]);
    assert_eq!(out.status.code(), Some(0));
    let out = d.hyper(&["exec", "duo/a", "cat", "/v/b"]);
    assert_eq!(text(&out.stdout), "from-b\n");
    // Separate root filesystems: a file in b's /tmp is not in a's.
    d.hyper(&["exec", "duo/b", "touch", "/tmp/only-b"]);
    let out = d.hyper(&["exec", "duo/a", "ls", "/tmp/only-b"]);
    assert_ne!(out.status.code(), Some(0));
    let out = d.hyper(&["exec", "duo/zz", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("no container zz"));

    // SIGTERM reaches every container: both exit 0 well before the grace.
    let started = Instant::now();
    let out = d.hyper(&["stop", "-t", "60", "duo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(50));
    let pod = inspect(&d, "duo");
    assert_eq!(pod["exit_code"], 0, "{pod}");
    for c in pod["containers"].as_array().expect("containers") {
        assert_eq!(c["exit_code"], 0, "{c}");
    }

    // start: the same pod, both containers, in a fresh VM (volumes are new).
    let out = d.hyper(&["start", "duo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pod = inspect(&d, "duo");
    assert_eq!(pod["state"], "running", "{pod}");
    for c in pod["containers"].as_array().expect("containers") {
        assert_eq!(c["state"], "running", "{c}");
    }
    let out = d.hyper(&["exec", "duo/a", "ls", "/v/b"]);
    assert_ne!(out.status.code(), Some(0), "the volume is new");
    assert_eq!(
        d.exec_ok(&["duo/b", "sh", "-c", "echo $WHO; pwd"]),
        "b\n/tmp\n"
    );
    let out = d.hyper(&["rm", "-f", "duo"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_pod_files_are_refused_with_file_line_and_key() {
    let d = Hyperd::start();
    let cases: [(&str, &str, &str); 5] = [
        (
            "unknown-key.toml",
            "[[container]]\nname = \"a\"\nrootfs = \"ROOTFS\"\ncommand = [\"true\"]\nbogus = 1\n",
            "unknown-key.toml:5: container.bogus: unknown field `bogus`",
        ),
        (
            "dup.toml",
            "[[container]]\nname = \"a\"\nrootfs = \"ROOTFS\"\ncommand = [\"true\"]\n\n[[container]]\nname = \"a\"\nrootfs = \"ROOTFS\"\ncommand = [\"true\"]\n",
            "dup.toml:7: container[1].name: duplicate container name a",
        ),
        (
            "malformed.toml",
            "[[container]\nname = \"a\"\n",
            "malformed.toml:1:",
        ),
        (
            "no-volume.toml",
            "[[container]]\nname = \"a\"\nrootfs = \"ROOTFS\"\ncommand = [\"true\"]\nmounts = [{ volume = \"v\", path = \"/v\" }]\n",
            "container[0].mounts[0].volume: no volume \"v\"",
        ),
        (
            "no-image.toml",
            "[[container]]\nname = \"a\"\nimage = \"127.0.0.1:1/no-such-image\"\n",
            "no-such-image",
        ),
    ];
    for (name, body, expected) in cases {
        let file = pod_file(&d, name, body);
        let out = d.hyper(&["pod", "create", "-f", &file.to_string_lossy()]);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{name}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(expected), "{name}: {err}");
    }
    let out = d.hyper(&["pod", "create", "-f", "/nonexistent/pod.toml"]);
    assert!(text(&out.stderr).contains("/nonexistent/pod.toml"));

    // hyperd checks what a client sends too, not only the CLI.
    let reply = post_raw(
        &d,
        "/v1/pods/create",
        r#"{"pod":{"container":[{"name":"a","image":"x"},{"name":"a","image":"x"}]}}"#,
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("duplicate container name a"), "{reply}");
    let reply = post_raw(
        &d,
        "/v1/pods/create",
        r#"{"pod":{"container":[{"name":"a","image":"x","bogus":1}]}}"#,
    );
    assert!(reply.starts_with("HTTP/1.1 4"), "{reply}");
    assert!(reply.contains("bogus"), "{reply}");

    // Nothing was created.
    let out = d.hyper(&["ps", "-a", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

/// A bare HTTP/1.1 POST on hyperd's socket; the whole reply as text.
fn post_raw(d: &Hyperd, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect to hyperd");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: hyperd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    reply
}

const TAKEN_OVER: &str = r#"
name = "kept"

[[volume]]
name = "v"

[[container]]
name = "a"
rootfs = "ROOTFS"
env = ["WHO=a"]
command = ["sh", "-c", "echo a-up; while [ ! -f /v/stop ]; do sleep 1; done; echo a-done; exit 5"]
mounts = [{ volume = "v", path = "/v" }]

# Ends while no hyperd runs (or soon after): its exit must still be known.
[[container]]
name = "b"
rootfs = "ROOTFS"
command = ["sh", "-c", "echo b-up; sleep 3; echo b-done; exit 7"]
"#;

#[test]
fn a_new_hyperd_takes_over_a_pod_of_several_containers() {
    let mut d = Hyperd::start();
    let file = pod_file(&d, "kept.toml", TAKEN_OVER);
    let id = create(&d, &file, &[]);
    d.wait_for_log("kept/b", "b-up");
    let vm = hyper_tests::processes_mentioning(&id);
    assert!(!vm.is_empty(), "no VM process for {id}");

    d.kill_hard();
    std::thread::sleep(Duration::from_secs(5));
    d.restart();

    // The same VM, and b's exit learnt from the guest. (What b printed
    // while no hyperd read the channel may be lost: docs/ARCHITECTURE.md.)
    assert_eq!(hyper_tests::processes_mentioning(&id), vm);
    assert_eq!(d.exec_ok(&["kept/a", "sh", "-c", "echo $WHO"]), "a\n");
    assert!(text(&d.hyper(&["logs", "kept/b"]).stdout).starts_with("b-up\n"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while inspect(&d, &id)["containers"][1]["exit_code"] != 7 {
        assert!(
            Instant::now() < deadline,
            "b's exit never recorded: {}\nlog:\n{}",
            inspect(&d, &id),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.exec_ok(&["kept/a", "touch", "/v/stop"]), "");
    let out = d.hyper(&["wait", "kept"]);
    assert_eq!(text(&out.stdout).trim(), "5", "{}", text(&out.stderr));
    assert_eq!(text(&d.hyper(&["logs", "kept/a"]).stdout), "a-up\na-done\n");
    let pod = inspect(&d, &id);
    assert_eq!(pod["containers"][0]["exit_code"], 5);
    assert_eq!(pod["containers"][1]["exit_code"], 7);
    assert!(hyper_tests::processes_mentioning(&id).is_empty());
    let out = d.hyper(&["rm", "kept"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
