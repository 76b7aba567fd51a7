//! hyperd's state is private to its owner (root): the pod records hold the
//! containers' environment (`-e DB_PASSWORD=…`), the logs hold what the
//! containers print, the image store holds copies of root-only `--rootfs`
//! dirs. hyperd runs under umask 077 (see [`set_private_umask`]), so what it
//! and the VMMs it spawns create is 0600/0700; [`tighten`] fixes what an
//! older hyperd left 0644/0755. docs/security/state.md has the threat model.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The umask hyperd runs under: nothing it creates is readable by group or
/// others unless it opens it up on purpose (the API socket for its group).
pub const PRIVATE_UMASK: libc::mode_t = 0o077;

/// Sets the process umask to [`PRIVATE_UMASK`]. Call it first thing in
/// `main`, before any thread exists: the umask is process-wide and children
/// (QEMU, hyper-vmm, xl) inherit it.
pub fn set_private_umask() {
    // SAFETY: umask(2) only swaps the process's file mode creation mask; it
    // has no memory effects and cannot fail.
    unsafe { libc::umask(PRIVATE_UMASK) };
}

/// Creates a 0700 directory and writes 0600 files whatever the umask
/// (an existing one keeps its mode; [`tighten`] fixes old ones).
pub use hyper_volumes::private::{create_private_dir, write_private};

/// What [`tighten`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tightened {
    /// Files and directories whose group/other bits were cleared.
    pub changed: usize,
}

/// Makes `state_dir` 0700 and clears the group and other bits of every file
/// and directory under it, except the paths in `keep` (the API socket when
/// it lives there). Symlinks are not followed and not changed (their mode
/// means nothing). What cannot be changed is an error naming the path.
pub fn tighten(state_dir: &Path, keep: &[&Path]) -> io::Result<Tightened> {
    let mut done = Tightened::default();
    let mut stack: Vec<PathBuf> = vec![state_dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if meta.file_type().is_symlink() || is_volume_data(state_dir, &path) {
            continue;
        }
        if !keep.iter().any(|k| *k == path) && meta.mode() & 0o077 != 0 {
            let mode = meta.mode() & 0o7700 & !0o6000;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(
                |e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot make {} private: {e}", path.display()),
                    )
                },
            )?;
            done.changed += 1;
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            for entry in entries {
                stack.push(entry?.path());
            }
        }
    }
    Ok(done)
}

/// A named volume's data (`state_dir/volumes/NAME/_data`): what the
/// containers put there keeps its modes (the volume's own directory, 0700,
/// keeps everyone else out).
fn is_volume_data(state_dir: &Path, path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "_data")
        && path
            .parent()
            .and_then(Path::parent)
            .is_some_and(|p| p == state_dir.join("volumes"))
}

/// Lets the members of group `gid` reach `socket`: each directory from the
/// socket's parent up to (and including) `state_dir` when the socket lives
/// under it — or just the parent otherwise — that others cannot search is
/// given to `gid` with mode `g+x` (never `g+r`: the group can reach the
/// socket, not list or read the state). Directories others can search
/// already are left alone.
pub fn open_path_to_socket(socket: &Path, state_dir: &Path, gid: u32) -> io::Result<()> {
    let Some(parent) = socket.parent() else {
        return Ok(());
    };
    let mut dirs = vec![parent.to_path_buf()];
    if parent.starts_with(state_dir) {
        let mut d = parent;
        while d != state_dir {
            match d.parent() {
                Some(up) => {
                    d = up;
                    dirs.push(d.to_path_buf());
                }
                None => break,
            }
        }
    }
    for dir in dirs {
        let meta = std::fs::metadata(&dir)?;
        if meta.mode() & 0o001 != 0 {
            continue;
        }
        std::os::unix::fs::chown(&dir, None, Some(gid))
            .map_err(|e| io::Error::new(e.kind(), format!("chgrp {}: {e}", dir.display())))?;
        let mode = (meta.mode() & 0o7777 & !0o070) | 0o010;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io::Error::new(e.kind(), format!("chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn tighten_clears_group_and_other_bits_everywhere_but_keep() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let pod = state.join("pods/p1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("pod.json"), "{}").unwrap();
        std::fs::write(state.join("sock"), "").unwrap();
        std::fs::write(dir.path().join("outside"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), pod.join("link")).unwrap();
        for p in [&state, &state.join("pods"), &pod] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for p in [
            pod.join("pod.json"),
            state.join("sock"),
            dir.path().join("outside"),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4644)).unwrap();
        }
        let sock = state.join("sock");
        let done = tighten(&state, &[sock.as_path()]).unwrap();
        assert_eq!(done.changed, 4);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&pod), 0o700);
        // setuid goes too: nothing in the state is meant to be run by others.
        assert_eq!(mode(&pod.join("pod.json")), 0o600);
        assert_eq!(mode(&sock), 0o4644);
        // A symlink is not followed out of the state dir.
        assert_eq!(mode(&dir.path().join("outside")), 0o4644);
        // Idempotent.
        assert_eq!(tighten(&state, &[]).unwrap().changed, 1);
        assert_eq!(tighten(&state, &[]).unwrap().changed, 0);
    }

    #[test]
    fn a_named_volumes_data_keeps_its_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let data = state.join("volumes/web/_data");
        std::fs::create_dir_all(data.join("site")).unwrap();
        std::fs::write(data.join("site/index.html"), "hi").unwrap();
        for p in [&data, &data.join("site"), &state.join("volumes/web")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            data.join("site/index.html"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        tighten(&state, &[]).unwrap();
        assert_eq!(mode(&state.join("volumes/web")), 0o700);
        assert_eq!(mode(&data), 0o755);
        assert_eq!(mode(&data.join("site")), 0o755);
        assert_eq!(mode(&data.join("site/index.html")), 0o644);
    }

    #[test]
    fn the_group_can_search_down_to_the_socket_but_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("run")).unwrap();
        tighten(&state, &[]).unwrap();
        let gid = std::fs::metadata(&state).unwrap().gid();
        open_path_to_socket(&state.join("run/hyperd.sock"), &state, gid).unwrap();
        assert_eq!(mode(&state), 0o710);
        assert_eq!(mode(&state.join("run")), 0o710);
        // A socket outside the state: only its parent is touched.
        let other = dir.path().join("other");
        create_private_dir(&other).unwrap();
        open_path_to_socket(&other.join("s"), &state.join("x"), gid).unwrap();
        assert_eq!(mode(&other), 0o710);
    }
}
