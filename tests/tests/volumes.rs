//! Volumes (issue 15): host directories, named volumes, block volumes and
//! tmpfs mounts in real VMs, shared by the backend's real `virtiofsd`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use hyper_tests::{busybox_rootfs, files_under, processes_mentioning, text, Hyperd};

/// A host directory any container user may write, outside the state.
fn shared_dir(d: &Hyperd, name: &str) -> std::path::PathBuf {
    let dir = d.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("shared dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

/// `virtiofsd` processes serving anything under `dir`.
fn virtiofsds_under(dir: &Path) -> Vec<u32> {
    processes_mentioning(&dir.to_string_lossy())
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("virtiofsd"))
        })
        .collect()
}

/// Sockets left anywhere under `dir`.
fn sockets_under(dir: &Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                && !p.ends_with("hyperd.sock")
        })
        .collect()
}

fn inspect(d: &Hyperd, pod: &str) -> serde_json::Value {
    let out = d.hyper(&["inspect", pod]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    v[0].clone()
}

/// Waits (bounded by the VM's own teardown, 120 s at most) until `pod`
/// no longer runs; its record then.
fn wait_exited(d: &Hyperd, pod: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let me = inspect(d, pod);
        if me["running"] == false && me["state"] == "exited" {
            return me;
        }
        assert!(
            Instant::now() < deadline,
            "pod {pod} still runs:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_host_dir_is_read_and_written_with_content_size_mode_and_owner() {
    let d = Hyperd::start();
    let dir = shared_dir(&d, "share");
    std::fs::write(dir.join("from-host"), "written on the host\n").expect("write");
    let v = format!("{}:/data", dir.display());
    let out = d.run(
        &["-v", &v],
        &[
            "sh",
            "-c",
            "cat /data/from-host && printf 12345 > /data/by-root && chmod 640 /data/by-root",
        ],
    );
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "written on the host\n");
    let meta = std::fs::metadata(dir.join("by-root")).expect("the container's file is on the host");
    assert_eq!(std::fs::read(dir.join("by-root")).expect("read"), b"12345");
    assert_eq!(meta.len(), 5);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // A non-root user in the container writes as that uid on the host.
    let out = d.run(
        &["-v", &v, "-u", "1234:2345"],
        &[
            "sh",
            "-c",
            "echo user > /data/by-user && chmod 600 /data/by-user && id -u",
        ],
    );
    d.succeeded(&out);
    assert_eq!(text(&out.stdout).trim(), "1234");
    let meta = std::fs::metadata(dir.join("by-user")).expect("by-user");
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(dir.join("by-user")).expect("read"), b"user\n");

    // -v makes a missing host directory, as Docker does; inspect shows
    // the mount as Docker's Mounts.
    let made = d.dir.path().join("made/by/v");
    let v2 = format!("{}:/made", made.display());
    let id = d.run_detached(&["-v", &v2], &["sh", "-c", "echo hi > /made/f; sleep 600"]);
    let me = inspect(&d, &id);
    let mounts = me["mounts"].as_array().expect("mounts").clone();
    assert_eq!(mounts.len(), 1, "{me}");
    assert_eq!(mounts[0]["type"], "bind");
    assert_eq!(mounts[0]["destination"], "/made");
    assert_eq!(mounts[0]["rw"], true);
    assert!(made.is_dir());
    d.succeeded(&d.hyper(&["rm", "-f", &id]));
    assert!(virtiofsds_under(&d.state_dir).is_empty());
}

#[test]
fn a_read_only_volume_refuses_writes_in_the_container() {
    let d = Hyperd::start();
    let dir = shared_dir(&d, "ro");
    std::fs::write(dir.join("keep"), "kept").expect("write");
    for flag in [
        vec!["-v".to_string(), format!("{}:/data:ro", dir.display())],
        vec![
            "--mount".to_string(),
            format!("type=bind,src={},dst=/data,readonly", dir.display()),
        ],
    ] {
        let opts: Vec<&str> = flag.iter().map(String::as_str).collect();
        let out = d.run(
            &opts,
            &[
                "sh",
                "-c",
                "cat /data/keep; echo; touch /data/new && echo WROTE; echo x > /data/keep && echo WROTE; rm /data/keep && echo WROTE; true",
            ],
        );
        d.succeeded(&out);
        let stdout = text(&out.stdout);
        assert!(stdout.starts_with("kept"), "{stdout}");
        assert!(!stdout.contains("WROTE"), "a write went through: {stdout}");
        assert!(
            text(&out.stderr).contains("Read-only file system"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read(dir.join("keep")).expect("kept"), b"kept");
        assert!(!dir.join("new").exists());
    }
}

#[test]
fn two_pods_share_a_named_volume_that_outlives_them() {
    let d = Hyperd::start();
    let a = d.run_detached(&["-v", "shared1:/data"], &["sleep", "600"]);
    let b = d.run_detached(
        &["-v", "shared1:/other"],
        // Renamed into place: a reader never sees it half-written.
        &[
            "sh",
            "-c",
            "echo from-b > /other/.new && mv /other/.new /other/note; sleep 600",
        ],
    );
    // Both VMs cache what they see for a moment (virtiofsd --cache auto):
    // a sees b's file once its cache expires.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = d.hyper(&["exec", &a, "cat", "/data/note"]);
        if out.status.success() && text(&out.stdout) == "from-b\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod a never saw b's file: {:?} {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // In use: refused, and the data stays.
    let out = d.hyper(&["volume", "rm", "shared1"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("in use") && err.contains(&a), "{err}");
    let out = d.hyper(&["volume", "inspect", "shared1"]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["kind"], "directory");
    assert_eq!(v[0]["used_by"].as_array().map(Vec::len), Some(2));
    let data = Path::new(v[0]["mountpoint"].as_str().expect("mountpoint")).to_path_buf();
    assert!(data.starts_with(&d.state_dir));
    let ls = text(&d.hyper(&["volume", "ls", "-q"]).stdout);
    assert_eq!(ls.trim(), "shared1");

    d.succeeded(&d.hyper(&["rm", "-f", &a, &b]));
    // Outlives its pods.
    assert_eq!(std::fs::read(data.join("note")).expect("note"), b"from-b\n");
    let out = d.run(&["-v", "shared1:/data:ro"], &["cat", "/data/note"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert_eq!(text(&out.stdout), "from-b\n");
    d.succeeded(&d.hyper(&["volume", "rm", "shared1"]));
    assert!(!data.exists());
    let out = d.hyper(&["volume", "inspect", "shared1"]);
    assert!(
        text(&out.stderr).contains("no such volume: shared1"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_container_cannot_leave_its_share() {
    let d = Hyperd::start();
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let marker = "HOST-SECRET-4f1d";
    std::fs::write(outside.join("secret"), marker).expect("secret");
    let dir = shared_dir(&d, "jail");
    // Planted on the host: absolute and relative symlinks out, and one to
    // the host's /etc/shadow.
    std::os::unix::fs::symlink(outside.join("secret"), dir.join("abs")).expect("abs");
    std::os::unix::fs::symlink("../outside/secret", dir.join("rel")).expect("rel");
    std::os::unix::fs::symlink("/etc/shadow", dir.join("shadow")).expect("shadow");
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let root_hash = shadow
        .lines()
        .find(|l| l.starts_with("root:"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .to_string();
    let v = format!("{}:/data", dir.display());
    let out = d.run(
        &["-v", &v],
        &[
            "sh",
            "-c",
            "cat /data/abs /data/rel /data/shadow /data/../outside/secret /data/../../outside/secret; \
             ls -la /data/.. ; \
             ln /data/shadow /data/hl-shadow; ln /data/abs /data/hl-abs; cat /data/hl-shadow /data/hl-abs; \
             cd /data && cd .. && cd .. && cat outside/secret; \
             true",
        ],
    );
    d.succeeded(&out);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains(marker), "read outside the share: {all}");
    if root_hash.len() > 2 {
        assert!(
            !all.contains(&root_hash),
            "read the host's /etc/shadow: {all}"
        );
    }
    // Nothing outside the share changed.
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).expect("secret"),
        marker
    );
    let entries: Vec<_> = std::fs::read_dir(&outside)
        .expect("outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

#[test]
fn a_block_volume_keeps_its_data_across_two_pods_and_serves_one_at_a_time() {
    let d = Hyperd::start();
    let mount = "type=block,src=blockvol,dst=/db,size=64m,mkfs=ext4";
    let out = d.run(
        &["--mount", mount],
        &[
            "sh",
            "-c",
            "echo persisted > /db/row && sync && grep ' /db ' /proc/mounts",
        ],
    );
    d.succeeded(&out);
    assert!(text(&out.stdout).contains("ext4"), "{}", text(&out.stdout));
    let id = d.run_detached(
        &["--mount", "type=block,src=blockvol,dst=/db"],
        &["sleep", "600"],
    );
    let out = d.hyper(&["exec", &id, "cat", "/db/row"]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "persisted\n");
    // A second writer while it runs is refused before any VM starts.
    let out = d.run(&["--mount", "type=block,src=blockvol,dst=/db"], &["true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    d.succeeded(&d.hyper(&["rm", "-f", &id]));
    let out = d.run(
        &["--mount", "type=block,src=blockvol,dst=/db,readonly"],
        &["cat", "/db/row"],
    );
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "persisted\n");
}

#[test]
fn a_tmpfs_mount_is_a_tmpfs_of_its_size() {
    let d = Hyperd::start();
    let out = d.run(
        &["--mount", "type=tmpfs,dst=/scratch,tmpfs-size=8m"],
        &[
            "sh",
            "-c",
            "echo x > /scratch/f && grep ' /scratch ' /proc/mounts && df -k /scratch",
        ],
    );
    d.succeeded(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("tmpfs"), "{stdout}");
    assert!(stdout.contains("8192"), "{stdout}");
}

#[test]
fn killing_virtiofsd_fails_the_pod_and_leaves_nothing_behind() {
    let mut d = Hyperd::start();
    let dir = shared_dir(&d, "victim");
    let v = format!("{}:/data", dir.display());
    let id = d.run_detached(
        &["-v", &v],
        &[
            "sh",
            "-c",
            "while true; do ls /data >/dev/null; sleep 1; done",
        ],
    );
    let pids = virtiofsds_under(&d.state_dir);
    assert!(!pids.is_empty(), "no virtiofsd for {id}:\n{}", d.log_text());
    // One daemon per share, as virtiofsd forks its server.
    let per_pod = pids.len();
    for pid in pids {
        // SAFETY: kill(2) on this test's pod's virtiofsd.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let me = wait_exited(&d, &id);
    let error = me["error"].as_str().unwrap_or_default();
    assert!(error.contains("virtiofsd ended"), "{me}");
    assert!(virtiofsds_under(&d.state_dir).is_empty());
    assert!(
        sockets_under(&d.state_dir.join("pods")).is_empty(),
        "{:?}",
        sockets_under(&d.state_dir)
    );
    d.succeeded(&d.hyper(&["rm", &id]));

    // After a hyperd kill -9 and a takeover: the new hyperd watches the
    // adopted daemons the same way, and removing a pod still takes its
    // virtiofsd and sockets along.
    let first = d.run_detached(&["-v", &v], &["sleep", "600"]);
    let v2 = format!("{}:/data", shared_dir(&d, "victim2").display());
    let second = d.run_detached(&["-v", &v2], &["sleep", "600"]);
    assert_eq!(virtiofsds_under(&d.state_dir).len(), 2 * per_pod);
    d.kill_hard();
    d.restart();
    for id in [&first, &second] {
        let me = inspect(&d, id);
        assert_eq!(me["running"], true, "{me}\n{}", d.log_text());
    }
    let pod_dir = d.state_dir.join("pods").join(&first);
    let pids = virtiofsds_under(&pod_dir);
    assert!(
        !pids.is_empty(),
        "no virtiofsd for {first} after the takeover"
    );
    for pid in pids {
        // SAFETY: kill(2) on this test's pod's virtiofsd.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let me = wait_exited(&d, &first);
    assert!(
        me["error"]
            .as_str()
            .unwrap_or_default()
            .contains("virtiofsd ended"),
        "{me}"
    );
    d.succeeded(&d.hyper(&["rm", "-f", &first, &second]));
    assert!(virtiofsds_under(&d.state_dir).is_empty());
    assert!(sockets_under(&d.state_dir.join("pods")).is_empty());
}

#[test]
fn bad_volume_input_is_refused_clearly_and_leaves_nothing() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let file = d.dir.path().join("a-file");
    std::fs::write(&file, "x").expect("file");
    let missing = d.dir.path().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-v".into(), "rel/dir:/data".into()],
            "relative host path",
        ),
        (
            vec!["-v".into(), "/tmp:data".into()],
            "not an absolute path",
        ),
        (vec!["-v".into(), "/tmp:/".into()], "root cannot be a mount"),
        (vec!["-v".into(), "/tmp:/x/../y".into()], ".."),
        (vec!["-v".into(), "/tmp:/x:rx".into()], "\"rx\""),
        (vec!["-v".into(), "a:/x".into()], "volume name"),
        (
            vec!["--mount".into(), "type=bind,src=/tmp".into()],
            "no destination",
        ),
        (
            vec!["--mount".into(), "type=nfs,src=/tmp,dst=/x".into()],
            "type=nfs",
        ),
        (
            vec![
                "--mount".into(),
                format!("type=bind,src={},dst=/x", missing.display()),
            ],
            "does not exist",
        ),
        (
            vec!["-v".into(), format!("{}:/x", file.display())],
            "not a directory",
        ),
        (
            vec!["--mount".into(), "type=block,src=newblk,dst=/x".into()],
            "needs a size",
        ),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend(flags.iter().map(String::as_str));
        args.extend(["--rootfs", &rootfs, "--", "true"]);
        let out = d.hyper(&args);
        assert_eq!(out.status.code(), Some(125), "{flags:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    assert!(!missing.exists(), "--mount type=bind made its source");
    assert!(d.ps_json(true).is_empty(), "a refused run left a pod");
    let ls = d.hyper(&["volume", "ls", "-q"]);
    d.succeeded(&ls);
    assert_eq!(text(&ls.stdout).trim(), "", "a refused run left a volume");
    for verb in ["inspect", "rm"] {
        let out = d.hyper(&["volume", verb, "nosuchvol"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            text(&out.stderr).contains("no such volume: nosuchvol"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = d.hyper(&["volume", "create", "x"]);
    assert!(
        text(&out.stderr).contains("volume name"),
        "{}",
        text(&out.stderr)
    );
    let out = d.hyper(&["volume", "create", "--kind", "block", "blk2"]);
    assert!(
        text(&out.stderr).contains("needs a size"),
        "{}",
        text(&out.stderr)
    );

    // And the good ones: made, listed, inspected, removed.
    d.succeeded(&d.hyper(&["volume", "create", "dir1"]));
    let out = d.hyper(&[
        "volume", "create", "--kind", "block", "--size", "16m", "--mkfs", "ext4", "blk2",
    ]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout).trim(), "blk2");
    let out = d.hyper(&["volume", "inspect", "blk2"]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["kind"], "block");
    assert_eq!(v[0]["fstype"], "ext4");
    assert_eq!(v[0]["size_bytes"], 16 << 20);
    let disk = std::fs::metadata(v[0]["mountpoint"].as_str().expect("mountpoint")).expect("disk");
    assert_eq!(disk.mode() & 0o777, 0o600);
    let ls = text(&d.hyper(&["volume", "ls"]).stdout);
    assert!(
        ls.contains("blk2") && ls.contains("dir1") && ls.contains("16M"),
        "{ls}"
    );
    d.succeeded(&d.hyper(&["volume", "rm", "dir1", "blk2"]));
    assert_eq!(text(&d.hyper(&["volume", "ls", "-q"]).stdout).trim(), "");
}

#[test]
fn a_pod_file_mounts_host_and_named_volumes_into_its_containers() {
    let d = Hyperd::start();
    let dir = shared_dir(&d, "podshare");
    std::fs::write(dir.join("in"), "from-host\n").expect("write");
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let body = format!(
        r#"
name = "vols"
[[volume]]
name = "site"
host = "{dir}"
[[volume]]
name = "cache"
named = "podcache"
[[container]]
name = "writer"
rootfs = "{rootfs}"
command = ["sh", "-c", "cat /site/in > /cache/.t && mv /cache/.t /cache/copied && echo done > /site/out"]
mounts = [{{ volume = "site", path = "/site" }}, {{ volume = "cache", path = "/cache" }}]
[[container]]
name = "reader"
rootfs = "{rootfs}"
command = ["sh", "-c", "i=0; while [ ! -f /ro/copied ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done; cat /ro/copied; touch /ro/x 2>/dev/null || echo read-only"]
mounts = [{{ volume = "cache", path = "/ro", readonly = true }}]
"#,
        dir = dir.display()
    );
    let file = d.dir.path().join("vols.toml");
    std::fs::write(&file, body).expect("pod file");
    let out = d.hyper(&["pod", "create", "-f", &file.to_string_lossy()]);
    d.succeeded(&out);
    let id = text(&out.stdout).trim().to_string();
    let out = d.hyper(&["wait", &id]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout).trim(), "0", "{}", d.log_text());
    assert_eq!(std::fs::read(dir.join("out")).expect("out"), b"done\n");
    let out = d.hyper(&["logs", &format!("{id}/reader")]);
    assert_eq!(text(&out.stdout), "from-host\nread-only\n");
    let me = inspect(&d, &id);
    let mounts = me["mounts"].as_array().expect("mounts").clone();
    assert_eq!(mounts.len(), 3, "{me}");
    assert!(mounts
        .iter()
        .any(|m| m["container"] == "reader" && m["name"] == "podcache" && m["rw"] == false));
    let out = d.hyper(&["volume", "rm", "podcache"]);
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    d.succeeded(&d.hyper(&["rm", &id]));
    d.succeeded(&d.hyper(&["volume", "rm", "podcache"]));
}

/// `hyper volume ls --json`.
fn volumes(d: &Hyperd) -> Vec<serde_json::Value> {
    let out = d.hyper(&["volume", "ls", "--json"]);
    d.succeeded(&out);
    serde_json::from_slice(&out.stdout).expect("volume ls json")
}

fn anonymous_names(d: &Hyperd) -> Vec<String> {
    volumes(d)
        .into_iter()
        .filter(|v| v["anonymous"] == true)
        .map(|v| v["name"].as_str().expect("name").to_string())
        .collect()
}

/// Waits (bounded: a `--rm` pod's files go when its supervisor ends, 120 s
/// at most) until no pod is listed.
fn wait_no_pods(d: &Hyperd) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let listed = |d: &Hyperd| {
        let out = d.hyper(&["ps", "-a", "--json"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).map_or(1, |v| v.len())
    };
    while listed(d) != 0 {
        assert!(Instant::now() < deadline, "a --rm pod is still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn anonymous_volumes_are_made_listed_and_removed_as_dockers_are() {
    let d = Hyperd::start();
    // `--rm`: the pod's anonymous volume goes with it.
    let out = d.run(
        &["-v", "/anon"],
        &["sh", "-c", "echo hi > /anon/f && cat /anon/f"],
    );
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "hi\n");
    wait_no_pods(&d);
    assert_eq!(
        anonymous_names(&d),
        Vec::<String>::new(),
        "{}",
        d.log_text()
    );

    // Kept by a plain `rm`, listed with a 64-hex name; `-v /path` and
    // `--mount type=volume,dst=` (no src) are both anonymous.
    let id = d.run_detached(
        &["-v", "/keep", "--mount", "type=volume,dst=/keep2"],
        &["sh", "-c", "echo kept > /keep/f; sleep 600"],
    );
    let me = inspect(&d, &id);
    let mounts = me["mounts"].as_array().expect("mounts").clone();
    assert_eq!(mounts.len(), 2, "{me}");
    let mut names = Vec::new();
    for m in &mounts {
        assert_eq!(
            (&m["type"], &m["anonymous"]),
            (&"volume".into(), &true.into()),
            "{m}"
        );
        let name = m["name"].as_str().expect("an anonymous volume has a name");
        assert_eq!(name.len(), 64, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        names.push(name.to_string());
    }
    let mut listed = anonymous_names(&d);
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    let ls = text(&d.hyper(&["volume", "ls"]).stdout);
    assert!(names.iter().all(|n| ls.contains(n.as_str())), "{ls}");
    let used: Vec<_> = volumes(&d)
        .into_iter()
        .filter(|v| v["used_by"][0] == id.as_str())
        .collect();
    assert_eq!(used.len(), 2);
    // In use: `volume rm` refuses it.
    assert_ne!(d.hyper(&["volume", "rm", &names[0]]).status.code(), Some(0));
    d.succeeded(&d.hyper(&["rm", "-f", &id]));
    let mut kept = anonymous_names(&d);
    kept.sort();
    assert_eq!(kept, names, "a plain rm keeps anonymous volumes");

    // `rm -v` removes them (and only this pod's).
    let id2 = d.run_detached(&["-v", "/gone"], &["sleep", "600"]);
    assert_eq!(anonymous_names(&d).len(), 3);
    d.succeeded(&d.hyper(&["rm", "-f", "-v", &id2]));
    let mut left = anonymous_names(&d);
    left.sort();
    assert_eq!(left, names, "rm -v removes the pod's own anonymous volume");
    for n in &names {
        d.succeeded(&d.hyper(&["volume", "rm", n]));
    }
    assert_eq!(text(&d.hyper(&["volume", "ls", "-q"]).stdout).trim(), "");
    let vols = d.state_dir.join("volumes");
    assert_eq!(std::fs::read_dir(&vols).map_or(0, Iterator::count), 0);

    // --mount is CSV, as Docker's: a quoted field may hold a comma.
    let dir = shared_dir(&d, "a,b");
    std::fs::write(dir.join("f"), "comma\n").expect("write");
    let mount = format!("type=bind,\"src={}\",dst=/data,readonly", dir.display());
    let out = d.run(&["--mount", &mount], &["cat", "/data/f"]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "comma\n");
    // Unquoted, the comma splits the field: refused naming the part.
    let bad = format!("type=bind,src={},dst=/data", dir.display());
    let out = d.run(&["--mount", &bad], &["true"]);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("--mount") && err.contains("unknown key"),
        "{err}"
    );
    let out = d.run(&["--mount", "type=bind,\"src=/x,dst=/data"], &["true"]);
    assert!(
        text(&out.stderr).contains("never closed"),
        "{}",
        text(&out.stderr)
    );
    // `-v /path:ro` is refused, as Docker refuses it.
    let out = d.run(&["-v", "/anon:ro"], &["true"]);
    assert!(
        text(&out.stderr).contains("anonymous"),
        "{}",
        text(&out.stderr)
    );
    wait_no_pods(&d);
    assert_eq!(text(&d.hyper(&["volume", "ls", "-q"]).stdout).trim(), "");
}

/// The seeded image with /app to copy and symlinks aimed at host paths.
fn copyup_image() -> String {
    format!(
        "{}/hyper/evil-copyup",
        hyper_tests::registry_var("HYPER_TEST_REGISTRY")
    )
}

fn mountpoint(d: &Hyperd, name: &str) -> std::path::PathBuf {
    let out = d.hyper(&["volume", "inspect", name]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    v[0]["mountpoint"].as_str().expect("mountpoint").into()
}

#[test]
fn a_new_volume_gets_the_images_content_once_and_not_with_nocopy() {
    // The test registry speaks plain HTTP.
    let d = Hyperd::start_with(&hyper_tests::Setup {
        extra_toml: format!(
            "[images]\ninsecure_registries = [\"{}\"]\n",
            hyper_tests::registry_var("HYPER_TEST_REGISTRY")
        ),
        ..hyper_tests::Setup::default()
    });
    let image = copyup_image();
    // Host paths the image's symlinks aim at: never read by the copy.
    let secret = Path::new("/tmp/hyper-copyup-host-secret");
    std::fs::write(secret, "host secret\n").expect("secret");
    let host_dir = Path::new("/tmp/hyper-copyup-host-dir");
    std::fs::create_dir_all(host_dir).expect("host dir");
    std::fs::write(host_dir.join("host-file"), "host file\n").expect("host file");

    let out = d.hyper(&[
        "run",
        "--rm",
        "-v",
        "cu1:/app",
        &image,
        "sh",
        "-c",
        "cat /app/conf && stat -c '%a %u:%g' /app/conf /app/sub /app && readlink /app/leak \
         && echo added > /app/added && rm /app/sub/deep",
    ]);
    d.succeeded(&out);
    assert_eq!(
        text(&out.stdout),
        "image conf\n640 1234:2345\n710 0:0\n750 0:0\n/tmp/hyper-copyup-host-secret\n"
    );
    // On the host: content, modes, owner; links copied as links.
    let data = mountpoint(&d, "cu1");
    let conf = std::fs::symlink_metadata(data.join("conf")).expect("conf");
    assert_eq!(
        (conf.mode() & 0o7777, conf.uid(), conf.gid()),
        (0o640, 1234, 2345)
    );
    for link in ["leak", "esc", "rel"] {
        let m = std::fs::symlink_metadata(data.join(link)).expect(link);
        assert!(m.file_type().is_symlink(), "{link} is not a symlink");
    }
    let leaked: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
                && std::fs::read(p).is_ok_and(|c| c == b"host secret\n" || c == b"host file\n")
        })
        .collect();
    assert!(leaked.is_empty(), "host files copied: {leaked:?}");

    // Second use: not copied again (the volume is not empty).
    let out = d.hyper(&[
        "run",
        "--rm",
        "-v",
        "cu1:/app",
        &image,
        "sh",
        "-c",
        "cat /app/added; ls /app/sub",
    ]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "added\n");

    // nocopy, both spellings: the new volume stays empty.
    let out = d.hyper(&[
        "run",
        "--rm",
        "-v",
        "cu2:/app:nocopy",
        &image,
        "ls",
        "-A",
        "/app",
    ]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "");
    let out = d.hyper(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,src=cu3,dst=/app,volume-nocopy",
        &image,
        "ls",
        "-A",
        "/app",
    ]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "");
    // An anonymous volume is filled too (and goes with --rm).
    let out = d.hyper(&["run", "--rm", "-v", "/app", &image, "cat", "/app/sub/deep"]);
    d.succeeded(&out);
    assert_eq!(text(&out.stdout), "deep\n");

    // /hostdir is a symlink to a host directory's path: resolved inside
    // the image (where it does not exist), so nothing is copied, whatever
    // the guest then makes of the mount.
    let _ = d.hyper(&["run", "--rm", "-v", "cu4:/hostdir", &image, "true"]);
    let cu4 = mountpoint(&d, "cu4");
    assert_eq!(
        std::fs::read_dir(&cu4).expect("cu4").count(),
        0,
        "copied from the host"
    );
    wait_no_pods(&d);
    assert!(anonymous_names(&d).is_empty());
    d.succeeded(&d.hyper(&["volume", "rm", "cu1", "cu2", "cu3", "cu4"]));
    let _ = std::fs::remove_file(secret);
    let _ = std::fs::remove_dir_all(host_dir);
}
