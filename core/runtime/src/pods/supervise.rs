//! A running pod's supervisor: it carries each container's output to its
//! log, records each exit, ends the pod once the last container has exited
//! (or the VM died), and boots it again in a fresh VM when its restart
//! policy says so. The same task follows a pod this hyperd started and one
//! it took over from an earlier hyperd.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hyper_hypervisor::VmSpec;
use tokio::sync::mpsc;

use super::attach::{self, Stdin};
use super::boot::{LivePod, Running, VmStart};
use super::exec::{drive_process, forward_resizes, ProcessIo};
use super::model::{
    container_log_dir, pod_exit_code, restart_delay, Member, Output, PodRecord, PodState, RunError,
    RunIo, RunOutcome,
};
use super::{console_tail, lock, Runtime, RUNTIME_FAILURE_EXIT};
use crate::agent::AgentClient;
use crate::logs::LogWriter;

/// Where the output of one round of a pod's containers goes.
struct Sinks {
    /// Each container's log, by index.
    logs: Vec<Arc<Mutex<LogWriter>>>,
    /// The client that started the pod (`hyper run` without `-d`): the main
    /// container's output, at the client's pace.
    output: Option<mpsc::Sender<Output>>,
    /// That client's stdin, joined to the pod's stdin hub the first round.
    client_stdin: Option<mpsc::Receiver<Stdin>>,
}

impl Runtime {
    /// Supervises `running` until the pod is over, restarting it as its
    /// policy says; `spec` is its VM, which each restart boots afresh.
    pub(super) async fn supervise(
        self: Arc<Self>,
        running: Running,
        io: Option<RunIo>,
        spec: VmSpec,
    ) {
        let Running {
            mut live,
            mut record,
            mut agent,
            mut inits,
        } = running;
        let id = record.id.clone();
        let members = match record.members() {
            Some(m) if !m.is_empty() => m,
            _ => {
                let reason = "internal error: the pod's record names no container".to_string();
                self.teardown(&live, record, Err(reason)).await;
                return;
            }
        };
        let pod_dir = self.pod_dir(&id);
        let (output, client_stdin, resize) = match io {
            Some(io) => (Some(io.output), io.stdin, io.resize),
            None => (None, None, None),
        };
        let mut sinks = Sinks {
            logs: members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let dir = container_log_dir(&pod_dir, i, &m.name);
                    Arc::new(Mutex::new(LogWriter::new(&dir, self.log_rotation())))
                })
                .collect(),
            output,
            client_stdin,
        };
        // Sizes follow the pod across restarts by its policy.
        let main = &members[0];
        let resizer = forward_resizes(
            live.links.terminal.clone(),
            &main.guest_id,
            &main.init_process,
            main.tty,
            resize,
        );
        loop {
            let inits_now = std::mem::take(&mut inits);
            let result = self
                .follow(&live, &mut record, &agent, inits_now, &mut sinks)
                .await;
            let code = result
                .as_ref()
                .map_or(RUNTIME_FAILURE_EXIT, |o| o.exit_code);
            let restart = !live.stop_requested.load(Ordering::SeqCst)
                && !live.links.stopped.load(Ordering::SeqCst)
                && !self.stopping.load(Ordering::SeqCst)
                && record.restart.should_restart(code, record.restart_count);
            let hypervisor = match self.hypervisor.clone() {
                Ok(hv) if restart => hv,
                _ => {
                    if let Some(task) = &resizer {
                        task.abort();
                    }
                    self.teardown(&live, record, result).await;
                    return;
                }
            };
            // A fresh VM for each restart: nothing of the old one survives.
            let _ = live.vm.kill().await;
            let _ = live.vm.wait().await;
            live.release_volumes();
            self.network_down(&mut record).await;
            let result = self.host_oom_verdict(&mut record, result);
            self.cgroup_down(&id).await;
            record.restart_count += 1;
            record.exit_code = Some(code);
            self.observe_restart(&record, code);
            tracing::info!(pod = %id, code, restarts = record.restart_count, "restarting by policy");
            tokio::time::sleep(restart_delay(record.restart_count)).await;
            if live.links.stopped.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
                // Stopped while it waited to restart.
                if let Some(task) = &resizer {
                    task.abort();
                }
                self.teardown(&live, record, result).await;
                return;
            }
            // Each VM gets its own id: the old one may still be named
            // somewhere until its last handle is dropped.
            let mut next_spec = spec.clone();
            next_spec.id = format!("{id}-{}", record.restart_count);
            let next_members = restarted(&members, &live);
            let started = self
                .start_vm(
                    hypervisor,
                    next_spec,
                    record.clone(),
                    next_members,
                    live.links.clone(),
                )
                .await;
            match started {
                Ok(VmStart::Running(next)) => {
                    let next = *next;
                    (live, record, agent, inits) = (next.live, next.record, next.agent, next.inits);
                }
                // Already torn down and recorded.
                Ok(VmStart::Exited(_)) | Err(_) => {
                    if let Some(task) = &resizer {
                        task.abort();
                    }
                    return;
                }
            }
        }
    }

    /// Follows one VM's run of the pod: every container in `inits` until it
    /// exits, recording each exit. How that run ended: the pod's exit code
    /// (the first non-zero one in container order), or why it has none.
    async fn follow(
        &self,
        live: &Arc<LivePod>,
        record: &mut PodRecord,
        agent: &AgentClient,
        inits: Vec<(usize, crate::agent::ProcessStreams)>,
        sinks: &mut Sinks,
    ) -> Result<RunOutcome, String> {
        let id = record.id.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut count = 0;
        for (i, streams) in inits {
            let Some(log) = sinks.logs.get(i).cloned() else {
                continue;
            };
            count += 1;
            // The main container: the starting client, stdin, and `hyper
            // attach POD` follow it.
            let main = i == 0;
            let io = ProcessIo {
                output: sinks.output.clone().filter(|_| main),
                stdin: if main {
                    attach::open_stdin(live, live.interactive, sinks.client_stdin.take())
                } else {
                    None
                },
                log: Some(log.clone()),
                attach: main.then(|| live.links.attach.clone()),
            };
            let (agent, vm, tx) = (agent.clone(), live.vm.clone(), tx.clone());
            tokio::spawn(async move {
                let result = drive_process(&agent, vm, streams, io).await;
                lock(&log).flush();
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        // Exits recorded before (a takeover) count with this round's.
        let mut codes: Vec<Option<i32>> = if record.is_pod_file_pod() {
            record.containers.iter().map(|c| c.exit_code).collect()
        } else {
            vec![None]
        };
        let mut failure = None;
        let mut done = 0;
        while let Some((i, result)) = rx.recv().await {
            done += 1;
            let stopped = live.stop_requested.load(Ordering::SeqCst);
            if let Ok(end) = &result {
                if end.oom_killed {
                    self.observe_guest_oom(record, i);
                }
            }
            let code = match result {
                Ok(end) => end.status,
                // `hyper stop`/`kill` ended it by taking the VM down.
                Err(_) if stopped => 128 + libc::SIGKILL,
                Err(reason) => {
                    failure.get_or_insert(reason);
                    RUNTIME_FAILURE_EXIT
                }
            };
            if let Some(slot) = codes.get_mut(i) {
                *slot = Some(code);
            }
            if let Some(c) = record.containers.get_mut(i) {
                c.state = PodState::Exited;
                c.exit_code = Some(code);
                tracing::debug!(pod = %id, container = %c.name, code, "container exited");
            }
            if done < count {
                self.save(record);
            }
        }
        match failure {
            Some(reason) if !live.stop_requested.load(Ordering::SeqCst) => Err(RunError::Boot {
                reason,
                console: console_tail(&self.pod_dir(&id).join("console.log")),
            }
            .to_string()),
            _ => Ok(RunOutcome {
                pod: id,
                exit_code: pod_exit_code(codes),
                message: None,
                oom_killed: record.oom_killed,
            }),
        }
    }
}

/// The containers of a pod's next VM: as before, the main one's terminal at
/// the last size a client asked for.
fn restarted(members: &[Member], live: &LivePod) -> Vec<Member> {
    let mut next = members.to_vec();
    if let (Some(size), Some(main)) = (*lock(&live.links.terminal.last_size), next.first_mut()) {
        main.tty_size = Some(size);
    }
    next
}
