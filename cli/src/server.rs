//! hyperd's REST API (axum on a unix socket).
//!
//! * `GET  /v1/version`
//! * `GET  /v1/info`  plugins, probe verdicts, payload
//! * `GET  /v1/pods`  pod records
//! * `POST /v1/run`   body: a `RunRequest`; answered with `101 Switching
//!   Protocols` (`Upgrade: hyper-stream`) and then the stdio stream of
//!   [`crate::stream`], or with a JSON error before any VM starts.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_core::pods::{Output, RunIo, RunRequest, Runtime, RUNTIME_FAILURE_EXIT};
use hyper_protocol::{Frame, FrameDecoder, FrameKind, MAX_DATA_PAYLOAD};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::stream::{ApiError, StreamEnd, STDERR, STDIO};
use crate::STREAM_UPGRADE;

/// Largest `POST /v1/run` body accepted.
const MAX_RUN_BODY: usize = 1024 * 1024;

pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/info", get(info))
        .route("/v1/pods", get(pods))
        .route("/v1/run", post(run))
        .with_state(runtime)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            message: message.into(),
        }),
    )
        .into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "api": "v1" }))
}

async fn info(State(rt): State<Arc<Runtime>>) -> Json<hyper_core::pods::Info> {
    Json(rt.info().await)
}

async fn pods(State(rt): State<Arc<Runtime>>) -> Json<Vec<hyper_core::pods::PodRecord>> {
    Json(rt.list())
}

async fn run(State(rt): State<Arc<Runtime>>, mut req: Request) -> Response {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE));
    if !wants_upgrade {
        return error(
            StatusCode::BAD_REQUEST,
            format!("POST /v1/run needs `Upgrade: {STREAM_UPGRADE}`"),
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body = match axum::body::to_bytes(req.into_body(), MAX_RUN_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
    };
    let run: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed run request: {e}"),
            )
        }
    };
    // Refuse what is certainly wrong before switching protocols, so the
    // client gets a plain error and no VM is started.
    if run.args.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "no command given: `hyper run --rootfs DIR -- CMD…`",
        );
    }
    if !run.rootfs.is_dir() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "rootfs {}: not a directory on the hyperd host",
                run.rootfs.display()
            ),
        );
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_stream(rt, run, TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!("run: the upgrade failed: {e}"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
    response
}

async fn serve_stream<S>(rt: Arc<Runtime>, run: RunRequest, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);

    // Client → stdin. The client is local and trusted more than a guest, but
    // its frames are bounded by the same decoder all the same.
    let stdin_task = tokio::spawn(async move {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; MAX_DATA_PAYLOAD];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut next = decoder.push(&buf[..n]);
            loop {
                match next {
                    Ok(Some(f)) if f.kind == FrameKind::Data && f.stream == STDIO => {
                        if stdin_tx.send(f.payload).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(f)) if f.kind == FrameKind::Eof && f.stream == STDIO => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("run: malformed frame from the client: {e}");
                        return;
                    }
                }
                next = decoder.next_frame();
            }
        }
    });

    let run_task = {
        let rt = rt.clone();
        let io = RunIo {
            output: out_tx,
            stdin: Some(stdin_rx),
        };
        tokio::spawn(async move { rt.run(run, io).await })
    };

    let mut client_gone = false;
    while let Some(out) = out_rx.recv().await {
        if client_gone {
            continue;
        }
        let frame = match out {
            Output::Stdout(d) => Frame::data(STDIO, d),
            Output::Stderr(d) => Frame::data(STDERR, d),
        };
        if writer.write_all(&frame.encode()).await.is_err() {
            // Keep draining: the container runs to its end and is cleaned up.
            client_gone = true;
        }
    }
    let end = match run_task.await {
        Ok(Ok(outcome)) => StreamEnd::Exit {
            code: outcome.exit_code,
            pod: outcome.pod,
            message: outcome.message,
        },
        Ok(Err(e)) => StreamEnd::Error {
            code: RUNTIME_FAILURE_EXIT,
            message: e.to_string(),
        },
        Err(e) => StreamEnd::Error {
            code: RUNTIME_FAILURE_EXIT,
            message: format!("the run task failed: {e}"),
        },
    };
    stdin_task.abort();
    if let Ok(json) = serde_json::to_vec(&end) {
        let _ = writer.write_all(&Frame::control(json).encode()).await;
    }
    let _ = writer.shutdown().await;
}
