//! The image endpoints' requests and the pull's progress lines.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One line of the `POST /v1/images/pull` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    Resolved {
        reference: String,
        digest: String,
    },
    Layer {
        digest: String,
        size: u64,
        cached: bool,
    },
    Progress {
        digest: String,
        done: u64,
    },
    LayerDone {
        digest: String,
    },
    /// The image, as `GET /v1/images/inspect` shows it.
    Done {
        image: serde_json::Value,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PullRequest {
    pub reference: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoadRequest {
    pub path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TagRequest {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoginRequest {
    pub registry: String,
    pub username: String,
    pub password: String,
}
