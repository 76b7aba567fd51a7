//! Attach and detach with Debian's real CNI plugins (bridge, host-local,
//! portmap, firewall) on this host's iptables: needs root and
//! containernetworking-plugins; skipped (with a line saying so) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper_network::{attach, detach, netns, NetworkRequest, Settings};

fn usable() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let plugins = Path::new("/usr/lib/cni/bridge").exists();
    if !(root && plugins) {
        eprintln!("skipped: needs root and /usr/lib/cni (containernetworking-plugins)");
    }
    root && plugins
}

/// A network of its own per test: bridge, subnet and lease directory.
fn network(dir: &Path, name: &str, bridge: &str, subnet: &str) -> (Settings, PathBuf) {
    let conf = dir.join("net.d");
    let leases = dir.join("leases");
    std::fs::create_dir_all(&conf).unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/cni/10-hyper.conflist"
    ))
    .unwrap()
    .replace("\"hyper\"", &format!("\"{name}\""))
    .replace("hyper0", bridge)
    .replace("10.208.0.0/16", subnet)
    .replace(
        "\"type\": \"host-local\",",
        &format!(
            "\"type\": \"host-local\", \"dataDir\": \"{}\",",
            leases.display()
        ),
    );
    std::fs::write(conf.join("10-test.conflist"), text).unwrap();
    let settings = Settings {
        conf_dir: conf,
        plugin_dirs: vec!["/usr/lib/cni".into()],
        plugin_timeout: Duration::from_secs(60),
    };
    (settings, leases.join(name))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rules_naming(what: &str) -> usize {
    sh("iptables-save 2>/dev/null")
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

fn leases(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pod_network_is_made_with_its_port_and_undone_completely() {
    if !usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (settings, lease_dir) = network(tmp.path(), "rt1", "hyrt1", "10.209.1.0/24");
    let id = format!("rt1-{}", std::process::id());
    let req = NetworkRequest {
        ports: vec!["127.0.0.1:28081:80".parse().unwrap()],
        ..Default::default()
    };
    let att = attach(&settings, &id, &req).await.unwrap();
    let ns = att.netns.clone().unwrap();
    assert_eq!(ns, netns::path_for(&id));
    let nic = att.nic.clone().unwrap();
    assert_eq!(nic.peer, "eth0");
    assert_eq!(nic.mtu, 1500);
    assert_eq!(nic.mac.len(), 17);
    let iface = &att.guest.interfaces[0];
    assert_eq!(iface.mac, nic.mac);
    assert!(iface.addresses[0].starts_with("10.209.1."), "{iface:?}");
    let default = att
        .guest
        .routes
        .iter()
        .find(|r| r.destination == "0.0.0.0/0")
        .expect("a default route");
    assert_eq!(default.gateway.as_deref(), Some("10.209.1.1"));
    assert_eq!(leases(&lease_dir), 1);
    // Every rule the plugins add names the pod (`id: "…"`).
    let named = format!("id: \\\"{id}\\\"");
    assert!(rules_naming(&named) >= 2, "no NAT rules for the pod");
    assert!(
        sh("iptables-save -t nat").contains("--dport 28081"),
        "no DNAT for the port"
    );
    // The same port again is refused before anything is made.
    let err = attach(&settings, &format!("{id}b"), &req).await;
    assert!(
        err.is_ok(),
        "portmap rules do not hold the socket: a second pod is refused by hyperd, not here"
    );
    let second = err.unwrap();
    detach(&settings, &second).await.unwrap();

    detach(&settings, &att).await.unwrap();
    assert!(!ns.exists());
    assert_eq!(leases(&lease_dir), 0);
    assert_eq!(rules_naming(&named), 0);
    assert!(sh("ip -br link show master hyrt1").trim().is_empty());
    // Running DEL again is harmless.
    detach(&settings, &att).await.unwrap();
    let _ = Command::new("ip").args(["link", "del", "hyrt1"]).status();
}

#[tokio::test]
async fn an_exhausted_subnet_fails_clearly_and_leaves_nothing() {
    if !usable() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A /30 has two usable addresses: the gateway and one pod.
    let (settings, lease_dir) = network(tmp.path(), "rt2", "hyrt2", "10.209.2.0/30");
    let first_id = format!("rt2a-{}", std::process::id());
    let first = attach(&settings, &first_id, &NetworkRequest::default())
        .await
        .unwrap();
    let second_id = format!("rt2b-{}", std::process::id());
    let err = attach(&settings, &second_id, &NetworkRequest::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bridge") && err.contains("no IP addresses available"),
        "{err}"
    );
    assert!(!netns::path_for(&second_id).exists());
    assert_eq!(leases(&lease_dir), 1);
    detach(&settings, &first).await.unwrap();
    assert_eq!(leases(&lease_dir), 0);
    let _ = Command::new("ip").args(["link", "del", "hyrt2"]).status();
}
