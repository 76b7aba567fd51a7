//! A domain's vifs joined to the pods' network namespaces.
//!
//! netback creates the backend half of each vif in dom0's root network
//! namespace as `vif<domid>.<devid>`; the hotplug script (`vif-hyper`) only
//! reports it ready. Before the domain is unpaused the plugin moves it into
//! the pod's netns (netback vifs may change namespace: measured on Xen 4.17
//! with Debian 12's 6.1 dom0 kernel), renames it to `NicSpec.device`, sets
//! the MTU, brings it up and joins it to `NicSpec.peer` (the CNI interface)
//! with tc ingress + `mirred egress redirect` both ways (Kata's tcfilter
//! model). When the domain is destroyed netback deletes the vif from
//! whichever namespace holds it; the core removes the namespace.
//!
//! The steps run iproute2's `ip` and `tc` (dom0 has them: Xen's own hotplug
//! scripts need iproute2), inside the netns by `setns` in the child before
//! exec, each bounded in time and output.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hyper_hypervisor::NicSpec;
use tokio::process::Command;

use crate::xl::{read_bounded, XlOutput};

/// One `ip` or `tc` call; they take milliseconds, seconds under emulation.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the vif may take to show up after `xl create` returned.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// netback's name for the `devid`th vif of domain `domid`.
pub fn backend_name(domid: u32, devid: usize) -> String {
    format!("vif{domid}.{devid}")
}

/// The tc commands joining `from`'s ingress to `to`'s egress.
pub fn redirect_args(from: &str, to: &str) -> [Vec<String>; 2] {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    [
        s(&["qdisc", "add", "dev", from, "ingress"]),
        s(&[
            "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ]),
    ]
}

/// Runs `tool ARGS…`, inside the netns open as `netns` if given.
async fn run(tool: &str, args: &[String], netns: Option<&std::fs::File>) -> Result<(), String> {
    let shown = format!("{tool} {}", args.join(" "));
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the setns(2) system call on an fd the parent keeps open
        // until spawn returns; it allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot run `{shown}`: {e} (dom0 needs iproute2's ip and tc in PATH)")
    })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let all = async {
        let (out, err) = tokio::join!(read_bounded(stdout), read_bounded(stderr));
        (child.wait().await, out, err)
    };
    let (status, stdout, stderr) = tokio::time::timeout(STEP_TIMEOUT, all)
        .await
        .map_err(|_| format!("`{shown}` did not finish within {STEP_TIMEOUT:?}"))?;
    let status = status.map_err(|e| format!("`{shown}`: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let out = XlOutput {
        success: false,
        status: status.to_string(),
        stdout,
        stderr,
    };
    Err(format!("`{shown}` failed: {}", out.reason()))
}

/// Waits until dom0 has the interface `name` in its root namespace.
async fn appeared(name: &str) -> bool {
    let path = Path::new("/sys/class/net").join(name);
    let deadline = tokio::time::Instant::now() + APPEAR_TIMEOUT;
    loop {
        if path.exists() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Moves the domain's `devid`th vif into `nic.netns` and joins it to
/// `nic.peer`. On an error the caller destroys the domain, which removes the
/// vif wherever it is.
pub async fn join(domid: u32, devid: usize, nic: &NicSpec) -> Result<(), String> {
    let vif = backend_name(domid, devid);
    let ns = std::fs::File::open(&nic.netns).map_err(|e| {
        format!(
            "cannot open the pod's network namespace {}: {e}",
            nic.netns.display()
        )
    })?;
    if !appeared(&vif).await {
        return Err(format!(
            "netback created no {vif} within {APPEAR_TIMEOUT:?} (is xen-netback loaded in dom0?)"
        ));
    }
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let netns = nic.netns.to_string_lossy();
    run(
        "ip",
        &s(&["link", "set", "dev", &vif, "netns", &netns]),
        None,
    )
    .await
    .map_err(|e| format!("moving {vif} into the pod's netns: {e}"))?;
    let mtu = nic.mtu.to_string();
    run(
        "ip",
        &s(&["link", "set", "dev", &vif, "name", &nic.device, "mtu", &mtu]),
        Some(&ns),
    )
    .await?;
    run(
        "ip",
        &s(&["link", "set", "dev", &nic.device, "up"]),
        Some(&ns),
    )
    .await?;
    for (from, to) in [(&nic.peer, &nic.device), (&nic.device, &nic.peer)] {
        for args in redirect_args(from, to) {
            run("tc", &args, Some(&ns)).await?;
        }
    }
    tracing::info!(domid, %vif, device = %nic.device, peer = %nic.peer, netns = %netns, "vif joined to the pod's network");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redirects() {
        assert_eq!(backend_name(7, 0), "vif7.0");
        let [qdisc, filter] = redirect_args("eth0", "tap0");
        assert_eq!(qdisc.join(" "), "qdisc add dev eth0 ingress");
        assert_eq!(
            filter.join(" "),
            "filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev tap0"
        );
    }

    #[tokio::test]
    async fn a_missing_netns_is_named() {
        let nic = NicSpec {
            netns: "/nonexistent/netns/x".into(),
            peer: "eth0".into(),
            device: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
        };
        let err = join(4242, 0, &nic).await.unwrap_err();
        assert!(err.contains("/nonexistent/netns/x"), "{err}");
    }
}
