//! Who is on the other end of the API socket, and opening the paths a
//! client names with that client's credentials (issue 13, M7).
//!
//! hyperd runs as root; a member of `runtime.socket_group` is not. Paths a
//! client names (`hyper load -i FILE`, `--rootfs DIR`, a pod file's rootfs)
//! are checked as the client: the kernel's own permission checks run on a
//! short-lived thread whose filesystem uid/gid are the client's (from
//! `SO_PEERCRED`), so hyperd never reads for a client what the client could
//! not read itself. docs/security/state.md explains the choice.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::images_api::error;

/// The credentials of an API connection (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// `None` when the kernel did not say: treated as an unprivileged
    /// stranger (uid/gid 65534), never as root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The ids a peer of unknown credentials is checked as.
const NOBODY: u32 = 65534;

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: Some(c.uid()),
                gid: Some(c.gid()),
            },
            Err(e) => {
                tracing::warn!("cannot read the credentials of an API client: {e}");
                Peer {
                    uid: None,
                    gid: None,
                }
            }
        }
    }
}

/// Why a client-named path was refused. The messages name the path and
/// the reason, never any of the file's content.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{path}: give an absolute path (it is resolved on the hyperd host)")]
    Relative { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not readable by uid {uid} (the client): {source}")]
    Denied {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
    #[error("{path}: not a regular file; a client other than root can load only a `docker save` archive (an OCI layout directory is read path by path, so only root may load one)")]
    NotAFile { path: PathBuf },
    #[error("cannot check {path} as the client: {reason}")]
    Helper { path: PathBuf, reason: String },
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == Some(0)
    }

    fn ids(&self) -> (u32, u32) {
        (self.uid.unwrap_or(NOBODY), self.gid.unwrap_or(NOBODY))
    }

    /// Runs `f` on a new thread whose filesystem credentials are this
    /// peer's: fsuid/fsgid switched and the supplementary groups reduced to
    /// the peer's primary group, each by a raw syscall that changes only
    /// that thread (glibc's wrappers would change every thread). With a
    /// non-zero fsuid the kernel also drops the thread's file capabilities
    /// (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, …), so the thread can open
    /// exactly what the client can. The thread ends with `f`.
    pub fn as_client<T: Send + 'static>(
        &self,
        what: &Path,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PathError> {
        let (uid, gid) = self.ids();
        let helper = |reason: String| PathError::Helper {
            path: what.to_path_buf(),
            reason,
        };
        std::thread::Builder::new()
            .name("as-client".into())
            .spawn(move || -> Result<T, String> {
                let groups = [gid as libc::gid_t];
                // SAFETY: raw setgroups(2) with a valid one-element array;
                // the raw syscall affects only the calling thread.
                let rc = unsafe { libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) };
                if rc != 0 {
                    return Err(format!("setgroups: {}", io::Error::last_os_error()));
                }
                // SAFETY: setfsgid/setfsuid take plain ids and change only
                // this thread's filesystem credentials. They return the old
                // id, so success is checked by asking again (-1 = query).
                unsafe {
                    libc::syscall(libc::SYS_setfsgid, gid);
                    libc::syscall(libc::SYS_setfsuid, uid);
                }
                // SAFETY: as above; an invalid id (-1) changes nothing and
                // returns the current one.
                let (now_uid, now_gid) = unsafe {
                    (
                        libc::syscall(libc::SYS_setfsuid, u32::MAX),
                        libc::syscall(libc::SYS_setfsgid, u32::MAX),
                    )
                };
                if now_uid != i64::from(uid) || now_gid != i64::from(gid) {
                    return Err(format!(
                        "setfsuid/setfsgid left {now_uid}/{now_gid}, wanted {uid}/{gid}"
                    ));
                }
                Ok(f())
            })
            .map_err(|e| helper(e.to_string()))?
            .join()
            .map_err(|_| helper("the helper thread panicked".into()))?
            .map_err(helper)
    }

    /// Opens `path` for reading as this peer. The file hyperd then reads is
    /// the one the client could open, whatever is renamed later.
    pub fn open(&self, path: &Path) -> Result<File, PathError> {
        let uid = self.ids().0;
        let p = path.to_path_buf();
        self.as_client(path, move || open_nonblocking(&p))?
            .map_err(|source| denied_or_io(path, uid, source))
    }

    /// Checks that every entry of the tree at `dir` is readable by this
    /// peer (directories listable, files openable for reading); symlinks
    /// are not followed (they are copied as links). The first entry that is
    /// not is named in the error.
    pub fn check_tree(&self, dir: &Path) -> Result<(), PathError> {
        let uid = self.ids().0;
        let root = dir.to_path_buf();
        self.as_client(dir, move || walk_readable(&root))?
            .map_err(|(path, source)| denied_or_io(&path, uid, source))
    }
}

/// Opens `path` for reading without blocking on a fifo (or a device) a
/// client might name or swap in; `O_NONBLOCK` changes nothing for the
/// regular files that are then read.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

fn denied_or_io(path: &Path, uid: u32, source: io::Error) -> PathError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        PathError::Denied {
            path: path.to_path_buf(),
            uid,
            source,
        }
    } else {
        PathError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Opens every directory and regular file under `root` (not following
/// symlinks below it); links, device nodes, fifos and sockets are copied
/// as what they are, not read, so they need no check.
fn walk_readable(root: &Path) -> Result<(), (PathBuf, io::Error)> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| (dir.clone(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| (dir.clone(), e))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| (path.clone(), e))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                open_nonblocking(&path).map_err(|e| (path.clone(), e))?;
            }
        }
    }
    Ok(())
}

/// Refuses a relative path named by a client: hyperd's working directory
/// means nothing to the client.
pub fn absolute(path: &Path) -> Result<(), PathError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(PathError::Relative {
            path: path.to_path_buf(),
        })
    }
}

/// Checks the directories a request names as rootfs: each absolute, and
/// for a client other than root every entry readable by that client.
/// Answers the error response to send otherwise.
pub async fn check_rootfs_dirs(peer: Peer, dirs: Vec<PathBuf>) -> Result<(), Response> {
    for dir in &dirs {
        absolute(dir).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    if peer.is_root() || dirs.is_empty() {
        return Ok(());
    }
    let checked =
        tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| peer.check_tree(d))).await;
    match checked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error(StatusCode::FORBIDDEN, format!("rootfs {e}"))),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the check task failed: {e}"),
        )),
    }
}

/// Host directories and host disk files as volumes are for root clients
/// only: the guest's root writes them through a server running as root on
/// the host (a set-uid file planted there would be root's for the client),
/// so a member of the socket group gets named volumes instead. The
/// refusal to send, if any.
pub fn refuse_host_volumes(
    peer: Peer,
    volumes: &[hyper_volumes::VolumeRequest],
) -> Option<Response> {
    if peer.is_root() {
        return None;
    }
    let path = volumes.iter().find_map(|v| v.host_path())?;
    Some(error(
        StatusCode::FORBIDDEN,
        format!(
            "volume source {path}: only root may mount host paths (the guest writes them as root); use a named volume (-v NAME:/path)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> Peer {
        Peer {
            uid: Some(NOBODY),
            gid: Some(NOBODY),
        }
    }

    #[test]
    fn a_stranger_cannot_open_a_root_only_file() {
        if !nix_is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root:$6$hash").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = nobody().open(&secret).unwrap_err();
        assert!(matches!(err, PathError::Denied { .. }), "{err}");
        assert!(!err.to_string().contains("$6$"), "{err}");
        // Unknown credentials are a stranger too.
        let unknown = Peer {
            uid: None,
            gid: None,
        };
        assert!(unknown.open(&secret).is_err());
        // Root may.
        let root = Peer {
            uid: Some(0),
            gid: Some(0),
        };
        assert!(root.open(&secret).is_ok());
        // And this thread kept its own credentials.
        assert!(File::open(&secret).is_ok());
    }

    #[test]
    fn a_tree_with_one_unreadable_file_is_refused_naming_it() {
        if !nix_is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/ok"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("bin/link")).unwrap();
        assert!(nobody().check_tree(dir.path()).is_ok());
        let hidden = dir.path().join("bin/hidden");
        std::fs::write(&hidden, "x").unwrap();
        std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = nobody().check_tree(dir.path()).unwrap_err();
        assert!(err.to_string().contains("bin/hidden"), "{err}");
    }

    #[test]
    fn only_root_mounts_host_paths() {
        let host = hyper_volumes::parse_volume("/etc:/x").unwrap();
        let named = hyper_volumes::parse_volume("data:/x").unwrap();
        assert!(refuse_host_volumes(nobody(), std::slice::from_ref(&named)).is_none());
        let refused = refuse_host_volumes(nobody(), &[named, host.clone()]).expect("refused");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let root = Peer {
            uid: Some(0),
            gid: Some(0),
        };
        assert!(refuse_host_volumes(root, &[host]).is_none());
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(absolute(Path::new("rootfs")).is_err());
        assert!(absolute(Path::new("/rootfs")).is_ok());
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        unsafe { libc::geteuid() == 0 }
    }
}
