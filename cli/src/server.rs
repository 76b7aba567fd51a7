//! hyperd's REST API (axum on a unix socket).
//!
//! * `GET  /v1/version`
//! * `GET  /v1/info`  plugins, probe verdicts, payload
//! * `GET  /v1/networks`  the CNI networks found
//! * `POST /v1/run`   body: a `RunRequest`; answered with `101 Switching
//!   Protocols` (`Upgrade: hyper-stream`) and then the stdio stream of
//!   [`crate::stream`], or with a JSON error before any VM starts.
//! * the pod endpoints of [`crate::pods_api`], the image endpoints of
//!   [`crate::images_api`], the named volumes of [`crate::volumes_api`],
//!   and events and metrics ([`crate::events_api`])

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hyper_core::pods::{
    ExecRequest, Output, RunIo, RunRequest, Runtime, Stdin, RUNTIME_FAILURE_EXIT,
};
use hyper_protocol::{Frame, FrameDecoder, FrameKind, TerminalSize, MAX_DATA_PAYLOAD};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::events_api;
use crate::images_api::{self, error};
use crate::peer::Peer;
use crate::pods_api;
use crate::stream::{ClientMessage, StreamEnd, STDERR, STDIO};
use crate::templates_api;
use crate::volumes_api;
use crate::STREAM_UPGRADE;

/// Largest `POST /v1/run` body accepted.
const MAX_RUN_BODY: usize = 1024 * 1024;

pub fn router(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/info", get(info))
        .route("/v1/networks", get(networks))
        .route("/v1/pods", get(pods_api::list).post(pods_api::create))
        .route("/v1/pods/create", post(pods_api::create_pod))
        .route(
            "/v1/pods/{pod}",
            get(pods_api::inspect).delete(pods_api::remove),
        )
        .route("/v1/pods/{pod}/stop", post(pods_api::stop))
        .route("/v1/pods/{pod}/kill", post(pods_api::kill))
        .route("/v1/pods/{pod}/wait", post(pods_api::wait))
        .route("/v1/pods/{pod}/logs", get(pods_api::logs))
        .route("/v1/pods/{pod}/stats", get(pods_api::stats))
        .route("/v1/pods/{pod}/exec", post(pods_api::exec))
        .route("/v1/pods/{pod}/attach", post(pods_api::attach))
        .route("/v1/pods/{pod}/start", post(pods_api::start))
        .route("/v1/pods/{pod}/restart", post(pods_api::restart))
        .route("/v1/run", post(run))
        .route(
            "/v1/images",
            get(images_api::list).delete(images_api::remove),
        )
        .route("/v1/images/inspect", get(images_api::inspect))
        .route("/v1/images/pull", post(images_api::pull))
        .route("/v1/images/load", post(images_api::load))
        .route("/v1/images/tag", post(images_api::tag))
        .route("/v1/login", post(images_api::login))
        .route(
            "/v1/volumes",
            get(volumes_api::list).post(volumes_api::create),
        )
        .route(
            "/v1/volumes/{name}",
            get(volumes_api::inspect).delete(volumes_api::remove),
        )
        .route("/v1/templates", get(templates_api::list))
        .route("/v1/templates/{key}", delete(templates_api::remove))
        .route("/v1/events", get(events_api::events))
        .route("/events", get(events_api::events))
        .route("/metrics", get(events_api::metrics))
        .with_state(runtime)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "api": "v1" }))
}

async fn info(State(rt): State<Arc<Runtime>>) -> Json<hyper_core::pods::Info> {
    Json(rt.info().await)
}

/// `GET /v1/networks`: the CNI networks found (`hyper network ls`).
async fn networks(State(rt): State<Arc<Runtime>>) -> Response {
    match rt.networks() {
        Ok(list) => Json(list).into_response(),
        Err(e) => pods_api::run_error(&e),
    }
}

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

async fn run(
    State(rt): State<Arc<Runtime>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    // The body is needed before the checks: parse it here, check, then hand
    // the already-parsed request on.
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_RUN_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
    };
    let run: RunRequest = match serde_json::from_slice(&bytes) {
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
    if let Some(refused) = crate::peer::refuse_host_volumes(peer, &run.volumes) {
        return refused;
    }
    match (&run.rootfs, &run.image) {
        (Some(dir), None) => {
            if run.args.is_empty() && run.entrypoint.as_ref().is_none_or(|e| e.is_empty()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "no command given: `hyper run --rootfs DIR CMD…`",
                );
            }
            if let Err(refused) = crate::peer::check_rootfs_dirs(peer, vec![dir.clone()]).await {
                return refused;
            }
            if !dir.is_dir() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "rootfs {}: not a directory on the hyperd host",
                        dir.display()
                    ),
                );
            }
        }
        (None, Some(name)) => match rt.find_image(name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no such image: {name}; pull it first with `hyper pull {name}`"),
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of `image` and `rootfs`",
            )
        }
    }
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    upgrade_stream::<RunRequest>(req, move |run| StreamJob::Run {
        rt,
        run: Box::new(run),
    })
    .await
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
