//! hyperd's template endpoints (docs/API.md lists them with examples).
//!
//! * `GET    /v1/templates`         every template in the store, with its key parts
//! * `DELETE /v1/templates/{key}`   removes one (`all` removes every one) →
//!   `{"removed": N}`; 404 for no such template, 409 while a pod builds or
//!   restores it

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_core::pods::Runtime;
use hyper_core::templates::TemplateError;

use hyper_api::errors::ErrorKind;

use crate::images_api::{error, error_of_kind};

pub async fn list(State(rt): State<Arc<Runtime>>) -> Response {
    let listed = tokio::task::spawn_blocking(move || rt.templates()).await;
    match listed {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the list task failed: {e}"),
        ),
    }
}

pub async fn remove(State(rt): State<Arc<Runtime>>, Path(key): Path<String>) -> Response {
    let removed = tokio::task::spawn_blocking(move || {
        if key == "all" {
            rt.remove_all_templates()
        } else {
            rt.remove_template(&key).map(|()| 1)
        }
    })
    .await;
    match removed {
        Ok(Ok(n)) => Json(serde_json::json!({ "removed": n })).into_response(),
        Ok(Err(e)) => {
            let (status, kind) = match &e {
                TemplateError::NotFound(key) => (
                    StatusCode::NOT_FOUND,
                    Some(ErrorKind::NoSuchTemplate { key: key.clone() }),
                ),
                TemplateError::BadKey(key) => (
                    StatusCode::BAD_REQUEST,
                    Some(ErrorKind::BadTemplateKey { key: key.clone() }),
                ),
                TemplateError::Busy { .. } => (StatusCode::CONFLICT, None),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
            };
            error_of_kind(status, e.to_string(), kind)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the remove task failed: {e}"),
        ),
    }
}
