//! The client side of hyperd's API, over its unix socket.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper::{Method, Request};
use hyper_api::pods::RunRequest;
use hyper_protocol::{Frame, FrameDecoder, FrameKind, TerminalSize, MAX_DATA_PAYLOAD};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::stream::{ApiError, ClientMessage, StreamEnd, STDERR, STDIO};
use crate::terminal::DetachScanner;
use hyper_api::images::{PullEvent, PullRequest};

/// Longest progress line accepted from hyperd (an image record fits easily).
const MAX_EVENT_LINE: usize = 1024 * 1024;
use crate::STREAM_UPGRADE;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to hyperd at {socket}: {source}. Is hyperd running? \
         Start it with `hyperd --config /etc/hyper/config.toml`, or point --host / HYPER_HOST at its socket"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to hyperd failed: {0}")]
    Http(String),
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    NotFound(String),
    #[error("hyperd ended the stream without an exit status")]
    Truncated,
}

pub struct Client {
    socket: PathBuf,
}

/// The extras of a stream with a terminal.
#[derive(Default)]
pub struct StreamOptions {
    /// New sizes of the client's terminal, sent on as they come.
    pub resize: Option<tokio::sync::mpsc::Receiver<TerminalSize>>,
    /// Typing these on stdin ends the stream with [`StreamEnd::Detached`];
    /// they are not sent.
    pub detach_keys: Option<Vec<u8>>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("connection to hyperd: {e}");
            }
        });
        Ok(sender)
    }

    /// `GET path`, returning the JSON body.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// `GET path`, or `None` when hyperd answers 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<serde_json::Value>, ClientError> {
        match self.call(Method::GET, path, None).await {
            Err(ClientError::NotFound(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn post_json<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Http(e.to_string()))?;
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "hyperd");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        send(&mut sender, req).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        let body = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(&body, status));
        }
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Http(format!("malformed reply: {e}")))
    }

    /// `GET path` answered with one JSON value per line: each goes to
    /// `on_line` as it arrives, until it returns false.
    /// `on_batch` is called after each piece hyperd sent, so a caller can
    /// flush its output once per piece rather than once per line.
    pub async fn get_lines(
        &self,
        path: &str,
        on_line: impl FnMut(serde_json::Value) -> bool,
        on_batch: impl FnMut(),
    ) -> Result<(), ClientError> {
        self.lines(Method::GET, path, None, on_line, on_batch).await
    }

    async fn lines(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut on_line: impl FnMut(serde_json::Value) -> bool,
        mut on_batch: impl FnMut(),
    ) -> Result<(), ClientError> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_body(resp).await?;
            return Err(api_error(&body, status));
        }
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > MAX_EVENT_LINE && !pending.contains(&b'\n') {
                return Err(ClientError::Http("oversized line from hyperd".into()));
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let value = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Http(format!("malformed line from hyperd: {e}")))?;
                if !on_line(value) {
                    on_batch();
                    return Ok(());
                }
            }
            on_batch();
        }
        Ok(())
    }

    /// Pulls an image, handing each progress event to `on_event` as it
    /// comes; returns the pulled image.
    pub async fn pull(
        &self,
        reference: &str,
        mut on_event: impl FnMut(&PullEvent),
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_vec(&PullRequest {
            reference: reference.to_string(),
        })
        .map_err(|e| ClientError::Http(e.to_string()))?;
        let mut end: Option<Result<serde_json::Value, ClientError>> = None;
        self.lines(
            Method::POST,
            "/v1/images/pull",
            Some(body),
            |value| {
                let event = match serde_json::from_value::<PullEvent>(value) {
                    Ok(e) => e,
                    Err(e) => {
                        end = Some(Err(ClientError::Http(format!(
                            "malformed progress event: {e}"
                        ))));
                        return false;
                    }
                };
                on_event(&event);
                match event {
                    PullEvent::Done { image } => {
                        end = Some(
                            serde_json::to_value(image)
                                .map_err(|e| ClientError::Http(e.to_string())),
                        );
                        false
                    }
                    PullEvent::Error { message } => {
                        end = Some(Err(ClientError::Api(message)));
                        false
                    }
                    _ => true,
                }
            },
            || {},
        )
        .await?;
        end.unwrap_or(Err(ClientError::Truncated))
    }

    /// Runs a container, copying its stdout and stderr to `stdout`/`stderr`
    /// and, when `stdin` is given, feeding it. Returns how the run ended.
    pub async fn run<I, O, E>(
        &self,
        request: &RunRequest,
        stdin: Option<I>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<StreamEnd, ClientError>
    where
        I: AsyncRead + Unpin + Send + 'static,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        self.stream("/v1/run", request, stdin, stdout, stderr).await
    }

    /// `POST path` with `request` as JSON, upgraded to the stdio stream.
    pub async fn stream<T, I, O, E>(
        &self,
        path: &str,
        request: &T,
        stdin: Option<I>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<StreamEnd, ClientError>
    where
        T: Serialize,
        I: AsyncRead + Unpin + Send + 'static,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let opts = StreamOptions::default();
        self.stream_with(path, request, stdin, stdout, stderr, opts)
            .await
    }

    /// [`Client::stream`] with a terminal's resizes and detach keys.
    pub async fn stream_with<T, I, O, E>(
        &self,
        path: &str,
        request: &T,
        stdin: Option<I>,
        stdout: &mut O,
        stderr: &mut E,
        opts: StreamOptions,
    ) -> Result<StreamEnd, ClientError>
    where
        T: Serialize,
        I: AsyncRead + Unpin + Send + 'static,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut sender = self.connect().await?;
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Http(e.to_string()))?;
        let req = Request::post(path)
            .header(header::HOST, "hyperd")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, STREAM_UPGRADE)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = send(&mut sender, req).await?;
        let status = resp.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let body = read_body(resp).await?;
            return Err(api_error(&body, status));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));

        // One writer for stdin and resizes, so their frames never interleave.
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Frame>(8);
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = frames_rx.recv().await {
                if writer.write_all(&frame.encode()).await.is_err() {
                    return;
                }
                let _ = writer.flush().await;
            }
            // Keep the write half open until the run ends: dropping it
            // would not close the socket anyway (the read half holds it).
            std::future::pending::<()>().await;
        });
        // A channel, not a oneshot: polled again after its sender is gone
        // (stdin ended without a detach) it just stays empty.
        let (detach_tx, mut detached) = tokio::sync::mpsc::channel::<()>(1);
        let stdin_task = stdin.map(|mut input| {
            let frames = frames_tx.clone();
            let mut scanner = opts.detach_keys.map(DetachScanner::new);
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATA_PAYLOAD];
                loop {
                    let n = match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let (data, detach) = match &mut scanner {
                        Some(s) => s.feed(&buf[..n]),
                        None => (buf[..n].to_vec(), false),
                    };
                    if !data.is_empty() && frames.send(Frame::data(STDIO, data)).await.is_err() {
                        return;
                    }
                    if detach {
                        let _ = detach_tx.send(()).await;
                        return;
                    }
                }
                let _ = frames.send(Frame::eof(STDIO)).await;
            })
        });
        let resize_task = opts.resize.map(|mut rx| {
            let frames = frames_tx.clone();
            tokio::spawn(async move {
                while let Some(size) = rx.recv().await {
                    let msg = ClientMessage::Resize {
                        rows: size.rows,
                        cols: size.cols,
                    };
                    let Ok(json) = serde_json::to_vec(&msg) else {
                        continue;
                    };
                    if frames.send(Frame::control(json)).await.is_err() {
                        return;
                    }
                }
            })
        });
        drop(frames_tx);

        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let result = 'outer: loop {
            let read = tokio::select! {
                r = reader.read(&mut buf) => r,
                Some(()) = detached.recv() => break Ok(StreamEnd::Detached),
            };
            let n = match read {
                Ok(0) => break Err(ClientError::Truncated),
                Ok(n) => n,
                Err(e) => break Err(ClientError::Http(e.to_string())),
            };
            let mut next = decoder.push(&buf[..n]);
            loop {
                match next {
                    Ok(Some(f)) => match (f.kind, f.stream) {
                        (FrameKind::Data, STDIO) => {
                            if let Err(e) = stdout.write_all(&f.payload).await {
                                break 'outer Err(ClientError::Http(format!(
                                    "writing stdout: {e}"
                                )));
                            }
                        }
                        (FrameKind::Data, STDERR) => {
                            let _ = stderr.write_all(&f.payload).await;
                        }
                        (FrameKind::Control, _) => {
                            let end =
                                serde_json::from_slice::<StreamEnd>(&f.payload).map_err(|e| {
                                    ClientError::Http(format!("malformed end of stream: {e}"))
                                });
                            break 'outer end;
                        }
                        _ => {}
                    },
                    Ok(None) => break,
                    Err(e) => {
                        break 'outer Err(ClientError::Http(format!(
                            "malformed stream from hyperd: {e}"
                        )))
                    }
                }
                next = decoder.next_frame();
            }
        };
        for task in [stdin_task, resize_task].into_iter().flatten() {
            task.abort();
        }
        writer_task.abort();
        let _ = stdout.flush().await;
        let _ = stderr.flush().await;
        result
    }
}

async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}

async fn read_body(resp: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes())
}

fn api_error(body: &[u8], status: hyper::StatusCode) -> ClientError {
    let message = match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => crate::errors::word(&e),
        Err(_) => format!("hyperd answered {status}"),
    };
    if status == hyper::StatusCode::NOT_FOUND {
        ClientError::NotFound(message)
    } else {
        ClientError::Api(message)
    }
}
