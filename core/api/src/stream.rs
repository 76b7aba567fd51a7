//! The stdio stream of `POST /v1/run` after the HTTP upgrade.
//!
//! It reuses the guest protocol's frames: data on [`STDIO`] carries stdin
//! (client→hyperd) and stdout (hyperd→client), data on [`STDERR`] carries
//! stderr, an end-of-stream frame on [`STDIO`] from the client closes stdin,
//! and one control frame from hyperd, a JSON [`StreamEnd`], ends the run.
//! The client may send control frames too, each a JSON [`ClientMessage`]
//! (a terminal's new size).
//! Backpressure is the socket's own: hyperd stops reading the guest when the
//! client stops reading.

use serde::{Deserialize, Serialize};

/// Where `hyper` finds hyperd unless `--host` or `HYPER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hyper/hyperd.sock";
/// The protocol name of the upgraded stdio stream.
pub const STREAM_UPGRADE: &str = "hyper-stream";

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
    /// The runtime failed; `code` is Docker's 125. `error` is the
    /// failure's stable kind and data, when it has one.
    Error {
        code: i32,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<crate::errors::ErrorKind>,
    },
    /// Never sent by hyperd: the client's user typed the detach keys; the
    /// process goes on running.
    Detached,
}

/// What the client may say on the stream besides stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    /// The client's terminal has a new size (`-t` only; hyperd sends the
    /// process SIGWINCH through the guest).
    Resize { rows: u16, cols: u16 },
}

pub use crate::errors::ApiError;
