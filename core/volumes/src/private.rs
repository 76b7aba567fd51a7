//! Files and directories only their owner can read, whatever the umask:
//! the volume store's and the runtime's state (docs/security/state.md).
//! Here, the lowest crate both use, so there is one copy.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) if missing, with mode 0700 whatever the
/// umask; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to a new or truncated file of mode 0600 (an existing
/// file keeps its mode) and returns it, for a caller that syncs it.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_files_and_dirs_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        let file = sub.join("f");
        write_private(&file, b"secret").unwrap().sync_all().unwrap();
        assert_eq!(mode(&file), 0o600);
        write_private(&file, b"s").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"s");
    }
}
