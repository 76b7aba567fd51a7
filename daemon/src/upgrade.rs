//! The stdio stream behind `101 Switching Protocols` (`Upgrade:
//! hyper-stream`): `POST /v1/run`, `/v1/pods/{id}/exec` and
//! `/v1/pods/{id}/attach` switch protocols here and serve their process's
//! stdin, output, terminal sizes and end as [`hyper_api::stream`] frames.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_api::stream::{ClientMessage, StreamEnd, STDERR, STDIO, STREAM_UPGRADE};
use hyper_core::pods::{
    ExecRequest, Output, RunIo, RunRequest, Runtime, Stdin, RUNTIME_FAILURE_EXIT,
};
use hyper_protocol::{Frame, FrameDecoder, FrameKind, TerminalSize, MAX_DATA_PAYLOAD};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::images_api::error;

/// Largest request body accepted before an upgrade.
pub const MAX_RUN_BODY: usize = 1024 * 1024;

/// What runs behind an upgraded stdio stream.
pub enum StreamJob {
    Run {
        rt: Arc<Runtime>,
        run: Box<RunRequest>,
    },
    Exec {
        rt: Arc<Runtime>,
        pod: String,
        exec: ExecRequest,
    },
    Attach {
        rt: Arc<Runtime>,
        pod: String,
    },
}

/// Reads a JSON body of type `T`, lets `check` refuse it with a plain error
/// response, and otherwise switches protocols and serves the job's stdio.
pub async fn upgrade_stream<T: serde::de::DeserializeOwned>(
    mut req: Request,
    make_job: impl FnOnce(T) -> StreamJob,
) -> Response {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE));
    if !wants_upgrade {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{} needs `Upgrade: {STREAM_UPGRADE}`", req.uri().path()),
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
    let parsed: T = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed request: {e}")),
    };
    let job = make_job(parsed);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_stream(job, TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!("the upgrade failed: {e}"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(STREAM_UPGRADE));
    response
}

async fn serve_stream<S>(job: StreamJob, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Stdin>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<TerminalSize>(4);

    // Client → stdin. The client is local and trusted more than a guest, but
    // its frames are bounded by the same decoder all the same.
    let stdin_task = tokio::spawn(async move {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; MAX_DATA_PAYLOAD];
        let mut stdin_open = Some(stdin_tx);
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut next = decoder.push(&buf[..n]);
            loop {
                match next {
                    Ok(Some(f)) if f.kind == FrameKind::Data && f.stream == STDIO => {
                        if let Some(tx) = &stdin_open {
                            if tx.send(Stdin::Data(f.payload)).await.is_err() {
                                stdin_open = None;
                            }
                        }
                    }
                    // Closing stdin must not stop resizes: keep reading.
                    // A client that just goes away (detach) leaves the
                    // process's stdin open; only this closes it.
                    Ok(Some(f)) if f.kind == FrameKind::Eof && f.stream == STDIO => {
                        if let Some(tx) = stdin_open.take() {
                            let _ = tx.send(Stdin::Close).await;
                        }
                    }
                    Ok(Some(f)) if f.kind == FrameKind::Control => {
                        match serde_json::from_slice::<ClientMessage>(&f.payload) {
                            Ok(ClientMessage::Resize { rows, cols }) => {
                                // A client sending sizes faster than the guest
                                // takes them loses the stale ones.
                                let _ = resize_tx.try_send(TerminalSize { rows, cols });
                            }
                            Err(e) => tracing::debug!("run: unknown client message: {e}"),
                        }
                    }
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
        let io = RunIo {
            output: out_tx,
            stdin: Some(stdin_rx),
            resize: Some(resize_rx),
        };
        tokio::spawn(async move {
            match job {
                StreamJob::Run { rt, run } => rt.run(*run, io).await.map(Some),
                StreamJob::Exec { rt, pod, exec } => rt.exec(&pod, exec, io).await.map(Some),
                StreamJob::Attach { rt, pod } => rt.attach(&pod, io).await,
            }
        })
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
        // The client left first: nobody to tell.
        Ok(Ok(None)) => return,
        Ok(Ok(Some(outcome))) => StreamEnd::Exit {
            code: outcome.exit_code,
            pod: outcome.pod,
            message: outcome.message,
        },
        Ok(Err(e)) => StreamEnd::Error {
            code: RUNTIME_FAILURE_EXIT,
            message: e.to_string(),
            error: e.kind(),
        },
        Err(e) => StreamEnd::Error {
            code: RUNTIME_FAILURE_EXIT,
            message: format!("the run task failed: {e}"),
            error: None,
        },
    };
    stdin_task.abort();
    if let Ok(json) = serde_json::to_vec(&end) {
        let _ = writer.write_all(&Frame::control(json).encode()).await;
    }
    let _ = writer.shutdown().await;
}
