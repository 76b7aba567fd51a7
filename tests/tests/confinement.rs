//! Containers stay in their box inside the guest (issue 13, C1 and M6):
//! each attack a root process in an ordinary container tried is reproduced
//! and must fail, and the same attack from a `--privileged` container must
//! succeed (so each check can fail). Real hyperd, real backend, real VMs.

use std::path::Path;
use std::time::{Duration, Instant};

use hyper_tests::{backend, busybox_rootfs, text, Hyperd};

const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// The `Key:\tvalue` lines of /proc/self/status.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// Reads every block device of the guest through a node the container
/// makes itself (`mknod`, allowed as in Docker), looking for `needle`:
/// prints `READ <dev>` for a device it could read and `FOUND` if the needle
/// was on one.
const READ_DISKS: &str = r#"
for d in /sys/class/block/*; do
  n=$(basename $d); mm=$(cat $d/dev); maj=${mm%:*}; min=${mm#*:}
  rm -f /tmp/blk; mknod /tmp/blk b $maj $min || continue
  if dd if=/tmp/blk of=/tmp/img bs=1M count=64 2>/dev/null; then
    echo READ $n
    grep -q "$NEEDLE" /tmp/img && echo FOUND
  fi
done
echo done"#;

/// Opens the guest's virtio-serial ports (hyperstart's channel among them)
/// through nodes the container makes: prints `OPENED <port>` on success.
const OPEN_PORTS: &str = r#"
for p in /sys/class/virtio-ports/*; do
  mm=$(cat $p/dev); rm -f /tmp/port
  mknod /tmp/port c ${mm%:*} ${mm#*:} || continue
  if echo x 2>/dev/null > /tmp/port; then echo OPENED $(basename $p); fi
done
echo done"#;

/// The attacks of issue 13 C1, from a shell running as root in the
/// container; each prints `BROKE <what>` if it worked.
const ATTACKS: &str = r#"
mkdir -p /tmp/s
mount -t sysfs sysfs /tmp/s 2>/dev/null && echo BROKE mount-sysfs
mount -t devtmpfs devtmpfs /tmp/s 2>/dev/null && echo BROKE mount-devtmpfs
mount -t tmpfs tmpfs /tmp/s 2>/dev/null && echo BROKE mount-tmpfs
echo pwned 2>/dev/null > /proc/sys/kernel/hostname && echo BROKE proc-sys
echo 1 2>/dev/null > /proc/sys/vm/drop_caches && echo BROKE drop-caches
echo h 2>/dev/null > /proc/sysrq-trigger && echo BROKE sysrq
[ "$(head -c 64 /proc/kcore 2>/dev/null | wc -c)" -gt 0 ] && echo BROKE kcore
[ "$(cat /proc/keys 2>/dev/null | wc -c)" -gt 0 ] && echo BROKE keys
for dev in /sys/bus/virtio/drivers/virtio_console/virtio*; do
  [ -e "$dev" ] || continue
  echo -n $(basename $dev) 2>/dev/null > /sys/bus/virtio/drivers/virtio_console/unbind && echo BROKE unbind
done
unshare -U true 2>/dev/null && echo BROKE unshare-user
unshare -m true 2>/dev/null && echo BROKE unshare-mount
echo done"#;

#[test]
fn an_ordinary_container_is_confined_and_a_privileged_one_is_not() {
    let d = Hyperd::start();
    let pod = d.run_detached(&[], &["sleep", "3600"]);

    // Docker's capability set, no_new_privs and a seccomp filter, for the
    // first process and for execs alike.
    for args in [
        vec![pod.as_str(), "cat", "/proc/1/status"],
        vec![pod.as_str(), "cat", "/proc/self/status"],
    ] {
        let status = d.exec_ok(&args);
        assert_eq!(
            status_field(&status, "CapEff"),
            DOCKER_DEFAULT_CAPS,
            "{args:?}"
        );
        assert_eq!(status_field(&status, "CapPrm"), DOCKER_DEFAULT_CAPS);
        assert_eq!(status_field(&status, "CapBnd"), DOCKER_DEFAULT_CAPS);
        assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        assert_eq!(status_field(&status, "Seccomp"), "2");
    }
    // A user other than root has no effective capability (as with runc).
    let status = d.exec_ok(&["-u", "1000", &pod, "cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");

    let out = d.exec_ok(&[&pod, "sh", "-c", ATTACKS]);
    assert!(out.ends_with("done\n"), "{out}");
    assert!(!out.contains("BROKE"), "an attack worked:\n{out}");

    // The rootfs disk (and any other) cannot be read through a node the
    // container makes, nor the channel's port opened.
    let out = d.exec_ok(&[
        &pod,
        "sh",
        "-c",
        &READ_DISKS.replace("$NEEDLE", "hypercontainer"),
    ]);
    assert!(out.ends_with("done\n"), "{out}");
    assert!(!out.contains("READ"), "a disk was readable:\n{out}");
    let out = d.exec_ok(&[&pod, "sh", "-c", OPEN_PORTS]);
    assert!(!out.contains("OPENED"), "a port could be opened:\n{out}");

    // hyperstart still answers: nothing above hurt the channel.
    assert_eq!(d.exec_ok(&[&pod, "echo", "still-here"]), "still-here\n");

    // `exec --privileged` adds every capability and drops the filter.
    let status = d.exec_ok(&["--privileged", &pod, "cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "CapEff"), "000001ffffffffff");
    assert_eq!(status_field(&status, "Seccomp"), "0");

    // The same attacks from a privileged container work: the checks above
    // can fail.
    let out = d.run(&["--privileged"], &["sh", "-c", "cat /proc/self/status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert_eq!(status_field(&status, "CapEff"), "000001ffffffffff");
    assert_eq!(status_field(&status, "Seccomp"), "0");
    assert_eq!(status_field(&status, "NoNewPrivs"), "0");
    let script = format!(
        "{}\n{}",
        READ_DISKS.replace("$NEEDLE", "hypercontainer test image"),
        "mount -t tmpfs tmpfs /tmp/s 2>/dev/null || mkdir -p /tmp/s; \
         mount -t tmpfs tmpfs /tmp/s && echo MOUNTED; \
         echo pwned > /proc/sys/kernel/hostname && echo WROTE"
    );
    let out = d.run(&["--privileged"], &["sh", "-c", &script]);
    let out = text(&out.stdout);
    assert!(out.contains("READ") && out.contains("FOUND"), "{out}");
    assert!(out.contains("MOUNTED") && out.contains("WROTE"), "{out}");
}

#[test]
fn cap_add_cap_drop_and_seccomp_unconfined() {
    let d = Hyperd::start();
    let out = d.run(
        &["--cap-drop", "ALL", "--security-opt", "seccomp=unconfined"],
        &["cat", "/proc/self/status"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    let status = text(&out.stdout);
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&status, "Seccomp"), "0");

    // SYS_ADMIN added: the bit is there and the profile lets mount through.
    let out = d.run(
        &["--cap-add", "SYS_ADMIN"],
        &[
            "sh",
            "-c",
            "grep CapEff /proc/self/status; mkdir -p /m; mount -t tmpfs t /m && echo MOUNTED",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("00000000a82425fb"), "{stdout}");
    assert!(stdout.contains("MOUNTED"), "{stdout}");

    // Bad names are refused up front, naming the bad one and the good ones.
    let out = d.run(&["--cap-add", "SYS_GOD"], &["true"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("SYS_GOD") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    let out = d.run(&["--security-opt", "apparmor=unconfined"], &["true"]);
    assert!(
        text(&out.stderr).contains("not supported"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_docker_format_seccomp_profile_is_applied() {
    let d = Hyperd::start();
    let profile = d.dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13}]}"#,
    )
    .expect("write the profile");
    let opt = format!("seccomp={}", profile.display());
    let out = d.run(
        &["--security-opt", &opt],
        &[
            "sh",
            "-c",
            "grep Seccomp: /proc/self/status; mkdir /x || echo REFUSED",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("REFUSED"), "{stdout}");
    assert!(
        text(&out.stderr).contains("ermission denied"),
        "EACCES (13) expected: {}",
        text(&out.stderr)
    );
}

/// M6: container A of a pod cannot read container B's root-only file by
/// reading B's rootfs disk through a node it makes.
#[test]
fn a_container_cannot_read_another_containers_disk() {
    let d = Hyperd::start();
    // B's image: the busybox rootfs plus a root-only secret.
    let b_root = d.dir.path().join("rootfs-b");
    copy_tree(&busybox_rootfs(), &b_root);
    let secret = b_root.join("root/secret");
    std::fs::write(&secret, "s3cret-of-container-b\n").expect("write the secret");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the secret");
    }
    let a_script = READ_DISKS.replace("$NEEDLE", "s3cret-of-container-b");
    let file = d.dir.path().join("pod.toml");
    let body = format!(
        r#"
[[container]]
name = "a"
rootfs = "{a}"
command = ["sh", "-c", {script}]

[[container]]
name = "b"
rootfs = "{b}"
command = ["sh", "-c", "sleep 3600"]
"#,
        a = busybox_rootfs().display(),
        b = b_root.display(),
        script = toml_string(&a_script),
    );
    std::fs::write(&file, body).expect("write the pod file");
    let out = d.hyper(&[
        "pod",
        "create",
        "--name",
        "m6",
        "-f",
        &file.to_string_lossy(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    let logs = d.wait_for_log("m6/a", "done");
    assert!(!logs.contains("READ"), "A read a disk:\n{logs}");
    assert!(!logs.contains("FOUND"), "A found B's secret:\n{logs}");
    // B's own root can read it (the file is there to be found).
    let out = d.exec_ok(&["m6/b", "cat", "/root/secret"]);
    assert_eq!(out, "s3cret-of-container-b\n");
}

/// C1's last line: a channel that goes away ends the pod. A privileged
/// container (which may) unbinds the virtio console driver under
/// hyperstart's port; hyperstart powers the VM off instead of leaving the
/// port to be re-opened by someone else.
#[test]
fn unbinding_the_channel_ends_the_pod() {
    if backend() == "xen" {
        eprintln!("skipped: the Xen channel is not a virtio port");
        return;
    }
    let d = Hyperd::start();
    let pod = d.run_detached(
        &["--privileged"],
        &[
            "sh",
            "-c",
            "sleep 2; for v in /sys/bus/virtio/drivers/virtio_console/virtio*; do \
             echo -n $(basename $v) > /sys/bus/virtio/drivers/virtio_console/unbind; done; \
             sleep 3600",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pods = d.ps_json(true);
        let state = pods
            .iter()
            .find(|p| p["id"] == pod.as_str())
            .map(|p| p["state"].as_str().unwrap_or("").to_string());
        if state.as_deref() == Some("exited") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pod still runs without its channel: {pods:?}\nlog:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = d.state_dir.join("pods").join(&pod).join("console.log");
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        console.contains("went away") || console.contains("fatal"),
        "hyperstart did not say why it stopped:\n{console}"
    );
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a JSON string is a TOML basic string")
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}
