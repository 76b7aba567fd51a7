//! A pod's network on the host (docs/ARCHITECTURE.md, "Networking").
//!
//! The contract with a backend is the pod's network namespace: this crate
//! makes one, has the real CNI plugins configure it, and turns their result
//! into what the backend (`hyper_hypervisor::NicSpec`) and the guest
//! (`hyper_protocol::NetworkSpec`) need. A caller that already has a
//! namespace (the containerd shim) hands its path in instead.
//!
//! * `conflist`: the networks (`[network] cni_conf_dir`);
//! * `exec`: running plugins per the CNI spec, bounded;
//! * `result`: what they print;
//! * `ports`, `dns`: `-p`, the portmap capability and the pod's resolv.conf
//!   settings (in `hyper_api::network`, which the client shares);
//! * `netns`: the pod's namespace and link facts (the backend kit's);
//! * here: a pod's whole attach and detach.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_hypervisor::NicSpec;
use hyper_protocol::{InterfaceSpec, NetworkSpec, RouteSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod conflist;
pub mod exec;
pub mod netns;
pub mod result;
pub mod timing;

pub use conflist::Conflist;
pub use hyper_api::network::{
    dns, ports, NetworkRequest, PortMapping, Protocol, RequestError, NETNS_NETWORK, NONE,
};

/// The interface CNI makes in the pod's namespace.
pub const IFNAME: &str = "eth0";
/// The backend's device next to it (a tap, a vif).
pub const DEVICE: &str = "hyper-tap0";
/// The Debian package with the plugins.
pub const PLUGINS_PACKAGE: &str = "containernetworking-plugins";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("CNI configuration {}: key `{key}`: {message}", file.display())]
    Conflist {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("no CNI network is configured in {}; install one (`make install` puts the default `hyper` network there) or start the pod without a network", dir.display())]
    NoNetworks { dir: PathBuf },
    #[error("no network named `{name}` in {}; found: {}{}", dir.display(), if found.is_empty() { "none".to_string() } else { found.join(", ") }, if broken.is_empty() { String::new() } else { format!(" (not usable: {})", broken.join("; ")) })]
    UnknownNetwork {
        name: String,
        dir: PathBuf,
        found: Vec<String>,
        broken: Vec<String>,
    },
    #[error("CNI plugin `{plugin}` of network {network} is not in {}; install Debian's {PLUGINS_PACKAGE} (`apt-get install {PLUGINS_PACKAGE}`) or set `[network] cni_plugin_dirs`", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingPlugin {
        plugin: String,
        network: String,
        dirs: Vec<PathBuf>,
    },
    #[error("CNI plugin `{plugin}` of network {network} failed {command}: {message}")]
    Plugin {
        plugin: String,
        network: String,
        command: &'static str,
        message: String,
    },
    #[error("network {network}: {message}")]
    BadResult { network: String, message: String },
    #[error("{0}")]
    Ports(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{0}")]
    Nic(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// `[network]` as the crate needs it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub conf_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
    pub plugin_timeout: Duration,
}

impl Settings {
    fn plugins(&self) -> exec::Plugins {
        exec::Plugins {
            dirs: self.plugin_dirs.clone(),
            timeout: self.plugin_timeout,
        }
    }

    /// Every configuration file found, each parsed or why not.
    pub fn networks(&self) -> Result<Vec<Result<Conflist, NetworkError>>, NetworkError> {
        conflist::discover(&self.conf_dir)
    }
}

/// A pod's network as it is now: what DEL needs (the configuration ADD ran
/// with, the namespace, the cached result) and what the pod shows. Kept in
/// the pod's record so a restarted hyperd can still take it down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name; `none` for a pod with only `lo`.
    pub network: String,
    /// The conflist ADD ran with (absent for `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod's namespace (absent for `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Whether hyperd made `netns` (and so removes it).
    #[serde(default)]
    pub owns_netns: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// The last plugin's ADD result, DEL's `prevResult`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// What the guest is told (also for `none`: lo, resolv.conf, hosts).
    pub guest: NetworkSpec,
    /// What the backend is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicSpec>,
}

impl Attachment {
    /// The pod's addresses (CIDR).
    pub fn addresses(&self) -> Vec<String> {
        self.guest
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().cloned())
            .collect()
    }

    pub fn mac(&self) -> Option<&str> {
        self.nic.as_ref().map(|n| n.mac.as_str())
    }
}

/// Checks a request against the host before a pod is made of it: the
/// network exists, its plugins are installed, its ports are free. Nothing
/// is changed.
pub fn preflight(settings: &Settings, req: &NetworkRequest) -> Result<(), NetworkError> {
    req.validate()?;
    if req.is_none() || req.adopts() {
        return Ok(());
    }
    let list = match conflist::find(&settings.conf_dir, req.network.as_deref()) {
        Ok(l) => l,
        Err(NetworkError::NoNetworks { .. }) if req.network.is_none() && req.ports.is_empty() => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let plugins = settings.plugins();
    for kind in list.plugin_types() {
        plugins.find(&kind, &list.name)?;
    }
    for p in &req.ports {
        p.check_free().map_err(NetworkError::Ports)?;
    }
    Ok(())
}

/// Sets up pod `id`'s network: its namespace (or the one given), CNI ADD
/// through the network's plugins with its published ports. On failure
/// nothing is left: DEL has run and the namespace is gone.
pub async fn attach(
    settings: &Settings,
    id: &str,
    req: &NetworkRequest,
) -> Result<Attachment, NetworkError> {
    req.validate()?;
    let hosts = req.hosts()?;
    let dns = dns::resolv(&req.dns, &req.dns_search, &req.dns_options);
    let none = |network: &str| Attachment {
        network: network.to_string(),
        config: None,
        container_id: id.to_string(),
        netns: None,
        owns_netns: false,
        ports: Vec::new(),
        result: None,
        guest: NetworkSpec {
            interfaces: Vec::new(),
            routes: Vec::new(),
            dns: dns.clone(),
            hosts: hosts.clone(),
        },
        nic: None,
    };
    if req.is_none() {
        let mut att = none(NONE);
        dns::fit_to_ip_versions(&mut att.guest.dns, false);
        return Ok(att);
    }
    if let (Some(netns), true) = (&req.netns, req.adopts()) {
        let mut att = none(NETNS_NETWORK);
        let (nic, interface, routes) = adopt(netns)?;
        let has_v6 = interface.addresses.iter().any(|a| result::is_v6(a));
        dns::fit_to_ip_versions(&mut att.guest.dns, has_v6);
        att.netns = Some(netns.clone());
        att.nic = Some(nic);
        att.guest.interfaces = vec![interface];
        att.guest.routes = routes;
        return Ok(att);
    }
    let list = match conflist::find(&settings.conf_dir, req.network.as_deref()) {
        Ok(l) => l,
        // No network configured and none asked for: the pod has only lo.
        Err(NetworkError::NoNetworks { .. }) if req.network.is_none() && req.ports.is_empty() => {
            tracing::debug!(pod = %id, dir = %settings.conf_dir.display(), "no CNI network configured: the pod has only lo");
            let mut att = none(NONE);
            dns::fit_to_ip_versions(&mut att.guest.dns, false);
            return Ok(att);
        }
        Err(e) => return Err(e),
    };
    let plugins = settings.plugins();
    // Every binary is there before anything is made.
    for kind in list.plugin_types() {
        plugins.find(&kind, &list.name)?;
    }
    for p in &req.ports {
        p.check_free().map_err(NetworkError::Ports)?;
    }
    let (netns, owns_netns) = match &req.netns {
        Some(given) => (given.clone(), false),
        None => {
            let started = std::time::Instant::now();
            let made = netns::create(id)?;
            timing::step_done(id, "netns create", started);
            (made, true)
        }
    };
    let mut att = Attachment {
        network: list.name.clone(),
        config: Some(list.to_json()),
        container_id: id.to_string(),
        netns: Some(netns.clone()),
        owns_netns,
        ports: req.ports.clone(),
        result: None,
        guest: none(&list.name).guest,
        nic: None,
    };
    let rc = runtime_config(&req.ports);
    let inv = invocation(id, &netns, &rc);
    let added = plugins.add(&list, &inv).await;
    let built = match added {
        Ok(result) => {
            att.result = Some(result.clone());
            build(&list.name, &netns, &result)
        }
        Err(e) => Err(e),
    };
    match built {
        Ok((nic, interface, routes)) => {
            let has_v6 = interface.addresses.iter().any(|a| result::is_v6(a));
            dns::fit_to_ip_versions(&mut att.guest.dns, has_v6);
            att.nic = Some(nic);
            att.guest.interfaces = vec![interface];
            att.guest.routes = routes;
            Ok(att)
        }
        Err(e) => {
            if let Err(del) = detach(settings, &att).await {
                tracing::warn!(pod = %id, "undoing a failed network setup: {del}");
            }
            Err(e)
        }
    }
}

/// CNI DEL with the configuration, ports and result ADD had, then the
/// namespace goes (if hyperd made it). Safe to run again.
pub async fn detach(settings: &Settings, att: &Attachment) -> Result<(), NetworkError> {
    let Some(config) = &att.config else {
        return Ok(());
    };
    let list = Conflist::parse(&config.to_string(), Path::new("(the pod's record)"))?;
    let netns = att.netns.clone().unwrap_or_default();
    let rc = runtime_config(&att.ports);
    let inv = invocation(&att.container_id, &netns, &rc);
    let deleted = settings
        .plugins()
        .del(&list, &inv, att.result.as_ref())
        .await;
    let removed = if att.owns_netns {
        let started = std::time::Instant::now();
        let removed = netns::remove(&netns);
        timing::step_done(&att.container_id, "netns remove", started);
        removed
    } else {
        Ok(())
    };
    deleted.and(removed)
}

/// CNI CHECK of a live attachment (a takeover uses it to see the network
/// is still in place).
pub async fn check(settings: &Settings, att: &Attachment) -> Result<(), NetworkError> {
    let (Some(config), Some(result), Some(netns)) = (&att.config, &att.result, &att.netns) else {
        return Ok(());
    };
    let list = Conflist::parse(&config.to_string(), Path::new("(the pod's record)"))?;
    let rc = runtime_config(&att.ports);
    let inv = invocation(&att.container_id, netns, &rc);
    settings.plugins().check(&list, &inv, result).await
}

fn runtime_config(ports: &[PortMapping]) -> Map<String, Value> {
    let mut rc = Map::new();
    if !ports.is_empty() {
        rc.insert(
            "portMappings".into(),
            Value::Array(ports.iter().map(PortMapping::to_cni).collect()),
        );
    }
    rc
}

fn invocation<'a>(
    id: &'a str,
    netns: &'a Path,
    rc: &'a Map<String, Value>,
) -> exec::Invocation<'a> {
    exec::Invocation {
        container_id: id,
        netns,
        ifname: IFNAME,
        args: "IgnoreUnknown=1",
        runtime_config: rc,
    }
}

/// The backend's device joined to `eth0` of `netns`.
fn nic_in(netns: &Path, mac: String, mtu: u32) -> NicSpec {
    NicSpec {
        netns: netns.to_path_buf(),
        peer: IFNAME.into(),
        device: DEVICE.into(),
        mac,
        mtu,
    }
}

/// The backend's NIC and the guest's interface and routes from a namespace
/// its caller configured: `eth0` as it is now (its MAC, MTU, global
/// addresses and routes).
fn adopt(netns: &Path) -> Result<(NicSpec, InterfaceSpec, Vec<RouteSpec>), NetworkError> {
    let (mac, mtu) = netns::link_info(netns, IFNAME)?;
    let ip = hyper_hypervisor::nic::addr::ip_config(netns, IFNAME)
        .map_err(|e| NetworkError::Nic(e.to_string()))?;
    if ip.addresses.is_empty() {
        return Err(NetworkError::BadResult {
            network: format!("{NETNS_NETWORK} {}", netns.display()),
            message: format!(
                "{IFNAME} has no global address: the namespace's maker (CNI) did not configure it"
            ),
        });
    }
    let interface = InterfaceSpec {
        mac: mac.clone(),
        name: IFNAME.into(),
        mtu,
        addresses: ip.addresses,
    };
    let routes = ip
        .routes
        .into_iter()
        .map(|r| RouteSpec {
            destination: r.destination,
            gateway: r.gateway,
            interface: IFNAME.into(),
        })
        .collect();
    Ok((nic_in(netns, mac, mtu), interface, routes))
}

/// The backend's NIC and the guest's interface and routes from an ADD
/// result; the MAC and MTU are read from the interface itself.
fn build(
    network: &str,
    netns: &Path,
    result: &Value,
) -> Result<(NicSpec, InterfaceSpec, Vec<RouteSpec>), NetworkError> {
    let bad = |message: String| NetworkError::BadResult {
        network: network.to_string(),
        message,
    };
    let parsed: result::CniResult = serde_json::from_value(result.clone())
        .map_err(|e| bad(format!("its result does not read as a CNI result: {e}")))?;
    let (mac, mtu) = netns::link_info(netns, IFNAME)?;
    let ips = parsed.addresses_of(IFNAME);
    if ips.is_empty() {
        return Err(bad(format!(
            "no address for {IFNAME} in the result: does the network have an `ipam` section?"
        )));
    }
    let interface = InterfaceSpec {
        mac: mac.clone(),
        name: IFNAME.into(),
        mtu,
        addresses: ips.iter().map(|ip| ip.address.clone()).collect(),
    };
    let gateway = |v6: bool| {
        ips.iter()
            .filter_map(|ip| ip.gateway.clone())
            .find(|g| result::is_v6(g) == v6)
    };
    let routes = parsed
        .routes
        .iter()
        .map(|r| RouteSpec {
            destination: r.dst.clone(),
            // A route without a gateway goes through the address's one, as
            // CNI's own IPAM config applies them.
            gateway: r.gw.clone().or_else(|| gateway(result::is_v6(&r.dst))),
            interface: IFNAME.into(),
        })
        .collect();
    Ok((nic_in(netns, mac, mtu), interface, routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (the e2e machine runs as root); skipped otherwise.
    #[tokio::test]
    async fn a_configured_namespace_is_read_as_it_is() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let ns = netns::create(&format!("adopt-{}", std::process::id())).unwrap();
        let settings = Settings {
            conf_dir: "/nonexistent".into(),
            plugin_dirs: Vec::new(),
            plugin_timeout: std::time::Duration::from_secs(5),
        };
        let req = NetworkRequest {
            netns: Some(ns.clone()),
            netns_configured: true,
            ..Default::default()
        };
        // No eth0 in it: a clear error, and the namespace is the caller's.
        let err = attach(&settings, "p", &req).await.unwrap_err().to_string();
        assert!(err.contains("eth0"), "{err}");
        assert!(ns.exists());
        netns::remove(&ns).unwrap();
    }

    #[test]
    fn records_keep_their_shape() {
        let att = Attachment {
            network: "hyper".into(),
            config: Some(
                serde_json::json!({"cniVersion":"1.0.0","name":"hyper","plugins":[{"type":"bridge"}]}),
            ),
            container_id: "abc".into(),
            netns: Some("/run/netns/hyper-abc".into()),
            owns_netns: true,
            ports: vec!["127.0.0.1:18080:80".parse().unwrap()],
            result: Some(serde_json::json!({"ips": []})),
            guest: NetworkSpec::default(),
            nic: None,
        };
        let json = serde_json::to_string(&att).unwrap();
        let back: Attachment = serde_json::from_str(&json).unwrap();
        assert_eq!(back, att);
    }

    #[tokio::test]
    async fn none_has_only_lo_and_a_missing_plugin_is_named_before_anything_is_made() {
        let conf = tempfile::tempdir().unwrap();
        let settings = Settings {
            conf_dir: conf.path().into(),
            plugin_dirs: vec![conf.path().join("bin")],
            plugin_timeout: Duration::from_secs(5),
        };
        // No network configured and none asked for: only lo.
        let att = attach(&settings, "p1", &NetworkRequest::default())
            .await
            .unwrap();
        assert_eq!(att.network, NONE);
        assert!(att.guest.interfaces.is_empty() && att.nic.is_none());
        // Asked for by name: an error listing what was found.
        let err = attach(
            &settings,
            "p1",
            &NetworkRequest {
                network: Some("hyper".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no network named `hyper`"), "{err}");
        std::fs::write(
            conf.path().join("10-x.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"nosuchplugin"}]}"#,
        )
        .unwrap();
        let err = attach(&settings, "p2", &NetworkRequest::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`nosuchplugin`") && err.contains(PLUGINS_PACKAGE),
            "{err}"
        );
        assert!(!netns::path_for("p2").exists());
    }
}
