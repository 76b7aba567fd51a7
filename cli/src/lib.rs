//! hyperd's REST API (server side) and the client `hyper` uses, sharing one
//! definition of the stdio stream that runs over an upgraded connection.

pub mod client;
pub mod display;
pub mod events_api;
pub mod images_api;
pub mod peer;
pub mod pods_api;
pub mod progress;
pub mod server;
pub mod stream;
pub mod templates_api;
pub mod terminal;
pub mod volumes_api;

/// Where `hyper` finds hyperd unless `--host` or `HYPER_HOST` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hyper/hyperd.sock";
/// The protocol name of the upgraded stdio stream.
pub const STREAM_UPGRADE: &str = "hyper-stream";
