//! What a CNI plugin prints: a result (ADD) or an error object. Typed serde
//! structs of the spec's fields hyperd uses; the result itself is kept as
//! JSON so it is handed on (`prevResult`) exactly as the plugin printed it.

use serde::{Deserialize, Serialize};

/// A CNI result (spec 1.0; 0.4 has the same fields, 0.3's `version` on IPs
/// is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<CniInterface>,
    #[serde(default)]
    pub ips: Vec<CniIp>,
    #[serde(default)]
    pub routes: Vec<CniRoute>,
    #[serde(default)]
    pub dns: CniDns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniInterface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// Set for an interface inside a network namespace.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniIp {
    /// CIDR: `10.88.0.5/16`.
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRoute {
    pub dst: String,
    #[serde(default)]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// The spec's error object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CniErrorObject {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl std::fmt::Display for CniErrorObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CNI error code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl CniResult {
    /// The addresses (CIDR) of the interface named `ifname` inside a
    /// namespace; an IP without an interface index counts for it too.
    pub fn addresses_of(&self, ifname: &str) -> Vec<&CniIp> {
        let index = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some());
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none() || ip.interface == index)
            .collect()
    }
}

/// Whether an address (no prefix) is IPv6.
pub(crate) fn is_v6(addr: &str) -> bool {
    addr.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Debian's bridge + host-local + portmap print (1.1.1).
    pub(crate) const BRIDGE_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "hyper0", "mac": "5a:1e:7c:aa:bb:cc"},
            {"name": "veth1234", "mac": "9e:00:11:22:33:44"},
            {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/netns/hyper-x"}
        ],
        "ips": [{"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    #[test]
    fn a_bridge_result_reads() {
        let r: CniResult = serde_json::from_str(BRIDGE_RESULT).unwrap();
        let ips = r.addresses_of("eth0");
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].address, "10.88.0.5/16");
        assert!(r.addresses_of("eth1").is_empty());
        assert_eq!(r.routes[0].gw, None);
    }

    #[test]
    fn an_error_object_reads_and_shows() {
        let e: CniErrorObject = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range is full"}"#,
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "failed to allocate (CNI error code 11): range is full"
        );
    }
}
