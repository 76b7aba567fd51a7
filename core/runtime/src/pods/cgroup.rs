//! A pod's host cgroup, glued to its lifecycle like its network: made
//! before each of its VMs launches (the backend puts the VMM and its
//! helpers in it), removed after each VM ended, whichever way. The work
//! itself is `crate::cgroups`'.

use hyper_hypervisor::VmSpec;

use super::model::{PodRecord, RunError, RunOutcome};
use super::Runtime;
use crate::cgroups::{self, CgroupError, Layout, Limits, Usage};

impl Runtime {
    /// This host's cgroup layout, or `None` with `[runtime] cgroups =
    /// false` or on a host whose kernel or mounts lack a controller the
    /// pods need. The latter is Docker's behaviour ("Your kernel does not
    /// support memory limit capabilities or the cgroup is not mounted.
    /// Limitation discarded."): pods run without host limits and hyperd
    /// says so once in its log. Any other failure (permissions, v2
    /// delegation) is an error naming the fix.
    fn cgroup_layout(&self) -> Result<Option<Layout>, RunError> {
        if !self.config.runtime.cgroups {
            return Ok(None);
        }
        match Layout::detect() {
            Ok(layout) => Ok(Some(layout)),
            Err(e @ CgroupError::MissingController { .. }) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!("pods run without host cgroup limits: {e}");
                });
                Ok(None)
            }
            Err(e) => Err(RunError::Failed(e.to_string())),
        }
    }

    /// Makes the cgroup of pod `id`'s next VM and names it in `spec`. On
    /// failure nothing of it is left.
    pub(super) async fn cgroup_up(&self, id: &str, spec: &mut VmSpec) -> Result<(), RunError> {
        let Some(layout) = self.cgroup_layout()? else {
            spec.cgroup = None;
            return Ok(());
        };
        let rt = &self.config.runtime;
        let limits = Limits::for_vm(
            spec.vcpus,
            spec.memory_mib,
            rt.cgroup_vmm_overhead_mib,
            rt.cgroup_pids_max,
        );
        let made = cgroups::create(&layout, &rt.cgroup_parent, id, &limits)
            .await
            .map_err(|e| RunError::Failed(e.to_string()))?;
        tracing::debug!(pod = %id, dirs = ?made.dirs, ?limits, "cgroup made");
        spec.cgroup = Some(made.placement());
        Ok(())
    }

    /// Removes pod `id`'s cgroup once its VM has ended (killing anything
    /// still in it); a failure is logged.
    pub(super) async fn cgroup_down(&self, id: &str) {
        // Removed even when cgroups were turned off since: only what
        // exists is touched.
        let Ok(layout) = Layout::detect() else {
            return;
        };
        cgroups::remove(&layout, &self.config.runtime.cgroup_parent, id).await;
    }

    /// Pod `id`'s use of its host cgroup, while it has one.
    pub fn cgroup_usage(&self, id: &str) -> Option<Usage> {
        let layout = self.cgroup_layout().ok()??;
        cgroups::usage(&layout, &self.config.runtime.cgroup_parent, id)
    }

    /// Before a VM's cgroup goes: when its OOM killer struck, the pod's
    /// record and its ending say so, and an `oom` event is emitted.
    pub(super) fn host_oom_verdict(
        &self,
        record: &mut PodRecord,
        result: Result<RunOutcome, String>,
    ) -> Result<RunOutcome, String> {
        // No cgroup (off, or already removed): nothing new to tell.
        let Some(usage) = self.cgroup_usage(&record.id) else {
            return result;
        };
        let Some(reason) = cgroups::oom_reason(&usage) else {
            return result;
        };
        tracing::warn!(pod = %record.id, "{reason}");
        record.error = Some(reason.clone());
        self.count_host_oom(record);
        self.event(
            crate::events::Action::Oom,
            record,
            &[("scope", "host".to_string())],
        );
        match result {
            Err(e) => Err(format!("{reason} ({e})")),
            Ok(mut outcome) => {
                outcome.message = Some(reason);
                outcome.oom_killed = true;
                Ok(outcome)
            }
        }
    }
}
