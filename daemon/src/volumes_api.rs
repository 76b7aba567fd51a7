//! hyperd's named volume endpoints (docs/API.md lists them with examples).
//!
//! * `GET    /v1/volumes`          every named volume, with the pods that use it
//! * `POST   /v1/volumes`          body: `{"name", "kind"?, "size_bytes"?, "mkfs"?, "labels"?}`
//!   → the volume (an existing one of the same kind is returned as it is)
//! * `GET    /v1/volumes/{name}`   one volume
//! * `DELETE /v1/volumes/{name}`   removes it; 409 while a pod's record names it

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_core::pods::Runtime;
use hyper_volumes::VolumeOptions;
use serde::Deserialize;

use crate::images_api::error;
use crate::pods_api::run_error;

/// The body of `POST /v1/volumes`; unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: String,
    #[serde(default)]
    pub kind: Option<hyper_volumes::VolumeKind>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub mkfs: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl CreateVolumeRequest {
    pub fn options(&self) -> VolumeOptions {
        VolumeOptions {
            kind: self.kind,
            size_bytes: self.size_bytes,
            mkfs: self.mkfs.clone(),
            labels: self.labels.clone(),
        }
    }
}

pub async fn list(State(rt): State<Arc<Runtime>>) -> Response {
    match rt.volume_list() {
        Ok(list) => Json(list).into_response(),
        Err(e) => run_error(&e),
    }
}

pub async fn create(
    State(rt): State<Arc<Runtime>>,
    body: Result<Json<CreateVolumeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed volume request: {e}"),
            )
        }
    };
    // mkfs may take a moment on a big disk: off the async threads.
    let made =
        tokio::task::spawn_blocking(move || rt.volume_create(&req.name, &req.options())).await;
    match made {
        Ok(Ok(v)) => (StatusCode::CREATED, Json(v)).into_response(),
        Ok(Err(e)) => run_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the create task failed: {e}"),
        ),
    }
}

pub async fn inspect(State(rt): State<Arc<Runtime>>, Path(name): Path<String>) -> Response {
    match rt.volume_inspect(&name) {
        Ok(v) => Json(v).into_response(),
        Err(e) => run_error(&e),
    }
}

pub async fn remove(State(rt): State<Arc<Runtime>>, Path(name): Path<String>) -> Response {
    let removed = tokio::task::spawn_blocking(move || rt.volume_remove(&name)).await;
    match removed {
        Ok(Ok(())) => Json(serde_json::json!({})).into_response(),
        Ok(Err(e)) => run_error(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the remove task failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies_parse_and_unknown_keys_are_refused() {
        let r: CreateVolumeRequest = serde_json::from_str(
            r#"{"name":"db","kind":"block","size_bytes":1048576,"mkfs":"ext4","labels":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(r.name, "db");
        assert_eq!(r.options().kind(), hyper_volumes::VolumeKind::Block);
        let r: CreateVolumeRequest =
            serde_json::from_str(r#"{"name":"d1","size_bytes":null,"mkfs":null}"#).unwrap();
        assert_eq!(r.options().kind(), hyper_volumes::VolumeKind::Directory);
        assert!(
            serde_json::from_str::<CreateVolumeRequest>(r#"{"name":"d1","colour":1}"#).is_err()
        );
        assert!(serde_json::from_str::<CreateVolumeRequest>(r#"{"kind":"block"}"#).is_err());
    }
}
