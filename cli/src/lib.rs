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
pub mod templates_api;
pub mod terminal;
pub mod volumes_api;

pub use hyper_api::stream;
pub use hyper_api::stream::{DEFAULT_SOCKET, STREAM_UPGRADE};
