//! `[hypervisor.kvm]`: where hyper-vmm is, and the console log cap.

use std::path::PathBuf;

use hyper_hypervisor::ConfigProblem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_VMM: &str = "/usr/local/lib/hyper/hyper-vmm";
const VALID_KEYS: &[&str] = &[
    "vmm",
    "console_log_limit_mib",
    "allow_pvm",
    "virtiofsd",
    "seccomp",
    "vmm_uid",
    "vmm_gid",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvmConfig {
    /// The hyper-vmm binary (absolute path).
    pub vmm: PathBuf,
    /// Serial console bytes kept per VM; the rest is dropped.
    pub console_log_limit_mib: u64,
    /// Launch even on kvm_pvm (tests with freestanding guests only: a
    /// Linux guest does not boot there). The probe still says unusable.
    pub allow_pvm: bool,
    /// hyper-vmm's per-thread seccomp allow-lists (on; off only to debug a
    /// VMM they kill: its log then names the syscall).
    pub seccomp: bool,
    /// Drop each hyper-vmm to this uid/gid once its VM is set up and
    /// jailed (both or neither; unset: it stays root, with the rest of
    /// the jail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_gid: Option<u32>,
    /// The virtiofsd serving directory shares (absolute path); unset: the
    /// backend kit looks in the usual places and `PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtiofsd: Option<PathBuf>,
}

impl Default for KvmConfig {
    fn default() -> Self {
        Self {
            vmm: PathBuf::from(DEFAULT_VMM),
            console_log_limit_mib: 64,
            allow_pvm: false,
            seccomp: true,
            vmm_uid: None,
            vmm_gid: None,
            virtiofsd: None,
        }
    }
}

fn problem(key: &str, message: impl Into<String>, fix: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

fn example(key: &str) -> String {
    if key == "vmm" {
        format!("vmm = \"{DEFAULT_VMM}\"")
    } else {
        "virtiofsd = \"/usr/local/bin/virtiofsd\"".to_string()
    }
}

impl KvmConfig {
    /// Validates the backend's table (TOML as JSON); `null`/`{}` = defaults.
    pub fn from_table(table: &Value) -> Result<Self, Vec<ConfigProblem>> {
        let map = match table {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => {
                return Err(vec![problem(
                    "",
                    format!("expected a table, found {}", type_name(other)),
                    "write it as a [hypervisor.kvm] table",
                )])
            }
        };
        let mut problems = Vec::new();
        for (key, v) in map {
            match key.as_str() {
                "vmm" | "virtiofsd" => match v {
                    Value::String(s) if s.starts_with('/') => {}
                    Value::String(s) => problems.push(problem(
                        key,
                        format!("\"{s}\" is not an absolute path"),
                        format!("give the full path, e.g. {}", example(key)),
                    )),
                    other => problems.push(problem(
                        key,
                        format!("expected a string (a path), found {}", type_name(other)),
                        format!("e.g. {}", example(key)),
                    )),
                },
                "console_log_limit_mib" => match v.as_u64() {
                    Some(1..=4096) => {}
                    _ => problems.push(problem(
                        key,
                        format!("{v} is not a whole number of MiB in 1..=4096"),
                        "e.g. console_log_limit_mib = 64",
                    )),
                },
                "allow_pvm" | "seccomp" => {
                    if !v.is_boolean() {
                        problems.push(problem(
                            key,
                            format!("expected true or false, found {}", type_name(v)),
                            format!("e.g. {key} = {}", key == "seccomp"),
                        ));
                    }
                }
                "vmm_uid" | "vmm_gid" => match v.as_u64() {
                    Some(1..=4_294_967_294) => {}
                    _ => problems.push(problem(
                        key,
                        format!("{v} is not a non-root numeric id"),
                        format!("e.g. {key} = 64100 (a uid/gid no one else uses; 0 is root)"),
                    )),
                },
                _ => problems.push(problem(
                    key,
                    "unknown key",
                    format!(
                        "the valid keys in [hypervisor.kvm] are {}",
                        VALID_KEYS.join(", ")
                    ),
                )),
            }
        }
        if map.contains_key("vmm_uid") != map.contains_key("vmm_gid") {
            problems.push(problem(
                if map.contains_key("vmm_uid") {
                    "vmm_gid"
                } else {
                    "vmm_uid"
                },
                "vmm_uid and vmm_gid go together",
                "set both, e.g. vmm_uid = 64100 and vmm_gid = 64100",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        serde_json::from_value(table.clone())
            .map_err(|e| vec![problem("", e.to_string(), "fix the [hypervisor.kvm] table")])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            KvmConfig::from_table(&Value::Null).unwrap(),
            KvmConfig::default()
        );
        let c =
            KvmConfig::from_table(&json!({"vmm": "/opt/hyper-vmm", "console_log_limit_mib": 8}))
                .unwrap();
        assert_eq!(c.vmm, PathBuf::from("/opt/hyper-vmm"));
        assert_eq!(c.console_log_limit_mib, 8);
        assert_eq!(c.virtiofsd, None);
        let c = KvmConfig::from_table(&json!({"virtiofsd": "/opt/virtiofsd"})).unwrap();
        assert_eq!(c.virtiofsd, Some(PathBuf::from("/opt/virtiofsd")));
        let p = KvmConfig::from_table(&json!({"virtiofsd": "virtiofsd"})).unwrap_err();
        assert!(p[0].to_string().contains("`virtiofsd`"), "{p:?}");
    }

    #[test]
    fn problems_name_key_and_fix() {
        let p = KvmConfig::from_table(
            &json!({"vmm": "hyper-vmm", "console_log_limit_mib": 0, "vmn": 1}),
        )
        .unwrap_err();
        assert_eq!(p.len(), 3, "{p:?}");
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("`vmm`") && t.contains("absolute")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("`console_log_limit_mib`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("`vmn`") && t.contains("unknown key")),
            "{text:?}"
        );
        assert!(KvmConfig::from_table(&json!(3)).is_err());
        let p = KvmConfig::from_table(&json!({"seccomp": "off"})).unwrap_err();
        assert!(p[0].to_string().contains("`seccomp`"), "{p:?}");
        assert!(
            !KvmConfig::from_table(&json!({"seccomp": false}))
                .unwrap()
                .seccomp
        );
        let c = KvmConfig::from_table(&json!({"vmm_uid": 64100, "vmm_gid": 64101})).unwrap();
        assert_eq!((c.vmm_uid, c.vmm_gid), (Some(64100), Some(64101)));
        let p = KvmConfig::from_table(&json!({"vmm_uid": 64100})).unwrap_err();
        assert!(p[0].to_string().contains("`vmm_gid`"), "{p:?}");
        let p = KvmConfig::from_table(&json!({"vmm_uid": 0, "vmm_gid": 0})).unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
