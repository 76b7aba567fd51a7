//! The verbs on an existing pod: wait, kill, stop, rm, start, restart and
//! stats. Each works the same on a pod of one container and on a pod file's
//! pod.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_protocol::{AgentErrorKind, Request};

use super::model::{PodState, RunError, Started};
use super::{lock, Runtime, RUNTIME_FAILURE_EXIT};
use crate::agent::{AgentCallError, AgentClient};
use crate::events::Action;

impl Runtime {
    /// Waits for the pod to exit and returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i32, RunError> {
        let live = self.live_pods().get(id).cloned();
        if let Some(live) = live {
            let mut rx = live.outcome.clone();
            drop(live);
            let outcome = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RunError::Failed("the pod's supervisor is gone".into()))?
                .clone();
            return Ok(match outcome {
                Some(Ok(o)) => o.exit_code,
                _ => RUNTIME_FAILURE_EXIT,
            });
        }
        self.record(id)
            .and_then(|r| r.exit_code)
            .ok_or_else(|| RunError::NoSuchPod(id.to_string()))
    }

    /// Sends `signal` to the first process of every running container of
    /// the pod.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RunError> {
        if !(1..=64).contains(&signal) {
            return Err(RunError::Invalid(format!(
                "signal {signal}: use 1 to 64 or a name such as TERM or KILL"
            )));
        }
        let live = self.live_pod(id)?;
        self.event_by_id(Action::Kill, id, &[("signal", signal.to_string())]);
        if signal == libc::SIGKILL {
            // PID 1 of the container may not die of a signal sent inside its
            // namespace; SIGKILL always ends the pod.
            live.stop_requested.store(true, Ordering::SeqCst);
            live.vm.kill().await?;
            return Ok(());
        }
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        self.signal_containers(id, &agent, signal).await
    }

    /// Signals each running container's first process. A container of a
    /// pod file's pod that exited in the meantime is skipped; the pod fails
    /// only if no container could be signalled.
    async fn signal_containers(
        &self,
        id: &str,
        agent: &AgentClient,
        signal: i32,
    ) -> Result<(), RunError> {
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NoSuchPod(id.to_string()))?;
        let targets: Vec<(String, String)> = if record.is_pod_file_pod() {
            record
                .containers
                .iter()
                .filter(|c| c.state == PodState::Running)
                .map(|c| (c.guest_id.clone(), c.init_process.clone()))
                .collect()
        } else {
            vec![(id.to_string(), super::INIT_PROCESS.to_string())]
        };
        let mut delivered = false;
        let mut last_err = None;
        for (container, process) in targets {
            match agent
                .request(Request::Signal {
                    container,
                    process,
                    signal,
                })
                .await
            {
                Ok(_) => delivered = true,
                // It exited in the meantime.
                Err(AgentCallError::Agent(e))
                    if e.kind == AgentErrorKind::NotFound && record.is_pod_file_pod() => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) if !delivered => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// SIGTERM, then after `grace` the VM is taken down. Returns the exit code.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<i32, RunError> {
        let live = match self.live_pod(id) {
            Ok(l) => l,
            // Stopping a stopped pod is not an error (as in Docker).
            Err(_) => return self.wait(id).await,
        };
        // However the containers take the SIGTERM, the restart policy does
        // not bring the pod back.
        live.links.stopped.store(true, Ordering::SeqCst);
        // The grace period starts now, not once a guest that no longer
        // answers has let the SIGTERM request time out.
        let mut rx = live.outcome.clone();
        let timed_out = tokio::time::timeout(grace, async {
            let _ = self.kill(id, libc::SIGTERM).await;
            rx.wait_for(Option::is_some).await.map(|_| ())
        })
        .await
        .is_err();
        if timed_out {
            // The pod's VM now: a restart may have been under way.
            let current = self.live_pod(id).unwrap_or(live);
            current.stop_requested.store(true, Ordering::SeqCst);
            if let Err(e) = current.vm.kill().await {
                tracing::warn!(pod = %id, "kill: {e}");
            }
        } else {
            drop(live);
        }
        let code = self.wait(id).await?;
        self.event_by_id(Action::Stop, id, &[]);
        Ok(code)
    }

    /// Removes an exited pod's record, log and files; `force` stops a
    /// running one first; `volumes` (`hyper rm -v`) removes its anonymous
    /// volumes too (Docker's `rm -v`; a plain `rm` keeps them).
    pub async fn remove(&self, id: &str, force: bool, volumes: bool) -> Result<(), RunError> {
        if self.is_running(id) {
            if !force {
                return Err(RunError::Running(id.to_string()));
            }
            self.stop(id, Duration::ZERO).await?;
        }
        let dir = self.pod_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RunError::State { path: dir, source }),
        }
        self.event_by_id(Action::Destroy, id, &[]);
        let _guard = super::lock(&self.volume_lock);
        let record = self.pods().remove(id);
        if let (true, Some(record)) = (volumes, record) {
            self.remove_anonymous_volumes(&record.mounts);
        }
        Ok(())
    }

    /// Starts an exited pod again in a fresh VM with the containers it was
    /// created with, each from its rootfs image (built again if it was
    /// removed since); its logs go on. A running pod is left as it is (as
    /// in Docker).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Started, RunError> {
        if let Some(live) = self.live_pods().get(id) {
            return Ok(Started {
                id: id.to_string(),
                early: None,
                outcome: live.outcome.clone(),
            });
        }
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NoSuchPod(id.to_string()))?;
        let members = match record.members() {
            Some(m) if !record.is_pod_file_pod() => m,
            Some(m) if record.pod_file.is_some() && record.container.is_some() => m,
            Some(_) => {
                return Err(RunError::Conflict(format!(
                    "pod {id} was created by an older hyperd that did not keep its pod file; create it anew"
                )))
            }
            None => {
                return Err(RunError::Conflict(format!(
                    "pod {id} was created by an older hyperd that did not keep its container; run it anew"
                )))
            }
        };
        let hypervisor = self.ready_to_launch()?;
        let size = self.checked_vm_size(record.size_request())?;
        let mut images = Vec::with_capacity(members.len());
        for m in &members {
            let image = self
                .rootfs_again(&m.rootfs_image, m.image.as_deref(), m.rootfs_dir.as_ref())
                .await?;
            images.push(image);
        }
        let record = self.claim_for_start(id, |r| {
            for (c, image) in r.containers.iter_mut().zip(&images) {
                c.rootfs_image = image.clone();
                c.state = PodState::Created;
                c.exit_code = None;
                c.oom_killed = false;
            }
            if let Some(main) = images.first() {
                r.rootfs_image = main.clone();
            }
        })?;
        self.launch(hypervisor, record, size, None).await
    }

    /// Stops a pod (as [`Runtime::stop`]) and starts it again.
    pub async fn restart(self: &Arc<Self>, id: &str, grace: Duration) -> Result<Started, RunError> {
        self.stop(id, grace).await?;
        let started = self.start(id).await?;
        self.event_by_id(Action::Restart, id, &[("reason", "restart".into())]);
        Ok(started)
    }

    /// Host-side figures of a running pod's VM.
    pub async fn stats(&self, id: &str) -> Result<hyper_hypervisor::VmStats, RunError> {
        let live = self.live_pod(id)?;
        Ok(live.vm.stats().await?)
    }
}
