//! A small QMP client: line-delimited JSON over a unix socket.
//!
//! QEMU is a separate process that may be wedged or gone, so every read has
//! a length bound and every wait a deadline. Asynchronous events can arrive
//! at any point (even between a command and its reply) and are skipped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// QMP replies we use are tiny; a longer line means something is wrong.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP I/O: {0}")]
    Io(std::io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("no QMP answer within {0:?}")]
    Timeout(Duration),
    #[error("QMP line longer than {MAX_LINE} bytes: refused")]
    LineTooLong,
    #[error("malformed QMP message: {0}")]
    Malformed(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("an earlier QMP exchange was interrupted; the connection must be reopened")]
    Broken,
}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        match e.kind() {
            // QEMU went away: say so plainly.
            BrokenPipe | ConnectionReset | UnexpectedEof => QmpError::Closed,
            _ => QmpError::Io(e),
        }
    }
}

impl QmpError {
    /// After these, the stream position is unknown: reconnect.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, QmpError::Command { .. })
    }
}

/// Replies and events left from an earlier connection that a new one
/// skips before the greeting.
const MAX_STALE_BEFORE_GREETING: usize = 64;

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    greeting: Value,
    next_id: u64,
    /// Set while an exchange is in progress: if the future is dropped midway
    /// (an outer timeout), the next call knows a half-read reply may follow.
    busy: bool,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .finish()
    }
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, QmpError>>,
) -> Result<T, QmpError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| QmpError::Timeout(limit))?
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode; all within
    /// `limit`.
    pub async fn connect(path: &Path, limit: Duration) -> Result<Self, QmpError> {
        bounded(limit, async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Connect {
                    path: path.display().to_string(),
                    source,
                })?;
            Self::handshake(stream).await
        })
        .await
    }

    /// The handshake on an already connected stream (unbounded: callers wrap
    /// it in a deadline).
    pub async fn handshake(stream: UnixStream) -> Result<Self, QmpError> {
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
            greeting: Value::Null,
            next_id: 1,
            busy: true,
        };
        // QEMU's monitor keeps the output a closed connection did not read
        // (the reply to a command whose caller timed out and dropped the
        // connection) and sends it to the next client before the greeting:
        // replies and events are skipped, a bounded number of them.
        let mut skipped = 0;
        let greeting = loop {
            let message = qmp.read_message().await?;
            if message.get("QMP").is_some() {
                break message;
            }
            let stale = ["return", "error", "event"]
                .iter()
                .any(|key| message.get(key).is_some());
            if !stale || skipped == MAX_STALE_BEFORE_GREETING {
                return Err(QmpError::Malformed(format!(
                    "expected the QMP greeting, got {message}"
                )));
            }
            tracing::debug!(%message, "QMP: skipped a message left from an earlier connection");
            skipped += 1;
        };
        qmp.greeting = greeting;
        qmp.busy = false;
        qmp.execute("qmp_capabilities", None, Duration::MAX).await?;
        Ok(qmp)
    }

    /// The server's greeting (`{"QMP": {"version": …}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Runs one command and returns its `return` value, within `limit`
    /// (`Duration::MAX`: no deadline of its own, the caller's applies).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        if self.busy {
            return Err(QmpError::Broken);
        }
        self.busy = true;
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let exchange = async {
            self.writer.write_all(line.as_bytes()).await?;
            loop {
                let message = self.read_message().await?;
                if let Some(event) = message.get("event") {
                    tracing::debug!(%event, "QMP event");
                    continue;
                }
                // Replies to commands without an id (none of ours) are not ours.
                if message.get("id").is_some_and(|v| v != &json!(id)) {
                    tracing::debug!(%message, "QMP reply to another command");
                    continue;
                }
                if let Some(ret) = message.get("return") {
                    return Ok(ret.clone());
                }
                if let Some(error) = message.get("error") {
                    let field = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("?");
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class: field("class").to_string(),
                        desc: field("desc").to_string(),
                    });
                }
                return Err(QmpError::Malformed(format!("unexpected message {message}")));
            }
        };
        let result = if limit == Duration::MAX {
            exchange.await
        } else {
            bounded(limit, exchange).await
        };
        // A timeout leaves a reply possibly half read: stay busy (broken).
        if !matches!(result, Err(QmpError::Timeout(_))) {
            self.busy = false;
        }
        result
    }

    /// One JSON object from one line, refusing lines over [`MAX_LINE`].
    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                return Err(QmpError::LineTooLong);
            }
            return Err(QmpError::Closed);
        }
        serde_json::from_slice(&buf).map_err(|e| {
            let shown = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
            QmpError::Malformed(format!("{e}: {shown}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
    const EVENT: &str = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#;

    /// A fake QMP server: sends `greeting`, then for each request line runs
    /// `answer`, writing whatever lines it returns.
    async fn fake_server(
        greeting: String,
        answer: impl Fn(Value) -> Vec<String> + Send + 'static,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            write.write_all(greeting.as_bytes()).await.unwrap();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let request: Value = serde_json::from_str(&line).unwrap();
                for out in answer(request) {
                    if write.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
        (dir, path)
    }

    fn reply(request: &Value, ret: Value) -> String {
        let mut r = json!({ "return": ret });
        if let Some(id) = request.get("id") {
            r["id"] = id.clone();
        }
        format!("{r}\n")
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn handshake_and_events_interleaved() {
        let (_dir, path) = fake_server(format!("{GREETING}\n{EVENT}\n"), |req| {
            match req["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![format!("{EVENT}\n"), reply(&req, json!({}))],
                "query-status" => vec![
                    format!("{EVENT}\n"),
                    // A stale reply with another id must be skipped.
                    r#"{"return": {"status": "paused"}, "id": 999}"#.to_string() + "\n",
                    format!("{EVENT}\n"),
                    reply(&req, json!({"status": "running", "running": true})),
                ],
                _ => vec![format!(
                    "{}\n",
                    json!({"error": {"class": "CommandNotFound", "desc": "no such command"}, "id": req["id"]})
                )],
            }
        })
        .await;
        let mut qmp = Qmp::connect(&path, LIMIT).await.unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        let status = qmp.execute("query-status", None, LIMIT).await.unwrap();
        assert_eq!(status["status"], "running");
        let err = qmp.execute("frobnicate", None, LIMIT).await.unwrap_err();
        assert!(!err.is_fatal());
        assert_eq!(
            err.to_string(),
            "QMP command frobnicate failed: CommandNotFound: no such command"
        );
        // The connection is still good after a command error.
        let status = qmp.execute("query-status", None, LIMIT).await.unwrap();
        assert_eq!(status["running"], true);
    }

    #[tokio::test]
    async fn oversized_line_refused() {
        let huge = format!(
            "{{\"event\": \"X\", \"data\": \"{}\"}}\n",
            "a".repeat(MAX_LINE)
        );
        let (_dir, path) = fake_server(format!("{GREETING}\n"), move |req| {
            vec![huge.clone(), reply(&req, json!({}))]
        })
        .await;
        let err = Qmp::connect(&path, LIMIT).await.unwrap_err();
        assert!(matches!(err, QmpError::LineTooLong), "{err}");
    }

    #[tokio::test]
    async fn replies_left_from_an_earlier_connection_are_skipped_before_the_greeting() {
        let stale = r#"{"id": 5, "return": {"status": "setup"}}"#;
        let (_dir, path) = fake_server(format!("{stale}\n{EVENT}\n{GREETING}\n"), |req| {
            vec![reply(&req, json!({}))]
        })
        .await;
        let qmp = Qmp::connect(&path, LIMIT).await.unwrap();
        assert_eq!(qmp.greeting()["QMP"]["version"]["qemu"]["major"], 7);
        // Only so many: a server that never greets is refused.
        let flood = format!("{stale}\n").repeat(MAX_STALE_BEFORE_GREETING + 1);
        let (_dir, path) = fake_server(flood, |_| vec![]).await;
        let err = Qmp::connect(&path, LIMIT).await.unwrap_err();
        assert!(matches!(err, QmpError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn not_a_greeting() {
        let (_dir, path) = fake_server("{\"hello\": 1}\n".into(), |_| vec![]).await;
        let err = Qmp::connect(&path, LIMIT).await.unwrap_err();
        assert!(matches!(err, QmpError::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn silence_times_out_and_breaks_the_connection() {
        let (_dir, path) = fake_server(format!("{GREETING}\n"), |req| {
            if req["execute"] == "qmp_capabilities" {
                vec![reply(&req, json!({}))]
            } else {
                vec![]
            }
        })
        .await;
        let mut qmp = Qmp::connect(&path, LIMIT).await.unwrap();
        let short = Duration::from_millis(100);
        let err = qmp.execute("query-status", None, short).await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout(_)), "{err}");
        let err = qmp.execute("query-status", None, short).await.unwrap_err();
        assert!(matches!(err, QmpError::Broken), "{err}");
    }

    #[tokio::test]
    async fn closed_and_missing() {
        let (_dir, path) = fake_server(format!("{GREETING}\n"), |_| vec![]).await;
        // This server never answers qmp_capabilities: the handshake is bounded.
        let err = Qmp::connect(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout(_)), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
        // A server that hangs up after the greeting.
        let path = dir.path().join("hangup.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
        });
        let err = Qmp::connect(&path, LIMIT).await.unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
    }
}
