//! Text from pods and images (an image's Cmd, a pod's name) shown on the
//! operator's terminal: control characters are escaped, never printed raw,
//! so an image cannot move the cursor, retitle the window or hide a line.
//! The rules live in the protocol crate, shared with the host's agent
//! client (a guest's messages are escaped where they enter the host).

pub use hyper_protocol::text::escape_control;
