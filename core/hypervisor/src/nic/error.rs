use std::io;
use std::path::PathBuf;

/// What went wrong while preparing a NIC. Every variant names the network
/// namespace and, where there is one, the interface, so an operator can look
/// at it with `ip -n NAME link` / `tc -n NAME filter show dev DEVICE ingress`.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// A field of a [`crate::NicSpec`] (or an argument) cannot be used.
    #[error("invalid NIC {field} {value:?}: {reason}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// Creating, entering or removing a network namespace failed.
    #[error("network namespace {}: cannot {op}: {source}", netns.display())]
    Netns {
        netns: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A network namespace with that name already exists.
    #[error(
        "network namespace {} already exists (a leftover? remove it with `ip netns delete`)",
        netns.display()
    )]
    NetnsExists { netns: PathBuf },

    /// Opening or configuring the tap device failed.
    #[error("tap {device} in network namespace {}: cannot {op}: {source}", netns.display())]
    Tap {
        netns: PathBuf,
        device: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// An interface the NIC needs is not in the namespace.
    #[error("no interface {device} in network namespace {}", netns.display())]
    NoSuchLink { netns: PathBuf, device: String },

    /// A netlink (rtnetlink / traffic control) request failed.
    #[error("network namespace {}, interface {device}: cannot {op}: {message}", netns.display())]
    Netlink {
        netns: PathBuf,
        device: String,
        op: &'static str,
        message: String,
    },

    /// The short-lived thread that works inside the namespace could not be
    /// started or died.
    #[error("network namespace {}: worker thread: {message}", netns.display())]
    Thread { netns: PathBuf, message: String },
}

impl NicError {
    pub(crate) fn netns(netns: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        NicError::Netns {
            netns: netns.into(),
            op,
            source,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        NicError::InvalidSpec {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }
}
