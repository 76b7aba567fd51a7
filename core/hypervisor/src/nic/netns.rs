//! Named network namespaces, the way `ip netns add/delete` makes them: a file
//! under `/run/netns` with the namespace bind-mounted onto it, so it lives
//! without any process in it and tools (`ip -n NAME`, CNI) find it by path.
//!
//! Work inside a namespace happens on a short-lived thread that `setns`es
//! into it ([`run_in`]); no long-lived thread (least of all a tokio worker)
//! ever changes namespace.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::NicError;
use crate::mount::{mount, unmount};

/// Where named namespaces live (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_DIR: &str = "/run/netns";

/// This process's own network namespace (the host's, for hyperd), for
/// [`run_in`] and the kit's functions that take a namespace path.
pub const OWN: &str = "/proc/self/ns/net";

/// The prefix of the namespaces hypercontainer makes (`hyper-<pod id>`);
/// tests count leftovers with [`list`]`(PREFIX)`.
pub const PREFIX: &str = "hyper-";

/// Serializes the "make /run/netns a shared mount point" step within this
/// process (iproute2 has the same check-then-bind race between processes;
/// at worst it stacks a second, harmless bind mount).
static RUN_DIR_MOUNT: Mutex<()> = Mutex::new(());

/// A namespace name: a plain file name iproute2 would also accept.
pub fn validate_name(name: &str) -> Result<(), NicError> {
    let bad = |reason: &str| Err(NicError::invalid("netns name", name, reason));
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1 to 200 bytes");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The path of the named namespace `name` (not checked for existence).
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn cstring(path: &Path) -> Result<CString, NicError> {
    crate::mount::cstring(path).map_err(|_| {
        NicError::invalid(
            "netns path",
            path.display().to_string(),
            "contains a NUL byte",
        )
    })
}

/// Makes `dir` a shared mount point (bind-mounting it onto itself first if
/// it is not a mount point), as `ip netns add` does, so a namespace mounted
/// under it shows up in (and its unmount propagates to) mount namespaces
/// created later, and the namespace really dies when it is removed.
fn make_shared_mount_point(dir: &Path) -> Result<(), NicError> {
    let _guard = RUN_DIR_MOUNT.lock().unwrap_or_else(|e| e.into_inner());
    let c = cstring(dir)?;
    let mut bound = false;
    loop {
        match mount(None, &c, libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                mount(Some(&c), &c, libc::MS_BIND | libc::MS_REC)
                    .map_err(|e| NicError::netns(dir, "bind-mount the directory onto itself", e))?;
                bound = true;
            }
            Err(e) => return Err(NicError::netns(dir, "make the directory a shared mount", e)),
        }
    }
}

/// Creates the named network namespace `name` under [`NETNS_DIR`] and
/// returns its path. Fails with [`NicError::NetnsExists`] if the file is
/// already there. Nothing is left behind on failure.
pub fn create(name: &str) -> Result<PathBuf, NicError> {
    validate_name(name)?;
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| NicError::netns(dir, "create the directory", e))?;
    make_shared_mount_point(dir)?;

    let path = path(name);
    let target = cstring(&path)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NicError::NetnsExists { netns: path });
        }
        Err(e) => return Err(NicError::netns(&path, "create the namespace file", e)),
    }

    let thread_path = path.clone();
    let made = std::thread::Builder::new()
        .name("hyper-netns-add".into())
        .spawn(move || -> Result<(), NicError> {
            // SAFETY: unshare(2) with CLONE_NEWNET only changes this
            // thread's network namespace; the thread ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(NicError::netns(
                    &thread_path,
                    "unshare a new network namespace",
                    e,
                ));
            }
            let src = c"/proc/thread-self/ns/net";
            mount(Some(src), &target, libc::MS_BIND)
                .map_err(|e| NicError::netns(&thread_path, "bind-mount the new namespace", e))
        })
        .map_err(|e| NicError::Thread {
            netns: path.clone(),
            message: format!("cannot start: {e}"),
        })
        .and_then(|handle| {
            handle.join().unwrap_or_else(|_| {
                Err(NicError::Thread {
                    netns: path.clone(),
                    message: "panicked".into(),
                })
            })
        });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    tracing::debug!(netns = %path.display(), "network namespace created");
    Ok(path)
}

/// Removes a named network namespace: unmounts it (lazily, like
/// `ip netns delete`) and unlinks the file. Idempotent: returns whether there
/// was anything to remove. The namespace itself (and every interface in it,
/// a tap included) goes once nothing else holds it.
pub fn remove(netns: &Path) -> Result<bool, NicError> {
    let c = cstring(netns)?;
    // Not mounted: already unmounted, or no file.
    let mut removed =
        unmount(&c, libc::MNT_DETACH).map_err(|e| NicError::netns(netns, "unmount", e))?;
    match std::fs::remove_file(netns) {
        Ok(()) => removed = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NicError::netns(netns, "remove the namespace file", e)),
    }
    if removed {
        tracing::debug!(netns = %netns.display(), "network namespace removed");
    }
    Ok(removed)
}

/// The names under [`NETNS_DIR`] starting with `prefix`, sorted (to count
/// leftovers: `list(PREFIX)`). No directory: none.
pub fn list(prefix: &str) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str() {
            if name.starts_with(prefix) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Opens a namespace file for `setns` (or for moving a link into it).
pub fn open(netns: &Path) -> Result<File, NicError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(netns)
        .map_err(|e| NicError::netns(netns, "open", e))
}

/// Runs `f` on a new, short-lived thread inside the network namespace
/// `netns` and returns its result. Blocks the caller until `f` returns: from
/// async code call it through `spawn_blocking`. Sockets and devices `f`
/// creates (a netlink socket, a tap) belong to `netns`, and stay there after
/// the thread ends.
///
/// Never build a tokio runtime inside `f` (build it before and move it in):
/// tokio's signal driver makes a process-wide socket pair when the first
/// runtime is built, and that socket would pin the namespace forever.
pub fn run_in<T, F>(netns: &Path, f: F) -> Result<T, NicError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let file = open(netns)?;
    let thread_path = netns.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("hyper-netns".into())
        .spawn(move || -> Result<T, NicError> {
            // SAFETY: setns(2) on a descriptor we own; CLONE_NEWNET checks
            // that it is a network namespace. Only this thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(NicError::netns(&thread_path, "enter (setns)", e));
            }
            drop(file);
            Ok(f())
        })
        .map_err(|e| NicError::Thread {
            netns: netns.to_path_buf(),
            message: format!("cannot start: {e}"),
        })?;
    handle.join().unwrap_or_else(|_| {
        Err(NicError::Thread {
            netns: netns.to_path_buf(),
            message: "panicked".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        assert!(validate_name("hyper-0123abcd").is_ok());
        assert!(validate_name("a.b_c-d").is_ok());
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(201),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("netns name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn removing_what_is_not_there_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("hyper-nic-unit-{}", std::process::id()));
        assert!(!remove(&dir.join("nothing")).unwrap());
    }

    #[test]
    fn entering_a_missing_namespace_names_it() {
        let err = run_in(Path::new("/nonexistent/netns/x"), || ()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/netns/x") && msg.contains("open"),
            "{msg}"
        );
    }

    #[test]
    fn entering_a_file_that_is_no_namespace_fails_cleanly() {
        let err = run_in(Path::new("/proc/self/status"), || ()).unwrap_err();
        assert!(err.to_string().contains("setns"), "{err}");
    }
}
