//! The OCI bundle containerd hands the shim: `config.json` (the runtime
//! spec; only what a pod of one container uses is read) and the runtime
//! options (`ConfigPath`: which hypercontainer config to run with).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;
use hyper_protocol::{CpuMax, ResourceLimits};
use serde::Deserialize;

/// The hypercontainer config used when the runtime options name none.
pub const DEFAULT_CONFIG: &str = hyper_core::config::DEFAULT_CONFIG_PATH;
/// Largest `config.json` read (containerd's are a few KiB).
const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_SPEC_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: not an OCI runtime spec: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: the spec has no process to run")]
    NoProcess { path: PathBuf },
    #[error("exec: {message}")]
    Exec { message: String },
    #[error("runtime options ({type_url}): {message}")]
    Options { type_url: String, message: String },
}

/// The parts of the OCI runtime spec the shim uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub process: Option<Process>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// A mount of the spec.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// The container's cgroup limits (Kubernetes' resources.limits).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// The OCI seccomp profile (the shape of a Docker profile), taken as
    /// the process's filter ([`crate::confine`]).
    #[serde(default)]
    pub seccomp: Option<serde_json::Value>,
}

/// The parts of `linux.resources` the guest applies; OCI's `-1` or `0`
/// (and a missing field) is no limit.
#[derive(Debug, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: Option<MemoryResources>,
    #[serde(default)]
    pub cpu: Option<CpuResources>,
    #[serde(default)]
    pub pids: Option<PidsResources>,
}

#[derive(Debug, Default, Deserialize)]
pub struct MemoryResources {
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CpuResources {
    #[serde(default)]
    pub shares: Option<u64>,
    #[serde(default)]
    pub quota: Option<i64>,
    #[serde(default)]
    pub period: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PidsResources {
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
}

/// The CRI annotations containerd's CRI plugin puts on a pod's containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a task is to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `ctr run` and the like: a VM of its own.
    Alone,
    /// A CRI sandbox (the pause container): it boots the pod's VM, which
    /// its containers join.
    Sandbox,
    /// A container of CRI sandbox `sandbox`: served by the sandbox's shim,
    /// it joins the sandbox's VM.
    Member { sandbox: String },
}

impl Spec {
    pub fn role(&self) -> Role {
        match (
            self.annotations.get(CONTAINER_TYPE).map(String::as_str),
            self.annotations.get(SANDBOX_ID),
        ) {
            (Some("sandbox"), _) => Role::Sandbox,
            (Some("container"), Some(id)) if !id.is_empty() => Role::Member {
                sandbox: id.clone(),
            },
            _ => Role::Alone,
        }
    }

    /// The container's limits in the guest from `linux.resources`:
    /// `memory.limit`, `pids.limit`, `cpu.quota`/`cpu.period` and
    /// `cpu.shares`, checked as hyperd checks them (an error names the
    /// OCI field).
    pub fn limits(&self) -> Result<ResourceLimits, String> {
        let Some(r) = self.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
            return Ok(ResourceLimits::default());
        };
        let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|&v| v > 0);
        let cpu = r.cpu.as_ref();
        let limits = ResourceLimits {
            memory_max: positive(r.memory.as_ref().and_then(|m| m.limit)),
            pids_max: positive(r.pids.as_ref().and_then(|p| p.limit)),
            cpu_max: positive(cpu.and_then(|c| c.quota)).map(|quota_us| CpuMax {
                quota_us,
                period_us: cpu
                    .and_then(|c| c.period)
                    .filter(|&p| p > 0)
                    .unwrap_or(CpuMax::DEFAULT_PERIOD_US),
            }),
            cpu_weight: cpu
                .and_then(|c| c.shares)
                .filter(|&s| s > 0)
                .map(ResourceLimits::weight_of_shares),
        };
        limits.validate().map_err(|e| {
            let field = match e.split([' ', '.']).next().unwrap_or_default() {
                "memory_max" => "memory.limit",
                "pids_max" => "pids.limit",
                "cpu_max" => "cpu.quota/cpu.period",
                _ => "cpu.shares",
            };
            format!("the spec's linux.resources.{field}: {e}")
        })?;
        Ok(limits)
    }

    /// The network namespace to join (CRI's, configured by its CNI), if
    /// the spec names one by path; `None` for a new one (`ctr run`).
    pub fn netns(&self) -> Option<PathBuf> {
        self.linux
            .as_ref()?
            .namespaces
            .iter()
            .find(|n| n.kind == "network" && !n.path.is_empty())
            .map(|n| PathBuf::from(&n.path))
    }
}

/// Reads the spec of the bundle at `bundle` for its role only (the shim's
/// `start` and `delete`); a spec that cannot be read is [`Role::Alone`].
pub fn role_of(bundle: &Path) -> Role {
    read_spec(bundle).map_or(Role::Alone, |(s, _)| s.role())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub console_size: Option<ConsoleSize>,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    /// Set before the process starts, as the core's ulimits.
    #[serde(default)]
    pub rlimits: Vec<SpecRlimit>,
    /// Absent: the core's default set ([`crate::confine`]).
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub no_new_privileges: bool,
}

/// One of the spec's `process.rlimits`: `{"type": "RLIMIT_NOFILE",
/// "soft": 1024, "hard": 4096}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SpecRlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// The spec's capability sets; the bounding set is the one taken (CRI and
/// ctr give the same list in bounding, effective and permitted).
#[derive(Debug, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsoleSize {
    pub height: u16,
    pub width: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

impl Process {
    /// `uid:gid`, as hyperstart takes a user.
    pub fn user_spec(&self) -> String {
        format!("{}:{}", self.user.uid, self.user.gid)
    }

    /// The terminal's size at start, if the spec gives one.
    pub fn terminal_size(&self) -> Option<hyper_protocol::TerminalSize> {
        self.console_size
            .as_ref()
            .map(|c| hyper_protocol::TerminalSize {
                rows: c.height,
                cols: c.width,
            })
    }
}

/// Reads `bundle/config.json`.
pub fn read_spec(bundle: &Path) -> Result<(Spec, Process), BundleError> {
    let path = bundle.join("config.json");
    let read_err = |source| BundleError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(read_err)?;
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(BundleError::TooLarge { path });
    }
    let mut spec: Spec = serde_json::from_slice(&text).map_err(|e| BundleError::Parse {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match spec.process.take() {
        Some(p) if !p.args.is_empty() => Ok((spec, p)),
        _ => Err(BundleError::NoProcess { path }),
    }
}

/// The process of an exec (ExecProcessRequest.spec: an OCI `Process` as
/// JSON, as containerd sends it).
pub fn exec_process(spec: Option<&Any>) -> Result<Process, BundleError> {
    let bad = |message: String| BundleError::Exec { message };
    let any = spec.ok_or_else(|| bad("no process spec".into()))?;
    if any.value.len() as u64 > MAX_SPEC_BYTES {
        return Err(bad(format!(
            "process spec larger than {MAX_SPEC_BYTES} bytes"
        )));
    }
    let p: Process =
        serde_json::from_slice(&any.value).map_err(|e| bad(format!("process spec: {e}")))?;
    if p.args.is_empty() {
        return Err(bad("the process spec has no args".into()));
    }
    Ok(p)
}

/// The hypercontainer config the runtime options name: `ConfigPath` of
/// `runtimeoptions.v1.Options` (what `ctr run --runtime-config-path` and
/// the CRI plugin's `ConfigPath` option send), else [`DEFAULT_CONFIG`].
pub fn config_path(options: Option<&Any>) -> Result<PathBuf, BundleError> {
    let Some(any) = options else {
        return Ok(PathBuf::from(DEFAULT_CONFIG));
    };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        // runc's options (containerd.runc.v1.Options) and the like carry
        // nothing for this runtime.
        return Ok(PathBuf::from(DEFAULT_CONFIG));
    }
    let path = config_path_field(&any.value).map_err(|message| BundleError::Options {
        type_url: any.type_url.clone(),
        message,
    })?;
    Ok(match path {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG),
    })
}

/// Field 2 (`config_path`, a string) of a `runtimeoptions.v1.Options`
/// message; the other fields are skipped.
fn config_path_field(bytes: &[u8]) -> Result<Option<String>, String> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut found = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 2 && wire_type == 2 {
            found = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(wire_type)
                .ok_or_else(|| format!("field {field}: unknown wire type {wire_type}"))?;
            input
                .skip_field(wire_type)
                .map_err(|e| format!("field {field}: {e}"))?;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(value: Vec<u8>) -> Any {
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_comes_from_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/hyper/qemu.toml" (2)
        let mut v = vec![0x0a, 1, b'x', 0x12, 20];
        v.extend_from_slice(b"/etc/hyper/qemu.toml");
        assert_eq!(
            config_path(Some(&options(v))).unwrap(),
            PathBuf::from("/etc/hyper/qemu.toml")
        );
        assert_eq!(config_path(None).unwrap(), PathBuf::from(DEFAULT_CONFIG));
        // Truncated: a clear error, no panic.
        let err = config_path(Some(&options(vec![0x12, 20, b'/']))).unwrap_err();
        assert!(
            err.to_string().contains("runtimeoptions.v1.Options"),
            "{err}"
        );
    }

    #[test]
    fn linux_resources_become_the_containers_limits() {
        let spec: Spec = serde_json::from_str(
            r#"{"linux":{"resources":{"memory":{"limit":33554432,"swap":33554432},
            "cpu":{"shares":512,"quota":50000,"period":100000},"pids":{"limit":20},
            "devices":[{"allow":false,"access":"rwm"}]}}}"#,
        )
        .unwrap();
        let limits = spec.limits().unwrap();
        assert_eq!(limits.memory_max, Some(32 << 20));
        assert_eq!(limits.pids_max, Some(20));
        assert_eq!(
            limits.cpu_max,
            Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000
            })
        );
        assert_eq!(
            limits.cpu_weight,
            Some(ResourceLimits::weight_of_shares(512))
        );
        // OCI's "no limit" forms, and no resources at all.
        let unlimited: Spec = serde_json::from_str(
            r#"{"linux":{"resources":{"memory":{"limit":-1},"cpu":{"quota":-1},"pids":{"limit":0}}}}"#,
        )
        .unwrap();
        assert!(unlimited.limits().unwrap().is_unlimited());
        assert!(Spec::default().limits().unwrap().is_unlimited());
        // A quota without a period takes Docker's period.
        let quota: Spec =
            serde_json::from_str(r#"{"linux":{"resources":{"cpu":{"quota":200000}}}}"#).unwrap();
        assert_eq!(quota.limits().unwrap().cpu_max.unwrap().period_us, 100_000);
        // Out of bounds: refused, naming the OCI field.
        let tiny: Spec =
            serde_json::from_str(r#"{"linux":{"resources":{"memory":{"limit":4096}}}}"#).unwrap();
        let e = tiny.limits().unwrap_err();
        assert!(e.contains("linux.resources.memory.limit"), "{e}");
    }

    #[test]
    fn spec_without_args_is_refused() {
        let dir = std::env::temp_dir().join(format!("hyper-shim-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"process":{"args":[]}}"#).unwrap();
        assert!(matches!(
            read_spec(&dir),
            Err(BundleError::NoProcess { .. })
        ));
        std::fs::write(
            dir.join("config.json"),
            r#"{"process":{"args":["echo","hi"],"cwd":"/","user":{"uid":1,"gid":2}},"hostname":"h"}"#,
        )
        .unwrap();
        let (spec, p) = read_spec(&dir).unwrap();
        assert_eq!(p.args, ["echo", "hi"]);
        assert_eq!(p.user_spec(), "1:2");
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
