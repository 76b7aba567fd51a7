//! [`crate::QemuVm`]'s side of `save_template`.

use std::path::Path;
use std::time::Duration;

use hyper_hypervisor::{HypervisorError, Vm};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::meta::{self, Layout, TemplateMeta};
use super::{ignore_shared_ram, migration_done, QMP_LIMIT};
use crate::memory::template_memory_path;
use crate::vm::QemuVm;

/// From `migrate` to the whole state written: tens of KiB, but QEMU under
/// TCG on a loaded host is slow to get to it.
const STREAM_LIMIT: Duration = Duration::from_secs(60);
/// After the stream ended, until QEMU reports the migration complete.
const COMPLETE_LIMIT: Duration = Duration::from_secs(30);
/// Until the paused QEMU has quit once the template is written.
const QUIT_LIMIT: Duration = Duration::from_secs(20);

/// Saves `vm` (launched from `layout`'s spec with `save_as_template`) into
/// `dir` and stops it. On failure the VM is killed too: a half-saved,
/// paused template VM is of no use, and the core discards the directory.
pub(crate) async fn save(vm: &QemuVm, layout: &Layout, dir: &Path) -> Result<(), HypervisorError> {
    let result = save_into(vm, layout, dir).await;
    let _ = std::fs::remove_file(&vm.paths().migrate);
    if let Err(e) = &result {
        tracing::warn!(vm = %vm.info().id, dir = %dir.display(), "saving the template failed: {e}");
        if let Err(k) = vm.kill().await {
            tracing::warn!(vm = %vm.info().id, "cannot stop the template VM: {k}");
        }
    }
    result
}

async fn save_into(vm: &QemuVm, layout: &Layout, dir: &Path) -> Result<(), HypervisorError> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        HypervisorError::Io(format!("cannot {what} {}: {e}", path.display()))
    };
    let qmp_failed = |what: &str, e: crate::qmp::QmpError| {
        HypervisorError::Io(format!("saving a template: {what}: {e}"))
    };
    let paths = vm.paths().clone();
    let memory_source = template_memory_path(&paths.dir);
    if !dir.is_dir() {
        return Err(HypervisorError::InvalidSpec(format!(
            "template directory {} does not exist",
            dir.display()
        )));
    }
    vm.qmp_execute("stop", None, QMP_LIMIT)
        .await
        .map_err(|e| qmp_failed("stop", e))?;
    ignore_shared_ram(vm)
        .await
        .map_err(|e| qmp_failed("migrate-set-capabilities", e))?;

    let _ = std::fs::remove_file(&paths.migrate);
    let listener =
        UnixListener::bind(&paths.migrate).map_err(|e| io("listen on", &paths.migrate, e))?;
    let state_path = dir.join(meta::STATE_FILE);
    let mut state = tokio::fs::File::create(&state_path)
        .await
        .map_err(|e| io("create", &state_path, e))?;
    let uri = format!("unix:{}", paths.migrate.display());
    vm.qmp_execute("migrate", Some(json!({ "uri": uri })), QMP_LIMIT)
        .await
        .map_err(|e| qmp_failed("migrate", e))?;

    // QEMU connects and writes the stream; read it to its end, bounded in
    // size, hashing it on the way. A migration that fails before it
    // connects is seen by the status poll.
    let copy = async {
        let (mut stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > meta::MAX_STATE_BYTES {
                return Err(format!(
                    "the device state is over {} bytes",
                    meta::MAX_STATE_BYTES
                ));
            }
            hasher.update(&buf[..n]);
            state
                .write_all(&buf[..n])
                .await
                .map_err(|e| format!("{}: {e}", state_path.display()))?;
        }
        state
            .sync_all()
            .await
            .map_err(|e| format!("{}: {e}", state_path.display()))?;
        Ok::<_, String>((total, meta::hex(&hasher.finalize())))
    };
    let stream = async {
        tokio::pin!(copy);
        tokio::select! {
            copied = &mut copy => copied,
            // QEMU may say completed while the end of the stream is still
            // in the socket: the copy goes on to the end of the stream. A
            // migration that failed before it connected is only seen here.
            done = migration_done(vm) => match done {
                Ok(()) => copy.await,
                Err(e) => Err(e),
            },
        }
    };
    let (state_bytes, state_sha256) = tokio::time::timeout(STREAM_LIMIT, stream)
        .await
        .map_err(|_| {
            HypervisorError::Io(format!(
                "saving a template: the device state was not written within {STREAM_LIMIT:?}"
            ))
        })?
        .map_err(|e| HypervisorError::Io(format!("saving a template: {e}")))?;
    tokio::time::timeout(COMPLETE_LIMIT, migration_done(vm))
        .await
        .map_err(|_| {
            HypervisorError::Io(format!(
                "saving a template: QEMU did not report the migration complete within {COMPLETE_LIMIT:?}"
            ))
        })?
        .map_err(|e| HypervisorError::Io(format!("saving a template: {e}")))?;

    // The RAM: the same file system, so a rename; never a copy. The guest
    // is paused, so the file no longer changes.
    let memory_bytes = u64::from(layout.memory_mib) << 20;
    let memory = dir.join(meta::MEMORY_FILE);
    std::fs::rename(&memory_source, &memory).map_err(|e| {
        HypervisorError::Io(format!(
            "cannot move the template's memory {} to {} (the template directory must be on the run directory's file system): {e}",
            memory_source.display(),
            memory.display()
        ))
    })?;
    let size = std::fs::metadata(&memory)
        .map_err(|e| io("stat", &memory, e))?
        .len();
    if size != memory_bytes {
        return Err(HypervisorError::Io(format!(
            "the template's memory {} is {size} bytes, not {memory_bytes}",
            memory.display()
        )));
    }
    let sync_memory = memory.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&sync_memory)?.sync_data())
        .await
        .map_err(|e| HypervisorError::Io(e.to_string()))?
        .map_err(|e| io("sync", &memory, e))?;

    let record = TemplateMeta {
        format: meta::FORMAT,
        layout: layout.clone(),
        memory_bytes,
        state_bytes,
        state_sha256,
    };
    let meta_path = dir.join(meta::META_FILE);
    let text =
        serde_json::to_vec_pretty(&record).map_err(|e| HypervisorError::Io(e.to_string()))?;
    write_synced(&meta_path, &text).map_err(|e| io("write", &meta_path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))?;

    // Done with the VM: QEMU quits (its RAM mapping goes, the file stays).
    vm.kill().await?;
    if tokio::time::timeout(QUIT_LIMIT, vm.wait()).await.is_err() {
        return Err(HypervisorError::Io(format!(
            "the template VM {} did not end within {QUIT_LIMIT:?} after its save",
            vm.info().id
        )));
    }
    tracing::info!(vm = %vm.info().id, dir = %dir.display(), state_bytes, memory_bytes, "saved a template");
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
