//! hyperd's REST API (axum on a unix socket).
//!
//! * `GET  /v1/version`
//! * `GET  /v1/info`  plugins, probe verdicts, payload
//! * `GET  /v1/networks`  the CNI networks found
//! * `POST /v1/run`   body: a `RunRequest`; answered with `101 Switching
//!   Protocols` (`Upgrade: hyper-stream`) and then the stdio stream of
//!   [`crate::upgrade`], or with a JSON error before any VM starts.
//! * the pod endpoints of [`crate::pods_api`], the image endpoints of
//!   [`crate::images_api`], the named volumes of [`crate::volumes_api`],
//!   and events and metrics ([`crate::events_api`])

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hyper_core::pods::{RunRequest, Runtime};

use crate::events_api;
use crate::images_api::{self, error};
use crate::peer::Peer;
use crate::pods_api;
use crate::templates_api;
use crate::upgrade::{upgrade_stream, StreamJob, MAX_RUN_BODY};
use crate::volumes_api;

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
