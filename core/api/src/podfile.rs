//! Pod files (`hyper pod create -f POD.toml`): several containers sharing
//! one VM, with pod-level volumes. TOML, or JSON (`.json`) or YAML (`.yaml`,
//! `.yml`) by the file name. Every error names the file, the line when there
//! is one, and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// At most this many containers or volumes in one pod: each container is a
/// disk on the VM, and the guest bounds volumes too.
pub const MAX_CONTAINERS: usize = 16;
pub const MAX_VOLUMES: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodFile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `[[volume]]` tables.
    #[serde(default, rename = "volume", alias = "volumes")]
    pub volumes: Vec<PodVolume>,
    /// `[[container]]` tables, in start order; the first is the pod's main
    /// container (`hyper exec POD`, `hyper logs POD` and signals go to it).
    #[serde(default, rename = "container", alias = "containers")]
    pub containers: Vec<PodContainer>,
    /// The pod's network by name, `none`, or unset: the default network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Published ports, as `-p` takes them: `["127.0.0.1:8080:80/tcp"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodVolume {
    pub name: String,
    /// tmpfs size limit; unset: the guest kernel's default.
    #[serde(default)]
    pub size_mib: Option<u32>,
    /// A host directory (absolute, existing) instead of a tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A named volume (`hyper volume ls`; made on first use) instead of a
    /// tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named: Option<String>,
    /// Every container sees a host or named volume read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodContainer {
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    /// A host directory, absolute or relative to the pod file.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Replaces the image's entrypoint; `[]` clears it.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The command, or with an image the arguments replacing its Cmd.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub mounts: Vec<PodMount>,
    /// `security = { privileged = true, cap_add = ["NET_ADMIN"],
    /// security_opt = ["seccomp=profile.json"] }`; a profile path is
    /// relative to the pod file, and read by the client.
    #[serde(default, skip_serializing_if = "crate::security::Security::is_default")]
    pub security: crate::security::Security,
    /// The container's memory limit in the guest (its cgroup's
    /// `memory.max`), with Docker's units: `"32m"`, `"1g"`. Past it the
    /// guest's OOM killer ends the container's processes, not the VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// At most this many processes and threads at once (`pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// CPU time as a fraction of CPUs (`0.5`; `cpu.max`), as Docker's
    /// `--cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Relative CPU weight, as Docker's `--cpu-shares` (2..=262144, 1024
    /// the default; `cpu.weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
}

impl PodContainer {
    /// The container's cgroup limits from its `memory`, `pids_limit`,
    /// `cpus` and `cpu_shares`; an error names the key (without the
    /// `container[i].` prefix) and the fix.
    pub fn limits(&self) -> Result<crate::resources::ResourceLimits, (&'static str, String)> {
        use crate::resources::{cpus_to_cpu_max, parse_bytes, ResourceLimits};
        let mut limits = ResourceLimits::default();
        if let Some(m) = &self.memory {
            let bytes = parse_bytes(m).map_err(|e| ("memory", e))?;
            if !(ResourceLimits::MIN_MEMORY..=ResourceLimits::MAX_MEMORY).contains(&bytes) {
                return Err((
                    "memory",
                    format!(
                        "{m:?}: give at least 6m (and at most 1t); leave memory out for no limit"
                    ),
                ));
            }
            limits.memory_max = Some(bytes);
        }
        if let Some(p) = self.pids_limit {
            match u64::try_from(p) {
                Ok(n) if (1..=ResourceLimits::MAX_PIDS).contains(&n) => limits.pids_max = Some(n),
                _ => {
                    return Err((
                        "pids_limit",
                        format!(
                            "{p}: give 1 to {}; leave pids_limit out for no limit",
                            ResourceLimits::MAX_PIDS
                        ),
                    ))
                }
            }
        }
        if let Some(c) = self.cpus {
            limits.cpu_max = Some(cpus_to_cpu_max(c).map_err(|e| ("cpus", e))?);
        }
        if let Some(shares) = self.cpu_shares {
            if !(2..=262_144).contains(&shares) {
                return Err((
                    "cpu_shares",
                    format!("{shares}: give 2 to 262144 (1024 is the default weight)"),
                ));
            }
            limits.cpu_weight = Some(ResourceLimits::weight_of_shares(shares));
        }
        Ok(limits)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodMount {
    pub volume: String,
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PodFileError {
    pub file: String,
    pub line: Option<usize>,
    /// Where in the file: `container[1].name`, `volume[0]`, or the TOML key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for PodFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A problem found after parsing: the key path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl PodFile {
    /// The pod's `network` and `ports` as the network crate takes them.
    pub fn network_request(&self) -> Result<crate::network::NetworkRequest, Invalid> {
        let ports =
            crate::network::ports::parse_all(&self.ports).map_err(|m| invalid("ports", m))?;
        let req = crate::network::NetworkRequest {
            network: self.network.clone(),
            ports,
            ..Default::default()
        };
        req.validate()
            .map_err(|e| invalid("network", e.to_string()))?;
        Ok(req)
    }
}

impl PodVolume {
    /// A host or named volume's own keys: one source, no tmpfs size, a
    /// host directory absolute, a name by Docker's rule.
    fn check_source(&self) -> Result<(), (&'static str, String)> {
        match (&self.host, &self.named) {
            (Some(_), Some(_)) => Err(("named", "give host or named, not both".into())),
            (None, None) if self.readonly => Err((
                "readonly",
                "a tmpfs volume is private to the pod: make the mounts readonly instead".into(),
            )),
            (None, None) => Ok(()),
            (_, _) if self.size_mib.is_some() => Err((
                "size_mib",
                "only a tmpfs volume has a size: leave it out with host or named".into(),
            )),
            (Some(dir), None) => {
                hyper_volumes::request::check_host_path(dir).map_err(|m| ("host", m))
            }
            (None, Some(name)) => {
                hyper_volumes::check_volume_name(name).map_err(|e| ("named", e.to_string()))
            }
        }
    }

    /// A tmpfs in the guest (neither a host nor a named volume).
    pub fn is_tmpfs(&self) -> bool {
        self.host.is_none() && self.named.is_none()
    }
}

impl PodVolume {
    /// A pod file's volume that is a host directory or a named volume
    /// rather than a tmpfs.
    pub fn request(&self) -> Option<crate::volumes::VolumeRequest> {
        let (kind, source) = match (&self.host, &self.named) {
            (Some(dir), _) => (crate::volumes::MountKind::Bind, dir.clone()),
            (None, Some(name)) => (crate::volumes::MountKind::Volume, name.clone()),
            (None, None) => return None,
        };
        Some(crate::volumes::VolumeRequest {
            kind,
            source: Some(source),
            target: "/".into(),
            readonly: self.readonly,
            create_host_dir: false,
            tmpfs_size_mib: None,
            size_bytes: None,
            mkfs: None,
            nocopy: false,
        })
    }
}

/// Parses and validates a pod file. `file` is only used in messages; its
/// extension picks JSON (`.json`) or YAML (`.yaml`, `.yml`) over TOML.
pub fn parse(file: &str, text: &str) -> Result<PodFile, PodFileError> {
    let syntax_error = |line, message| PodFileError {
        file: file.to_string(),
        line,
        key: String::new(),
        message,
    };
    let is_toml = !(file.ends_with(".json") || file.ends_with(".yaml") || file.ends_with(".yml"));
    let pod: PodFile = if file.ends_with(".json") {
        serde_json::from_str(text).map_err(|e| syntax_error(Some(e.line()), e.to_string()))?
    } else if !is_toml {
        serde_yaml_ng::from_str(text)
            .map_err(|e| syntax_error(e.location().map(|l| l.line()), e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| toml_error(file, text, &e))?
    };
    pod.validate()
        .map_err(|Invalid { key, message }| PodFileError {
            file: file.to_string(),
            line: if is_toml {
                toml_line_of(text, &key)
            } else {
                None
            },
            key,
            message,
        })?;
    Ok(pod)
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> PodFileError {
    let (line, key) = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_no = text[..start].matches('\n').count() + 1;
            (Some(line_no), toml_key_at(text, start))
        }
        None => (None, String::new()),
    };
    PodFileError {
        file: file.to_string(),
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

/// The key an error offset falls on: the table header above it, then the
/// `key =` part of its line.
fn toml_key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').trim());
    let key = if line.starts_with('[') {
        None
    } else {
        line.split_once('=').map(|(k, _)| k.trim())
    };
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t.to_string(),
        (None, Some(k)) => k.to_string(),
        (None, None) => line
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    }
}

/// The line of a validation error's key (`container[1].name`): the n-th
/// `[[container]]` header, then the key's line inside that table.
fn toml_line_of(text: &str, key: &str) -> Option<usize> {
    let (head, rest) = key.split_once('[')?;
    let (index, field) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let field = field.trim_start_matches('.');
    let field = field.split(['.', '[']).next().unwrap_or("");
    let header = format!("[[{head}]]");
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == header)
        .nth(index)
        .map(|(i, _)| i)?;
    if !field.is_empty() {
        for (i, l) in lines.iter().enumerate().skip(start + 1) {
            let t = l.trim();
            if t.starts_with("[[") && !t.starts_with(&format!("[[{head}.")) {
                break;
            }
            if t.split_once('=').is_some_and(|(k, _)| k.trim() == field) {
                return Some(i + 1);
            }
        }
    }
    Some(start + 1)
}

/// Names of containers and volumes: they become guest ids and paths.
pub fn check_pod_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: use 1 to 63 letters, digits, '_', '-' or '.', starting with a letter or digit"
        ))
    }
}

/// What the guest accepts as a mount path (see hyperstart).
fn check_mount_path(path: &str) -> Result<(), String> {
    let plain = path.starts_with('/')
        && path.len() > 1
        && path.len() <= 1024
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a plain absolute path (no . or .. components, not /)"
        ))
    }
}

impl PodFile {
    /// Checks what serde cannot: names, references and combinations. Also
    /// run by hyperd on what a client sends.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.network_request()?;
        if self.containers.is_empty() {
            return Err(invalid(
                "container",
                "the pod has no containers: add a [[container]] table with a name and an image",
            ));
        }
        if self.containers.len() > MAX_CONTAINERS {
            return Err(invalid(
                "container",
                format!(
                    "{} containers: at most {MAX_CONTAINERS}",
                    self.containers.len()
                ),
            ));
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(invalid(
                "volume",
                format!("{} volumes: at most {MAX_VOLUMES}", self.volumes.len()),
            ));
        }
        let mut volumes = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let key = format!("volume[{i}].name");
            check_pod_name("volume", &v.name).map_err(|m| invalid(&key, m))?;
            if !volumes.insert(v.name.as_str()) {
                return Err(invalid(key, format!("duplicate volume name {}", v.name)));
            }
            if v.size_mib == Some(0) {
                return Err(invalid(
                    format!("volume[{i}].size_mib"),
                    "0 MiB: leave size_mib out for the default",
                ));
            }
            v.check_source()
                .map_err(|(k, m)| invalid(format!("volume[{i}].{k}"), m))?;
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.containers.iter().enumerate() {
            let key = |k: &str| format!("container[{i}].{k}");
            check_pod_name("container", &c.name).map_err(|m| invalid(key("name"), m))?;
            c.security
                .validate()
                .map_err(|e| invalid(key("security"), e.0))?;
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "duplicate container name {}: each container needs its own",
                        c.name
                    ),
                ));
            }
            match (&c.image, &c.rootfs) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("rootfs"),
                        "give either image or rootfs, not both",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        key("image"),
                        "no image: give image = \"NAME\" or rootfs = \"DIR\"",
                    ))
                }
                (None, Some(_)) if c.command.is_empty() && c.entrypoint.is_none() => {
                    return Err(invalid(
                        key("command"),
                        "a rootfs directory has no default command: give command = [...]",
                    ))
                }
                _ => {}
            }
            if let Some(bad) = c
                .env
                .iter()
                .find(|e| !e.contains('=') || e.starts_with('='))
            {
                return Err(invalid(
                    key("env"),
                    format!("{bad:?}: expected \"KEY=VALUE\""),
                ));
            }
            c.limits().map_err(|(k, m)| invalid(key(k), m))?;
            if let Some(w) = &c.workdir {
                if !w.starts_with('/') {
                    return Err(invalid(
                        key("workdir"),
                        format!("{w:?} is not an absolute path"),
                    ));
                }
            }
            let mut paths = BTreeSet::new();
            for (j, m) in c.mounts.iter().enumerate() {
                let mkey = format!("container[{i}].mounts[{j}]");
                if !volumes.contains(m.volume.as_str()) {
                    return Err(invalid(
                        format!("{mkey}.volume"),
                        format!(
                            "no volume {:?} in the pod: declare it in a [[volume]] table",
                            m.volume
                        ),
                    ));
                }
                check_mount_path(&m.path).map_err(|e| invalid(format!("{mkey}.path"), e))?;
                if !paths.insert(m.path.as_str()) {
                    return Err(invalid(
                        format!("{mkey}.path"),
                        format!("two mounts at {}", m.path),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "pair"
vcpus = 1
memory_mib = 256

[labels]
app = "demo"

[[volume]]
name = "shared"

[[container]]
name = "writer"
image = "busybox"
command = ["sh", "-c", "echo hi > /data/x"]
mounts = [{ volume = "shared", path = "/data" }]

[[container]]
name = "reader"
rootfs = "/tmp/rootfs"
command = ["cat", "/in/x"]
env = ["A=1"]
mounts = [{ volume = "shared", path = "/in", readonly = true }]
"#;

    #[test]
    fn network_and_ports_parse_and_bad_ones_name_the_key() {
        let base = "[[container]]\nname = \"a\"\nimage = \"busybox\"\n";
        let pod = parse(
            "p.toml",
            &format!("network = \"hyper\"\nports = [\"127.0.0.1:8080:80\", \"53:53/udp\"]\n{base}"),
        )
        .unwrap();
        let req = pod.network_request().unwrap();
        assert_eq!(req.network.as_deref(), Some("hyper"));
        assert_eq!(req.ports.len(), 2);
        let err = parse("p.toml", &format!("ports = [\"80\"]\n{base}")).unwrap_err();
        assert_eq!(err.key, "ports");
        assert!(err.message.contains("HOSTPORT:CONTAINERPORT"), "{err}");
        let err = parse(
            "p.toml",
            &format!("network = \"none\"\nports = [\"80:80\"]\n{base}"),
        )
        .unwrap_err();
        assert_eq!(err.key, "network");
    }

    #[test]
    fn a_good_file_parses() {
        let pod = parse("pod.toml", GOOD).unwrap();
        assert_eq!(pod.name.as_deref(), Some("pair"));
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[1].mounts[0].path, "/in");
        assert!(pod.containers[1].mounts[0].readonly);
        assert_eq!(pod.volumes[0].name, "shared");
        // The JSON form is the same structure, and what hyper sends hyperd.
        let json = serde_json::to_string(&pod).unwrap();
        assert_eq!(parse("pod.json", &json).unwrap(), pod);
    }

    #[test]
    fn container_limits_parse_and_bad_ones_name_key_and_line() {
        let base = "[[container]]\nname = \"a\"\nimage = \"busybox\"\n";
        let pod = parse(
            "p.toml",
            &format!("{base}memory = \"32m\"\npids_limit = 20\ncpus = 0.5\ncpu_shares = 1024\n"),
        )
        .unwrap();
        let limits = pod.containers[0].limits().unwrap();
        assert_eq!(limits.memory_max, Some(32 << 20));
        assert_eq!(limits.pids_max, Some(20));
        assert_eq!(limits.cpu_max.map(|c| c.quota_us), Some(50_000));
        assert_eq!(limits.cpu_weight, Some(39));
        // None set: no limits, and the JSON hyper sends is as before.
        let plain = parse("p.toml", base).unwrap();
        assert!(plain.containers[0].limits().unwrap().is_unlimited());
        assert!(!serde_json::to_string(&plain).unwrap().contains("memory\""));
        for (extra, key, hint) in [
            ("memory = \"32\"", "container[0].memory", "32m"),
            ("memory = \"1m\"", "container[0].memory", "at least 6m"),
            (
                "pids_limit = 0",
                "container[0].pids_limit",
                "leave pids_limit out",
            ),
            (
                "pids_limit = -1",
                "container[0].pids_limit",
                "leave pids_limit out",
            ),
            ("cpus = 0.0", "container[0].cpus", "0.5 is half a CPU"),
            ("cpu_shares = 1", "container[0].cpu_shares", "2 to 262144"),
        ] {
            let e = parse("p.toml", &format!("{base}{extra}\n")).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert_eq!(e.line, Some(4), "{extra}: {e}");
            assert!(e.message.contains(hint), "{extra}: {e}");
        }
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let text = GOOD.replace("env = [\"A=1\"]", "environment = [\"A=1\"]");
        let e = parse("pod.toml", &text).unwrap_err();
        assert_eq!(e.file, "pod.toml");
        assert_eq!(e.line, Some(22));
        assert_eq!(e.key, "container.environment");
        assert!(e.message.contains("unknown field `environment`"), "{e}");
        assert!(e
            .to_string()
            .starts_with("pod.toml:22: container.environment: "));
    }

    #[test]
    fn type_errors_name_the_key() {
        let text = GOOD.replace("vcpus = 1", "vcpus = \"one\"");
        let e = parse("p.toml", &text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "vcpus"));
        let text = GOOD.replace("command = [\"cat\", \"/in/x\"]", "command = \"cat\"");
        let e = parse("p.toml", &text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(21), "container.command"));
    }

    #[test]
    fn yaml_is_the_same_structure_with_lines_in_errors() {
        let yaml = "name: pair\nvolumes:\n  - name: shared\ncontainers:\n  - name: a\n    rootfs: /r\n    command: [\"true\"]\n    mounts:\n      - {volume: shared, path: /in, readonly: true}\n";
        let pod = parse("pod.yaml", yaml).unwrap();
        assert_eq!(pod.containers[0].mounts[0].path, "/in");
        assert_eq!(pod.volumes[0].name, "shared");
        let e = parse("pod.yml", &yaml.replace("    command", "    commands")).unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("unknown field `commands`"), "{e}");
        let e = parse("pod.yaml", &yaml.replace("name: a", "name: ../a")).unwrap_err();
        assert_eq!(e.key, "container[0].name", "{e}");
    }

    #[test]
    fn malformed_toml_has_a_line() {
        let e = parse("p.toml", "name = \"x\"\n[[container]\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let e = parse("p.json", "{\n \"name\": }").unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn duplicate_container_names_are_refused_at_their_line() {
        let text = GOOD.replace("name = \"reader\"", "name = \"writer\"");
        let e = parse("p.toml", &text).unwrap_err();
        assert_eq!(e.key, "container[1].name");
        assert_eq!(e.line, Some(19));
        assert!(e.message.contains("duplicate container name writer"));
    }

    #[test]
    fn semantic_errors_are_refused() {
        let cases = [
            (
                GOOD.replace(
                    "volume = \"shared\", path = \"/in\"",
                    "volume = \"nope\", path = \"/in\"",
                ),
                "container[1].mounts[0].volume",
            ),
            (
                GOOD.replace("path = \"/data\"", "path = \"data/../x\""),
                "container[0].mounts[0].path",
            ),
            (
                GOOD.replace("image = \"busybox\"\n", ""),
                "container[0].image",
            ),
            (
                GOOD.replace(
                    "image = \"busybox\"",
                    "image = \"busybox\"\nrootfs = \"/r\"",
                ),
                "container[0].rootfs",
            ),
            (
                GOOD.replace("name = \"reader\"", "name = \"../r\""),
                "container[1].name",
            ),
            (GOOD.replace("[\"A=1\"]", "[\"A\"]"), "container[1].env"),
            (
                GOOD.replace("command = [\"cat\", \"/in/x\"]", ""),
                "container[1].command",
            ),
            (
                GOOD.replace(
                    "[[volume]]\nname = \"shared\"",
                    "[[volume]]\nname = \"shared\"\n[[volume]]\nname = \"shared\"",
                ),
                "volume[1].name",
            ),
            ("name = \"x\"\n".to_string(), "container"),
        ];
        for (text, key) in cases {
            let e = parse("p.toml", &text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn names_are_safe() {
        assert!(check_pod_name("container", "web-1.v_2").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_pod_name("container", bad).is_err(), "{bad:?}");
        }
    }
}
