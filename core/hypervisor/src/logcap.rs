//! Size caps for files a VM's processes append to without a limit of their
//! own (QEMU's console log, a `virtiofsd`'s stderr): the writer opens the
//! file `O_APPEND`, and a watcher cuts it back, so the writer's next write
//! lands at the new end. The file keeps its first `limit` bytes (the start,
//! what diagnoses a failure) and a marker saying later output was dropped.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

/// Truncates `path` to `limit` bytes and appends `marker` if it is longer
/// than that plus the marker. Returns whether it cut anything. A missing
/// file is not an error (not created yet, or already removed).
pub fn cut_back(path: &Path, limit: u64, marker: &[u8]) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= limit + marker.len() as u64 {
        return Ok(false);
    }
    let mut file = OpenOptions::new().append(true).open(path)?;
    file.set_len(limit)?;
    file.write_all(marker)?;
    Ok(true)
}
