//! The `[hypervisor.qemu]` table, parsed by the backend kit
//! ([`hyper_hypervisor::table`]): every problem is reported at once, each
//! with the exact key, what was wrong and how to fix it.

use std::path::PathBuf;

use hyper_hypervisor::table::{self, absolute_path, in_range, BackendConfig};
use hyper_hypervisor::ConfigProblem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_BINARY: &str = "/usr/bin/qemu-system-x86_64";

/// TCG's translation buffer, in MiB ([`QemuConfig::tcg_tb_size_mib`]).
pub const DEFAULT_TB_SIZE_MIB: u32 = 16;
/// QEMU 7.2 takes at most this (its own default when 0 is given).
pub const MAX_TB_SIZE_MIB: u32 = 1024;

/// The QEMU machine type. microvm (virtio-mmio, qboot) boots fastest; q35 is
/// the conservative choice (PCI, SeaBIOS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    #[default]
    Microvm,
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// What the operator asked for; [`crate::accel::choose_accel`] turns it
/// into the accelerator actually used on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// Absolute path of `qemu-system-x86_64`.
    pub binary: PathBuf,
    pub machine: Machine,
    pub accel: AccelSetting,
    /// Appended verbatim to every QEMU command line, after ours.
    pub extra_args: Vec<String>,
    /// The console log of a VM is cut back to this many MiB (with a
    /// marker) when the guest writes more; see [`crate::console`].
    pub console_log_limit_mib: u64,
    /// Absolute path of the `virtiofsd` that serves the VMs' directory
    /// shares; unset: the kit's usual places, then `PATH`
    /// ([`hyper_hypervisor::virtiofs::find_binary`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtiofsd: Option<PathBuf>,
    /// QEMU's seccomp filter (`-sandbox on,obsolete=deny,
    /// elevateprivileges=deny,spawn=deny,resourcecontrol=deny`); on by
    /// default, `false` for a QEMU built without seccomp support.
    pub sandbox: bool,
    /// TCG's translation buffer (`-accel tcg,tb-size=N`), in MiB: the code
    /// TCG translated, private to each VM. When it is full TCG flushes it
    /// and translates again, so an idle guest's buffer stops growing at
    /// this size. 0: QEMU's own default (a 1 GiB reservation, filled as the
    /// guest runs new code). Unused with KVM.
    pub tcg_tb_size_mib: u32,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from(DEFAULT_BINARY),
            machine: Machine::default(),
            accel: AccelSetting::default(),
            extra_args: Vec::new(),
            console_log_limit_mib: crate::console::DEFAULT_LIMIT_MIB,
            virtiofsd: None,
            sandbox: true,
            tcg_tb_size_mib: DEFAULT_TB_SIZE_MIB,
        }
    }
}

/// The console log's cap, in MiB.
const MAX_CONSOLE_LOG_LIMIT_MIB: u64 = 1 << 20;

impl BackendConfig for QemuConfig {
    const BACKEND: &'static str = "qemu";

    fn check(&self) -> Vec<ConfigProblem> {
        [
            absolute_path("binary", &self.binary, DEFAULT_BINARY),
            self.virtiofsd.as_deref().and_then(|p| {
                absolute_path(
                    "virtiofsd",
                    p,
                    hyper_hypervisor::virtiofs::DEFAULT_LOCATIONS[0],
                )
            }),
            in_range(
                "console_log_limit_mib",
                self.console_log_limit_mib,
                1..=MAX_CONSOLE_LOG_LIMIT_MIB,
                "MiB",
                crate::console::DEFAULT_LIMIT_MIB,
            ),
            in_range(
                "tcg_tb_size_mib",
                self.tcg_tb_size_mib.into(),
                0..=MAX_TB_SIZE_MIB.into(),
                "MiB (0: QEMU's default)",
                DEFAULT_TB_SIZE_MIB.into(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn example(key: &str) -> Option<String> {
        match key {
            "virtiofsd" => Some(format!(
                "virtiofsd = \"{}\"",
                hyper_hypervisor::virtiofs::DEFAULT_LOCATIONS[0]
            )),
            "extra_args" => Some("extra_args = [\"-d\", \"guest_errors\"]".to_string()),
            _ => None,
        }
    }
}

impl QemuConfig {
    /// Validates the backend's table (TOML converted to JSON). A missing table
    /// (`null` or `{}`) means all defaults.
    pub fn from_table(table: &Value) -> Result<Self, Vec<ConfigProblem>> {
        table::parse(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<ConfigProblem> {
        QemuConfig::from_table(&v).expect_err("should be rejected")
    }

    #[test]
    fn defaults_for_missing_or_empty_table() {
        assert_eq!(
            QemuConfig::from_table(&Value::Null),
            Ok(QemuConfig::default())
        );
        let c = QemuConfig::from_table(&json!({})).unwrap();
        assert_eq!(c.binary, PathBuf::from("/usr/bin/qemu-system-x86_64"));
        assert_eq!(c.machine, Machine::Microvm);
        assert_eq!(c.accel, AccelSetting::Auto);
        assert!(c.extra_args.is_empty());
    }

    #[test]
    fn full_table() {
        let c = QemuConfig::from_table(&json!({
            "binary": "/opt/qemu/bin/qemu-system-x86_64",
            "machine": "q35",
            "accel": "tcg",
            "extra_args": ["-d", "guest_errors"],
            "console_log_limit_mib": 8,
            "virtiofsd": "/opt/virtiofsd",
        }))
        .unwrap();
        assert_eq!(c.virtiofsd, Some(PathBuf::from("/opt/virtiofsd")));
        assert_eq!(c.machine, Machine::Q35);
        assert_eq!(c.accel, AccelSetting::Tcg);
        assert_eq!(c.extra_args, vec!["-d", "guest_errors"]);
        assert_eq!(c.console_log_limit_mib, 8);
        assert_eq!(
            QemuConfig::default().console_log_limit_mib,
            crate::console::DEFAULT_LIMIT_MIB
        );
    }

    #[test]
    fn the_sandbox_is_on_by_default_and_can_be_turned_off() {
        assert!(QemuConfig::default().sandbox);
        assert!(
            !QemuConfig::from_table(&json!({"sandbox": false}))
                .unwrap()
                .sandbox
        );
        let p = problems(json!({"sandbox": "yes"}));
        assert_eq!(p[0].key, "sandbox");
        assert_eq!(
            p[0].message,
            "invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(p[0].fix, "e.g. sandbox = true");
    }

    #[test]
    fn the_translation_buffer_has_a_default_and_bounds() {
        assert_eq!(QemuConfig::default().tcg_tb_size_mib, DEFAULT_TB_SIZE_MIB);
        let c = QemuConfig::from_table(&json!({"tcg_tb_size_mib": 0})).unwrap();
        assert_eq!(c.tcg_tb_size_mib, 0);
        for bad in [json!(2048), json!(-1), json!("16")] {
            let p = problems(json!({ "tcg_tb_size_mib": bad }));
            assert_eq!(p[0].key, "tcg_tb_size_mib", "{bad}");
            assert!(p[0].fix.contains("tcg_tb_size_mib = 16"), "{:?}", p[0]);
        }
    }

    #[test]
    fn a_console_log_limit_of_nothing_is_refused() {
        for bad in [json!(0), json!(-1), json!("64"), json!(1.5)] {
            let p = problems(json!({ "console_log_limit_mib": bad }));
            assert_eq!(p[0].key, "console_log_limit_mib", "{bad}");
            assert!(
                p[0].fix.contains("console_log_limit_mib = 64"),
                "{}",
                p[0].fix
            );
        }
    }

    #[test]
    fn unknown_key_is_named_with_the_valid_keys() {
        let p = problems(json!({"machin": "q35"}));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "machin");
        assert_eq!(p[0].message, "unknown key");
        assert!(p[0].fix.contains("did you mean `machine`?"), "{}", p[0].fix);
        for k in table::keys::<QemuConfig>() {
            assert!(p[0].fix.contains(&format!("`{k}`")), "{}", p[0].fix);
        }
        let p = problems(json!({"boot_timeout": 3}));
        assert!(!p[0].fix.contains("did you mean"), "{}", p[0].fix);
    }

    #[test]
    fn wrong_types_are_named() {
        let mut p = problems(json!({"binary": 3, "machine": true, "extra_args": "-s"}));
        p.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["binary", "extra_args", "machine"]);
        assert_eq!(
            p[0].message,
            "invalid type: integer `3`, expected path string"
        );
        assert_eq!(
            p[1].message,
            "invalid type: string \"-s\", expected a sequence"
        );
        assert_eq!(p[1].fix, "e.g. extra_args = [\"-d\", \"guest_errors\"]");
        assert!(p[2].message.starts_with("invalid type: boolean"), "{p:?}");
        let p = problems(json!({"extra_args": ["-s", 4]}));
        assert_eq!(p[0].key, "extra_args");
        assert_eq!(p[0].message, "invalid type: integer `4`, expected a string");
    }

    #[test]
    fn bad_values() {
        let p = problems(json!({"accel": "hvf"}));
        assert_eq!(p[0].key, "accel");
        assert_eq!(
            p[0].message,
            "unknown variant `hvf`, expected one of `auto`, `kvm`, `tcg`"
        );
        assert_eq!(p[0].fix, "e.g. accel = \"auto\"");
        let p = problems(json!({"machine": "pc"}));
        assert_eq!(p[0].key, "machine");
        assert_eq!(p[0].fix, "e.g. machine = \"microvm\"");
        let p = problems(json!({"binary": "qemu-system-x86_64"}));
        assert_eq!(p[0].key, "binary");
        assert!(p[0].message.contains("not an absolute path"));
        let p = problems(json!({"virtiofsd": "virtiofsd"}));
        assert_eq!(p[0].key, "virtiofsd");
        assert_eq!(
            p[0].fix,
            "give the full path, e.g. virtiofsd = \"/usr/local/bin/virtiofsd\""
        );
    }

    #[test]
    fn every_problem_at_once() {
        let p = problems(json!({"accel": "hvf", "machine": "pc", "colour": "blue"}));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn not_a_table() {
        let p = problems(json!(["binary"]));
        assert_eq!(p[0].key, "");
        assert_eq!(p[0].message, "expected a table, found an array");
    }
}
