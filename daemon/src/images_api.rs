//! hyperd's image endpoints.
//!
//! * `GET    /v1/images`                    every image in the store
//! * `GET    /v1/images/inspect?name=NAME`  one image (404 when absent)
//! * `POST   /v1/images/pull`               body `{"reference": …}`; the answer
//!   streams one JSON [`PullEvent`] per line, ending with `done` or `error`
//! * `POST   /v1/images/load`               body `{"path": …}` (on hyperd's host)
//! * `POST   /v1/images/tag`                body `{"source": …, "target": …}`
//! * `DELETE /v1/images?name=NAME`          untag / delete (409 while a pod uses it)
//! * `POST   /v1/login`                     body `{"registry", "username", "password"}`

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_core::pods::Runtime;
use hyper_images::{ImageError, PullProgress};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::peer::{self, Peer};
use hyper_api::errors::{ApiError, ErrorKind};

pub use hyper_api::images::{LoadRequest, LoginRequest, PullEvent, PullRequest, TagRequest};

#[derive(Debug, Deserialize)]
pub struct NameQuery {
    pub name: String,
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    error_of_kind(status, message, None)
}

/// An error response with its stable kind (see [`hyper_api::errors`]).
pub fn error_of_kind(
    status: StatusCode,
    message: impl Into<String>,
    kind: Option<ErrorKind>,
) -> Response {
    (status, Json(ApiError::new(message, kind))).into_response()
}

fn image_error(e: ImageError) -> Response {
    let status = match &e {
        ImageError::InUse { .. } => StatusCode::CONFLICT,
        ImageError::NotFound { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Box<Response>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(image_error(e))),
        Err(e) => Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the image task failed: {e}"),
        ))),
    }
}

pub async fn list(State(rt): State<Arc<Runtime>>) -> Response {
    let store = rt.images().clone();
    match blocking(move || store.list()).await {
        Ok(images) => Json(images).into_response(),
        Err(r) => *r,
    }
}

pub async fn inspect(State(rt): State<Arc<Runtime>>, Query(q): Query<NameQuery>) -> Response {
    let store = rt.images().clone();
    let name = q.name.clone();
    match blocking(move || store.find(&name)).await {
        Ok(Some(image)) => Json(image).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no such image: {}; `hyper images` lists them", q.name),
        ),
        Err(r) => *r,
    }
}

/// Sends the pull's progress down a channel; never blocks the pull.
struct ChannelProgress(mpsc::UnboundedSender<PullEvent>);

impl PullProgress for ChannelProgress {
    fn resolved(&self, reference: &str, digest: &str) {
        let _ = self.0.send(PullEvent::Resolved {
            reference: reference.into(),
            digest: digest.into(),
        });
    }
    fn layer_started(&self, digest: &str, size: u64, cached: bool) {
        let _ = self.0.send(PullEvent::Layer {
            digest: digest.into(),
            size,
            cached,
        });
    }
    fn layer_progress(&self, digest: &str, done: u64) {
        let _ = self.0.send(PullEvent::Progress {
            digest: digest.into(),
            done,
        });
    }
    fn layer_done(&self, digest: &str) {
        let _ = self.0.send(PullEvent::LayerDone {
            digest: digest.into(),
        });
    }
}

pub async fn pull(State(rt): State<Arc<Runtime>>, Json(req): Json<PullRequest>) -> Response {
    if req.reference.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "no image reference given");
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PullEvent>();
    let store = rt.images().clone();
    let options = rt.pull_options();
    let progress = Arc::new(ChannelProgress(tx.clone()));
    // The pull goes on even if the client leaves: the store keeps what it
    // got. It runs on a blocking thread of its own because the library's
    // pull future is not `Send` (it is still async inside, on this runtime).
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let end = match handle.block_on(store.pull(&req.reference, &options, progress)) {
            Ok(image) => match serde_json::to_value(&image) {
                Ok(image) => PullEvent::Done { image },
                Err(e) => PullEvent::Error {
                    message: format!("pulled {}, but cannot describe it: {e}", image.id),
                },
            },
            Err(e) => PullEvent::Error {
                message: e.to_string(),
            },
        };
        let _ = tx.send(end);
    });
    let (out, lines) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let last = matches!(event, PullEvent::Done { .. } | PullEvent::Error { .. });
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if out.send(line).await.is_err() || last {
                break;
            }
        }
    });
    ndjson_response(lines)
}

/// A `200` whose body is the lines `rx` yields, as they come.
pub fn ndjson_response(rx: mpsc::Receiver<Vec<u8>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(line), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub async fn load(
    State(rt): State<Arc<Runtime>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<LoadRequest>,
) -> Response {
    if let Err(e) = peer::absolute(&req.path) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    // A client other than root: the archive is opened as the client, and
    // hyperd reads that open file (by its /proc/self/fd link, so a rename
    // after the check changes nothing). A layout directory would be read
    // path by path as root: refused for such a client.
    let mut opened = None;
    if !peer.is_root() {
        let path = req.path.clone();
        let file = match tokio::task::spawn_blocking(move || peer.open(&path)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => return error(StatusCode::FORBIDDEN, e.to_string()),
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the check task failed: {e}"),
                )
            }
        };
        if file.metadata().map(|m| !m.is_file()).unwrap_or(true) {
            return error(
                StatusCode::FORBIDDEN,
                peer::PathError::NotAFile { path: req.path }.to_string(),
            );
        }
        opened = Some(file);
    }
    let store = rt.images().clone();
    match blocking(move || match opened {
        Some(file) => {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
            let loaded = store.load(std::path::Path::new(&format!("/proc/self/fd/{fd}")));
            drop(file);
            loaded
        }
        None => store.load(&req.path),
    })
    .await
    {
        Ok(images) => Json(images).into_response(),
        Err(r) => *r,
    }
}

pub async fn tag(State(rt): State<Arc<Runtime>>, Json(req): Json<TagRequest>) -> Response {
    let store = rt.images().clone();
    match blocking(move || store.tag(&req.source, &req.target)).await {
        Ok(image) => Json(image).into_response(),
        Err(r) => *r,
    }
}

pub async fn remove(State(rt): State<Arc<Runtime>>, Query(q): Query<NameQuery>) -> Response {
    let runtime = rt.clone();
    match blocking(move || {
        runtime
            .images()
            .remove(&q.name, &|image| runtime.image_in_use(image))
    })
    .await
    {
        Ok(removed) => Json(removed).into_response(),
        Err(r) => *r,
    }
}

pub async fn login(State(rt): State<Arc<Runtime>>, Json(req): Json<LoginRequest>) -> Response {
    if req.registry.is_empty() || req.username.is_empty() {
        return error(StatusCode::BAD_REQUEST, "give a registry and a user name");
    }
    let file = rt.config().auth_file();
    match blocking(move || {
        hyper_images::save_login(&file, &req.registry, &req.username, &req.password)
    })
    .await
    {
        Ok(()) => Json(serde_json::json!({ "status": "Login Succeeded" })).into_response(),
        Err(r) => *r,
    }
}
