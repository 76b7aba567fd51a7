//! Processes in a running pod and their stdio: `hyper exec`, and the
//! driver every guest process goes through (a container's first process as
//! much as an exec): stdin in, output out to the client, the log and
//! attached clients, terminal sizes, the exit status.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hyper_hypervisor::Vm;
use hyper_protocol::{ProcessSpec, Request, TerminalSize};
use tokio::sync::{broadcast, mpsc};

use super::attach::{Stdin, StdinSource};
use super::boot::TerminalLink;
use super::model::{ExecRequest, Output, RunError, RunIo, RunOutcome};
use super::store::check_env_and_workdir;
use super::{lock, Runtime, RUNTIME_FAILURE_EXIT};
use crate::agent::{
    AgentCallError, AgentClient, ProcessEnd, ProcessStreams, StreamChunk, StreamReceiver,
};
use crate::events::Action;
use crate::logs::{LogWriter, Stream as LogStream};
use crate::process;

impl Runtime {
    /// Runs another process in a running pod's container, attached to `io`.
    pub async fn exec(
        &self,
        id: &str,
        req: ExecRequest,
        io: RunIo,
    ) -> Result<RunOutcome, RunError> {
        if req.args.is_empty() {
            return Err(RunError::NoExecCommand);
        }
        check_env_and_workdir(&req.env, req.workdir.as_deref())?;
        crate::agent::check_c_strings(
            &req.args,
            &req.env,
            req.workdir.as_deref(),
            req.user.as_deref(),
        )
        .map_err(RunError::Invalid)?;
        let live = self.live_pod(id)?;
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        // The container's own env, workdir and user are where exec starts.
        let joined = req
            .container
            .as_deref()
            .and_then(|name| self.joined(id, name).ok());
        let (guest_id, base, security) = match joined {
            // A container that joined the running pod.
            Some(c) => (c.guest_id, (c.env, c.workdir, c.user), c.security),
            None => self.exec_target(id, req.container.as_deref(), &live)?,
        };
        let confinement =
            crate::security::exec_confinement(&crate::security::check(&security)?, req.privileged);
        // An exec gets its container's ulimits, as in Docker (runc sets the
        // spec's rlimits for every process of a container).
        let rlimits = crate::security::rlimits(&security)?;
        let n = live.next_exec.fetch_add(1, Ordering::Relaxed);
        let process_id = format!("exec-{n}");
        let streams = agent.new_process(&process_id)?;
        let process = ProcessSpec {
            id: process_id.clone(),
            args: req.args.clone(),
            env: process::merge_env(&base.0, &req.env),
            workdir: req.workdir.clone().or(base.1).unwrap_or_else(|| "/".into()),
            user: req.user.clone().or(base.2).unwrap_or_default(),
            terminal: req.tty,
            terminal_size: req.tty_size,
            stdio: streams.stdio,
            stderr: streams.stderr,
            confinement,
            rlimits,
        };
        let asked = std::time::Instant::now();
        let answer = agent
            .request(Request::Exec {
                container: guest_id.clone(),
                process,
            })
            .await;
        self.observe_exec_request(id, &process_id, &answer, asked);
        match answer {
            Ok(_) => {}
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => {
                return Ok(RunOutcome {
                    pod: id.to_string(),
                    exit_code: e.exit_code().unwrap_or(RUNTIME_FAILURE_EXIT),
                    message: Some(e.message),
                    oom_killed: false,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let (resizer, io) =
            client_process_io(&agent, &guest_id, &process_id, req.tty, req.interactive, io);
        // An exec is never reported OOM-killed (as in Docker): only a
        // container's init is.
        let code = drive_process(&agent, live.vm.clone(), streams, io)
            .await
            .map(|end| end.status);
        if let Some(task) = resizer {
            task.abort();
        }
        let exit = code.as_ref().map_or(RUNTIME_FAILURE_EXIT, |c| *c);
        let exec_id = ("execID", process_id.clone());
        self.event_by_id(
            Action::ExecDie,
            id,
            &[exec_id, ("exitCode", exit.to_string())],
        );
        let code = code.map_err(RunError::Failed)?;
        Ok(RunOutcome {
            pod: id.to_string(),
            exit_code: code,
            message: None,
            oom_killed: false,
        })
    }

    /// The container of the pod (or of its file) an exec runs in: its id in
    /// the guest, the env, workdir and user it starts from, its security.
    #[allow(clippy::type_complexity)]
    fn exec_target(
        &self,
        id: &str,
        container: Option<&str>,
        live: &super::boot::LivePod,
    ) -> Result<
        (
            String,
            (Vec<String>, Option<String>, Option<String>),
            crate::security::Security,
        ),
        RunError,
    > {
        Ok(match self.container_of(id, container)? {
            Some((_, c)) => (c.guest_id, (c.env, c.workdir, c.user), c.security),
            None => (
                live.main.guest_id.clone(),
                (
                    live.main.env.clone(),
                    live.main.workdir.clone(),
                    live.main.user.clone(),
                ),
                live.main.security.clone(),
            ),
        })
    }
}

/// A client's process (an exec, a joined container): its output to the
/// client, its stdin from the client when interactive, and the client's
/// terminal resizes forwarded to the guest when it has a terminal. The
/// returned task, if any, is aborted once the process ends.
pub(super) fn client_process_io(
    agent: &AgentClient,
    container: &str,
    process: &str,
    tty: bool,
    interactive: bool,
    io: RunIo,
) -> (Option<tokio::task::JoinHandle<()>>, ProcessIo) {
    let resizer = forward_resizes(TerminalLink::to(agent), container, process, tty, io.resize);
    let process_io = ProcessIo {
        output: Some(io.output),
        stdin: io.stdin.filter(|_| interactive).map(StdinSource::Client),
        log: None,
        attach: None,
    };
    (resizer, process_io)
}

/// Turns the client's new terminal sizes into WindowSize requests for a
/// terminal process (the guest sends SIGWINCH); nothing without a terminal.
pub(super) fn forward_resizes(
    link: TerminalLink,
    container: &str,
    process: &str,
    tty: bool,
    resize: Option<mpsc::Receiver<TerminalSize>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = resize.filter(|_| tty)?;
    let (container, process) = (container.to_string(), process.to_string());
    Some(tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            if size.rows == 0 || size.cols == 0 {
                continue;
            }
            *lock(&link.last_size) = Some(size);
            // Between two VMs of a restarted pod: the next one starts at
            // this size.
            let Some(agent) = lock(&link.session).clone() else {
                continue;
            };
            let request = Request::WindowSize {
                container: container.clone(),
                process: process.clone(),
                rows: size.rows,
                cols: size.cols,
            };
            if let Err(e) = agent.request(request).await {
                tracing::debug!(%container, %process, "resize refused: {e}");
            }
        }
    }))
}

/// Where a guest process's stdio goes; all optional.
#[derive(Default)]
pub(super) struct ProcessIo {
    /// The client that started it; it slows the process down when it reads
    /// slowly (the guest's credit follows what it took).
    pub(super) output: Option<mpsc::Sender<Output>>,
    /// Closed at once without it.
    pub(super) stdin: Option<StdinSource>,
    pub(super) log: Option<Arc<Mutex<LogWriter>>>,
    /// Clients attached later (`hyper attach`); they never slow it down.
    pub(super) attach: Option<broadcast::Sender<Output>>,
}

/// Feeds a guest process's stdin and carries its output to the client,
/// the log and attached clients until it exits; how it ended, or why that
/// is not known.
pub(super) async fn drive_process(
    agent: &AgentClient,
    vm: Arc<dyn Vm>,
    mut streams: ProcessStreams,
    io: ProcessIo,
) -> Result<ProcessEnd, String> {
    let stdin_task = {
        let agent = agent.clone();
        let stream = streams.stdio;
        let stdin = io.stdin;
        tokio::spawn(async move {
            match stdin {
                Some(StdinSource::Client(mut rx)) => feed_stdin(&agent, stream, &mut rx).await,
                Some(StdinSource::Hub(hub)) => {
                    // Held until this process's end: a restarted one reads
                    // the same hub next.
                    let mut rx = hub.lock().await;
                    feed_stdin(&agent, stream, &mut rx).await
                }
                None => {
                    let _ = agent.close_stdin(stream).await;
                }
            }
        })
    };
    let out = pump(
        agent,
        streams.stdio,
        &mut streams.stdout_rx,
        &io.output,
        &io.log,
        &io.attach,
        LogStream::Stdout,
    );
    let err = pump(
        agent,
        streams.stderr,
        &mut streams.stderr_rx,
        &io.output,
        &io.log,
        &io.attach,
        LogStream::Stderr,
    );
    let finished = async {
        tokio::join!(out, err);
        (&mut streams.exit_rx).await
    };
    let status = tokio::select! {
        s = finished => s,
        _ = vm.wait() => {
            stdin_task.abort();
            return Err("the VM stopped before the process exited".into());
        }
    };
    stdin_task.abort();
    status.map_err(|_| {
        agent
            .dead_reason()
            .unwrap_or_else(|| "no exit status from the guest".into())
    })
}

/// Sends a process what its client types until the client's input ends.
async fn feed_stdin(agent: &AgentClient, stream: u32, rx: &mut mpsc::Receiver<Stdin>) {
    while let Some(Stdin::Data(data)) = rx.recv().await {
        if agent.send_stdin(stream, &data).await.is_err() {
            return;
        }
    }
    let _ = agent.close_stdin(stream).await;
}

/// Forwards one guest stream to the caller, the log and attached clients,
/// granting the guest more credit only for what the caller has taken.
async fn pump(
    agent: &AgentClient,
    stream: u32,
    rx: &mut StreamReceiver,
    out: &Option<mpsc::Sender<Output>>,
    log: &Option<Arc<Mutex<LogWriter>>>,
    attach: &Option<broadcast::Sender<Output>>,
    which: LogStream,
) {
    let mut out = out.clone();
    while let Some(chunk) = rx.recv().await {
        let StreamChunk::Data(data) = chunk else {
            break;
        };
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if let Some(log) = log {
            lock(log).write(which, &data);
        }
        let wrapped = match which {
            LogStream::Stdout => Output::Stdout(data),
            LogStream::Stderr => Output::Stderr(data),
        };
        if let Some(attached) = attach.as_ref().filter(|a| a.receiver_count() > 0) {
            // A client too slow for the backlog loses output, and is told.
            let _ = attached.send(wrapped.clone());
        }
        if let Some(tx) = &out {
            if tx.send(wrapped).await.is_err() {
                // The client left: keep draining so the process is not
                // blocked forever; the log still gets everything.
                out = None;
            }
        }
        if agent.grant(stream, n).await.is_err() {
            break;
        }
    }
}
