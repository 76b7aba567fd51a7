//! The guest protocol spoken on the one channel between the host (core/agent)
//! and hyperstart (the guest's init).
//!
//! The channel carries frames. A frame is a 9-byte header — kind (`u8`),
//! stream (`u32`, big endian), payload length (`u32`, big endian) — and the
//! payload:
//!
//! * [`FrameKind::Control`] on stream 0: one JSON message, [`HostMessage`]
//!   from the host or [`GuestMessage`] from the guest.
//! * [`FrameKind::Data`]: bytes of a process's stdio stream. A process has two
//!   stream ids: `stdio` (stdin host→guest, stdout guest→host) and `stderr`.
//! * [`FrameKind::Eof`]: the sender will send no more data on that stream
//!   (stdin closed by the host, stdout/stderr closed in the guest).
//! * [`FrameKind::Credit`]: flow control. The payload is a `u32` count of
//!   bytes the receiver of data grants the sender on that stream, on top of
//!   the [`INITIAL_WINDOW`] every stream starts with. A sender never has more
//!   than its credit in flight, so a chatty stdout cannot fill the channel and
//!   starve control messages.
//!
//! A host that lost its session (hyperd restarted) starts a new one on the
//! same channel without a reboot: it sends [`RESYNC_PAD_LEN`] pad bytes and
//! a [`Request::Reattach`] with a nonce; hyperstart, whose decoder skips pad
//! between frames and hunts for it after a bad header, answers with
//! [`RESYNC_MAGIC`] + nonce, raw, then the reply listing its processes. The
//! host discards what it read before the magic (the old session's tail).
//!
//! Both ends treat the other as untrusted: every length is bounded before any
//! allocation ([`MAX_CONTROL_PAYLOAD`], [`MAX_DATA_PAYLOAD`]) and a malformed
//! frame is an error that ends the session.

mod frame;
mod message;
mod netnames;
pub mod text;

pub use frame::{
    Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD,
    PAD_BYTE, RESYNC_MAGIC, RESYNC_PAD_LEN,
};
pub use message::*;
pub use netnames::{valid_dns_name, valid_hostname, valid_resolver_option};

/// The newest protocol version this build speaks. Version 2 added
/// `ProcessSpec::confinement`: a version-1 guest would run containers with
/// every capability, so it is refused. Version 3 added `PodSpec::network`
/// (a version-2 guest still runs pods without a network).
pub const PROTOCOL_VERSION: u32 = 3;
/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 2;
/// Bytes a sender may send on a data stream before it has received any credit.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// The virtio-serial port name the host gives the channel; hyperstart finds the
/// port by this name in sysfs.
pub const CHANNEL_PORT_NAME: &str = "sh.hyper.channel.0";
/// Kernel command line key that tells hyperstart where its channel is: a
/// virtio-serial port name, or a device path such as `/dev/hvc1`.
pub const CMDLINE_CHANNEL_KEY: &str = "hyper.channel";
/// Kernel command line key prefix naming the device of a disk for a backend
/// without disk serials (Xen's blkfront): `hyper.disk.<id>=xvda`.
pub const CMDLINE_DISK_PREFIX: &str = "hyper.disk.";

/// The kernel command line argument that tells hyperstart its channel.
pub fn channel_arg(channel: &str) -> String {
    format!("{CMDLINE_CHANNEL_KEY}={channel}")
}

/// The kernel command line argument naming disk `id`'s device.
pub fn disk_arg(id: &str, device: &str) -> String {
    format!("{CMDLINE_DISK_PREFIX}{id}={device}")
}

/// Picks the protocol version both sides speak, if any.
pub fn negotiate_version(peer_min: u32, peer_max: u32) -> Option<u32> {
    let high = peer_max.min(PROTOCOL_VERSION);
    let low = peer_min.max(MIN_PROTOCOL_VERSION);
    (low <= high).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_highest_common_version() {
        assert_eq!(negotiate_version(2, 2), Some(2));
        // A guest without confinement (version 1) is refused.
        assert_eq!(negotiate_version(1, 1), None);
        assert_eq!(negotiate_version(1, 9), Some(PROTOCOL_VERSION));
        assert_eq!(
            negotiate_version(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3),
            None
        );
        assert_eq!(negotiate_version(0, 0), None);
    }
}
