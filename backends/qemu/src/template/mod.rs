//! Templates (issue 16): a VM booted to hyperstart's READY, saved once and
//! restored into many clones, Kata's `x-ignore-shared` way.
//!
//! * A VM launched with `save_as_template` keeps its RAM in a file of its
//!   run directory mapped `MAP_SHARED` ([`crate::memory::GuestMemory::TemplateFile`]).
//! * [`save`]: QMP `stop`, the `x-ignore-shared` capability, the migration
//!   stream of the device and vCPU state (no RAM) streamed by QEMU into a
//!   unix socket of the run directory and written by the plugin to
//!   `state` (hashing it on the way), the RAM file moved (renamed) into the
//!   template, `template.json` ([`meta`]) written, then `quit`.
//! * [`restore`]: every check of [`meta::check`] first (a refusal is
//!   [`hyper_hypervisor::HypervisorError::TemplateRejected`] and nothing
//!   was started), then the ordinary launch path with the template's RAM
//!   file mapped `MAP_PRIVATE` and `-incoming defer`; the plugin streams
//!   the checked state into QEMU, waits for the load and sends `cont`.
//!
//! The directory a save writes into holds `memory`, `state` and
//! `template.json`; nothing else of the template VM's run directory.

pub mod meta;
mod restore;
mod save;

use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::QmpError;
use crate::vm::QemuVm;

pub(crate) use restore::restore;
pub(crate) use save::save;

/// The QEMU this was written and tested against; the version a template
/// records is the running binary's, and a restore needs the same.
pub const TESTED_QEMU: &str = "7.2";

/// QMP commands around a migration answer at once.
const QMP_LIMIT: Duration = Duration::from_secs(5);
/// How often `query-migrate` is asked while a stream is in flight.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Turns on `x-ignore-shared`: RAM blocks mapped shared (the template's
/// file) are not part of the stream, on either side.
async fn ignore_shared_ram(vm: &QemuVm) -> Result<(), QmpError> {
    vm.qmp_execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        QMP_LIMIT,
    )
    .await
    .map(drop)
}

/// Polls `query-migrate` until the migration completed (`Ok`) or failed
/// (`Err` with QEMU's reason); the caller bounds it.
async fn migration_done(vm: &QemuVm) -> Result<(), String> {
    loop {
        let status = vm
            .qmp_execute("query-migrate", None, QMP_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        match status.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                let why = status
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(format!("the migration {s}: {why}"));
            }
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
