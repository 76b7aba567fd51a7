//! SHA-256 of files and lowercase hex, for what the core and the backends
//! write down and check again later (template checkpoints, payload keys).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size and SHA-256 of a file, read once in 1 MiB chunks.
pub fn file_sha256(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().into()))
}

/// A file's identity: device, inode, size, mtime (s, ns).
type FileId = (u64, u64, u64, i64, i64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// [`file_sha256`] remembered per path and file identity (device, inode,
/// size, mtime), so a big file (a kernel, a template checkpoint) is read in
/// full once per process, not once per use. A file replaced or written to
/// since is read again; one that changes while it is read is not remembered.
#[derive(Debug, Default)]
pub struct DigestMemo {
    seen: Mutex<HashMap<PathBuf, (FileId, [u8; 32])>>,
}

impl DigestMemo {
    /// The size and SHA-256 of `path`, read only when its identity changed.
    pub fn file_sha256(&self, path: &Path) -> std::io::Result<(u64, [u8; 32])> {
        let id = file_id(path)?;
        if let Some((seen, sum)) = self.lock().get(path) {
            if *seen == id {
                return Ok((id.2, *sum));
            }
        }
        let (size, sum) = file_sha256(path)?;
        if file_id(path)? == id {
            self.lock().insert(path.to_path_buf(), (id, sum));
        }
        Ok((size, sum))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileId, [u8; 32])>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_reads_a_file_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let memo = DigestMemo::default();
        let first = memo.file_sha256(&path).unwrap();
        assert_eq!(first, file_sha256(&path).unwrap());
        // Unreadable now, but its identity is unchanged: remembered.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        assert_eq!(memo.file_sha256(&path).unwrap(), first);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Replaced (a new inode): read again.
        let new = dir.path().join("g");
        std::fs::write(&new, b"abcd").unwrap();
        std::fs::rename(&new, &path).unwrap();
        let second = memo.file_sha256(&path).unwrap();
        assert_eq!(second.0, 4);
        assert_eq!(second, file_sha256(&path).unwrap());
        assert!(memo.file_sha256(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_files_size_and_digest_are_sha256s() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let (size, sum) = file_sha256(&path).unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            hex(&sum),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(file_sha256(&dir.path().join("missing")).is_err());
    }
}
