//! hyperd's REST API on `hyper-core`: the routes (`server`), the upgraded
//! stdio stream (`upgrade`), the endpoints by resource (`*_api`) and the
//! client's credentials (`peer`).

pub mod events_api;
pub mod images_api;
pub mod peer;
pub mod pods_api;
pub mod server;
pub mod templates_api;
pub mod upgrade;
pub mod volumes_api;
