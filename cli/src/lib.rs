//! The `hyper` client: hyperd's REST API over its unix socket (`client`),
//! the terminal, pull progress and safe display of what hyperd sends. It
//! links `hyper-api` for the request types, not the runtime.

pub mod client;
pub mod display;
pub mod errors;
pub mod progress;
pub mod terminal;

pub use hyper_api::stream;
pub use hyper_api::stream::{DEFAULT_SOCKET, STREAM_UPGRADE};
