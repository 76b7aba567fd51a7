//! The host side of the guest protocol: a client for hyperstart.
//!
//! One reader task owns the socket's read half and routes what arrives:
//! responses to the request that waits for them, stdio data to the process's
//! stream, exits to the process's exit waiter. The guest is untrusted, so the
//! reader bounds everything: frames by the decoder, stdio by the credit this
//! side granted (a guest that sends more than it was granted is cut off), and
//! a malformed frame ends the session and marks the agent dead, which fails
//! every waiter instead of hanging it.
//!
//! What a guest can make this side hold is bounded (docs/security/agent.md):
//! at most [`MAX_STREAMS`] inbound streams, each buffering at most its
//! credit window ([`INITIAL_WINDOW`]) in a [`StreamReceiver`]; at most
//! [`MAX_PROCESSES`] adopted processes, taken only from the answer to this
//! session's own `Reattach`; one frame in the decoder. Lesser protocol
//! violations (unexpected replies, unknown streams, bad JSON) are counted,
//! warned about at a limited rate, and past [`MAX_VIOLATIONS`] end the
//! session like a dead VM.

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
use tokio::sync::{oneshot, Notify};

/// How long one request may take in the guest, at least: a session opened
/// with a longer boot or reattach timeout waits that long for each answer,
/// since a guest starved enough to boot slowly answers slowly too (twenty
/// pods booting at once on two cores; a template clone's device re-probe).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CHANNEL_CLOSED: &str = "the channel closed";
/// Inbound (guest→host) streams one session routes at once: two per
/// process. Each holds at most [`INITIAL_WINDOW`] bytes the host has not yet
/// consumed, so a session's stdio buffers stay under
/// `MAX_STREAMS * INITIAL_WINDOW` (128 MiB) even if no consumer reads.
pub const MAX_STREAMS: usize = 512;
/// Processes one session tracks (its own and adopted ones).
pub const MAX_PROCESSES: usize = MAX_STREAMS / 2;
/// Lesser protocol violations a session survives; the next one ends it.
pub const MAX_VIOLATIONS: u32 = 8;
/// Stream ids above this are refused: new ids are allocated above the
/// highest adopted one and must never wrap.
const MAX_STREAM_ID: u32 = 1 << 30;
/// Warnings a guest can trigger: this many at once, then one more per
/// [`WARN_REFILL`]; the rest are counted and summed up in one line.
const WARN_BURST: u32 = 5;
const WARN_REFILL: Duration = Duration::from_secs(10);

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
    /// A per-pod bound of the host was reached.
    #[error("{0}")]
    Limit(String),
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

/// What one inbound stream holds between the reader and its consumer:
/// bytes, not messages, so a guest sending tiny or empty frames costs
/// nothing beyond the bytes, and those never exceed the credit the host
/// granted (it grants only what its consumer took).
#[derive(Default)]
struct StreamBuf {
    data: Vec<u8>,
    eof: bool,
    /// The sender is gone without an end of stream (the session ended).
    closed: bool,
    /// The receiver is gone: what arrives is dropped.
    abandoned: bool,
}

struct StreamShared {
    buf: Mutex<StreamBuf>,
    changed: Notify,
}

impl StreamShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamBuf> {
        // The critical sections only move bytes and flags.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reader's end of an inbound stream.
struct StreamSender {
    shared: Arc<StreamShared>,
}

impl StreamSender {
    fn push(&self, data: &[u8]) {
        let mut b = self.shared.lock();
        if b.abandoned || b.eof {
            return;
        }
        b.data.extend_from_slice(data);
        drop(b);
        self.shared.changed.notify_one();
    }

    fn eof(&self) {
        self.shared.lock().eof = true;
        self.shared.changed.notify_one();
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
    }
}

/// The consumer's end of a guest→host stdio stream: what is buffered comes
/// out in chunks of at most [`MAX_DATA_PAYLOAD`] (what a frame to a client
/// may carry), then [`StreamChunk::Eof`] once, then `None`.
pub struct StreamReceiver {
    shared: Arc<StreamShared>,
    done: bool,
}

impl StreamReceiver {
    pub async fn recv(&mut self) -> Option<StreamChunk> {
        loop {
            if self.done {
                return None;
            }
            {
                let mut b = self.shared.lock();
                if b.data.len() > MAX_DATA_PAYLOAD {
                    let rest = b.data.split_off(MAX_DATA_PAYLOAD);
                    return Some(StreamChunk::Data(std::mem::replace(&mut b.data, rest)));
                }
                if !b.data.is_empty() {
                    return Some(StreamChunk::Data(std::mem::take(&mut b.data)));
                }
                if b.eof {
                    self.done = true;
                    return Some(StreamChunk::Eof);
                }
                if b.closed {
                    self.done = true;
                    return None;
                }
            }
            // notify_one keeps a permit, so a push between the check and
            // this wait is not lost.
            self.shared.changed.notified().await;
        }
    }

    /// Bytes waiting for the consumer.
    pub fn buffered(&self) -> usize {
        self.shared.lock().data.len()
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        let mut b = self.shared.lock();
        b.abandoned = true;
        b.data = Vec::new();
    }
}

fn stream_pair() -> (StreamSender, StreamReceiver) {
    let shared = Arc::new(StreamShared {
        buf: Mutex::new(StreamBuf::default()),
        changed: Notify::new(),
    });
    (
        StreamSender {
            shared: shared.clone(),
        },
        StreamReceiver {
            shared,
            done: false,
        },
    )
}

/// A stream that has already ended: for a process with nothing to route.
fn ended_stream() -> StreamReceiver {
    let (tx, rx) = stream_pair();
    tx.eof();
    rx
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEnd {
    /// Its exit code, 128+N for signal N.
    pub status: i32,
    /// The guest's OOM killer ended it (a container's init only).
    pub oom_killed: bool,
}

/// The host ends of one process's stdio and its exit status.
pub struct ProcessStreams {
    pub process: String,
    /// Stream id of stdin and stdout.
    pub stdio: u32,
    pub stderr: u32,
    pub stdout_rx: StreamReceiver,
    pub stderr_rx: StreamReceiver,
    pub exit_rx: oneshot::Receiver<ProcessEnd>,
}

struct PendingReply {
    id: u64,
    rx: oneshot::Receiver<Result<Reply, AgentError>>,
}

struct InboundStream {
    tx: StreamSender,
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
    exit_waiters: HashMap<String, oneshot::Sender<ProcessEnd>>,
    dead: Option<String>,
    ready: Option<oneshot::Sender<Result<ReadyInfo, String>>>,
    /// Streams of a reattach's processes, routed from the moment the reply
    /// is read (the guest sends their output right behind it), until
    /// [`AgentClient::adopt_process`] hands them out. By (container, process).
    adopted: HashMap<(String, String), ProcessStreams>,
    /// The id of this session's own `Reattach`, until its answer arrives:
    /// the only `Reattached` reply ever accepted.
    reattach_id: Option<u64>,
    violations: u32,
    warnings: WarnLimiter,
}

/// A token bucket for the warnings a guest can trigger, so a flood costs
/// the host's log a few lines and one summary.
struct WarnLimiter {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self {
            tokens: WARN_BURST,
            refilled: Instant::now(),
            suppressed: 0,
        }
    }
}

impl WarnLimiter {
    /// Whether a warning may be logged now; when one may after some were
    /// suppressed, also how many were.
    fn allow(&mut self, now: Instant) -> (bool, u64) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let refill = u32::try_from(elapsed.as_secs() / WARN_REFILL.as_secs()).unwrap_or(u32::MAX);
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(WARN_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return (false, 0);
        }
        self.tokens -= 1;
        (true, std::mem::take(&mut self.suppressed))
    }

    fn warn(&mut self, message: &str) {
        match self.allow(Instant::now()) {
            (false, _) => {}
            (true, 0) => tracing::warn!("hyperstart: {message}"),
            (true, n) => {
                tracing::warn!("hyperstart: {message} ({n} more like it suppressed)")
            }
        }
    }

    /// The summary line for what was never logged.
    fn flush(&mut self) {
        let n = std::mem::take(&mut self.suppressed);
        if n > 0 {
            tracing::warn!("hyperstart: {n} more warnings suppressed");
        }
    }
}

impl State {
    /// Counts a lesser protocol violation: warned about (rate-limited), and
    /// past [`MAX_VIOLATIONS`] the end of the session.
    fn violation(&mut self, what: String) -> Result<(), String> {
        self.violations += 1;
        if self.violations > MAX_VIOLATIONS {
            return Err(format!(
                "hyperstart broke the protocol {} times; the last: {what}",
                self.violations
            ));
        }
        self.warnings.warn(&what);
        Ok(())
    }
}

struct Inner {
    state: Mutex<State>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    credit_changed: Notify,
    /// How long one request waits for its answer (see [`REQUEST_TIMEOUT`]).
    request_timeout: Duration,
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
        st.warnings.flush();
        if reason != CHANNEL_CLOSED {
            tracing::warn!("hyperstart session ended: {reason}");
        }
        st.dead = Some(reason.clone());
        st.pending.clear();
        st.inbound.clear();
        st.exit_waiters.clear();
        st.adopted.clear();
        st.stdin.clear();
        st.reattach_id = None;
        if let Some(ready) = st.ready.take() {
            let _ = ready.send(Err(reason));
        }
        drop(st);
        self.credit_changed.notify_waiters();
    }

    fn handle_frame(&self, frame: Frame) -> Result<(), String> {
        match frame.kind {
            FrameKind::Control => match serde_json::from_slice::<GuestMessage>(&frame.payload) {
                Ok(msg) => self.handle_message(msg),
                Err(e) => self
                    .state()
                    .violation(format!("malformed control message from the guest: {e}")),
            },
            FrameKind::Data => {
                let mut st = self.state();
                let Some(stream) = st.inbound.get_mut(&frame.stream) else {
                    return st.violation(format!(
                        "data on stream {}, which is not open",
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
                stream.tx.push(&frame.payload);
                Ok(())
            }
            FrameKind::Eof => {
                let mut st = self.state();
                match st.inbound.remove(&frame.stream) {
                    Some(stream) => {
                        stream.tx.eof();
                        Ok(())
                    }
                    None => {
                        st.violation(format!("end of stream {}, which is not open", frame.stream))
                    }
                }
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
                    if st.reattach_id != Some(id) {
                        return st.violation(format!(
                            "a reattach answer ({} processes) to request {id}, which was no reattach",
                            processes.len()
                        ));
                    }
                    st.reattach_id = None;
                    adopt_all(&mut st, processes)?;
                } else if st.reattach_id == Some(id) {
                    st.reattach_id = None;
                }
                // A guest's error text reaches logs, events and terminals:
                // escaped and bounded here, where it enters the host.
                let result = result.map_err(|e| AgentError {
                    kind: e.kind,
                    message: hyper_protocol::text::guest_text(&e.message),
                });
                match st.pending.remove(&id) {
                    Some(waiter) => {
                        let _ = waiter.send(result);
                    }
                    None => {
                        return st.violation(format!("a response to no pending request ({id})"))
                    }
                }
            }
            GuestMessage::ProcessExit {
                process,
                status,
                oom_killed,
                ..
            } => match st.exit_waiters.remove(&process) {
                Some(waiter) => {
                    let _ = waiter.send(ProcessEnd { status, oom_killed });
                }
                None => {
                    let process: String = process.chars().take(64).collect();
                    return st.violation(format!("the exit of unknown process {process:?}"));
                }
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
            request_timeout: timeout.max(REQUEST_TIMEOUT),
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
            request_timeout: timeout.max(REQUEST_TIMEOUT),
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
        // The id the request is about to get: the one reply that may adopt.
        {
            let mut st = client.inner.state();
            st.reattach_id = Some(st.next_id);
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
        Ok((client, processes))
    }

    /// Routes a reattached process's output and exit again, with the fresh
    /// window the guest gave every stream. Only the processes of this
    /// session's reattach answer are routed; for any other the streams are
    /// already ended and no exit status comes. Its stdin gets a fresh window
    /// too if it still runs; stdin is not closed when the streams are
    /// dropped.
    pub fn adopt_process(&self, process: &ProcessState) -> ProcessStreams {
        let mut st = self.inner.state();
        let key = (process.container.clone(), process.process.clone());
        match st.adopted.remove(&key) {
            Some(streams) => streams,
            None => {
                let (_, exit_rx) = oneshot::channel();
                ProcessStreams {
                    process: process.process.clone(),
                    stdio: process.stdio,
                    stderr: process.stderr,
                    stdout_rx: ended_stream(),
                    stderr_rx: ended_stream(),
                    exit_rx,
                }
            }
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
        let limit = self.inner.request_timeout;
        match tokio::time::timeout(limit, pending.rx).await {
            Ok(Ok(result)) => result.map_err(AgentCallError::Agent),
            Ok(Err(_)) => Err(AgentCallError::Disconnected(
                self.dead_reason().unwrap_or_else(|| "session ended".into()),
            )),
            Err(_) => {
                self.inner.state().pending.remove(&pending.id);
                Err(AgentCallError::Timeout(limit))
            }
        }
    }

    /// Allocates the streams of a new process. Register before starting the
    /// process so no output or exit can arrive unrouted. Refused past
    /// [`MAX_PROCESSES`] processes in the session.
    pub fn new_process(&self, process: &str) -> Result<ProcessStreams, AgentCallError> {
        let mut st = self.inner.state();
        if let Some(reason) = &st.dead {
            return Err(AgentCallError::Disconnected(reason.clone()));
        }
        if st.exit_waiters.len() >= MAX_PROCESSES || st.inbound.len() + 2 > MAX_STREAMS {
            return Err(AgentCallError::Limit(format!(
                "the pod already runs {MAX_PROCESSES} processes (or {MAX_STREAMS} streams), the most one pod may"
            )));
        }
        let stdio = st.next_stream;
        let stderr = stdio
            .checked_add(1)
            .filter(|s| *s <= MAX_STREAM_ID)
            .ok_or_else(|| AgentCallError::Limit("this session ran out of stream ids".into()))?;
        st.next_stream = stderr + 1;
        let window = u64::from(INITIAL_WINDOW);
        let (stdout_tx, stdout_rx) = stream_pair();
        let (stderr_tx, stderr_rx) = stream_pair();
        let (exit_tx, exit_rx) = oneshot::channel();
        for (stream, tx) in [(stdio, stdout_tx), (stderr, stderr_tx)] {
            st.inbound.insert(
                stream,
                InboundStream {
                    tx,
                    allowed: window,
                    received: 0,
                },
            );
        }
        st.stdin.insert(
            stdio,
            StdinCredit {
                allowed: window,
                sent: 0,
            },
        );
        st.exit_waiters.insert(process.to_string(), exit_tx);
        Ok(ProcessStreams {
            process: process.to_string(),
            stdio,
            stderr,
            stdout_rx,
            stderr_rx,
            exit_rx,
        })
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

/// Routes the processes of this session's reattach answer. The answer is
/// the guest's word on what runs, so anything off in it (too many
/// processes, stream ids that clash or are out of range, a process twice)
/// ends the session rather than being half-believed.
fn adopt_all(st: &mut State, processes: &[ProcessState]) -> Result<(), String> {
    if processes.len() > MAX_PROCESSES {
        return Err(format!(
            "hyperstart listed {} processes to reattach; a pod has at most {MAX_PROCESSES}",
            processes.len()
        ));
    }
    for p in processes {
        let ids_ok = p.stdio != 0
            && p.stderr != 0
            && p.stdio != p.stderr
            && p.stdio <= MAX_STREAM_ID
            && p.stderr <= MAX_STREAM_ID;
        let key = (p.container.clone(), p.process.clone());
        // What adopting it takes: streams while its output is open, stdin
        // while it runs, an exit waiter unless its exit is already known.
        let routed = p.output_open || p.exit_status.is_none();
        if !routed && st.adopted.contains_key(&key) {
            // An older exit of the same name: nothing to route.
            continue;
        }
        let clash = st.adopted.contains_key(&key)
            || (routed
                && (st.inbound.contains_key(&p.stdio)
                    || st.inbound.contains_key(&p.stderr)
                    || st.stdin.contains_key(&p.stdio)
                    || st.exit_waiters.contains_key(&p.process)));
        if !ids_ok || clash {
            return Err(format!(
                "hyperstart listed process {:?} with streams {} and {}, which are invalid or taken",
                p.process.chars().take(64).collect::<String>(),
                p.stdio,
                p.stderr
            ));
        }
        let streams = adopt_into(st, p);
        st.adopted.insert(key, streams);
    }
    let highest = processes
        .iter()
        .map(|p| p.stdio.max(p.stderr))
        .max()
        .unwrap_or(0);
    st.next_stream = st.next_stream.max(highest.saturating_add(1));
    Ok(())
}

/// Routes a reattached process's streams, stdin and exit.
fn adopt_into(st: &mut State, process: &ProcessState) -> ProcessStreams {
    let (stdout_tx, stdout_rx) = stream_pair();
    let (stderr_tx, stderr_rx) = stream_pair();
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
            tx.eof();
        }
    }
    if process.exit_status.is_none() {
        // hyperstart buffers up to one window of stdin per process; a
        // process that still runs may read more (an interactive pod taken
        // over), and credit flows back as it does.
        st.stdin.insert(
            process.stdio,
            StdinCredit {
                allowed: window,
                sent: 0,
            },
        );
    }
    match process.exit_status {
        Some(status) if !process.output_open => {
            let _ = exit_tx.send(ProcessEnd {
                status,
                oom_killed: process.oom_killed,
            });
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

/// hyperstart hands a process's args, env, workdir and user to the kernel
/// as C strings, where a NUL byte cannot go: refused here, before a VM
/// boots, naming the entry.
pub fn check_c_strings(
    args: &[String],
    env: &[String],
    workdir: Option<&str>,
    user: Option<&str>,
) -> Result<(), String> {
    let show = |v: &str| v.escape_debug().take(80).collect::<String>();
    if let Some((i, a)) = args.iter().enumerate().find(|(_, a)| a.contains('\0')) {
        return Err(format!(
            "argument {i} (\"{}\") contains a NUL byte, which a process's arguments cannot carry",
            show(a)
        ));
    }
    if let Some(e) = env.iter().find(|e| e.contains('\0')) {
        return Err(format!(
            "environment entry \"{}\" contains a NUL byte, which the environment cannot carry",
            show(e)
        ));
    }
    for (what, value) in [("working directory", workdir), ("user", user)] {
        if let Some(v) = value.filter(|v| v.contains('\0')) {
            return Err(format!("the {what} \"{}\" contains a NUL byte", show(v)));
        }
    }
    Ok(())
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
    hyper_hypervisor::digest::hex(&bytes)
}

#[cfg(test)]
pub(crate) mod fake_guest;

#[cfg(test)]
mod tests {
    use super::fake_guest::{accept, accept_reattach, connected, listen, FakeGuest};
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
            confinement: hyper_protocol::Confinement::unconfined(),
            rlimits: Vec::new(),
        }
    }

    #[tokio::test]
    async fn reattach_skips_the_old_sessions_tail_and_adopts_processes() {
        let (_dir, path, listener) = listen();
        let guest = tokio::spawn(async move {
            // The tail of a frame the old session never read.
            let (mut guest, id) = accept_reattach(listener, &[1, 0, 0, 0, 3, 0, 0]).await;
            let processes = vec![
                ProcessState {
                    container: "c".into(),
                    process: "init".into(),
                    stdio: 1,
                    stderr: 2,
                    exit_status: None,
                    output_open: true,
                    oom_killed: false,
                },
                ProcessState {
                    container: "c".into(),
                    process: "exec-1".into(),
                    stdio: 3,
                    stderr: 4,
                    exit_status: Some(3),
                    output_open: false,
                    oom_killed: false,
                },
            ];
            guest.reply(id, Ok(Reply::Reattached { processes })).await;
            guest
                .send_raw(&Frame::data(1, b"after".to_vec()).encode())
                .await;
            guest
                .send(&GuestMessage::ProcessExit {
                    container: "c".into(),
                    process: "init".into(),
                    status: 0,
                    oom_killed: false,
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
        assert_eq!((&mut done.exit_rx).await.unwrap().status, 3);
        let mut init = client.adopt_process(&processes[0]);
        assert_eq!(
            init.stdout_rx.recv().await,
            Some(StreamChunk::Data(b"after".to_vec()))
        );
        assert_eq!((&mut init.exit_rx).await.unwrap().status, 0);
        // New processes get streams above the adopted ones.
        assert_eq!(client.new_process("exec-2").unwrap().stdio, 5);
        let _guest = guest.await.unwrap();
    }

    #[tokio::test]
    async fn request_response_and_streams() {
        let (client, mut guest, _dir) = connected().await;
        let mut streams = client.new_process("p1").unwrap();
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
                            share: None,
                        },
                        hostname: "h".into(),
                        process: spec,
                        mounts: Vec::new(),
                        resources: Default::default(),
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
                // Only an init is ever reported so; the flag reaches the
                // waiter whatever the process.
                oom_killed: true,
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
        assert_eq!(
            (&mut streams.exit_rx).await.unwrap(),
            ProcessEnd {
                status: 7,
                oom_killed: true
            }
        );

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
        let streams = client.new_process("p").unwrap();
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

        // Bad JSON is counted: a few are survived, a flood ends the session.
        let (client, mut guest, _dir) = connected().await;
        for _ in 0..MAX_VIOLATIONS + 1 {
            guest
                .send_raw(&Frame::control(b"{not json".to_vec()).encode())
                .await;
        }
        let err = client.request(Request::Ping).await.unwrap_err();
        assert!(
            err.to_string().contains("malformed control message"),
            "{err}"
        );
        assert!(err.to_string().contains("broke the protocol"), "{err}");
    }

    fn state_of(client: &AgentClient) -> (usize, usize, usize, usize) {
        let st = client.inner.state();
        (
            st.inbound.len(),
            st.adopted.len(),
            st.exit_waiters.len(),
            st.stdin.len(),
        )
    }

    async fn wait_dead(client: &AgentClient) -> String {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(reason) = client.dead_reason() {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the session did not end")
    }

    fn invented(n: usize, base: u32) -> Vec<ProcessState> {
        (0..n)
            .map(|i| ProcessState {
                container: "c".into(),
                process: format!("x-{i}"),
                stdio: base + 2 * i as u32,
                stderr: base + 2 * i as u32 + 1,
                exit_status: None,
                output_open: true,
                oom_killed: false,
            })
            .collect()
    }

    /// H1: `Reattached` answers nobody asked for adopt nothing, and a flood
    /// of them ends the session with every map empty.
    #[tokio::test]
    async fn unsolicited_reattach_answers_adopt_nothing_and_end_the_session() {
        let (client, mut guest, _dir) = connected().await;
        for id in 0..MAX_VIOLATIONS as u64 {
            guest
                .reply(
                    1000 + id,
                    Ok(Reply::Reattached {
                        processes: invented(100, 10),
                    }),
                )
                .await;
        }
        // Still alive below the threshold, and nothing was adopted.
        let ping = tokio::spawn({
            let client = client.clone();
            async move { client.request(Request::Ping).await }
        });
        let msg = guest.recv_request().await;
        guest.reply(msg.id, Ok(Reply::Pong)).await;
        assert_eq!(ping.await.unwrap().unwrap(), Reply::Pong);
        assert_eq!(state_of(&client), (0, 0, 0, 0));
        guest
            .reply(
                77,
                Ok(Reply::Reattached {
                    processes: invented(100, 10),
                }),
            )
            .await;
        let reason = wait_dead(&client).await;
        assert!(reason.contains("which was no reattach"), "{reason}");
        assert_eq!(state_of(&client), (0, 0, 0, 0));
    }

    /// Serves a reattach with `answer`, then whatever `after` sends.
    async fn reattach_with(
        answer: Vec<ProcessState>,
        after: impl FnOnce(u64) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (
        Result<(AgentClient, Vec<ProcessState>), AgentCallError>,
        FakeGuest,
        tempfile::TempDir,
    ) {
        let (dir, path, listener) = listen();
        let guest = tokio::spawn(async move {
            let (mut guest, id) = accept_reattach(listener, &[]).await;
            guest
                .reply(id, Ok(Reply::Reattached { processes: answer }))
                .await;
            for bytes in after(id) {
                guest.send_raw(&bytes).await;
            }
            guest
        });
        let result = AgentClient::reattach(&path, Duration::from_secs(5)).await;
        (result, guest.await.unwrap(), dir)
    }

    #[tokio::test]
    async fn a_reattach_answer_counts_once_and_within_the_caps() {
        // A second answer to the same reattach is a violation, not a
        // second set of streams.
        let (result, _guest, _dir) = reattach_with(invented(2, 1), |id| {
            let again = GuestMessage::Response {
                id,
                result: Ok(Reply::Reattached {
                    processes: invented(2, 100),
                }),
            };
            vec![Frame::control(serde_json::to_vec(&again).unwrap()).encode()]
        })
        .await;
        let (client, processes) = result.unwrap();
        assert_eq!(processes.len(), 2);
        tokio::time::timeout(Duration::from_secs(5), async {
            while client.inner.state().violations == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(state_of(&client), (4, 2, 2, 2));

        // More processes than a pod may have end the session.
        let (result, _guest, _dir) =
            reattach_with(invented(MAX_PROCESSES + 1, 1), |_| Vec::new()).await;
        let err = result.err().unwrap();
        assert!(err.to_string().contains("at most"), "{err}");

        // Streams that clash with each other end it too.
        let mut clash = invented(2, 1);
        clash[1].stdio = clash[0].stderr;
        let (result, _guest, _dir) = reattach_with(clash, |_| Vec::new()).await;
        assert!(result.is_err());
        let mut zero = invented(1, 1);
        zero[0].stdio = 0;
        let (result, _guest, _dir) = reattach_with(zero, |_| Vec::new()).await;
        assert!(result.is_err());
        let mut huge = invented(1, 1);
        huge[0].stderr = u32::MAX;
        let (result, _guest, _dir) = reattach_with(huge, |_| Vec::new()).await;
        assert!(result.is_err());
    }

    /// Low: stdin of a process that still runs gets a window after a
    /// takeover, so an interactive pod keeps its input.
    #[tokio::test]
    async fn adopted_running_processes_get_stdin_credit() {
        let (result, mut guest, _dir) = reattach_with(invented(1, 1), |_| Vec::new()).await;
        let (client, processes) = result.unwrap();
        let streams = client.adopt_process(&processes[0]);
        client.send_stdin(streams.stdio, b"typed").await.unwrap();
        let f = guest.recv().await;
        assert_eq!(f, Frame::data(streams.stdio, b"typed".to_vec()));
        client.close_stdin(streams.stdio).await.unwrap();
        assert_eq!(guest.recv().await, Frame::eof(streams.stdio));
        // A process it never listed gets nothing routed.
        let mut other = processes[0].clone();
        other.process = "never".into();
        let mut none = client.adopt_process(&other);
        assert_eq!(none.stdout_rx.recv().await, Some(StreamChunk::Eof));
        assert!((&mut none.exit_rx).await.is_err());
    }

    /// Tiny frames cost only their bytes: whatever the guest sends within
    /// its window arrives as one chunk, and a stream never holds more.
    #[tokio::test]
    async fn a_stream_buffers_at_most_its_window() {
        let (client, mut guest, _dir) = connected().await;
        let mut streams = client.new_process("p").unwrap();
        let mut bytes = Vec::new();
        for _ in 0..10_000 {
            bytes.extend(Frame::data(streams.stdio, Vec::new()).encode());
            bytes.extend(Frame::data(streams.stdio, b"x".to_vec()).encode());
        }
        guest.send_raw(&bytes).await;
        let mut got = 0;
        while got < 10_000 {
            match streams.stdout_rx.recv().await {
                Some(StreamChunk::Data(d)) => got += d.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(streams.stdout_rx.buffered(), 0);
        // Filling the window exactly is allowed and held; one byte more
        // ends the session, and its buffers go with it.
        let rest = INITIAL_WINDOW as usize - got;
        let mut bytes = Vec::new();
        for chunk in vec![b'y'; rest].chunks(MAX_DATA_PAYLOAD) {
            bytes.extend(Frame::data(streams.stdio, chunk.to_vec()).encode());
        }
        guest.send_raw(&bytes).await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while streams.stdout_rx.buffered() < rest {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(streams.stdout_rx.buffered(), rest);
        guest
            .send_raw(&Frame::data(streams.stdio, b"z".to_vec()).encode())
            .await;
        let reason = wait_dead(&client).await;
        assert!(reason.contains("flow-control window"), "{reason}");
        assert_eq!(state_of(&client), (0, 0, 0, 0));
        // What was buffered still comes out, in chunks a frame can carry.
        let mut drained = 0;
        while let Some(StreamChunk::Data(d)) = streams.stdout_rx.recv().await {
            assert!(d.len() <= MAX_DATA_PAYLOAD, "{}", d.len());
            drained += d.len();
        }
        assert_eq!(drained, rest);
        assert_eq!(streams.stdout_rx.recv().await, None);
    }

    #[tokio::test]
    async fn processes_per_session_are_capped() {
        let (client, _guest, _dir) = connected().await;
        for i in 0..MAX_PROCESSES {
            client.new_process(&format!("p{i}")).unwrap();
        }
        let err = client.new_process("one-more").err().unwrap();
        assert!(matches!(err, AgentCallError::Limit(_)), "{err}");
    }

    #[tokio::test]
    async fn unknown_streams_and_exits_are_counted_then_fatal() {
        let (client, mut guest, _dir) = connected().await;
        let mut bytes = Vec::new();
        for i in 0..=MAX_VIOLATIONS {
            bytes.extend(Frame::data(500 + i, b"?".to_vec()).encode());
        }
        guest.send_raw(&bytes).await;
        let reason = wait_dead(&client).await;
        assert!(reason.contains("not open"), "{reason}");

        let (client, mut guest, _dir) = connected().await;
        for _ in 0..=MAX_VIOLATIONS {
            guest
                .send(&GuestMessage::ProcessExit {
                    container: "c".into(),
                    process: "ghost".into(),
                    status: 0,
                    oom_killed: false,
                })
                .await;
        }
        let reason = wait_dead(&client).await;
        assert!(reason.contains("unknown process"), "{reason}");
    }

    #[test]
    fn nul_bytes_are_refused_up_front() {
        let ok = check_c_strings(&["sh".into()], &["A=1".into()], Some("/"), Some("0"));
        assert!(ok.is_ok());
        let err = check_c_strings(&["sh".into(), "a\0b".into()], &[], None, None).unwrap_err();
        assert!(err.contains("argument 1 (\"a\\0b\")"), "{err}");
        let err = check_c_strings(&[], &["A=\0".into()], None, None).unwrap_err();
        assert!(err.contains("environment entry"), "{err}");
        assert!(check_c_strings(&[], &[], Some("/x\0"), None).is_err());
        assert!(check_c_strings(&[], &[], None, Some("root\0")).is_err());
    }

    #[test]
    fn warnings_are_rate_limited_with_a_summary() {
        let mut w = WarnLimiter::default();
        let t0 = w.refilled;
        for _ in 0..WARN_BURST {
            assert_eq!(w.allow(t0), (true, 0));
        }
        for _ in 0..1000 {
            assert_eq!(w.allow(t0), (false, 0));
        }
        // The next one allowed carries the count of those dropped.
        assert_eq!(w.allow(t0 + WARN_REFILL), (true, 1000));
        assert_eq!(w.allow(t0 + WARN_REFILL), (false, 0));
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
            let streams = client.new_process("p").unwrap();
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
                min_version: hyper_protocol::PROTOCOL_VERSION,
                max_version: hyper_protocol::PROTOCOL_VERSION,
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

    /// The error `connect` gives for a guest that says `Ready` with
    /// `min..=max`.
    async fn refused_ready(min_version: u32, max_version: u32) -> String {
        let (_dir, path, listener) = listen();
        tokio::spawn(async move {
            let mut g = accept(listener).await;
            g.send(&GuestMessage::Ready {
                min_version,
                max_version,
                capabilities: vec![],
                agent: "other".into(),
            })
            .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        AgentClient::connect(&path, Duration::from_secs(5))
            .await
            .err()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn incompatible_versions_are_refused() {
        let err = refused_ready(90, 99).await;
        assert!(err.contains("90..=99"), "{err}");
    }

    /// Protocol version 1 had no confinement: such a guest would run every
    /// container with all capabilities, so it is refused.
    #[tokio::test]
    async fn a_guest_without_confinement_is_refused() {
        let err = refused_ready(1, 1).await;
        assert!(err.contains("1..=1"), "{err}");
        assert!(err.contains("install matching"), "{err}");
    }
}
