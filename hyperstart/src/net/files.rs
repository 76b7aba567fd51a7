//! `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` for every container,
//! the way Docker does it: hyperstart writes each file once per pod, into a
//! small tmpfs of its own, and bind-mounts it over the container's path
//! before the container starts. That works whether or not the image has the
//! files, and stays in place if the container's root is later made
//! read-only. The binds are writable, as in Docker and Kubernetes (programs
//! append to /etc/hosts); the tmpfs's size limit keeps a container from
//! filling the guest's /run through them, and the containers writing are
//! those of one pod, which share the network anyway.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::Plan;
use crate::sys::{Sys, SysError, SysResult};

/// The files, by their name in the pod directory and in the container.
pub const FILES: [(&str, &str); 3] = [
    ("resolv.conf", "etc/resolv.conf"),
    ("hosts", "etc/hosts"),
    ("hostname", "etc/hostname"),
];

/// The pod directory's tmpfs: the three files plus what containers append.
const POD_DIR_SIZE: &str = "size=1m";

/// Where the pod's files live in hyperstart's mount namespace: beside the
/// container directories, under a name no container id can take (ids never
/// start with a dot).
pub fn pod_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(".pod")
}

pub fn resolv_conf(plan: &Plan) -> String {
    let mut out = String::new();
    for ns in &plan.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !plan.search.is_empty() {
        out.push_str(&format!("search {}\n", plan.search.join(" ")));
    }
    if !plan.options.is_empty() {
        out.push_str(&format!("options {}\n", plan.options.join(" ")));
    }
    out
}

/// Docker's /etc/hosts: localhost (IPv4 and IPv6), the IPv6 names, the
/// pod's hostname on its first address (no line without an address, as
/// with `--network none`), then the extra entries (`--add-host`).
pub fn hosts(plan: &Plan) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if let (Some(addr), false) = (plan.first_address(), plan.hostname.is_empty()) {
        out.push_str(&format!("{addr}\t{}\n", plan.hostname));
    }
    for (addr, names) in &plan.hosts {
        out.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    out
}

pub fn hostname(plan: &Plan) -> String {
    if plan.hostname.is_empty() {
        String::new()
    } else {
        format!("{}\n", plan.hostname)
    }
}

/// Mounts the pod directory's tmpfs (no devices, setuid or exec: it only
/// holds three text files).
pub fn mount_pod_dir(sys: &mut dyn Sys, dir: &Path) -> SysResult {
    sys.mkdir_all(dir, 0o755)?;
    if let Err(e) = sys.mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("mode=0755,{POD_DIR_SIZE}")),
    ) {
        let _ = sys.remove_dir(dir);
        return Err(e);
    }
    Ok(())
}

/// Writes the three files into `dir` (world-readable, as in an image).
pub fn write_files(dir: &Path, plan: &Plan) -> std::io::Result<()> {
    let contents = [resolv_conf(plan), hosts(plan), hostname(plan)];
    for ((name, _), text) in FILES.iter().zip(contents) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(name))?;
        f.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Binds the pod's files over the container's `/etc/…` under `root` before
/// anything runs in it. The image is untrusted: `/etc` must be a real
/// directory (a symlink would aim the bind, made in hyperstart's
/// namespace, outside the container), and whatever the image has at a
/// file's path (a symlink such as systemd's resolv.conf, a device) is
/// replaced by an empty regular file in the container's writable layer to
/// bind onto. The caller unmounts the root on failure, which takes the
/// binds along.
pub fn bind_into(sys: &mut dyn Sys, pod_dir: &Path, root: &Path) -> SysResult {
    let etc = root.join("etc");
    match sys.kind(&etc) {
        Some(true) => {}
        Some(false) => {
            // A symlink or a file: refuse rather than follow or replace
            // the image's /etc.
            return Err(SysError::new(
                "bind the pod's network files: the image's /etc is not a directory",
                etc.display(),
                Errno::ENOTDIR,
            ));
        }
        None => sys.mkdir_all(&etc, 0o755)?,
    }
    for (name, path) in FILES {
        let target = root.join(path);
        match sys.kind(&target) {
            Some(true) => {
                return Err(SysError::new(
                    "bind the pod's network files: the image has a directory at",
                    target.display(),
                    Errno::EISDIR,
                ))
            }
            Some(false) => {
                sys.remove_file(&target)?;
                sys.create_file(&target, 0o644)?;
            }
            None => sys.create_file(&target, 0o644)?,
        }
        let source = pod_dir.join(name);
        sys.mount(
            Some(&source.to_string_lossy()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tests::spec;
    use crate::net::validate;
    use crate::sys::fake::RecordingSys;

    #[test]
    fn resolv_conf_hosts_and_hostname_read_like_dockers() {
        let plan = validate(&spec(), "web").unwrap();
        assert_eq!(
            resolv_conf(&plan),
            "nameserver 10.88.0.1\n\
             nameserver 2001:4860:4860::8888\n\
             search corp.example\n\
             options ndots:2 edns0\n"
        );
        assert_eq!(
            hosts(&plan),
            "127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             ff00::0\tip6-mcastprefix\n\
             ff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n\
             10.88.0.5\tweb\n\
             192.168.1.9\tdb db.local\n"
        );
        assert_eq!(hostname(&plan), "web\n");
    }

    #[test]
    fn network_none_still_gets_localhost_and_its_dns() {
        let mut s = hyper_protocol::NetworkSpec::default();
        s.dns.nameservers = vec!["8.8.8.8".into()];
        let plan = validate(&s, "web").unwrap();
        let h = hosts(&plan);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost"));
        assert!(!h.contains("web"), "{h}");
        assert_eq!(resolv_conf(&plan), "nameserver 8.8.8.8\n");
        assert_eq!(hostname(&plan), "web\n");
        let anonymous = validate(&hyper_protocol::NetworkSpec::default(), "").unwrap();
        assert_eq!(
            (resolv_conf(&anonymous), hostname(&anonymous)),
            (String::new(), String::new())
        );
    }

    #[test]
    fn files_are_written_world_readable_and_rewritten_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plan = validate(&spec(), "web").unwrap();
        std::fs::write(dir.path().join("hosts"), "x".repeat(10_000)).unwrap();
        write_files(dir.path(), &plan).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            hosts(&plan)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "web\n"
        );
        let mode = std::fs::metadata(dir.path().join("resolv.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // A symlink planted in the directory is not followed.
        let other = tempfile::tempdir().unwrap();
        std::fs::remove_file(dir.path().join("hostname")).unwrap();
        std::os::unix::fs::symlink(other.path().join("t"), dir.path().join("hostname")).unwrap();
        assert!(write_files(dir.path(), &plan).is_err());
        assert!(!other.path().join("t").exists());
    }

    #[test]
    fn the_pod_directory_is_a_small_tmpfs() {
        let mut sys = RecordingSys::new();
        let dir = pod_dir(Path::new("/run/hyper/c"));
        mount_pod_dir(&mut sys, &dir).unwrap();
        assert_eq!(
            sys.calls,
            [
                "mkdir /run/hyper/c/.pod 755",
                "mount tmpfs /run/hyper/c/.pod tmpfs MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) mode=0755,size=1m",
            ]
        );
        let mut sys = RecordingSys::failing("mount tmpfs", Errno::ENOMEM);
        assert!(mount_pod_dir(&mut sys, &dir).is_err());
        assert_eq!(sys.calls.last().unwrap(), "rmdir /run/hyper/c/.pod");
    }

    #[test]
    fn files_are_bound_over_whatever_the_image_has() {
        // The image has /etc, a resolv.conf (say a symlink: it is replaced)
        // and no hosts or hostname.
        let mut sys = RecordingSys::new();
        sys.kinds.push(("/r/etc".into(), true));
        sys.kinds.push(("/r/etc/resolv.conf".into(), false));
        bind_into(&mut sys, Path::new("/p"), Path::new("/r")).unwrap();
        assert_eq!(
            sys.calls,
            [
                "unlink /r/etc/resolv.conf",
                "create /r/etc/resolv.conf 644",
                "mount /p/resolv.conf /r/etc/resolv.conf - MsFlags(MS_BIND) -",
                "create /r/etc/hosts 644",
                "mount /p/hosts /r/etc/hosts - MsFlags(MS_BIND) -",
                "create /r/etc/hostname 644",
                "mount /p/hostname /r/etc/hostname - MsFlags(MS_BIND) -",
            ]
        );
        // An image without /etc (scratch) gets one.
        let mut sys = RecordingSys::new();
        bind_into(&mut sys, Path::new("/p"), Path::new("/r")).unwrap();
        assert_eq!(sys.calls[0], "mkdir /r/etc 755");
        assert_eq!(sys.calls.len(), 7);
    }

    #[test]
    fn an_etc_that_is_not_a_directory_is_refused_before_any_bind() {
        let mut sys = RecordingSys::new();
        sys.kinds.push(("/r/etc".into(), false));
        let e = bind_into(&mut sys, Path::new("/p"), Path::new("/r")).unwrap_err();
        assert_eq!(e.errno, Errno::ENOTDIR);
        assert!(e.to_string().contains("/etc is not a directory"), "{e}");
        assert!(sys.calls.is_empty());

        let mut sys = RecordingSys::new();
        sys.kinds.push(("/r/etc".into(), true));
        sys.kinds.push(("/r/etc/hosts".into(), true));
        let e = bind_into(&mut sys, Path::new("/p"), Path::new("/r")).unwrap_err();
        assert_eq!(e.errno, Errno::EISDIR);
        assert!(!sys.calls.iter().any(|c| c.contains("/r/etc/hosts")));
    }
}
