//! The stdio stream of `POST /v1/run` after the HTTP upgrade.
//!
//! It reuses the guest protocol's frames: data on [`STDIO`] carries stdin
//! (client→hyperd) and stdout (hyperd→client), data on [`STDERR`] carries
//! stderr, an end-of-stream frame on [`STDIO`] from the client closes stdin,
//! and one control frame from hyperd, a JSON [`StreamEnd`], ends the run.
//! Backpressure is the socket's own: hyperd stops reading the guest when the
//! client stops reading.

use serde::{Deserialize, Serialize};

pub const STDIO: u32 = 1;
pub const STDERR: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    /// The container exited with this code.
    Exit {
        code: i32,
        pod: String,
        message: Option<String>,
    },
    /// The runtime failed; `code` is Docker's 125.
    Error { code: i32, message: String },
}

/// JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
}
