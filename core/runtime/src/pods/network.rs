//! A pod's network, glued to its lifecycle: set up before each of its VMs
//! launches (the backend joins its NIC to the namespace), taken down after
//! each VM ended, whichever way (stop, rm, the VM dying or killed, a
//! restart by policy, a failed create, a pod that died while hyperd was
//! down). The work itself is the `hyper-network` crate's.

use std::collections::BTreeMap;

use hyper_network::{Attachment, NetworkRequest, PortMapping};

use super::model::{PodRecord, RunError};
use super::{lock, Runtime};

/// The published host ports of every pod that has a network now, by pod:
/// portmap's DNAT rules hold no socket, so two pods on one port would
/// steal each other's traffic. Checked and reserved under one lock.
#[derive(Default)]
pub(super) struct PortTable(std::sync::Mutex<BTreeMap<String, Vec<PortMapping>>>);

impl PortTable {
    /// Fails when another pod than `id` publishes one of `ports`.
    fn check(
        table: &BTreeMap<String, Vec<PortMapping>>,
        id: &str,
        ports: &[PortMapping],
    ) -> Result<(), RunError> {
        for p in ports {
            for (other, theirs) in table.iter().filter(|(o, _)| o.as_str() != id) {
                if let Some(q) = theirs.iter().find(|q| q.clashes_with(p)) {
                    return Err(RunError::Conflict(format!(
                        "-p {}: host port {}/{} is already published by pod {other} ({})",
                        p.spec(),
                        p.host_port,
                        p.protocol,
                        q.spec()
                    )));
                }
            }
        }
        Ok(())
    }

    fn reserve(&self, id: &str, ports: &[PortMapping]) -> Result<(), RunError> {
        let mut table = lock(&self.0);
        Self::check(&table, id, ports)?;
        table.insert(id.to_string(), ports.to_vec());
        Ok(())
    }

    fn release(&self, id: &str) {
        lock(&self.0).remove(id);
    }

    /// Ports a pod taken over after a restart still holds.
    pub(super) fn hold(&self, id: &str, ports: &[PortMapping]) {
        if !ports.is_empty() {
            lock(&self.0).insert(id.to_string(), ports.to_vec());
        }
    }
}

impl PodRecord {
    /// What the pod asks of its network and its hostname.
    pub(super) fn network_request(&self) -> NetworkRequest {
        match (&self.pod_file, &self.container) {
            (Some(pod), _) if self.is_pod_file_pod() => pod.network_request().unwrap_or_default(),
            (_, Some(req)) => req.network.clone(),
            _ => NetworkRequest::default(),
        }
    }

    /// The pod's hostname: `--hostname`, else its id.
    pub(super) fn hostname(&self) -> String {
        self.container
            .as_ref()
            .and_then(|c| c.hostname.clone())
            .filter(|_| !self.is_pod_file_pod())
            .unwrap_or_else(|| self.id.clone())
    }
}

/// `--hostname`: the guest's rules (the protocol's), checked before
/// anything is made.
pub(super) fn check_hostname(name: &str) -> Result<(), RunError> {
    hyper_network::dns::check_hostname(name).map_err(|e| RunError::Invalid(e.to_string()))
}

/// A network error as the pod's: a missing configuration keeps its kind.
fn network_error(e: hyper_network::NetworkError) -> RunError {
    match e {
        hyper_network::NetworkError::NoNetworks { dir } => RunError::NoNetworks(dir),
        e => RunError::Network(e.to_string()),
    }
}

impl Runtime {
    /// Refuses a pod whose network cannot be set up, before anything of it
    /// is made: an unknown network, a missing plugin, a taken port.
    pub(super) fn network_preflight(&self, req: &NetworkRequest) -> Result<(), RunError> {
        PortTable::check(&lock(&self.ports.0), "", &req.ports)?;
        hyper_network::preflight(&self.config.network.settings(), req).map_err(|e| match e {
            hyper_network::NetworkError::Ports(m) => RunError::Invalid(m),
            e => network_error(e),
        })
    }

    /// Sets up the network of pod `record`'s next VM and records it (saved,
    /// so a hyperd that dies right after can still take it down). On
    /// failure nothing of it is left.
    pub(super) async fn network_up(&self, record: &mut PodRecord) -> Result<(), RunError> {
        // A network left from an earlier VM goes first.
        self.network_down(record).await;
        let req = record.network_request();
        let id = record.id.clone();
        self.ports.reserve(&id, &req.ports)?;
        let settings = self.config.network.settings();
        match hyper_network::attach(&settings, &id, &req).await {
            Ok(att) => {
                tracing::debug!(pod = %id, network = %att.network, addresses = ?att.addresses(), "network up");
                record.network = Some(att);
                self.save(record);
                Ok(())
            }
            Err(e) => {
                self.ports.release(&id);
                Err(network_error(e))
            }
        }
    }

    /// Takes the network of the pod's last VM down (CNI DEL, namespace
    /// removed) and forgets it; a failure is logged, the record forgets it
    /// anyway (DEL is retried by no one: the plugins' own state would make
    /// a retry fail the same way).
    pub(super) async fn network_down(&self, record: &mut PodRecord) {
        let Some(att) = record.network.take() else {
            return;
        };
        self.detach(&record.id, &att).await;
    }

    /// CNI CHECK of a taken-over pod's network, as the spec means it: are
    /// the plugins' interfaces, addresses and rules still what ADD made?
    /// The answer goes into the takeover event (`ok`, or `check failed: …`)
    /// and the log; the pod keeps running either way, as a CNI runtime does
    /// (only its network may be broken, and the operator decides).
    pub(super) async fn check_network(&self, id: &str, att: &Attachment) -> String {
        let settings = self.config.network.settings();
        match hyper_network::check(&settings, att).await {
            Ok(()) => {
                tracing::debug!(pod = %id, network = %att.network, "network checked after takeover");
                "ok".into()
            }
            Err(e) => {
                tracing::warn!(pod = %id, network = %att.network, "the network CNI CHECK failed after takeover: {e}");
                format!("check failed: {e}")
            }
        }
    }

    pub(super) async fn detach(&self, id: &str, att: &Attachment) {
        let settings = self.config.network.settings();
        match hyper_network::detach(&settings, att).await {
            Ok(()) => tracing::debug!(pod = %id, network = %att.network, "network down"),
            Err(e) => {
                tracing::warn!(pod = %id, network = %att.network, "taking the network down: {e}")
            }
        }
        self.ports.release(id);
    }

    /// The networks `[network] cni_conf_dir` has (`hyper network ls`): each
    /// one's name, file and plugins, or why it is not usable.
    pub fn networks(&self) -> Result<Vec<NetworkInfo>, RunError> {
        let settings = self.config.network.settings();
        let found = settings
            .networks()
            .map_err(|e| RunError::Network(e.to_string()))?;
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, c)| match c {
                Ok(c) => NetworkInfo {
                    name: c.name.clone(),
                    file: c.file.display().to_string(),
                    plugins: c.plugin_types(),
                    default: i == 0,
                    error: None,
                },
                Err(e) => NetworkInfo {
                    name: String::new(),
                    file: match &e {
                        hyper_network::NetworkError::Conflist { file, .. } => {
                            file.display().to_string()
                        }
                        _ => String::new(),
                    },
                    plugins: Vec::new(),
                    default: false,
                    error: Some(e.to_string()),
                },
            })
            .collect())
    }
}

/// One network `hyper network ls` lists.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub file: String,
    pub plugins: Vec<String>,
    /// The first by file name: the network of a pod that names none.
    pub default: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_port_is_held_by_one_pod() {
        let t = PortTable::default();
        let p: PortMapping = "8080:80".parse().unwrap();
        t.reserve("a", std::slice::from_ref(&p)).unwrap();
        let err = t
            .reserve("b", std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pod a"), "{err}");
        // The same pod again (its next VM) is fine.
        t.reserve("a", std::slice::from_ref(&p)).unwrap();
        t.release("a");
        t.reserve("b", std::slice::from_ref(&p)).unwrap();
    }
}
