//! The console log's size cap. QEMU writes the guest's ttyS0 to
//! `console.log` itself and knows no limit, and a container that reaches
//! the serial port could fill the host's disk through it. QEMU opens the
//! file `O_APPEND` (`-chardev file,append=on`), so a watcher can cut it
//! back: past the limit the file is truncated to the limit and a marker
//! line is appended; QEMU's next write lands at the new end. The file so
//! stays under `limit + marker + what QEMU writes in one` [`CHECK_EVERY`],
//! and keeps its first `limit` bytes (the boot, what diagnoses a failure),
//! as hyper-vmm's capped console does.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// Bytes of console output kept per VM unless `console_log_limit_mib` says
/// otherwise (the same default as hyper-vmm).
pub const DEFAULT_LIMIT_MIB: u64 = 64;
/// How often the watcher looks at the file's size.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
pub const LIMIT_MARKER: &[u8] = b"\n[hyper: console log limit reached, later output dropped]\n";

/// Truncates `path` to `limit` bytes plus [`LIMIT_MARKER`] if it is longer
/// than that. Returns whether it cut anything. A missing file is not an
/// error (QEMU has not created it yet, or the pod was removed).
pub fn enforce(path: &Path, limit: u64) -> io::Result<bool> {
    hyper_hypervisor::logcap::cut_back(path, limit, LIMIT_MARKER)
}

/// Keeps `path` under its cap until `exit` reports the VM's end.
pub async fn watch_log<T: Send + Sync + 'static>(
    path: PathBuf,
    limit: u64,
    mut exit: watch::Receiver<Option<T>>,
) {
    let mut warned = false;
    loop {
        match enforce(&path, limit) {
            Ok(true) if !warned => {
                warned = true;
                tracing::warn!(
                    path = %path.display(),
                    limit,
                    "the guest filled its console log; later output is dropped"
                );
            }
            Ok(_) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(path = %path.display(), "cannot cap the console log: {e}");
            }
            Err(_) => {}
        }
        if exit.borrow().is_some() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            changed = exit.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Empties (or creates) the log before a launch, as `-serial file:` did:
/// with `append=on` QEMU would otherwise keep an earlier run's output.
pub fn reset(path: &Path) -> io::Result<()> {
    std::fs::File::create(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    #[test]
    fn a_log_over_the_limit_is_cut_and_marked_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert!(!enforce(&path, 10).unwrap(), "a missing log is fine");
        // The writer stands in for QEMU: O_APPEND, kept open throughout.
        let mut qemu = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        qemu.write_all(b"boot ok\n").unwrap();
        assert!(!enforce(&path, 1000).unwrap());
        qemu.write_all(&vec![b'x'; 5000]).unwrap();
        assert!(enforce(&path, 1000).unwrap());
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 1000 + LIMIT_MARKER.len());
        assert!(text.starts_with(b"boot ok\n"));
        assert!(text.ends_with(LIMIT_MARKER));
        // QEMU's next write lands at the new end, not at its old offset
        // (which would leave a sparse file as large as before).
        qemu.write_all(b"more").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1000 + LIMIT_MARKER.len() as u64 + 4
        );
        // Within limit + marker it is left alone; past it, cut again.
        assert!(!enforce(&path, 1000 + 4).unwrap());
        qemu.write_all(&vec![b'y'; 100_000]).unwrap();
        assert!(enforce(&path, 1000).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            1000 + LIMIT_MARKER.len() as u64
        );
    }

    #[tokio::test]
    async fn the_watcher_caps_a_growing_log_until_the_vm_exits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        reset(&path).unwrap();
        let (exit_tx, exit_rx) = watch::channel(None::<()>);
        let task = tokio::spawn(watch_log(path.clone(), 4096, exit_rx));
        let mut qemu = OpenOptions::new().append(true).open(&path).unwrap();
        for _ in 0..20 {
            qemu.write_all(&vec![b'z'; 64 * 1024]).unwrap();
            tokio::time::sleep(CHECK_EVERY / 4).await;
        }
        let capped = 4096 + LIMIT_MARKER.len() as u64;
        tokio::time::timeout(Duration::from_secs(60), async {
            while std::fs::metadata(&path).unwrap().len() != capped {
                tokio::time::sleep(CHECK_EVERY / 4).await;
            }
        })
        .await
        .expect("the watcher never cut the log back");
        exit_tx.send_replace(Some(()));
        task.await.unwrap();
    }
}
