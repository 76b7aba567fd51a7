//! Who owns a domain: recorded in xenstore under `/tool/hyper/vms/<name>`
//! (dom0-only, unlike the domain's own `/local/domain/<id>` tree), so that a
//! new hyperd can destroy the domains a crashed one left running. No host
//! process holds a Xen domain, so the core's "kill the VM's pid" cannot.

use std::path::Path;

pub const ROOT: &str = "/tool/hyper/vms";
const MAX_RECORD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub domid: u32,
    /// hyperd's pid and its start time (field 22 of /proc/PID/stat).
    pub pid: u32,
    pub start: u64,
}

impl Owner {
    pub fn encode(&self) -> String {
        format!("domid={} pid={} start={}", self.domid, self.pid, self.start)
    }

    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > MAX_RECORD {
            return None;
        }
        let mut domid = None;
        let mut pid = None;
        let mut start = None;
        for word in text.split_whitespace() {
            match word.split_once('=')? {
                ("domid", v) => domid = v.parse().ok(),
                ("pid", v) => pid = v.parse().ok(),
                ("start", v) => start = v.parse().ok(),
                _ => {}
            }
        }
        Some(Self {
            domid: domid?,
            pid: pid?,
            start: start?,
        })
    }

    /// This process as an owner of `domid`.
    pub fn me(domid: u32) -> Self {
        let pid = std::process::id();
        Self {
            domid,
            pid,
            start: process_start_time(Path::new("/proc"), pid).unwrap_or(0),
        }
    }

    /// The owning hyperd is still the same live process.
    pub fn is_alive(&self, proc_dir: &Path) -> bool {
        process_start_time(proc_dir, self.pid) == Some(self.start)
    }
}

pub fn path(name: &str) -> String {
    format!("{ROOT}/{name}")
}

/// Start time of a process in clock ticks since boot.
pub fn process_start_time(proc_dir: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let o = Owner {
            domid: 7,
            pid: 1234,
            start: 99,
        };
        assert_eq!(Owner::decode(&o.encode()), Some(o));
        assert_eq!(Owner::decode("domid=7 pid=1"), None);
        assert_eq!(Owner::decode("garbage"), None);
        assert_eq!(Owner::decode("domid=x pid=1 start=2"), None);
        assert_eq!(Owner::decode(&"domid=1 ".repeat(1000)), None);
    }

    #[test]
    fn liveness_needs_the_same_start_time() {
        let me = Owner::me(1);
        assert!(me.start > 0);
        assert!(me.is_alive(Path::new("/proc")));
        assert!(!Owner {
            start: me.start + 1,
            ..me.clone()
        }
        .is_alive(Path::new("/proc")));
        assert!(!Owner {
            pid: u32::MAX,
            ..me
        }
        .is_alive(Path::new("/proc")));
    }
}
