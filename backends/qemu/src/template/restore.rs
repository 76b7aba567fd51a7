//! [`crate::QemuHypervisor`]'s side of `restore`.

use std::path::Path;
use std::time::Duration;

use hyper_hypervisor::{HypervisorError, Vm, VmSpec};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::meta;
use super::{ignore_shared_ram, migration_done, QMP_LIMIT};
use crate::cmdline::Boot;
use crate::hypervisor::QemuHypervisor;
use crate::vm::QemuVm;

/// From `migrate-incoming` to QEMU having loaded the state; tens of KiB,
/// but TCG on a loaded host is slow.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// Checks the template in `dir` against what `spec` would get, then starts
/// the clone. A template that fails a check is
/// [`HypervisorError::TemplateRejected`] and nothing was started; a clone
/// whose QEMU cannot load the state is killed (nothing is left running).
pub(crate) async fn restore(
    hv: &QemuHypervisor,
    spec: VmSpec,
    dir: &Path,
) -> Result<QemuVm, HypervisorError> {
    if !spec.shares.is_empty() {
        return Err(HypervisorError::InvalidSpec(format!(
            "a clone cannot have directory shares ({} asked): QEMU {} cannot migrate vhost-user-fs devices; start such pods cold",
            spec.shares.len(),
            super::TESTED_QEMU
        )));
    }
    if spec.save_as_template {
        return Err(HypervisorError::InvalidSpec(
            "a clone of a template cannot itself be saved as a template".into(),
        ));
    }
    let layout = hv.layout(&spec).await?;
    let checked = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || meta::check(&dir, &layout))
            .await
            .map_err(|e| HypervisorError::Io(e.to_string()))?
            .map_err(HypervisorError::TemplateRejected)?
    };
    let id = spec.id.clone();
    let vm = hv
        .launch_with(
            spec,
            Boot::Incoming {
                memory: &checked.memory,
            },
        )
        .await?;
    let loaded = tokio::time::timeout(LOAD_LIMIT, load(&vm, &checked.state))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "QEMU did not load the template's state within {LOAD_LIMIT:?}"
            ))
        });
    let _ = std::fs::remove_file(&vm.paths().migrate);
    if let Err(e) = loaded {
        tracing::warn!(vm = %id, template = %dir.display(), "restoring failed: {e}");
        if let Err(k) = vm.kill().await {
            tracing::warn!(vm = %id, "cannot stop the half-restored VM: {k}");
        }
        return Err(HypervisorError::LaunchFailed(format!(
            "restoring from the template {}: {e}",
            dir.display()
        )));
    }
    tracing::info!(vm = %id, template = %dir.display(), "restored from a template");
    Ok(vm)
}

/// Streams `state` into the waiting QEMU and lets the guest run.
async fn load(vm: &QemuVm, state: &[u8]) -> Result<(), String> {
    let migrate = &vm.paths().migrate;
    ignore_shared_ram(vm).await.map_err(|e| e.to_string())?;
    let uri = format!("unix:{}", migrate.display());
    vm.qmp_execute("migrate-incoming", Some(json!({ "uri": uri })), QMP_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    // QEMU listens by the time migrate-incoming has answered.
    let mut stream = UnixStream::connect(migrate)
        .await
        .map_err(|e| format!("{}: {e}", migrate.display()))?;
    let send = async {
        stream.write_all(state).await?;
        stream.shutdown().await
    };
    tokio::select! {
        sent = send => sent.map_err(|e| format!("sending the state: {e}"))?,
        // QEMU gives up reading (a state it cannot load) before taking it all.
        done = migration_done(vm) => done?,
    }
    migration_done(vm).await?;
    vm.qmp_execute("cont", None, QMP_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
