//! What operators see of the pods' lives: the events (`hyper events`) and
//! the metrics (`GET /metrics`). The lifecycle files call one of these per
//! step, so each hook there stays one line.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinSet;

use super::boot::LivePod;
use super::model::{PodRecord, PodState};
use super::{lock, Runtime};
use crate::agent::AgentCallError;
use crate::events::{pod_attributes, Action, EventLog};
use crate::metrics::{scrape_registry, PodFigures, STATS_TIMEOUT};

impl Runtime {
    /// The pods' event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// An event about `record`'s pod, with the attributes every pod event
    /// carries and `extra`.
    pub(super) fn event(&self, action: Action, record: &PodRecord, extra: &[(&str, String)]) {
        let mut attributes = pod_attributes(
            record.name.as_deref(),
            record.image_name.as_deref(),
            &record.backend,
        );
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.events.emit(action, &record.id, attributes);
    }

    /// An event about pod `id`, if it has a record.
    pub(super) fn event_by_id(&self, action: Action, id: &str, extra: &[(&str, String)]) {
        if let Some(record) = self.record(id) {
            self.event(action, &record, extra);
        }
    }

    /// Every container of the pod runs, `booting` after its VM's launch
    /// began.
    pub(super) fn observe_started(&self, record: &PodRecord, booting: Instant) {
        self.metrics
            .boot_seconds
            .with_label_values(&[record.backend.as_str()])
            .observe(booting.elapsed().as_secs_f64());
        let mut extra = Vec::new();
        if let Some(started) = &record.started {
            extra.push(("start", started.mode.to_string()));
            if let Some(key) = &started.template {
                extra.push(("template", key.clone()));
            }
            if let Some(reason) = &started.reason {
                extra.push(("coldReason", reason.clone()));
            }
        }
        self.event(Action::Start, record, &extra);
    }

    /// The pod ended (its record marked exited); with `--rm` it is gone too.
    pub(super) fn observe_ended(&self, record: &PodRecord) {
        let code = record.exit_code.unwrap_or(super::RUNTIME_FAILURE_EXIT);
        self.event(Action::Die, record, &[("exitCode", code.to_string())]);
        if record.remove {
            self.event(Action::Destroy, record, &[]);
        }
    }

    /// The guest's OOM killer killed the init of container `index` of
    /// `record`'s pod: the record says so (Docker's `OOMKilled`, the pod's
    /// too, since its exit is that container's or a later one's), an `oom`
    /// event with `scope=guest` names the container, and it is counted.
    pub(super) fn observe_guest_oom(&self, record: &mut PodRecord, index: usize) {
        record.oom_killed = true;
        let container = match record.containers.get_mut(index) {
            Some(c) => {
                c.oom_killed = true;
                c.name.clone()
            }
            // A pod of one: its container is the pod.
            None => record.name.clone().unwrap_or_else(|| record.id.clone()),
        };
        tracing::warn!(pod = %record.id, %container, "the guest's OOM killer killed the container's process");
        self.count_guest_oom(record, container);
    }

    /// The guest's OOM killer ended the first process of `record`'s joined
    /// container `name` (a CRI container of a containerd sandbox): counted
    /// and an `oom` event (`scope=guest`, `container=<name>`) emitted. The
    /// pod goes on, so its own `oom_killed` stays as it is.
    pub(super) fn observe_joined_oom(&self, record: &PodRecord, name: &str) {
        tracing::warn!(pod = %record.id, container = %name, "the guest's OOM killer killed the joined container's process");
        self.count_guest_oom(record, name.to_string());
    }

    /// A guest OOM kill of `record`'s `container`: counted, and its `oom`
    /// event (`scope=guest`) emitted.
    fn count_guest_oom(&self, record: &PodRecord, container: String) {
        self.metrics
            .oom_kills
            .with_label_values(&["guest", record.backend.as_str()])
            .inc();
        self.event(
            Action::Oom,
            record,
            &[("scope", "guest".into()), ("container", container)],
        );
    }

    /// The host cgroup's OOM killer struck pod `record`'s VM: counted (the
    /// record and the `oom` event are the caller's).
    pub(super) fn count_host_oom(&self, record: &PodRecord) {
        self.metrics
            .oom_kills
            .with_label_values(&["host", record.backend.as_str()])
            .inc();
    }

    /// The pod's run ended with `code` and its policy boots it again.
    pub(super) fn observe_restart(&self, record: &PodRecord, code: i32) {
        self.event(Action::Die, record, &[("exitCode", code.to_string())]);
        self.metrics
            .restarts
            .with_label_values(&[record.backend.as_str()])
            .inc();
        self.event(
            Action::Restart,
            record,
            &[
                ("reason", "policy".into()),
                ("restartCount", record.restart_count.to_string()),
            ],
        );
    }

    /// The guest answered exec request `exec_id` in pod `id`, asked at
    /// `asked`: counted by result (`started`, `refused` as in command not
    /// found, `failed`) and timed; a started one is an `exec_start` event.
    pub(super) fn observe_exec_request<T>(
        &self,
        id: &str,
        exec_id: &str,
        answer: &Result<T, AgentCallError>,
        asked: Instant,
    ) {
        let result = match answer {
            Ok(_) => "started",
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => "refused",
            Err(_) => "failed",
        };
        let record = self.record(id);
        let backend = record.as_ref().map_or("", |r| r.backend.as_str());
        self.metrics.execs.with_label_values(&[result]).inc();
        self.metrics
            .exec_start_seconds
            .with_label_values(&[backend])
            .observe(asked.elapsed().as_secs_f64());
        if let (Some(record), Ok(_)) = (&record, answer) {
            self.event(
                Action::ExecStart,
                record,
                &[("execID", exec_id.to_string())],
            );
        }
    }

    /// The Prometheus text of `GET /metrics`. Each running pod's VM is
    /// asked for its figures side by side, each within [`STATS_TIMEOUT`].
    pub async fn metrics_text(&self) -> String {
        let (states, names) = {
            let pods = self.pods();
            let recovering = lock(&self.recovering);
            let mut states = [
                ("created", 0),
                ("running", 0),
                ("recovering", 0),
                ("exited", 0),
            ];
            let mut names = std::collections::BTreeMap::new();
            for (id, p) in pods.iter() {
                let slot = if recovering.contains(id) {
                    2
                } else {
                    match p.state {
                        PodState::Created => 0,
                        PodState::Running => 1,
                        PodState::Exited => 3,
                    }
                };
                states[slot].1 += 1;
                names.insert(
                    id.clone(),
                    (p.name.clone().unwrap_or_default(), p.backend.clone()),
                );
            }
            (states, names)
        };
        let live: Vec<(String, Arc<LivePod>)> = self
            .live_pods()
            .iter()
            .map(|(id, pod)| (id.clone(), pod.clone()))
            .collect();
        let mut reads = JoinSet::new();
        for (id, pod) in live {
            reads.spawn(async move {
                let stats = tokio::time::timeout(STATS_TIMEOUT, pod.vm.stats()).await;
                (id, stats)
            });
        }
        let mut figures = Vec::new();
        let mut failures = 0;
        while let Some(read) = reads.join_next().await {
            match read {
                Ok((id, Ok(Ok(stats)))) => {
                    let (name, backend) = names.get(&id).cloned().unwrap_or_default();
                    figures.push(PodFigures {
                        id,
                        name,
                        backend,
                        stats,
                    });
                }
                _ => failures += 1,
            }
        }
        figures.sort_by(|a, b| a.id.cmp(&b.id));
        let plugin_errors = hyper_hypervisor::plugin::call_errors();
        match scrape_registry(&states, &figures, failures, &plugin_errors) {
            Ok(scrape) => self.metrics.render(&scrape),
            Err(e) => {
                tracing::warn!("metrics: {e}");
                self.metrics.render(&prometheus::Registry::new())
            }
        }
    }
}
