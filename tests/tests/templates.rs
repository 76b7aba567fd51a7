//! Pods started from templates (issue 16) end to end: real hyperd, real
//! backend, real VMs saved and restored.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper_tests::{files_under, text, vms_of, Hyperd, Setup};

/// The published templates under hyperd's state dir, and the partial
/// builds (`.building-*`) left there.
fn templates(state_dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut done = Vec::new();
    let mut partial = Vec::new();
    for e in std::fs::read_dir(state_dir.join("templates"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(".building-") {
            partial.push(e.path());
        } else {
            done.push(e.path());
        }
    }
    done.sort();
    (done, partial)
}

/// Namespaces of template builds (`hyper-tmpl-*`) still there.
fn template_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("hyper-tmpl-"))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn output_exit_code_and_stdin_of_a_pod_started_from_a_template() {
    let d = Hyperd::start();
    let out = d.run(&["--start", "template"], &["echo", "hello from a clone"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert_eq!(text(&out.stdout), "hello from a clone\n");
    let out = d.run(&["--start", "template"], &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let input = vec![b'x'; 100_000];
    let out = d.run_with_stdin(&["--start", "template", "-i"], &["wc", "-c"], Some(&input));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "100000");
    // One template served all three, and the record said so.
    let (done, partial) = templates(&d.state_dir);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(partial.is_empty(), "{partial:?}");
    let id = d.run_detached(&["--start", "template"], &["sleep", "600"]);
    let pod = d.hyper(&["inspect", &id]);
    d.succeeded(&pod);
    let pod: serde_json::Value = serde_json::from_slice(&pod.stdout).unwrap();
    assert_eq!(pod[0]["started"]["mode"], "template", "{pod}");
    // A restarted hyperd takes a restored pod over.
    let mut d = d;
    d.restart();
    let out = d.hyper(&["exec", &id, "echo", "still here"]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "still here\n");
    let ls = d.hyper(&["template", "ls", "--json"]);
    d.succeeded(&ls);
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls}");
    d.succeeded(&d.hyper(&["rm", "-f", &id]));
}

#[test]
fn two_clones_differ_in_rng_and_boot_id_and_keep_the_host_clock() {
    let d = Hyperd::start();
    let script = "cat /proc/sys/kernel/random/uuid /proc/sys/kernel/random/boot_id; \
                  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let before = now();
        let out = d.run(&["--start", "template"], &["sh", "-c", script]);
        let after = now();
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}\nlog:\n{}",
            text(&out.stderr),
            d.log_text()
        );
        let o = text(&out.stdout);
        let lines: Vec<String> = o.lines().map(String::from).collect();
        assert_eq!(lines.len(), 4, "{o}");
        let date: u64 = lines[3].parse().expect("date +%s");
        // The guest's clock is the host's, within a second of the run.
        assert!(
            date + 1 >= before && date <= after + 1,
            "guest {date}, host {before}..{after}"
        );
        seen.push(lines);
    }
    assert_ne!(seen[0][0], seen[1][0], "random uuid");
    assert_ne!(seen[0][1], seen[1][1], "boot_id");
    assert_ne!(seen[0][2], seen[1][2], "/dev/urandom");
}

/// The largest file of a template (its memory or state), truncated.
fn damage(template: &Path) -> PathBuf {
    let biggest = files_under(template)
        .into_iter()
        .filter(|f| !f.ends_with("meta.json"))
        .max_by_key(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .expect("a template file");
    let len = std::fs::metadata(&biggest).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&biggest)
        .unwrap();
    f.set_len(len / 2).unwrap();
    biggest
}

#[test]
fn a_truncated_template_is_refused_auto_starts_cold_and_template_fails_leaving_nothing() {
    let d = Hyperd::start();
    let out = d.run(&["--start", "auto"], &["true"]);
    d.succeeded(&out);
    let (done, _) = templates(&d.state_dir);
    assert_eq!(done.len(), 1);
    damage(&done[0]);
    // auto: refused, removed, the pod cold-starts and says why.
    let id = d.run_detached(&["--start", "auto"], &["sleep", "600"]);
    let pod = d.hyper(&["inspect", &id]);
    d.succeeded(&pod);
    let pod: serde_json::Value = serde_json::from_slice(&pod.stdout).unwrap();
    assert_eq!(pod[0]["started"]["mode"], "cold", "{pod}");
    let reason = pod[0]["started"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("refused"), "{reason}");
    assert!(!done[0].exists(), "the refused template is removed");
    d.succeeded(&d.hyper(&["rm", "-f", &id]));

    // The next pod rebuilds it; truncated again, template-only fails.
    d.succeeded(&d.run(&["--start", "auto"], &["true"]));
    let (done, _) = templates(&d.state_dir);
    assert_eq!(done.len(), 1);
    damage(&done[0]);
    let out = d.run(&["--start", "template"], &["true"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("template"), "{err}");
    assert!(err.contains("refused"), "{err}");
    // Nothing is left: no VM, no template namespace, no partial build,
    // no pod run directory.
    assert_eq!(vms_of(&d.state_dir), Vec::<String>::new());
    assert_eq!(template_netns(), Vec::<String>::new());
    let (done, partial) = templates(&d.state_dir);
    assert!(
        done.is_empty() && partial.is_empty(),
        "{done:?} {partial:?}"
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(d.state_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("vm"))
        .filter(|p| p.exists())
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
}

#[test]
fn a_template_is_rebuilt_when_the_payload_changes() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("hyperstart.img");
    let setup = Setup::default();
    std::fs::copy(&setup.initrd, &initrd).unwrap();
    let d = Hyperd::start_with(&Setup {
        initrd: initrd.clone(),
        ..Setup::default()
    });
    d.succeeded(&d.run(&["--start", "template"], &["true"]));
    let (first, _) = templates(&d.state_dir);
    assert_eq!(first.len(), 1);
    // Zeros after an initramfs archive are padding the kernel skips: the
    // payload still boots, and its hash changed.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&initrd)
        .unwrap()
        .write_all(&[0u8; 512])
        .unwrap();
    let id = d.run_detached(&["--start", "template"], &["sleep", "600"]);
    let pod = d.hyper(&["inspect", &id]);
    d.succeeded(&pod);
    let pod: serde_json::Value = serde_json::from_slice(&pod.stdout).unwrap();
    let used = pod[0]["started"]["template"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (now_there, _) = templates(&d.state_dir);
    assert_eq!(now_there.len(), 2, "{now_there:?}");
    assert!(
        !first[0].ends_with(&used),
        "the template of the old payload was used"
    );
    d.succeeded(&d.hyper(&["rm", "-f", &id]));
}

#[test]
fn a_hyperd_killed_during_a_build_leaves_nothing_the_next_one_uses() {
    let mut d = Hyperd::start();
    let mut run = d.hyper_spawn(&[
        "run",
        "--rm",
        "--start",
        "template",
        "--rootfs",
        &hyper_tests::busybox_rootfs().to_string_lossy(),
        "--",
        "true",
    ]);
    // Wait for the build to begin, then crash hyperd in the middle of it.
    let mut building = false;
    for _ in 0..6000 {
        if !templates(&d.state_dir).1.is_empty() {
            building = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(building, "no build started\n{}", d.log_text());
    d.kill_hard();
    let _ = run.wait();
    // The template VM dies with its hyperd or is left to the test's
    // cleanup; the next hyperd removes the partial build.
    d.restart();
    let (done, partial) = templates(&d.state_dir);
    assert!(partial.is_empty(), "{partial:?}");
    assert!(
        done.is_empty(),
        "a half-built template was published: {done:?}"
    );
    assert_eq!(template_netns(), Vec::<String>::new());
    // And builds a good one.
    let out = d.run(&["--start", "template"], &["echo", "ok"]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "ok\n");
}
