//! Where pods are kept: the records in memory and in `pods/ID/pod.json`,
//! ids and names, and the record changes every verb shares (claimed for a
//! start, finished).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::boot::LivePod;
use super::model::{
    container_log_dir, containers_end_with_the_pod, ContainerRecord, PodRecord, PodState, RunError,
    RunOutcome,
};
use super::{lock, Runtime, RUNTIME_FAILURE_EXIT};

impl Runtime {
    pub(super) fn pods(&self) -> MutexGuard<'_, BTreeMap<String, PodRecord>> {
        lock(&self.pods)
    }

    pub(super) fn live_pods(&self) -> MutexGuard<'_, BTreeMap<String, Arc<LivePod>>> {
        lock(&self.live)
    }

    pub(super) fn pods_dir(&self) -> PathBuf {
        self.config.runtime.state_dir.join("pods")
    }

    /// The pod's directory, where its log lives.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.pods_dir().join(id)
    }

    pub fn list(&self) -> Vec<PodRecord> {
        self.pods().values().cloned().collect()
    }

    pub fn record(&self, id: &str) -> Option<PodRecord> {
        self.pods().get(id).cloned()
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.live_pods().contains_key(id)
    }

    pub(super) fn live_pod(&self, id: &str) -> Result<Arc<LivePod>, RunError> {
        self.live_pods()
            .get(id)
            .cloned()
            .ok_or_else(|| RunError::NotRunning(id.to_string()))
    }

    /// The full id of the pod `name_or_id` names: a full id, a name, or a
    /// unique prefix of an id.
    pub fn resolve(&self, name_or_id: &str) -> Result<String, RunError> {
        let pods = self.pods();
        if pods.contains_key(name_or_id) {
            return Ok(name_or_id.to_string());
        }
        if let Some(p) = pods
            .values()
            .find(|p| p.name.as_deref() == Some(name_or_id))
        {
            return Ok(p.id.clone());
        }
        let matches: Vec<&String> = if name_or_id.is_empty() {
            Vec::new()
        } else {
            pods.keys()
                .filter(|id| id.starts_with(name_or_id))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RunError::NoSuchPod(name_or_id.to_string())),
            many => Err(RunError::Invalid(format!(
                "{name_or_id} is ambiguous: it starts {} pod ids ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// A new pod's name follows Docker's rule and is not taken.
    pub(super) fn check_new_name(&self, name: Option<&str>) -> Result<(), RunError> {
        let Some(name) = name else {
            return Ok(());
        };
        check_name(name)?;
        if self
            .pods()
            .values()
            .any(|p| p.name.as_deref() == Some(name))
        {
            return Err(RunError::NameInUse(name.to_string()));
        }
        Ok(())
    }

    /// Lists a new pod, unless another pod holds its name already (checked
    /// and listed under one lock); on a conflict its fresh directory goes.
    pub(super) fn claim_new(&self, record: &PodRecord, pod_dir: &Path) -> Result<(), RunError> {
        let mut pods = self.pods();
        if let Some(name) = &record.name {
            if pods.values().any(|p| p.name.as_deref() == Some(name)) {
                drop(pods);
                let _ = std::fs::remove_dir_all(pod_dir);
                return Err(RunError::NameInUse(name.clone()));
            }
        }
        pods.insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Saves a record (pod.json and memory); a failed write is logged, the
    /// pod goes on.
    pub(super) fn save(&self, record: &PodRecord) {
        let mut pods = self.pods();
        let mut record = record.clone();
        // Its joined containers are the join verbs' to change (see
        // `pods::join`): a copy a supervisor holds keeps the current ones.
        if let Some(current) = pods.get(&record.id) {
            record.joined = current.joined.clone();
            record.joins = current.joins;
        }
        if record.state == PodState::Exited {
            containers_end_with_the_pod(&mut record);
        }
        if let Err(e) = write_record(&self.pod_dir(&record.id), &record) {
            tracing::warn!(pod = %record.id, "cannot save pod.json: {e}");
        }
        pods.insert(record.id.clone(), record);
    }

    /// Marks a pod exited with `result` and removes what only a running pod
    /// needs (or the whole pod, for `--rm`).
    pub(super) fn finish_record(&self, mut record: PodRecord, result: &Result<RunOutcome, String>) {
        let pod_dir = self.pod_dir(&record.id);
        // A failure's own message, else what the host found out about the
        // ending (an OOM kill in its cgroup, set by `host_oom_verdict`).
        record.error = result.as_ref().err().cloned().or(record.error.take());
        mark_exited(
            &mut record,
            result
                .as_ref()
                .map_or(RUNTIME_FAILURE_EXIT, |o| o.exit_code),
        );
        self.observe_ended(&record);
        let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
        // Joined containers' roots are unbound before anything under the
        // pod's directory is removed: never a file of theirs.
        let unbound = self.join_down(&pod_dir);
        if record.remove && !unbound {
            tracing::warn!(pod = %record.id, "a joined container's root is still mounted under {}: the pod's directory stays", pod_dir.display());
            self.save(&record);
        } else if record.remove {
            let _ = std::fs::remove_dir_all(&pod_dir);
            // `--rm` takes the pod's anonymous volumes with it (Docker's
            // `run --rm`).
            let _guard = super::lock(&self.volume_lock);
            self.pods().remove(&record.id);
            self.remove_anonymous_volumes(&record.mounts);
        } else {
            self.save(&record);
        }
    }

    /// Marks an exited pod as starting, under the lock, so that a second
    /// `start` racing this one finds it not exited; `update` adjusts the
    /// record on the way. The record is saved.
    pub(super) fn claim_for_start(
        &self,
        id: &str,
        update: impl FnOnce(&mut PodRecord),
    ) -> Result<PodRecord, RunError> {
        let record = {
            let mut pods = self.pods();
            let Some(record) = pods.get_mut(id) else {
                return Err(RunError::NoSuchPod(id.to_string()));
            };
            if record.state != PodState::Exited {
                return Err(RunError::Conflict(format!("pod {id} is starting already")));
            }
            record.state = PodState::Created;
            record.exit_code = None;
            record.oom_killed = false;
            record.finished_unix = None;
            record.vm_pid = None;
            record.vm_pid_start = None;
            record.error = None;
            update(record);
            record.clone()
        };
        let pod_dir = self.pod_dir(id);
        if let Err(source) = write_record(&pod_dir, &record) {
            let err = RunError::State {
                path: pod_dir,
                source,
            };
            self.finish_record(record, &Err(err.to_string()));
            return Err(err);
        }
        Ok(record)
    }

    /// The container a `hyper exec`/`logs` names (`None`: the main one):
    /// its id in the guest and its record, if the pod has several.
    pub fn container_of(
        &self,
        id: &str,
        container: Option<&str>,
    ) -> Result<Option<(usize, ContainerRecord)>, RunError> {
        let Some(name) = container else {
            return Ok(None);
        };
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NoSuchPod(id.to_string()))?;
        record
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .map(|(i, c)| Some((i, c.clone())))
            .ok_or_else(|| {
                let names: Vec<&str> = record.containers.iter().map(|c| c.name.as_str()).collect();
                RunError::NotFound(if names.is_empty() {
                    format!("pod {id} has one unnamed container: drop /{name}")
                } else {
                    format!(
                        "pod {id} has no container {name}; it has {}",
                        names.join(", ")
                    )
                })
            })
    }

    /// The log directory of the pod's main container, or of `container`.
    pub fn log_dir(&self, id: &str, container: Option<&str>) -> Result<PathBuf, RunError> {
        Ok(match self.container_of(id, container)? {
            Some((i, c)) => container_log_dir(&self.pod_dir(id), i, &c.name),
            None => self.pod_dir(id),
        })
    }
}

/// The record of a pod that ended with `exit_code`: no VM, every container
/// exited, the time it finished.
pub(super) fn mark_exited(record: &mut PodRecord, exit_code: i32) {
    record.state = PodState::Exited;
    record.vm = None;
    containers_end_with_the_pod(record);
    record.exit_code = Some(exit_code);
    record.finished_unix = Some(now_unix());
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a `pod.json`; `None` when there is none or it does not parse.
#[cfg(test)]
pub(super) fn read_record(pod_dir: &Path) -> Option<PodRecord> {
    std::fs::read(pod_dir.join("pod.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok())
}

pub(super) fn write_record(pod_dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    let tmp = pod_dir.join("pod.json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let written = crate::private::write_private(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, pod_dir.join("pod.json")));
    if written.is_err() {
        // A full disk leaves a partial copy; pod.json itself is intact.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

pub(super) fn new_id() -> String {
    let mut bytes = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&(nanos as u64 ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    hyper_hypervisor::digest::hex(&bytes)
}

/// `-e` entries are `KEY=VALUE` and `-w` is absolute, for run and exec alike.
pub(super) fn check_env_and_workdir(env: &[String], workdir: Option<&str>) -> Result<(), RunError> {
    if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        return Err(RunError::Invalid(format!("-e {bad}: expected KEY=VALUE")));
    }
    if let Some(w) = workdir {
        if !w.starts_with('/') {
            return Err(RunError::Invalid(format!(
                "-w {w}: the working directory must be an absolute path"
            )));
        }
    }
    Ok(())
}

/// Pod names follow Docker's rule.
fn check_name(name: &str) -> Result<(), RunError> {
    let ok = name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RunError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_hex() {
        let id = new_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_id());
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("-web").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
    }
}
