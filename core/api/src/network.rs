//! What a pod asks of its network (`--network`, `-p`, `--dns*`,
//! `--add-host`), checked without touching the host; `hyper_network` makes
//! it.

use std::path::PathBuf;

use hyper_protocol::HostEntry;
use serde::{Deserialize, Serialize};

pub mod dns;
pub mod ports;

pub use ports::{PortMapping, Protocol};

/// The name `--network none` asks for.
pub const NONE: &str = "none";
/// A network request that cannot be right, whatever the host has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

/// What a pod asks of its network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// A network's name, `none`, or unset: the default network (the first
    /// configuration file by name; none when there is no file at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `-p`, parsed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// `--add-host NAME:IP`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_hosts: Vec<String>,
    /// A network namespace a caller made (the containerd shim); hyperd
    /// makes `/run/netns/hyper-<id>` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// `netns` is already configured by its maker (containerd's CRI plugin
    /// ran CNI in it): its `eth0` is read back as it is and no CNI plugin
    /// runs here, neither ADD nor DEL ([`NETNS_NETWORK`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub netns_configured: bool,
}

/// The network name a pod shows whose namespace its caller configured.
pub const NETNS_NETWORK: &str = "netns";

impl NetworkRequest {
    /// Whether a network was asked for by name or through `-p`: a guest
    /// without network support is then an error, not a warning.
    pub fn explicit(&self) -> bool {
        self.network.as_deref().is_some_and(|n| n != NONE) || !self.ports.is_empty()
    }

    pub fn is_none(&self) -> bool {
        self.network.as_deref() == Some(NONE)
    }

    /// Whether the pod takes a namespace its caller configured as it is.
    pub fn adopts(&self) -> bool {
        self.netns.is_some() && self.netns_configured && !self.is_none()
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.is_none() && !self.ports.is_empty() {
            return Err(RequestError(
                "-p publishes a port of the pod's network: it does not go with --network none"
                    .into(),
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(RequestError(format!(
                    "-p {}: ports are 1 to 65535",
                    p.spec()
                )));
            }
            if let Some(q) = self.ports[..i].iter().find(|q| q.clashes_with(p)) {
                return Err(RequestError(format!(
                    "-p {}: host port {}/{} is already published by -p {}",
                    p.spec(),
                    p.host_port,
                    p.protocol,
                    q.spec()
                )));
            }
        }
        if self.netns_configured && (self.netns.is_none() || !self.ports.is_empty()) {
            return Err(RequestError(
                "a configured namespace is taken as it is: it needs its path and publishes no ports"
                    .into(),
            ));
        }
        dns::check(&self.dns, &self.dns_search, &self.dns_options)
            .map_err(|e| RequestError(e.to_string()))?;
        self.hosts()?;
        Ok(())
    }

    /// `--add-host` entries as `/etc/hosts` lines.
    pub fn hosts(&self) -> Result<Vec<HostEntry>, RequestError> {
        dns::parse_add_hosts(&self.add_hosts).map_err(|e| RequestError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_is_made() {
        let mut r = NetworkRequest {
            network: Some(NONE.into()),
            ports: vec!["80:80".parse().unwrap()],
            ..Default::default()
        };
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--network none"));
        r.ports.clear();
        r.validate().unwrap();
        assert!(!r.explicit());
        r.add_hosts = vec!["db:10.0.0.5".into(), "v6:[fd00::1]".into()];
        let hosts = r.hosts().unwrap();
        assert_eq!(hosts[1].address, "fd00::1");
        for bad in ["db", "db:x", ":1.2.3.4", "a b:1.2.3.4"] {
            r.add_hosts = vec![bad.into()];
            let err = r.validate().unwrap_err().to_string();
            assert!(err.contains("NAME:IP"), "{bad}: {err}");
        }
        r.add_hosts.clear();
        r.dns = vec!["dns.example".into()];
        assert!(r.validate().unwrap_err().to_string().contains("--dns"));
    }

    #[test]
    fn a_configured_namespace_needs_its_path_and_takes_no_ports() {
        let mut r = NetworkRequest {
            netns_configured: true,
            ..Default::default()
        };
        assert!(r.validate().is_err(), "no path");
        r.netns = Some("/var/run/netns/cni-x".into());
        r.validate().unwrap();
        assert!(r.adopts());
        r.ports = vec!["80:80".parse().unwrap()];
        assert!(r.validate().is_err(), "ports");
        r.ports.clear();
        r.network = Some(NONE.into());
        assert!(!r.adopts());
    }
}
