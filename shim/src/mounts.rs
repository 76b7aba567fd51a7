//! The spec's mounts, as far as they reach a VM: directories bound from the
//! host become shared host volumes, tmpfs mounts tmpfs volumes, CRI's
//! `/etc/resolv.conf` the pod's DNS settings. What the guest makes itself
//! (`/proc`, `/dev`, `/sys`, …) is skipped; anything else is refused with
//! a clear error rather than silently dropped.

use std::io::Read;
use std::path::Path;

use hyper_volumes::{MountKind, VolumeRequest};

use crate::bundle::Mount;

/// Largest resolv.conf read.
const MAX_RESOLV_BYTES: u64 = 64 * 1024;

/// Mount points the guest provides for every container.
const GUEST_MADE: &[&str] = &[
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/mqueue",
    "/dev/shm",
    "/sys",
    "/sys/fs/cgroup",
];
/// Filesystem types the guest provides.
const GUEST_TYPES: &[&str] = &["proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"];
/// Small files CRI binds that the guest writes itself from the pod's
/// settings (hostname, addresses) or that have no use in a VM yet.
const GUEST_FILES: &[&str] = &["/etc/hosts", "/etc/hostname", "/dev/termination-log"];

/// DNS settings from a resolv.conf.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Mapped {
    pub volumes: Vec<VolumeRequest>,
    pub dns: Option<Dns>,
    /// Destinations left to the guest, for the log.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("spec mount {destination} (type {kind:?}, source {source_path:?}): {message}")]
pub struct MountError {
    pub destination: String,
    pub kind: String,
    pub source_path: String,
    pub message: String,
}

fn is_bind(m: &Mount) -> bool {
    m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Maps the spec's mounts; the first that cannot reach the guest fails it.
pub fn map(mounts: &[Mount]) -> Result<Mapped, MountError> {
    let mut out = Mapped::default();
    for m in mounts {
        let err = |message: String| MountError {
            destination: m.destination.clone(),
            kind: m.kind.clone(),
            source_path: m.source.clone(),
            message,
        };
        let dest = m.destination.trim_end_matches('/');
        let readonly = m.options.iter().any(|o| o == "ro");
        if GUEST_MADE.contains(&dest) || GUEST_TYPES.contains(&m.kind.as_str()) {
            out.skipped.push(m.destination.clone());
        } else if dest == "/etc/resolv.conf" && is_bind(m) {
            out.dns = Some(read_resolv(Path::new(&m.source)).map_err(err)?);
        } else if GUEST_FILES.contains(&dest) {
            out.skipped.push(m.destination.clone());
        } else if m.kind == "tmpfs" {
            out.volumes
                .push(volume(MountKind::Tmpfs, None, m, readonly));
        } else if is_bind(m) {
            let meta = std::fs::metadata(&m.source).map_err(|e| err(e.to_string()))?;
            if !meta.is_dir() {
                return Err(err(
                    "a bind of a single file cannot reach the VM yet (only directories are shared)"
                        .into(),
                ));
            }
            out.volumes
                .push(volume(MountKind::Bind, Some(m.source.clone()), m, readonly));
        } else {
            return Err(err(
                "containerd-shim-hyper-v2 maps bind mounts of directories and tmpfs only".into(),
            ));
        }
    }
    Ok(out)
}

fn volume(kind: MountKind, source: Option<String>, m: &Mount, readonly: bool) -> VolumeRequest {
    VolumeRequest {
        kind,
        source,
        target: m.destination.clone(),
        readonly,
        create_host_dir: false,
        tmpfs_size_mib: None,
        size_bytes: None,
        mkfs: None,
        nocopy: false,
    }
}

/// `nameserver`, `search` and `options` of a resolv.conf (CRI's copy of
/// the host's, or the pod's DNS config).
fn read_resolv(path: &Path) -> Result<Dns, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_RESOLV_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_RESOLV_BYTES {
        return Err(format!("larger than {MAX_RESOLV_BYTES} bytes"));
    }
    Ok(parse_resolv(&text))
}

fn parse_resolv(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => {
                dns.search = words.map(str::to_string).collect();
            }
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            destination: dest.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn cri_mounts_map_or_are_refused() {
        let dir = std::env::temp_dir().join(format!("hyper-shim-mounts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            "# c\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch a.svc b.local\noptions ndots:5\n",
        )
        .unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let data = dir.join("data");
        let mapped = map(&[
            mount("/proc", "proc", "proc", &[]),
            mount("/dev", "tmpfs", "tmpfs", &[]),
            mount("/sys/fs/cgroup", "cgroup", "cgroup", &["ro"]),
            mount(
                "/etc/hosts",
                "bind",
                file.to_str().unwrap(),
                &["rbind", "rw"],
            ),
            mount(
                "/etc/resolv.conf",
                "bind",
                resolv.to_str().unwrap(),
                &["rbind", "ro"],
            ),
            mount("/cache", "tmpfs", "tmpfs", &[]),
            mount("/data", "bind", data.to_str().unwrap(), &["rbind", "ro"]),
        ])
        .unwrap();
        assert_eq!(
            mapped.dns,
            Some(Dns {
                servers: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                search: vec!["a.svc".into(), "b.local".into()],
                options: vec!["ndots:5".into()],
            })
        );
        assert_eq!(mapped.volumes.len(), 2);
        assert_eq!(mapped.volumes[0].kind, MountKind::Tmpfs);
        assert_eq!(mapped.volumes[1].kind, MountKind::Bind);
        assert!(mapped.volumes[1].readonly);
        assert_eq!(mapped.skipped.len(), 4);
        // A single file elsewhere, and an unknown type: clear errors.
        let e = map(&[mount("/x", "bind", file.to_str().unwrap(), &["rbind"])]).unwrap_err();
        assert!(
            e.to_string().contains("/x") && e.to_string().contains("single file"),
            "{e}"
        );
        let e = map(&[mount("/y", "nfs", "srv:/e", &[])]).unwrap_err();
        assert!(e.to_string().contains("/y"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
