//! A starting hyperd and the pods an earlier one left: each record is
//! taken over (its VM through the backend, its hyperstart session through a
//! resync, then the same supervisor as a pod this hyperd started), or marked
//! exited with its VM stopped and its run directory removed.
//!
//! The decisions, per `pods/ID`:
//! * no `pod.json`, nothing set aside and nothing running from its run
//!   directory: a launch that died half-way; the directory goes. A corrupt
//!   record is set aside (`crate::quarantine`) and the directory kept;
//! * exited: kept as it is (its run directory goes);
//! * running, and the backend recovers its VM and hyperstart answers the
//!   resync: adopted, every container whose first process still runs (or
//!   whose exit hyperstart kept) supervised again;
//! * running, but no VM saved, another backend, a VM gone or a guest that
//!   does not answer: exited with [`RUNTIME_FAILURE_EXIT`], its VM process
//!   killed if it still runs.

use std::sync::Arc;

use hyper_hypervisor::adopt::process_start_time;
use hyper_hypervisor::Vm;

use super::boot::{agent_channel, LivePod, PodLinks, Running};
use super::exec::{drive_process, ProcessIo};
use super::model::{PodRecord, PodState, Restored, Takeovers};
use super::store::{mark_exited, write_record};
use super::{lock, Runtime, REATTACH_TIMEOUT, RUNTIME_FAILURE_EXIT};
use crate::agent::AgentClient;

impl Runtime {
    /// Takes over the pods an earlier hyperd left running (VM and
    /// hyperstart session), and marks the rest exited, stopping their VMs
    /// and removing their sockets and run directories.
    pub async fn restore(self: &Arc<Self>) -> std::io::Result<Restored> {
        Ok(self.begin_restore()?.finish().await)
    }

    /// Whether pod `id` is being taken over after a restart (listed as
    /// `recovering`; verbs other than reads wait for the takeover).
    pub fn is_recovering(&self, id: &str) -> bool {
        lock(&self.recovering).contains(id)
    }

    /// The first, quick half of [`Runtime::restore`]: reads the records,
    /// lists the pods to take over as `recovering`, and starts their
    /// takeovers. hyperd serves its API while they run.
    pub fn begin_restore(self: &Arc<Self>) -> std::io::Result<Takeovers> {
        // Before any pod can build one.
        self.remove_partial_templates();
        let dir = self.pods_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Takeovers {
                    restored: Restored::default(),
                    tasks: tokio::task::JoinSet::new(),
                })
            }
            Err(e) => return Err(e),
        };
        let mut restored = Restored::default();
        let mut running = Vec::new();
        let mut exited_with_network = Vec::new();
        let mut exited = Vec::new();
        for entry in entries.flatten() {
            let pod_dir = entry.path();
            // A corrupt record is set aside, never a reason to delete.
            let record = match crate::quarantine::read_record::<PodRecord>(&pod_dir) {
                crate::quarantine::Found::Record(r) => r,
                crate::quarantine::Found::Removed => {
                    restored.cleaned += 1;
                    continue;
                }
                crate::quarantine::Found::Kept { .. } => continue,
            };
            if record.state == PodState::Exited {
                let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
                // Its VM ended but hyperd may have died before its cgroup
                // was removed.
                exited.push(record.id.clone());
                if record.network.is_some() {
                    // Its VM ended but hyperd died before the network was
                    // taken down.
                    exited_with_network.push(record.clone());
                }
                self.pods().insert(record.id.clone(), record);
                continue;
            }
            running.push(record);
        }
        // Taken over side by side: a guest slow to answer its resync (tens
        // of seconds on an emulated console) does not hold the others up.
        let mut takeovers = tokio::task::JoinSet::new();
        if !exited.is_empty() {
            let rt = self.clone();
            tokio::spawn(async move {
                for id in exited {
                    rt.cgroup_down(&id).await;
                }
            });
        }
        for mut record in exited_with_network {
            let rt = self.clone();
            takeovers.spawn(async move {
                rt.network_down(&mut record).await;
                rt.save(&record);
                false
            });
        }
        for record in running {
            lock(&self.recovering).insert(record.id.clone());
            self.pods().insert(record.id.clone(), record.clone());
            let rt = self.clone();
            takeovers.spawn(async move {
                let id = record.id.clone();
                let ok = match rt.reattach(record.clone()).await {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::info!(pod = %record.id, "cannot take the pod over: {reason}");
                        rt.give_up(record).await;
                        false
                    }
                };
                lock(&rt.recovering).remove(&id);
                ok
            });
        }
        Ok(Takeovers {
            restored,
            tasks: takeovers,
        })
    }

    /// Removes every pod under the state dir, without taking any over: a
    /// running one's VM process is killed (if its start time still matches
    /// the record) and its network taken down first. For a front end whose
    /// pods cannot outlive it (the containerd shim's `delete`, after its
    /// server died). Returns how many pods went.
    pub async fn discard_left_pods(&self) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(self.pods_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut gone = 0;
        for entry in entries.flatten() {
            let pod_dir = entry.path();
            if let crate::quarantine::Found::Record(record) =
                crate::quarantine::read_record::<PodRecord>(&pod_dir)
            {
                if record.state != PodState::Exited || record.network.is_some() {
                    self.give_up(record).await;
                }
            }
            std::fs::remove_dir_all(&pod_dir)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Marks a pod left running by an earlier hyperd exited, kills its VM
    /// process if it still runs, and takes its network down.
    async fn give_up(&self, mut record: PodRecord) {
        let pod_dir = self.pod_dir(&record.id);
        if let (Some(pid), Some(start)) = (record.vm_pid, record.vm_pid_start) {
            if process_start_time(pid) == Some(start) {
                tracing::info!(pod = %record.id, pid, "killing the VM of a pod left by a previous hyperd");
                // SAFETY: plain kill(2) on a pid whose start time matches
                // the one recorded at launch, so it is still that VM's
                // process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        self.network_down(&mut record).await;
        // A VMM its cgroup's OOM killer took while no hyperd ran is still
        // told.
        let _ = self.host_oom_verdict(&mut record, Err(String::new()));
        self.cgroup_down(&record.id).await;
        mark_exited(&mut record, RUNTIME_FAILURE_EXIT);
        self.observe_ended(&record);
        let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
        let _ = write_record(&pod_dir, &record);
        self.pods().insert(record.id.clone(), record);
    }

    /// Takes one running pod over: its VM through the backend, its
    /// hyperstart session through a resync, then supervises it as if this
    /// hyperd had started it. On failure nothing is left tracked.
    async fn reattach(self: &Arc<Self>, mut record: PodRecord) -> Result<(), String> {
        let hypervisor = self.hypervisor.clone()?;
        let (Some(saved), Some(members)) = (record.vm.clone(), record.members()) else {
            return Err("it was saved without what a takeover needs".into());
        };
        let Some(main) = members.first().cloned() else {
            return Err("its record names no container".into());
        };
        if hypervisor.name() != record.backend {
            return Err(format!(
                "it runs on {}, this hyperd on {}",
                record.backend,
                hypervisor.name()
            ));
        }
        let vm: Arc<dyn Vm> = hypervisor
            .recover(saved.spec.clone(), saved.info.clone(), saved.pid_start)
            .await
            .map_err(|e| e.to_string())?
            .into();
        let (agent, processes) =
            match AgentClient::reattach(&agent_channel(vm.as_ref()), REATTACH_TIMEOUT).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = vm.kill().await;
                    let _ = vm.wait().await;
                    return Err(format!("hyperstart: {e}"));
                }
            };
        let next_exec = processes
            .iter()
            .filter_map(|p| p.process.strip_prefix("exec-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let interactive = record.container.as_ref().is_some_and(|c| c.interactive);
        let live = LivePod::new(vm.clone(), &PodLinks::new(), main, interactive, next_exec);
        live.set_agent(&agent);
        // Its block volumes are locked again for it (the records already
        // kept other pods off them while no hyperd ran).
        match self.lock_block_volumes(&record) {
            Ok(locks) => *lock(&live.block_locks) = locks,
            Err(e) => tracing::warn!(pod = %record.id, "cannot lock its block volumes again: {e}"),
        }
        let live = Arc::new(live);
        if let Some(att) = &record.network {
            self.ports.hold(&record.id, &att.ports);
        }
        self.live_pods().insert(record.id.clone(), live.clone());
        self.pods().insert(record.id.clone(), record.clone());
        let mut inits = Vec::new();
        for p in &processes {
            let streams = agent.adopt_process(p);
            // The first process of a container, by its index in the pod.
            let first = members
                .iter()
                .position(|m| m.guest_id == p.container && m.init_process == p.process);
            if let Some(index) = first {
                inits.push((index, streams));
                continue;
            }
            // An exec whose client is gone: drain it so its output never
            // stalls the guest, until it exits.
            let (agent, vm) = (agent.clone(), vm.clone());
            tokio::spawn(async move {
                let _ = drive_process(&agent, vm, streams, ProcessIo::default()).await;
            });
        }
        tracing::info!(pod = %record.id, processes = processes.len(), "took the pod over");
        let mut extra = Vec::new();
        if let Some(att) = &record.network {
            extra.push(("network", self.check_network(&record.id, att).await));
        }
        self.event(crate::events::Action::Takeover, &record, &extra);
        // Containers that ended while no hyperd listened, and whose exit
        // hyperstart no longer remembers.
        for (i, c) in record.containers.iter_mut().enumerate() {
            if c.state == PodState::Running && !inits.iter().any(|(j, _)| *j == i) {
                c.state = PodState::Exited;
                c.exit_code = Some(RUNTIME_FAILURE_EXIT);
            }
        }
        if inits.is_empty() && !record.is_pod_file_pod() {
            self.teardown(
                &live,
                record,
                Err("the container's exit status was lost while hyperd was down".into()),
            )
            .await;
            return Ok(());
        }
        let running = Running {
            live,
            record,
            agent,
            inits,
        };
        let rt = self.clone();
        tokio::spawn(async move { rt.supervise(running, None, saved.spec).await });
        Ok(())
    }
}
