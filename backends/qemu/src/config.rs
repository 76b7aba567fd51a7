//! The `[hypervisor.qemu]` table.
//!
//! The table is walked by hand before serde sees it, so that every problem
//! (not just the first) is reported, each with the exact key, what was wrong
//! and how to fix it.

use std::path::PathBuf;

use hyper_hypervisor::ConfigProblem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DEFAULT_BINARY: &str = "/usr/bin/qemu-system-x86_64";

/// Every key the table accepts, in the order the docs list them.
pub const VALID_KEYS: &[&str] = &[
    "binary",
    "machine",
    "accel",
    "extra_args",
    "console_log_limit_mib",
    "virtiofsd",
    "sandbox",
    "tcg_tb_size_mib",
];

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
    pub const VALUES: &'static [&'static str] = &["microvm", "q35"];

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

impl AccelSetting {
    pub const VALUES: &'static [&'static str] = &["auto", "kvm", "tcg"];
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

fn quoted_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn problem(key: &str, message: impl Into<String>, fix: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Levenshtein distance, for "did you mean" on misspelt keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unknown_key(key: &str) -> ConfigProblem {
    let valid = VALID_KEYS
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let suggestion = VALID_KEYS
        .iter()
        .map(|k| (distance(key, k), k))
        .min()
        .filter(|(d, _)| *d <= 2)
        .map(|(_, k)| format!("did you mean `{k}`? "))
        .unwrap_or_default();
    problem(
        key,
        "unknown key",
        format!("{suggestion}the valid keys in [hypervisor.qemu] are {valid}"),
    )
}

fn one_of(key: &str, v: &Value, values: &[&str], problems: &mut Vec<ConfigProblem>) {
    let fix = format!("set {key} to one of {}", quoted_list(values));
    match v {
        Value::String(s) if values.contains(&s.as_str()) => {}
        Value::String(s) => problems.push(problem(key, format!("unknown value \"{s}\""), fix)),
        other => problems.push(problem(
            key,
            format!("expected a string, found {}", type_name(other)),
            fix,
        )),
    }
}

/// A key whose value must be an absolute path (`example` shows one).
fn absolute_path(key: &str, v: &Value, example: &str, problems: &mut Vec<ConfigProblem>) {
    match v {
        Value::String(s) if s.starts_with('/') => {}
        Value::String(s) => problems.push(problem(
            key,
            format!("\"{s}\" is not an absolute path"),
            format!("give the full path, e.g. {key} = \"{example}\""),
        )),
        other => problems.push(problem(
            key,
            format!("expected a string (a path), found {}", type_name(other)),
            format!("e.g. {key} = \"{example}\""),
        )),
    }
}

impl QemuConfig {
    /// Validates the backend's table (TOML converted to JSON). A missing table
    /// (`null` or `{}`) means all defaults.
    pub fn from_table(table: &Value) -> Result<Self, Vec<ConfigProblem>> {
        let map = match table {
            Value::Null => return Ok(Self::default()),
            Value::Object(map) => map,
            other => {
                return Err(vec![problem(
                    "",
                    format!("expected a table, found {}", type_name(other)),
                    "write it as a [hypervisor.qemu] table",
                )])
            }
        };
        let mut problems = Vec::new();
        for (key, v) in map {
            match key.as_str() {
                "binary" => absolute_path(key, v, DEFAULT_BINARY, &mut problems),
                "virtiofsd" => absolute_path(
                    key,
                    v,
                    hyper_hypervisor::virtiofs::DEFAULT_LOCATIONS[0],
                    &mut problems,
                ),
                "machine" => one_of(key, v, Machine::VALUES, &mut problems),
                "accel" => one_of(key, v, AccelSetting::VALUES, &mut problems),
                "extra_args" => match v {
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            if !item.is_string() {
                                problems.push(problem(
                                    key,
                                    format!(
                                        "element {i} is {}, expected a string",
                                        type_name(item)
                                    ),
                                    "quote every argument, e.g. extra_args = [\"-d\", \"guest_errors\"]",
                                ));
                            }
                        }
                    }
                    other => problems.push(problem(
                        key,
                        format!("expected an array of strings, found {}", type_name(other)),
                        "e.g. extra_args = [\"-d\", \"guest_errors\"]",
                    )),
                },
                "console_log_limit_mib" => match v.as_u64() {
                    Some(n) if (1..=1 << 20).contains(&n) => {}
                    _ => problems.push(problem(
                        key,
                        format!("expected a whole number of MiB from 1 to 1048576, found {v}"),
                        format!(
                            "e.g. console_log_limit_mib = {}",
                            crate::console::DEFAULT_LIMIT_MIB
                        ),
                    )),
                },
                "sandbox" => {
                    if !v.is_boolean() {
                        problems.push(problem(
                            key,
                            format!("expected true or false, found {}", type_name(v)),
                            "write sandbox = true (the default) or sandbox = false",
                        ));
                    }
                }
                "tcg_tb_size_mib" => match v.as_u64() {
                    Some(n) if n <= u64::from(MAX_TB_SIZE_MIB) => {}
                    _ => problems.push(problem(
                        key,
                        format!(
                            "expected a whole number of MiB from 0 (QEMU's default) to {MAX_TB_SIZE_MIB}, found {v}"
                        ),
                        format!("e.g. tcg_tb_size_mib = {DEFAULT_TB_SIZE_MIB}"),
                    )),
                },
                _ => problems.push(unknown_key(key)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The walk above accepts exactly what serde accepts; serde stays the
        // single source of the typed values and catches any drift between them.
        serde_json::from_value(table.clone()).map_err(|e| {
            vec![problem(
                "",
                e.to_string(),
                "fix the [hypervisor.qemu] table",
            )]
        })
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
        assert_eq!(p[0].message, "expected true or false, found a string");
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
        for k in VALID_KEYS {
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
        assert_eq!(p[0].message, "expected a string (a path), found a number");
        assert_eq!(p[1].message, "expected an array of strings, found a string");
        assert_eq!(p[2].message, "expected a string, found a boolean");
        let p = problems(json!({"extra_args": ["-s", 4]}));
        assert_eq!(p[0].key, "extra_args");
        assert_eq!(p[0].message, "element 1 is a number, expected a string");
    }

    #[test]
    fn bad_values() {
        let p = problems(json!({"accel": "hvf"}));
        assert_eq!(p[0].key, "accel");
        assert_eq!(p[0].message, "unknown value \"hvf\"");
        assert_eq!(p[0].fix, "set accel to one of \"auto\", \"kvm\", \"tcg\"");
        let p = problems(json!({"machine": "pc"}));
        assert_eq!(p[0].key, "machine");
        assert_eq!(p[0].fix, "set machine to one of \"microvm\", \"q35\"");
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
