//! The requests that make a pod and run a process in one, as `POST /v1/run`,
//! `POST /v1/pods` and `POST /v1/pods/{id}/exec` take them, and what a run
//! answers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper_protocol::TerminalSize;
use serde::{Deserialize, Serialize};

/// Docker's exit code for "the runtime failed, not the container".
pub const RUNTIME_FAILURE_EXIT: i32 = 125;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A directory to run as the root filesystem; or else `image`.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// An image in hyperd's store (name, `name:tag`, or id).
    #[serde(default)]
    pub image: Option<String>,
    /// `--entrypoint`: replaces the image's; `Some(vec![])` clears it.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The command, or with an image the arguments replacing its Cmd.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub remove: bool,
    /// Whether the client sends stdin; without it stdin is empty.
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `-t`: the process runs on a terminal (all output on stdout).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (24x80 without it).
    #[serde(default)]
    pub tty_size: Option<TerminalSize>,
    /// Capabilities, seccomp, `--privileged` (see crate::security).
    #[serde(default, skip_serializing_if = "crate::security::Security::is_default")]
    pub security: crate::security::Security,
    /// `--network`, `-p`, `--dns*`, `--add-host`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: crate::network::NetworkRequest,
    /// `--hostname`; the pod's id without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `-v` and `--mount`, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::volumes::VolumeRequest>,
    /// `--start`: how its VM starts; `[vm] start` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::start::StartMode>,
    /// The container's cgroup limits in the guest (`--pids-limit`; a pod
    /// file container's `memory`, `pids_limit`, `cpus`, `cpu_shares`).
    /// `memory_mib` sizes the VM; `limits.memory_max` bounds the container
    /// inside it.
    #[serde(
        default,
        skip_serializing_if = "crate::resources::ResourceLimits::is_unlimited"
    )]
    pub limits: crate::resources::ResourceLimits,
}

/// For `skip_serializing_if`: a field left at its default is not written.
pub fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A process to run in a running container (`hyper exec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub interactive: bool,
    /// A container of a several-container pod, by name; else the main one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `-t`: the process runs on a terminal (all output on stdout).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (24x80 without it).
    #[serde(default)]
    pub tty_size: Option<TerminalSize>,
    /// `--privileged`: every capability and no seccomp filter for this
    /// process.
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub pod: String,
    pub exit_code: i32,
    /// Why the process did not run, when it did not (e.g. command not found).
    pub message: Option<String>,
    /// An OOM killer ended it: the guest's (its container's init died of
    /// it) or the host cgroup's (the VM was killed). The containerd shim
    /// publishes `/tasks/oom` from it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// When a pod's container is started again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure {
        /// Restarts allowed; unlimited when absent.
        max_retries: Option<u32>,
    },
    Always,
}

impl RestartPolicy {
    /// `no`, `always`, `on-failure` or `on-failure:N`, as Docker spells them.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "no" => Ok(Self::No),
            None if text == "always" => Ok(Self::Always),
            None if text == "on-failure" => Ok(Self::OnFailure { max_retries: None }),
            Some(("on-failure", n)) => n
                .parse()
                .map(|n| Self::OnFailure {
                    max_retries: Some(n),
                })
                .map_err(|_| format!("--restart {text}: N in on-failure:N must be a number")),
            _ => Err(format!(
                "--restart {text}: use no, always, on-failure or on-failure:N"
            )),
        }
    }

    pub fn should_restart(self, exit_code: i32, restarts_so_far: u32) -> bool {
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max_retries } => {
                exit_code != 0 && max_retries.is_none_or(|max| restarts_so_far < max)
            }
        }
    }
}
