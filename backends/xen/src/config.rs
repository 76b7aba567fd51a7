//! The `[hypervisor.xen]` table.
//!
//! Parsed by the backend kit ([`hyper_hypervisor::table`]): every problem is
//! reported at once, each with the exact key, what was wrong and how to fix it.

use std::path::{Path, PathBuf};

use hyper_hypervisor::table::{self, absolute_path, in_range, BackendConfig};
use hyper_hypervisor::ConfigProblem;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Debian's xl for Xen 4.17 (`/usr/sbin/xl` is a wrapper script that picks
/// the versioned one through /sys/hypervisor).
pub const DEFAULT_XL: &str = "/usr/sbin/xl";
pub const DEFAULT_XENSTORE_SOCKET: &str = "/run/xenstored/socket";
/// `xl create` builds the domain (loads the kernel, runs hotplug scripts):
/// seconds natively, tens of seconds under emulation.
pub const DEFAULT_XL_TIMEOUT_SECS: u64 = 120;
const MAX_XL_TIMEOUT_SECS: u64 = 3600;
/// The backend's vif hotplug script (`backends/xen/scripts/vif-hyper`,
/// installed there by `make install`): bridge-less, it only tells netback
/// the vif is ready; the plugin joins the vif to the pod's netns.
pub const DEFAULT_VIF_SCRIPT: &str = "/etc/xen/scripts/vif-hyper";
/// The backend's block hotplug script (`backends/xen/scripts/block-hyper`,
/// installed there by `make install`): the backend attaches each disk to a
/// loop device itself, the script only names it to blkback. When it is not
/// installed, disks go through Xen's own `block` script (slower).
pub const DEFAULT_BLOCK_SCRIPT: &str = "/etc/xen/scripts/block-hyper";
/// Where the backend bind-mounts read-only shares (one directory per VM,
/// one read-only mount per share) for the domain's 9pfs server to serve.
pub const DEFAULT_SHARE_DIR: &str = "/run/hyper-xen/shares";

/// The kind of domU. PV boots fastest under emulation (no HAP needed); PVH
/// needs hardware paging support (HAP) from the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    #[default]
    Pv,
    Pvh,
}

impl GuestType {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Pv => "pv",
            GuestType::Pvh => "pvh",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XenConfig {
    #[serde(rename = "type")]
    pub guest_type: GuestType,
    /// Absolute path of `xl`.
    pub xl: PathBuf,
    /// xenstored's unix socket.
    pub xenstore_socket: PathBuf,
    pub xl_timeout_secs: u64,
    /// The hotplug script of the domains' vifs (xl.cfg `script=`).
    pub vif_script: PathBuf,
    /// The hotplug script of the domains' disks (see [`DEFAULT_BLOCK_SCRIPT`]).
    pub block_script: PathBuf,
    /// Where read-only shares are bind-mounted (see [`DEFAULT_SHARE_DIR`]).
    pub share_dir: PathBuf,
}

impl Default for XenConfig {
    fn default() -> Self {
        Self {
            guest_type: GuestType::default(),
            xl: PathBuf::from(DEFAULT_XL),
            xenstore_socket: PathBuf::from(DEFAULT_XENSTORE_SOCKET),
            xl_timeout_secs: DEFAULT_XL_TIMEOUT_SECS,
            vif_script: PathBuf::from(DEFAULT_VIF_SCRIPT),
            block_script: PathBuf::from(DEFAULT_BLOCK_SCRIPT),
            share_dir: PathBuf::from(DEFAULT_SHARE_DIR),
        }
    }
}

/// A path that goes into an xl.cfg list item as is.
fn xl_plain_path(key: &str, path: &Path, example: &str) -> Option<ConfigProblem> {
    absolute_path(key, path, example).or_else(|| {
        let s = path.to_string_lossy();
        s.chars()
            .any(|c| c == ',' || c == '"' || c == '\\' || c.is_control())
            .then(|| {
                ConfigProblem::new(
                    key,
                    format!("\"{s}\" has a comma, quote, backslash or control character, which an xl.cfg list item cannot carry"),
                    format!("use a plain path, e.g. {key} = \"{example}\""),
                )
            })
    })
}

impl BackendConfig for XenConfig {
    const BACKEND: &'static str = "xen";

    fn check(&self) -> Vec<ConfigProblem> {
        [
            absolute_path("xl", &self.xl, "/usr/lib/xen-4.17/bin/xl"),
            absolute_path(
                "xenstore_socket",
                &self.xenstore_socket,
                DEFAULT_XENSTORE_SOCKET,
            ),
            xl_plain_path("vif_script", &self.vif_script, DEFAULT_VIF_SCRIPT),
            xl_plain_path("block_script", &self.block_script, DEFAULT_BLOCK_SCRIPT),
            xl_plain_path("share_dir", &self.share_dir, DEFAULT_SHARE_DIR),
            in_range(
                "xl_timeout_secs",
                self.xl_timeout_secs,
                1..=MAX_XL_TIMEOUT_SECS,
                "seconds",
                DEFAULT_XL_TIMEOUT_SECS,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn example(key: &str) -> Option<String> {
        match key {
            "type" => {
                Some("type = \"pv\" (the default) or \"pvh\"; HVM guests are not supported".into())
            }
            "xl" => Some("xl = \"/usr/lib/xen-4.17/bin/xl\"".into()),
            _ => None,
        }
    }
}

impl XenConfig {
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
        XenConfig::from_table(&v).expect_err("should be rejected")
    }

    #[test]
    fn defaults() {
        assert_eq!(
            XenConfig::from_table(&Value::Null),
            Ok(XenConfig::default())
        );
        let c = XenConfig::from_table(&json!({})).unwrap();
        assert_eq!(c.guest_type, GuestType::Pv);
        assert_eq!(c.xl, PathBuf::from("/usr/sbin/xl"));
        assert_eq!(c.xenstore_socket, PathBuf::from("/run/xenstored/socket"));
        assert_eq!(c.xl_timeout_secs, 120);
        assert_eq!(c.vif_script, PathBuf::from("/etc/xen/scripts/vif-hyper"));
        assert_eq!(
            c.block_script,
            PathBuf::from("/etc/xen/scripts/block-hyper")
        );
        assert_eq!(c.share_dir, PathBuf::from("/run/hyper-xen/shares"));
    }

    #[test]
    fn full_table() {
        let c = XenConfig::from_table(&json!({
            "type": "pvh",
            "xl": "/usr/lib/xen-4.17/bin/xl",
            "xenstore_socket": "/var/run/xenstored/socket",
            "xl_timeout_secs": 30,
            "vif_script": "/usr/local/libexec/hyper/vif-hyper",
            "block_script": "/usr/local/libexec/hyper/block-hyper",
            "share_dir": "/run/hyper/xen-shares",
        }))
        .unwrap();
        assert_eq!(
            c.block_script,
            PathBuf::from("/usr/local/libexec/hyper/block-hyper")
        );
        assert_eq!(
            c.vif_script,
            PathBuf::from("/usr/local/libexec/hyper/vif-hyper")
        );
        assert_eq!(c.share_dir, PathBuf::from("/run/hyper/xen-shares"));
        assert_eq!(c.guest_type, GuestType::Pvh);
        assert_eq!(c.xl, PathBuf::from("/usr/lib/xen-4.17/bin/xl"));
        assert_eq!(c.xl_timeout_secs, 30);
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let p = problems(json!({"type": "hvm"}));
        assert_eq!(p[0].key, "type");
        assert_eq!(
            p[0].message,
            "unknown variant `hvm`, expected `pv` or `pvh`"
        );
        assert!(p[0].fix.contains("\"pv\""), "{}", p[0].fix);
        let p = problems(json!({"xl": "xl"}));
        assert_eq!(p[0].key, "xl");
        assert!(p[0].message.contains("not an absolute path"));
        assert!(p[0].fix.contains("/usr/lib/xen-4.17/bin/xl"));
        let p = problems(json!({"xl_timeout_secs": 0}));
        assert_eq!(p[0].key, "xl_timeout_secs");
        let p = problems(json!({"xl_timeout_secs": "10"}));
        assert!(p[0].message.contains("\"10\""), "{}", p[0].message);
        let p = problems(json!({"vif_script": "/x,y/vif"}));
        assert_eq!(p[0].key, "vif_script");
        assert!(p[0].message.contains("comma"), "{}", p[0].message);
        let p = problems(json!({"block_script": "/x,y/block"}));
        assert_eq!(p[0].key, "block_script");
        assert!(p[0].message.contains("comma"), "{}", p[0].message);
        let p = problems(json!({"share_dir": "/run/a,b"}));
        assert_eq!(p[0].key, "share_dir");
        assert!(p[0].message.contains("comma"), "{}", p[0].message);
        let p = problems(json!({"share_dir": "run/x"}));
        assert!(
            p[0].message.contains("not an absolute path"),
            "{}",
            p[0].message
        );
        let p = problems(json!({"type": 1, "xenstore_socket": false}));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let p = problems(json!({"xenstore": "/x"}));
        assert_eq!(p[0].key, "xenstore");
        assert_eq!(p[0].message, "unknown key");
        assert!(
            p[0].fix.contains("did you mean `xenstore_socket`?"),
            "{}",
            p[0].fix
        );
        for k in table::keys::<XenConfig>() {
            assert!(p[0].fix.contains(&format!("`{k}`")), "{}", p[0].fix);
        }
    }

    #[test]
    fn not_a_table() {
        let p = problems(json!("pv"));
        assert_eq!(p[0].key, "");
        assert_eq!(p[0].message, "expected a table, found a string");
    }
}
