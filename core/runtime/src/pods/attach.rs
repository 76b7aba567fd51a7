//! `hyper attach`: more clients on a running pod's main process.
//!
//! Output fans out through a broadcast channel that outlives each VM of a
//! pod restarted by its policy, so an attached client follows the restarts.
//! Attached clients never slow the container down: one that falls more
//! than [`BACKLOG_CHUNKS`] behind loses output and is told so on stderr.
//! The client that started the pod (`hyper run` without `-d`) is different:
//! it is read at its own pace, as before.
//!
//! Stdin: a pod started with `-i` keeps its main process's stdin open in a
//! hub for as long as the pod runs (across restarts by its policy). Every
//! client (the starting one, then each attach) feeds the hub; a client that
//! leaves (detach keys, a dropped connection) leaves stdin open, and a
//! client's end of input closes it, as `docker run -i` does.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::boot::LivePod;
use super::exec::forward_resizes;
use super::model::{Output, RunError, RunIo, RunOutcome};
use super::Runtime;

/// Output chunks kept for an attached client that reads slowly (each chunk
/// is at most one guest frame, 64 KiB).
pub(super) const BACKLOG_CHUNKS: usize = 64;

/// What a client sends to a process's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdin {
    Data(Vec<u8>),
    /// The client's input ended: the process reads end of file.
    Close,
}

/// Where a process's stdin comes from.
pub(super) enum StdinSource {
    /// The one client that started it (`exec -i`).
    Client(mpsc::Receiver<Stdin>),
    /// A pod's main process: every attached client, across restarts.
    Hub(Arc<tokio::sync::Mutex<mpsc::Receiver<Stdin>>>),
}

/// The stdin of a pod's main process, kept open with `-i` for as long as
/// the pod lives: clients feed the sender, each VM's process reads the
/// receiver in turn.
#[derive(Clone)]
pub(super) struct StdinHub {
    tx: mpsc::Sender<Stdin>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Stdin>>>,
}

impl StdinHub {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel(16);
        Self {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

/// The main process's stdin: the pod's hub when it keeps stdin open
/// (`-i`), with `client` joined to it; without `-i`, none (closed at once).
pub(super) fn open_stdin(
    live: &LivePod,
    interactive: bool,
    client: Option<mpsc::Receiver<Stdin>>,
) -> Option<StdinSource> {
    if !interactive {
        return None;
    }
    let hub = &live.links.stdin;
    if let Some(client) = client {
        join_stdin(client, hub.tx.clone());
    }
    Some(StdinSource::Hub(hub.rx.clone()))
}

/// Feeds one client's input into a stdin hub until the client ends it or
/// leaves.
fn join_stdin(
    mut client: mpsc::Receiver<Stdin>,
    hub: mpsc::Sender<Stdin>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = client.recv().await {
            let close = event == Stdin::Close;
            if hub.send(event).await.is_err() || close {
                return;
            }
        }
    })
}

impl Runtime {
    /// Joins `io` to a running pod's main process: its output from now on,
    /// its stdin if the pod was started with `-i`, its terminal size with
    /// `-t`. Returns how the pod ended, or `None` when the client left
    /// first.
    pub async fn attach(&self, id: &str, io: RunIo) -> Result<Option<RunOutcome>, RunError> {
        let live = match self.live_pod(id) {
            Ok(live) => live,
            Err(_) if self.record(id).is_some() => {
                return Err(RunError::NotRunning(id.to_string()));
            }
            Err(e) => return Err(e),
        };
        let mut output = live.links.attach.subscribe();
        let mut outcome = live.outcome.clone();
        let stdin = io
            .stdin
            .filter(|_| live.interactive)
            .map(|client| join_stdin(client, live.links.stdin.tx.clone()));
        let resizer = forward_resizes(
            live.links.terminal.clone(),
            &live.main.guest_id,
            &live.main.init_process,
            live.main.tty,
            io.resize,
        );
        drop(live);
        // Whether the client left before the pod ended.
        let client_left = loop {
            tokio::select! {
                biased;
                chunk = output.recv() => match chunk {
                    Ok(chunk) => {
                        if io.output.send(chunk).await.is_err() {
                            break true;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(pod = %id, n, "an attached client fell behind");
                        let notice = format!(
                            "hyper: {n} chunks of output were dropped: this client read too slowly\n"
                        );
                        if io.output.send(Output::Stderr(notice.into_bytes())).await.is_err() {
                            break true;
                        }
                    }
                    Err(RecvError::Closed) => break false,
                },
                // Mapped so the guard it returns is never held across an await.
                _ = async { outcome.wait_for(Option::is_some).await.is_ok() } => break false,
            }
        };
        // Output sent before the end is already queued here.
        while let Ok(chunk) = output.try_recv() {
            if client_left || io.output.send(chunk).await.is_err() {
                break;
            }
        }
        for task in [stdin, resizer].into_iter().flatten() {
            task.abort();
        }
        if client_left {
            return Ok(None);
        }
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        match ended {
            Some(Ok(outcome)) => Ok(Some(outcome)),
            Some(Err(reason)) => Err(RunError::Failed(reason)),
            None => Err(RunError::Failed(
                "the pod's supervisor ended without a status".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_leaves_keeps_stdin_open_and_one_that_ends_closes_it() {
        let (hub, mut rx) = mpsc::channel(16);
        let (client, client_rx) = mpsc::channel(4);
        let task = join_stdin(client_rx, hub.clone());
        client.send(Stdin::Data(b"a".to_vec())).await.unwrap();
        drop(client);
        task.await.unwrap();
        assert_eq!(rx.recv().await, Some(Stdin::Data(b"a".to_vec())));
        // The hub is still open: nothing closed it.
        assert!(rx.try_recv().is_err());
        assert!(!hub.is_closed());

        let (client, client_rx) = mpsc::channel(4);
        let task = join_stdin(client_rx, hub.clone());
        client.send(Stdin::Close).await.unwrap();
        client.send(Stdin::Data(b"late".to_vec())).await.unwrap();
        task.await.unwrap();
        assert_eq!(rx.recv().await, Some(Stdin::Close));
        assert!(rx.try_recv().is_err(), "nothing after the end of input");
    }
}
