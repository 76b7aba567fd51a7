//! Errors as hyperd reports them: every error body is an [`ApiError`], a
//! message and, for the errors a client may want to word itself, a stable
//! [`ErrorKind`] with its data. The runtime's messages name no command-line
//! flag; `hyper` words the kinds it knows with its own commands and flags,
//! and shows the message for the rest.

use serde::{Deserialize, Serialize};

/// JSON body of every error response (and of a stream's end by error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
    /// `kind` and its fields, next to `message`; absent for errors that
    /// have no kind (and a kind this client does not know reads as none).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

impl ApiError {
    pub fn new(message: impl Into<String>, kind: Option<ErrorKind>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }
}

/// What went wrong, stable across versions: the `kind` field of an error
/// body and the data that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ErrorKind {
    /// No pod has this id, id prefix or name.
    NoSuchPod { pod: String },
    /// The pod exists but its VM does not run.
    PodNotRunning { pod: String },
    /// The pod runs, and the verb needs it stopped.
    PodRunning { pod: String },
    /// Another pod has this name.
    NameInUse { name: String },
    /// Not a pod name by Docker's rule.
    BadPodName { name: String },
    /// `remove` and a restart policy other than `no` in one request.
    RemoveWithRestart,
    /// Both `image` and `rootfs` in one request.
    ImageAndRootfs,
    /// Neither `image` nor `rootfs`.
    NoImage,
    /// An image not in hyperd's store.
    NoSuchImage { image: String },
    /// An exec request with no command.
    NoExecCommand,
    /// `start: template` and the pod cannot start from one.
    NoTemplate { reason: String },
    /// A VM size (`key`: the request's `cpus` or `memory_mib`, a pod file's
    /// `vcpus =`, the config's `[vm] vcpus`) this host or hyperd cannot give.
    SizeRefused {
        key: String,
        value: String,
        reason: String,
    },
    /// The pod asked for a network and none is configured in `dir`.
    NoNetworks { dir: String },
    /// The pod asked for a network and its guest agent has none.
    GuestWithoutNetwork { agent: String },
    /// A named volume some pods still use.
    VolumeInUse { name: String, pods: Vec<String> },
    /// No template has this key.
    NoSuchTemplate { key: String },
    /// Not a template key (32 hex digits).
    BadTemplateKey { key: String },
}
