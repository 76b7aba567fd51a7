//! What hyperd and the `hyper` client share: the REST API's request and
//! response types (docs/API.md) and the pure helpers both sides run on
//! them — parsing sizes, start modes, pod files, security options, network
//! and volume requests, event filters and times. No runtime: the client
//! links this crate, not `hyper-core`.

pub mod errors;
pub mod events;
pub mod images;
pub mod network;
pub mod podfile;
pub mod pods;
pub mod resources;
pub mod security;
pub mod start;
pub mod stream;
pub mod time;

/// `-v` and `--mount` requests, as `hyper_volumes` parses them.
pub mod volumes {
    pub use hyper_volumes::request::*;
}
