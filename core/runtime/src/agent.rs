//! The host side of the guest protocol: a client for hyperstart.
//!
//! One reader task owns the socket's read half and routes what arrives:
//! responses to the request that waits for them, stdio data to the process's
//! stream, exits to the process's exit waiter. The guest is untrusted, so the
//! reader bounds everything: frames by the decoder, stdio by the credit this
//! side granted (a guest that sends more than it was granted is cut off), and
//! any protocol violation ends the session and marks the agent dead, which
//! fails every waiter instead of hanging it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_protocol::{
    negotiate_version, AgentError, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage,
    ProcessState, Reply, Request, INITIAL_WINDOW, MAX_DATA_PAYLOAD, MIN_PROTOCOL_VERSION, PAD_BYTE,
    PROTOCOL_VERSION, RESYNC_MAGIC, RESYNC_PAD_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Notify};

/// How long one request may take in the guest.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CHANNEL_CLOSED: &str = "the channel closed";

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentCallError {
    /// hyperstart answered with an error.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The session with hyperstart is over.
    #[error("lost contact with hyperstart: {0}")]
    Disconnected(String),
    #[error("hyperstart did not answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone)]
pub struct ReadyInfo {
    pub version: u32,
    pub capabilities: Vec<String>,
    pub agent: String,
}

/// A piece of a guest→host stdio stream.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamChunk {
    Data(Vec<u8>),
    Eof,
}

/// The host ends of one process's stdio and its exit status.
pub struct ProcessStreams {
    pub process: String,
    /// Stream id of stdin and stdout.
    pub stdio: u32,
    pub stderr: u32,
    pub stdout_rx: mpsc::UnboundedReceiver<StreamChunk>,
    pub stderr_rx: mpsc::UnboundedReceiver<StreamChunk>,
    pub exit_rx: oneshot::Receiver<i32>,
}

struct PendingReply {
    id: u64,
    rx: oneshot::Receiver<Result<Reply, AgentError>>,
}

struct InboundStream {
    tx: mpsc::UnboundedSender<StreamChunk>,
    /// Bytes this side has allowed the guest to send so far.
    allowed: u64,
    received: u64,
}

struct StdinCredit {
    allowed: u64,
    sent: u64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    next_stream: u32,
    pending: HashMap<u64, oneshot::Sender<Result<Reply, AgentError>>>,
    inbound: HashMap<u32, InboundStream>,
    stdin: HashMap<u32, StdinCredit>,
    exit_waiters: HashMap<String, oneshot::Sender<i32>>,
    dead: Option<String>,
    ready: Option<oneshot::Sender<Result<ReadyInfo, String>>>,
    /// Streams of a reattach's processes, routed from the moment the reply
    /// is read (the guest sends their output right behind it), until
    /// [`AgentClient::adopt_process`] hands them out. By (container, process).
    adopted: HashMap<(String, String), ProcessStreams>,
}

struct Inner {
    state: Mutex<State>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    credit_changed: Notify,
}

#[derive(Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a few map operations that cannot panic
        // midway, so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the session: every waiter learns why instead of hanging.
    fn fail(&self, reason: String) {
        let mut st = self.state();
        if st.dead.is_some() {
            return;
        }
        if reason != CHANNEL_CLOSED {
            tracing::warn!("hyperstart session ended: {reason}");
        }
        st.dead = Some(reason.clone());
        st.pending.clear();
        st.inbound.clear();
        st.exit_waiters.clear();
        st.adopted.clear();
        if let Some(ready) = st.ready.take() {
            let _ = ready.send(Err(reason));
        }
        drop(st);
        self.credit_changed.notify_waiters();
    }

    fn handle_frame(&self, frame: Frame) -> Result<(), String> {
        match frame.kind {
            FrameKind::Control => {
                let msg: GuestMessage = serde_json::from_slice(&frame.payload)
                    .map_err(|e| format!("malformed control message from the guest: {e}"))?;
                self.handle_message(msg)
            }
            FrameKind::Data => {
                let mut st = self.state();
                let Some(stream) = st.inbound.get_mut(&frame.stream) else {
                    return Err(format!(
                        "guest sent data on unknown stream {}",
                        frame.stream
                    ));
                };
                stream.received += frame.payload.len() as u64;
                if stream.received > stream.allowed {
                    return Err(format!(
                        "guest overran its flow-control window on stream {} ({} > {} bytes)",
                        frame.stream, stream.received, stream.allowed
                    ));
                }
                let _ = stream.tx.send(StreamChunk::Data(frame.payload));
                Ok(())
            }
            FrameKind::Eof => {
                if let Some(stream) = self.state().inbound.remove(&frame.stream) {
                    let _ = stream.tx.send(StreamChunk::Eof);
                }
                Ok(())
            }
            FrameKind::Credit => {
                let bytes = frame.credit_bytes().unwrap_or(0);
                if let Some(credit) = self.state().stdin.get_mut(&frame.stream) {
                    credit.allowed = credit.allowed.saturating_add(u64::from(bytes));
                }
                self.credit_changed.notify_waiters();
                Ok(())
            }
        }
    }

    fn handle_message(&self, msg: GuestMessage) -> Result<(), String> {
        let mut st = self.state();
        match msg {
            GuestMessage::Ready {
                min_version,
                max_version,
                capabilities,
                agent,
            } => {
                let Some(ready) = st.ready.take() else {
                    tracing::debug!("hyperstart said READY again");
                    return Ok(());
                };
                let result = negotiate_version(min_version, max_version)
                    .map(|version| ReadyInfo { version, capabilities, agent: agent.clone() })
                    .ok_or_else(|| {
                        format!(
                            "{agent} speaks protocol versions {min_version}..={max_version}, this host \
                             {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}: install matching hyper and payload"
                        )
                    });
                let _ = ready.send(result);
            }
            GuestMessage::Response { id, result } => {
                if let Ok(Reply::Reattached { processes }) = &result {
                    for p in processes {
                        let streams = adopt_into(&mut st, p);
                        st.adopted
                            .insert((p.container.clone(), p.process.clone()), streams);
                    }
                }
                match st.pending.remove(&id) {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    None => tracing::warn!(id, "response to no pending request"),
                }
            }
            GuestMessage::ProcessExit {
                process, status, ..
            } => match st.exit_waiters.remove(&process) {
                Some(waiter) => {
                    let _ = waiter.send(status);
                }
                None => tracing::warn!(%process, "exit of an unknown process"),
            },
        }
        Ok(())
    }
}

/// Longest stretch of an earlier session's bytes a reattach reads past
/// before it gives up on finding the guest's marker.
const RESYNC_SCAN_LIMIT: usize = 16 * 1024 * 1024;

async fn read_loop(
    inner: Arc<Inner>,
    mut reader: tokio::net::unix::OwnedReadHalf,
    mut marker: Option<Vec<u8>>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    // While resynchronising: the unmatched tail of what was read.
    let mut scanned: Vec<u8> = Vec::new();
    let mut scanned_total = 0usize;
    let reason = loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                // The usual end of every pod: the VM was stopped.
                tracing::debug!("the hyperstart channel closed");
                break CHANNEL_CLOSED.to_string();
            }
            Ok(n) => n,
            Err(e) => break format!("reading the channel failed: {e}"),
        };
        let mut input = &buf[..n];
        if let Some(want) = &marker {
            // Everything before the marker is the old session's tail.
            scanned.extend_from_slice(input);
            scanned_total += n;
            match scanned
                .windows(want.len())
                .position(|w| w == want.as_slice())
            {
                Some(at) => {
                    let rest = scanned.split_off(at + want.len());
                    scanned = rest;
                    marker = None;
                    input = &scanned;
                }
                None if scanned_total > RESYNC_SCAN_LIMIT => {
                    break "no reattach marker from hyperstart".to_string();
                }
                None => {
                    let keep = scanned.len().saturating_sub(want.len());
                    scanned.drain(..keep);
                    continue;
                }
            }
        }
        let mut next = decoder.push(input);
        let failed = loop {
            match next {
                Ok(Some(frame)) => {
                    if let Err(reason) = inner.handle_frame(frame) {
                        break Some(reason);
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(format!("malformed frame from the guest: {e}")),
            }
            next = decoder.next_frame();
        };
        if let Some(reason) = failed {
            break reason;
        }
    };
    inner.fail(reason);
}

impl AgentClient {
    /// Connects to hyperstart's channel and waits for its READY, both within
    /// `timeout`, then completes the version handshake.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Self, ReadyInfo), AgentCallError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(AgentCallError::Disconnected(format!(
                        "cannot connect to the agent channel {}: {e}",
                        path.display()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (reader, writer) = stream.into_split();
        let (ready_tx, ready_rx) = oneshot::channel();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                next_id: 1,
                next_stream: 1,
                ready: Some(ready_tx),
                ..Default::default()
            }),
            writer: tokio::sync::Mutex::new(writer),
            credit_changed: Notify::new(),
        });
        tokio::spawn(read_loop(inner.clone(), reader, None));
        let client = Self { inner };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ready = match tokio::time::timeout(remaining, ready_rx).await {
            Ok(Ok(Ok(ready))) => ready,
            Ok(Ok(Err(reason))) => return Err(AgentCallError::Disconnected(reason)),
            Ok(Err(_)) => {
                return Err(AgentCallError::Disconnected(
                    "session ended before READY".into(),
                ))
            }
            Err(_) => {
                client.inner.fail("no READY in time".into());
                return Err(AgentCallError::Timeout(timeout));
            }
        };
        // The handshake's answer is not waited for: requests sent next go out
        // behind it and hyperstart serves them in order, which saves a round
        // trip per pod. A refusal ends the session, failing those requests.
        let hello = client
            .send_request(Request::Hello {
                version: ready.version,
                capabilities: ready.capabilities.clone(),
            })
            .await?;
        let watcher = client.clone();
        tokio::spawn(async move {
            if let Err(e) = watcher.await_reply(hello).await {
                watcher
                    .inner
                    .fail(format!("hyperstart refused the handshake: {e}"));
            }
        });
        Ok((client, ready))
    }

    /// Starts a new session with a hyperstart that served an earlier one (a
    /// restarted hyperd): see the protocol's resync. Returns the processes
    /// the guest tracks; [`Self::adopt_process`] routes their streams again.
    pub async fn reattach(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Self, Vec<ProcessState>), AgentCallError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| AgentCallError::Timeout(timeout))?
            .map_err(|e| {
                AgentCallError::Disconnected(format!(
                    "cannot connect to the agent channel {}: {e}",
                    path.display()
                ))
            })?;
        let nonce = nonce();
        let mut marker = RESYNC_MAGIC.to_vec();
        marker.extend_from_slice(nonce.as_bytes());
        let (reader, writer) = stream.into_split();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                next_id: 1,
                next_stream: 1,
                ..Default::default()
            }),
            writer: tokio::sync::Mutex::new(writer),
            credit_changed: Notify::new(),
        });
        tokio::spawn(read_loop(inner.clone(), reader, Some(marker)));
        let client = Self { inner };
        // The pad completes whatever frame a dead session left half-sent,
        // then the guest skips the rest of it.
        {
            let mut writer = client.inner.writer.lock().await;
            let pad = vec![PAD_BYTE; RESYNC_PAD_LEN];
            let written = tokio::time::timeout(timeout, writer.write_all(&pad)).await;
            if !matches!(written, Ok(Ok(()))) {
                client.inner.fail("cannot write the resync pad".into());
                return Err(AgentCallError::Disconnected(
                    "cannot write the resync pad".into(),
                ));
            }
        }
        let pending = client.send_request(Request::Reattach { nonce }).await?;
        let reply = tokio::time::timeout(timeout, client.await_reply(pending))
            .await
            .map_err(|_| {
                client.inner.fail("no answer to reattach".into());
                AgentCallError::Timeout(timeout)
            })??;
        let Reply::Reattached { processes } = reply else {
            client.inner.fail("unexpected answer to reattach".into());
            return Err(AgentCallError::Disconnected(format!(
                "hyperstart answered reattach with {reply:?}"
            )));
        };
        {
            let mut st = client.inner.state();
            let highest = processes
                .iter()
                .map(|p| p.stdio.max(p.stderr))
                .max()
                .unwrap_or(0);
            st.next_stream = st.next_stream.max(highest.saturating_add(1));
        }
        Ok((client, processes))
    }

    /// Routes a reattached process's output and exit again, with the fresh
    /// window the guest gave every stream. Its stdin is left alone: no
    /// end-of-stream is sent for it when the returned streams are dropped.
    pub fn adopt_process(&self, process: &ProcessState) -> ProcessStreams {
        let mut st = self.inner.state();
        let key = (process.container.clone(), process.process.clone());
        match st.adopted.remove(&key) {
            Some(streams) => streams,
            None => adopt_into(&mut st, process),
        }
    }

    pub fn dead_reason(&self) -> Option<String> {
        self.inner.state().dead.clone()
    }

    async fn send_frame(&self, frame: Frame) -> Result<(), AgentCallError> {
        let bytes = frame.encode();
        let mut writer = self.inner.writer.lock().await;
        if let Err(e) = writer.write_all(&bytes).await {
            let reason = format!("writing the channel failed: {e}");
            self.inner.fail(reason.clone());
            return Err(AgentCallError::Disconnected(reason));
        }
        Ok(())
    }

    /// Sends a request and waits for hyperstart's answer.
    pub async fn request(&self, request: Request) -> Result<Reply, AgentCallError> {
        let pending = self.send_request(request).await?;
        self.await_reply(pending).await
    }

    async fn send_request(&self, request: Request) -> Result<PendingReply, AgentCallError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.inner.state();
            if let Some(reason) = &st.dead {
                return Err(AgentCallError::Disconnected(reason.clone()));
            }
            let id = st.next_id;
            st.next_id += 1;
            st.pending.insert(id, tx);
            id
        };
        let payload = serde_json::to_vec(&HostMessage { id, request })
            .map_err(|e| AgentCallError::Disconnected(format!("cannot encode a request: {e}")))?;
        self.send_frame(Frame::control(payload)).await?;
        Ok(PendingReply { id, rx })
    }

    async fn await_reply(&self, pending: PendingReply) -> Result<Reply, AgentCallError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, pending.rx).await {
            Ok(Ok(result)) => result.map_err(AgentCallError::Agent),
            Ok(Err(_)) => Err(AgentCallError::Disconnected(
                self.dead_reason().unwrap_or_else(|| "session ended".into()),
            )),
            Err(_) => {
                self.inner.state().pending.remove(&pending.id);
                Err(AgentCallError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    /// Allocates the streams of a new process. Register before starting the
    /// process so no output or exit can arrive unrouted.
    pub fn new_process(&self, process: &str) -> ProcessStreams {
        let (stdout_tx, stdout_rx) = mpsc::unbounded_channel();
        let (stderr_tx, stderr_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let mut st = self.inner.state();
        let stdio = st.next_stream;
        let stderr = stdio + 1;
        st.next_stream += 2;
        let window = u64::from(INITIAL_WINDOW);
        st.inbound.insert(
            stdio,
            InboundStream {
                tx: stdout_tx,
                allowed: window,
                received: 0,
            },
        );
        st.inbound.insert(
            stderr,
            InboundStream {
                tx: stderr_tx,
                allowed: window,
                received: 0,
            },
        );
        st.stdin.insert(
            stdio,
            StdinCredit {
                allowed: window,
                sent: 0,
            },
        );
        st.exit_waiters.insert(process.to_string(), exit_tx);
        ProcessStreams {
            process: process.to_string(),
            stdio,
            stderr,
            stdout_rx,
            stderr_rx,
            exit_rx,
        }
    }

    /// Tells the guest the host consumed `bytes` of `stream`: it may send that
    /// much more.
    pub async fn grant(&self, stream: u32, bytes: u32) -> Result<(), AgentCallError> {
        {
            let mut st = self.inner.state();
            match st.inbound.get_mut(&stream) {
                Some(s) => s.allowed += u64::from(bytes),
                None => return Ok(()),
            }
        }
        self.send_frame(Frame::credit(stream, bytes)).await
    }

    /// Sends stdin bytes, waiting for credit from the guest as needed.
    pub async fn send_stdin(&self, stream: u32, mut data: &[u8]) -> Result<(), AgentCallError> {
        while !data.is_empty() {
            let notified = self.inner.credit_changed.notified();
            let available = {
                let st = self.inner.state();
                if let Some(reason) = &st.dead {
                    return Err(AgentCallError::Disconnected(reason.clone()));
                }
                match st.stdin.get(&stream) {
                    Some(c) => c.allowed.saturating_sub(c.sent),
                    None => return Ok(()),
                }
            };
            if available == 0 {
                notified.await;
                continue;
            }
            let n = data
                .len()
                .min(MAX_DATA_PAYLOAD)
                .min(usize::try_from(available).unwrap_or(usize::MAX));
            if let Some(c) = self.inner.state().stdin.get_mut(&stream) {
                c.sent += n as u64;
            }
            self.send_frame(Frame::data(stream, data[..n].to_vec()))
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    pub async fn close_stdin(&self, stream: u32) -> Result<(), AgentCallError> {
        if self.inner.state().stdin.remove(&stream).is_none() {
            return Ok(());
        }
        self.send_frame(Frame::eof(stream)).await
    }
}

/// Routes a reattached process's streams and exit.
fn adopt_into(st: &mut State, process: &ProcessState) -> ProcessStreams {
    let (stdout_tx, stdout_rx) = mpsc::unbounded_channel();
    let (stderr_tx, stderr_rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    let window = u64::from(INITIAL_WINDOW);
    for (stream, tx) in [(process.stdio, stdout_tx), (process.stderr, stderr_tx)] {
        if process.output_open {
            st.inbound.insert(
                stream,
                InboundStream {
                    tx,
                    allowed: window,
                    received: 0,
                },
            );
        } else {
            let _ = tx.send(StreamChunk::Eof);
        }
    }
    match process.exit_status {
        Some(status) if !process.output_open => {
            let _ = exit_tx.send(status);
        }
        _ => {
            st.exit_waiters.insert(process.process.clone(), exit_tx);
        }
    }
    ProcessStreams {
        process: process.process.clone(),
        stdio: process.stdio,
        stderr: process.stderr,
        stdout_rx,
        stderr_rx,
        exit_rx,
    }
}

/// 16 random bytes as hex: marks where a reattached session starts.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod fake_guest;

#[cfg(test)]
mod tests {
    use super::fake_guest::{accept, connected, listen, FakeGuest};
    use super::*;
    use hyper_protocol::{ProcessSpec, RootfsSpec};

    fn process(id: &str, stdio: u32, stderr: u32) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            args: vec!["true".into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
            terminal: false,
            terminal_size: None,
            stdio,
            stderr,
        }
    }

    #[tokio::test]
    async fn reattach_skips_the_old_sessions_tail_and_adopts_processes() {
        let (_dir, path, listener) = listen();
        let guest = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut guest = FakeGuest {
                stream,
                decoder: FrameDecoder::resynchronising(),
            };
            // The tail of a frame the old session never read.
            guest.send_raw(&[1, 0, 0, 0, 3, 0, 0]).await;
            let msg = guest.recv_request().await;
            let Request::Reattach { nonce } = msg.request else {
                panic!("expected reattach, got {msg:?}");
            };
            let mut marker = RESYNC_MAGIC.to_vec();
            marker.extend_from_slice(nonce.as_bytes());
            guest.send_raw(&marker).await;
            let processes = vec![
                ProcessState {
                    container: "c".into(),
                    process: "init".into(),
                    stdio: 1,
                    stderr: 2,
                    exit_status: None,
                    output_open: true,
                },
                ProcessState {
                    container: "c".into(),
                    process: "exec-1".into(),
                    stdio: 3,
                    stderr: 4,
                    exit_status: Some(3),
                    output_open: false,
                },
            ];
            guest
                .reply(msg.id, Ok(Reply::Reattached { processes }))
                .await;
            guest
                .send_raw(&Frame::data(1, b"after".to_vec()).encode())
                .await;
            guest
                .send(&GuestMessage::ProcessExit {
                    container: "c".into(),
                    process: "init".into(),
                    status: 0,
                })
                .await;
            guest
        });
        let (client, processes) = AgentClient::reattach(&path, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(processes.len(), 2);
        let mut done = client.adopt_process(&processes[1]);
        assert_eq!(done.stdout_rx.recv().await, Some(StreamChunk::Eof));
        assert_eq!((&mut done.exit_rx).await.unwrap(), 3);
        let mut init = client.adopt_process(&processes[0]);
        assert_eq!(
            init.stdout_rx.recv().await,
            Some(StreamChunk::Data(b"after".to_vec()))
        );
        assert_eq!((&mut init.exit_rx).await.unwrap(), 0);
        // New processes get streams above the adopted ones.
        assert_eq!(client.new_process("exec-2").stdio, 5);
        let _guest = guest.await.unwrap();
    }

    #[tokio::test]
    async fn request_response_and_streams() {
        let (client, mut guest, _dir) = connected().await;
        let mut streams = client.new_process("p1");
        let spec = process("p1", streams.stdio, streams.stderr);
        let req = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .request(Request::NewContainer(hyper_protocol::ContainerSpec {
                        id: "c".into(),
                        rootfs: RootfsSpec {
                            disk_id: "d".into(),
                            fstype: "erofs".into(),
                        },
                        hostname: "h".into(),
                        process: spec,
                        mounts: Vec::new(),
                    }))
                    .await
            }
        });
        let msg = guest.recv_request().await;
        guest.reply(msg.id, Ok(Reply::Started { pid: 5 })).await;
        assert_eq!(req.await.unwrap().unwrap(), Reply::Started { pid: 5 });

        guest
            .send_raw(&Frame::data(streams.stdio, b"out".to_vec()).encode())
            .await;
        guest
            .send_raw(&Frame::data(streams.stderr, b"err".to_vec()).encode())
            .await;
        guest.send_raw(&Frame::eof(streams.stdio).encode()).await;
        guest.send_raw(&Frame::eof(streams.stderr).encode()).await;
        guest
            .send(&GuestMessage::ProcessExit {
                container: "c".into(),
                process: "p1".into(),
                status: 7,
            })
            .await;
        assert_eq!(
            streams.stdout_rx.recv().await,
            Some(StreamChunk::Data(b"out".to_vec()))
        );
        assert_eq!(streams.stdout_rx.recv().await, Some(StreamChunk::Eof));
        assert_eq!(
            streams.stderr_rx.recv().await,
            Some(StreamChunk::Data(b"err".to_vec()))
        );
        assert_eq!((&mut streams.exit_rx).await.unwrap(), 7);

        // stdin honours the guest's window and goes on once credit arrives.
        let big = vec![b'x'; INITIAL_WINDOW as usize + 10];
        let sender = tokio::spawn({
            let client = client.clone();
            let stdio = streams.stdio;
            async move { client.send_stdin(stdio, &big).await }
        });
        let mut got = 0usize;
        while got < INITIAL_WINDOW as usize {
            let f = guest.recv().await;
            assert_eq!(f.kind, FrameKind::Data);
            got += f.payload.len();
        }
        assert_eq!(got, INITIAL_WINDOW as usize);
        guest
            .send_raw(&Frame::credit(streams.stdio, 10).encode())
            .await;
        let f = guest.recv().await;
        assert_eq!(f.payload.len(), 10);
        sender.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn overrunning_the_window_kills_the_session() {
        let (client, mut guest, _dir) = connected().await;
        let streams = client.new_process("p");
        for _ in 0..(INITIAL_WINDOW as usize / MAX_DATA_PAYLOAD + 1) {
            guest
                .send_raw(&Frame::data(streams.stdio, vec![0; MAX_DATA_PAYLOAD]).encode())
                .await;
        }
        let err = client.request(Request::Ping).await.unwrap_err();
        assert!(err.to_string().contains("flow-control window"), "{err}");
    }

    #[tokio::test]
    async fn oversized_or_garbage_frames_kill_the_session_not_the_host() {
        let (client, mut guest, _dir) = connected().await;
        let mut header = vec![0u8];
        header.extend(0u32.to_be_bytes());
        header.extend(u32::MAX.to_be_bytes());
        guest.send_raw(&header).await;
        let err = client.request(Request::Ping).await.unwrap_err();
        assert!(matches!(err, AgentCallError::Disconnected(_)), "{err}");
        assert!(client.dead_reason().unwrap().contains("malformed frame"));

        let (client, mut guest, _dir) = connected().await;
        guest
            .send_raw(&Frame::control(b"{not json".to_vec()).encode())
            .await;
        let err = client.request(Request::Ping).await.unwrap_err();
        assert!(
            err.to_string().contains("malformed control message"),
            "{err}"
        );
    }

    /// A fuzz-style loop: a guest that sends random bytes (random frames
    /// mixed with noise) never panics the client, never makes it hang, and
    /// leaves it dead with a reason once the guest goes away.
    #[tokio::test]
    async fn random_guest_bytes_end_the_session_cleanly() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..40 {
            let (client, mut guest, _dir) = connected().await;
            let streams = client.new_process("p");
            let mut bytes = Vec::new();
            for _ in 0..(next() % 8) {
                // Some well-formed frames on real and unknown streams…
                let stream = [streams.stdio, streams.stderr, 999][(next() % 3) as usize];
                let len = (next() % 2048) as usize;
                bytes.extend(Frame::data(stream, vec![b'x'; len]).encode());
            }
            // …then noise.
            bytes.extend((0..(next() % 8192)).map(|_| next() as u8));
            guest.send_raw(&bytes).await;
            drop(guest);
            let died = tokio::time::timeout(Duration::from_secs(5), async {
                while client.dead_reason().is_none() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                died.is_ok(),
                "round {round}: the client did not notice the guest went away"
            );
            assert!(client.request(Request::Ping).await.is_err());
        }
    }

    #[tokio::test]
    async fn silent_guest_times_out() {
        let (_dir, path, listener) = listen();
        let _keep = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let err = AgentClient::connect(&path, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, AgentCallError::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn a_refused_handshake_fails_the_requests_behind_it() {
        let (_dir, path, listener) = listen();
        let guest = tokio::spawn(async move {
            let mut g = accept(listener).await;
            g.send(&GuestMessage::Ready {
                min_version: 1,
                max_version: 1,
                capabilities: vec![],
                agent: "picky".into(),
            })
            .await;
            let hello = g.recv_request().await;
            g.reply(
                hello.id,
                Err(AgentError::new(
                    hyper_protocol::AgentErrorKind::InvalidRequest,
                    "no thanks",
                )),
            )
            .await;
            let _ping = g.recv_request().await;
            g
        });
        let (client, _) = AgentClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let err = client.request(Request::Ping).await.unwrap_err();
        assert!(
            err.to_string().contains("refused the handshake: no thanks"),
            "{err}"
        );
        drop(guest.await.unwrap());
    }

    #[tokio::test]
    async fn incompatible_versions_are_refused() {
        let (_dir, path, listener) = listen();
        tokio::spawn(async move {
            let mut g = accept(listener).await;
            g.send(&GuestMessage::Ready {
                min_version: 90,
                max_version: 99,
                capabilities: vec![],
                agent: "future".into(),
            })
            .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = AgentClient::connect(&path, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("90..=99"), "{err}");
    }
}
