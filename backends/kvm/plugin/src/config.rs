//! `[hypervisor.kvm]`: where hyper-vmm is, and the console log cap.

use std::path::PathBuf;

use hyper_hypervisor::table::{self, absolute_path, in_range, BackendConfig};
use hyper_hypervisor::ConfigProblem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_VMM: &str = "/usr/local/lib/hyper/hyper-vmm";
const DEFAULT_VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";

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

impl BackendConfig for KvmConfig {
    const BACKEND: &'static str = "kvm";

    fn check(&self) -> Vec<ConfigProblem> {
        let id = |key: &str, id: Option<u32>| {
            // 0 is root; u32::MAX is (uid_t)-1, "no change" to setresuid.
            id.filter(|id| *id == 0 || *id == u32::MAX).map(|id| {
                ConfigProblem::new(
                    key,
                    format!("{id} is not a non-root numeric id"),
                    format!("e.g. {key} = 64100 (a uid/gid no one else uses; 0 is root)"),
                )
            })
        };
        let together = (self.vmm_uid.is_some() != self.vmm_gid.is_some()).then(|| {
            ConfigProblem::new(
                if self.vmm_uid.is_some() {
                    "vmm_gid"
                } else {
                    "vmm_uid"
                },
                "vmm_uid and vmm_gid go together",
                "set both, e.g. vmm_uid = 64100 and vmm_gid = 64100",
            )
        });
        [
            absolute_path("vmm", &self.vmm, DEFAULT_VMM),
            self.virtiofsd
                .as_deref()
                .and_then(|p| absolute_path("virtiofsd", p, DEFAULT_VIRTIOFSD)),
            in_range(
                "console_log_limit_mib",
                self.console_log_limit_mib,
                1..=4096,
                "MiB",
                64,
            ),
            id("vmm_uid", self.vmm_uid),
            id("vmm_gid", self.vmm_gid),
            together,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn example(key: &str) -> Option<String> {
        match key {
            "virtiofsd" => Some(format!("virtiofsd = \"{DEFAULT_VIRTIOFSD}\"")),
            "vmm_uid" | "vmm_gid" => Some(format!("{key} = 64100")),
            _ => None,
        }
    }
}

impl KvmConfig {
    /// Validates the backend's table (TOML as JSON); `null`/`{}` = defaults.
    pub fn from_table(table: &Value) -> Result<Self, Vec<ConfigProblem>> {
        table::parse(table)
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
