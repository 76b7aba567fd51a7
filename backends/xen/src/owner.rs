//! Who owns a domain: recorded in xenstore under `/tool/hyper/vms/<name>`
//! (dom0-only, unlike the domain's own `/local/domain/<id>` tree), so that a
//! new hyperd can tell the domains it may take over from the ones a dead
//! hyperd left behind. No host process holds a Xen domain, so the core's
//! "kill the VM's pid" cannot clean those up.

use std::path::{Path, PathBuf};

use hyper_hypervisor::adopt::process_start_time;

pub const ROOT: &str = "/tool/hyper/vms";
pub const MAX_RECORD: usize = 4096;
/// The run directory comes last and runs to the end of the record, so a
/// path with spaces survives.
const RUN_DIR_KEY: &str = " run_dir=";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub domid: u32,
    /// hyperd's pid and its start time (field 22 of /proc/PID/stat).
    pub pid: u32,
    pub start: u64,
    /// The VM's run directory. The runtime removes it when it gives a pod
    /// up, and keeps it while the pod may be taken over. Records written
    /// before takeovers existed have none.
    pub run_dir: Option<PathBuf>,
    /// The console pty xenconsoled gave the domain, read while it was still
    /// paused (so before the guest could write its own xenstore keys). A
    /// takeover opens this one and only if the guest-writable
    /// `console/tty` key still names it. Records from before have none and
    /// cannot be taken over.
    pub tty: Option<PathBuf>,
    /// The console bridge process serving the agent socket (see
    /// [`crate::bridge`]): pid and start time. Records from before have
    /// none; a takeover then starts a new bridge.
    pub bridge: Option<(u32, u64)>,
}

impl Owner {
    pub fn encode(&self) -> String {
        let mut text = format!("domid={} pid={} start={}", self.domid, self.pid, self.start);
        if let Some(tty) = &self.tty {
            text.push_str(" tty=");
            text.push_str(&tty.to_string_lossy());
        }
        if let Some((pid, start)) = self.bridge {
            text.push_str(&format!(" bridge={pid}:{start}"));
        }
        if let Some(dir) = &self.run_dir {
            text.push_str(RUN_DIR_KEY);
            text.push_str(&dir.to_string_lossy());
        }
        text
    }

    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > MAX_RECORD {
            return None;
        }
        let (words, run_dir) = match text.split_once(RUN_DIR_KEY) {
            Some((words, dir)) => {
                let dir = PathBuf::from(dir);
                // Only an absolute, plain path: it is looked at, never opened.
                if !dir.is_absolute() || dir.components().any(|c| c.as_os_str() == "..") {
                    return None;
                }
                (words, Some(dir))
            }
            None => (text, None),
        };
        let mut domid = None;
        let mut pid = None;
        let mut start = None;
        let mut tty = None;
        let mut bridge = None;
        for word in words.split_whitespace() {
            match word.split_once('=')? {
                ("domid", v) => domid = v.parse().ok(),
                ("pid", v) => pid = v.parse().ok(),
                ("start", v) => start = v.parse().ok(),
                ("tty", v) => tty = Some(crate::console::check_tty_path(v).ok()?),
                ("bridge", v) => {
                    let (pid, start) = v.split_once(':')?;
                    bridge = Some((pid.parse().ok()?, start.parse().ok()?));
                }
                _ => {}
            }
        }
        Some(Self {
            domid: domid?,
            pid: pid?,
            start: start?,
            run_dir,
            tty,
            bridge,
        })
    }

    /// This process as the owner of `domid`, run from `run_dir`, whose
    /// console is `tty`, bridged by the process `bridge` (pid, start time).
    pub fn me(domid: u32, run_dir: &Path, tty: &Path, bridge: Option<(u32, u64)>) -> Self {
        let pid = std::process::id();
        Self {
            domid,
            pid,
            start: process_start_time(pid).unwrap_or(0),
            run_dir: Some(run_dir.to_path_buf()),
            tty: Some(tty.to_path_buf()),
            bridge,
        }
    }

    /// The owning hyperd is still the same live process.
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start)
    }
}

pub fn path(name: &str) -> String {
    format!("{ROOT}/{name}")
}

/// What a starting hyperd does with one domain an owner record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its hyperd (maybe this one, after a takeover) is alive: not ours to touch.
    Keep,
    /// The domain is gone: only the record is left to remove.
    Forget,
    /// Its hyperd is dead and nobody will take it over.
    Destroy,
    /// Its hyperd is dead but its run directory is still there: the
    /// runtime may take it over yet. Looked at again later.
    Wait,
}

/// `record` is the owner record of the domain called `name`;
/// `domain_name` what xenstore says the record's domid is called now.
pub fn verdict(
    name: &str,
    record: Option<&Owner>,
    domain_name: Option<&str>,
    alive: impl Fn(&Owner) -> bool,
    exists: impl Fn(&Path) -> bool,
) -> Verdict {
    let Some(owner) = record else {
        return Verdict::Forget;
    };
    if alive(owner) {
        return Verdict::Keep;
    }
    if domain_name != Some(name) {
        return Verdict::Forget;
    }
    match &owner.run_dir {
        Some(dir) if exists(dir) => Verdict::Wait,
        _ => Verdict::Destroy,
    }
}

/// Why the domain `name` cannot be taken over, if it cannot: it must be
/// recorded as hyperd's, from the same run directory, not held by another
/// live hyperd, and its recorded domid must still carry the name.
pub fn check_takeover(
    name: &str,
    run_dir: &Path,
    record: Option<&str>,
    domain_name: Option<&str>,
    held_elsewhere: impl Fn(&Owner) -> bool,
) -> Result<u32, String> {
    let owner =
        record.ok_or_else(|| format!("domain {name} is not recorded as hyperd's in xenstore"))?;
    let owner = Owner::decode(owner)
        .ok_or_else(|| format!("the owner record of domain {name} is not valid"))?;
    if let Some(dir) = &owner.run_dir {
        if dir != run_dir {
            return Err(format!(
                "domain {name} belongs to {}, not {}",
                dir.display(),
                run_dir.display()
            ));
        }
    }
    if held_elsewhere(&owner) {
        return Err(format!(
            "domain {name} is held by hyperd {}, which is still running",
            owner.pid
        ));
    }
    if domain_name != Some(name) {
        return Err(format!("domain {name} (domid {}) is gone", owner.domid));
    }
    Ok(owner.domid)
}

/// The console pty a takeover may open: the one recorded at launch, and
/// only while the domain's own (guest-writable) `console/tty` key still
/// names it. A guest that rewrites the key to another `/dev/pts/N` (another
/// domain's console, an operator's terminal) gets no takeover.
pub fn check_console(owner: &Owner, xenstore_tty: Option<&str>) -> Result<PathBuf, String> {
    let recorded = owner.tty.as_ref().ok_or_else(|| {
        format!(
            "domain {} was recorded without its console pty (an older hyperd): it cannot be taken over safely",
            owner.domid
        )
    })?;
    match xenstore_tty {
        Some(now) if std::ffi::OsStr::new(now) == recorded.as_os_str() => Ok(recorded.clone()),
        Some(now) => Err(format!(
            "the console tty of domain {} in xenstore is now {now:?}, not {} as at launch: refused (the guest can write that key)",
            owner.domid,
            recorded.display()
        )),
        None => Err(format!(
            "domain {} has no console tty in xenstore",
            owner.domid
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(run_dir: Option<&str>) -> Owner {
        Owner {
            domid: 7,
            pid: 1234,
            start: 99,
            run_dir: run_dir.map(PathBuf::from),
            tty: Some(PathBuf::from("/dev/pts/4")),
            bridge: None,
        }
    }

    #[test]
    fn records_round_trip() {
        for o in [
            owner(None),
            owner(Some("/var/lib/hyper/pods/a b/vm")),
            owner(Some("/x=y run_dir=/z")),
            Owner {
                bridge: Some((4321, 77)),
                ..owner(Some("/run/vm"))
            },
        ] {
            assert_eq!(Owner::decode(&o.encode()), Some(o));
        }
        assert_eq!(Owner::decode("domid=7 pid=1"), None);
        assert_eq!(Owner::decode("garbage"), None);
        assert_eq!(Owner::decode("domid=1 pid=1 start=2 bridge=3"), None);
        assert_eq!(Owner::decode("domid=1 pid=1 start=2 bridge=x:4"), None);
        assert_eq!(Owner::decode("domid=x pid=1 start=2"), None);
        assert_eq!(Owner::decode(&"domid=1 ".repeat(1000)), None);
        assert_eq!(Owner::decode("domid=1 pid=1 start=2 run_dir=rel/vm"), None);
        assert_eq!(
            Owner::decode("domid=1 pid=1 start=2 run_dir=/a/../etc"),
            None
        );
    }

    #[test]
    fn the_console_must_be_the_one_recorded_at_launch() {
        let o = owner(Some("/s/pods/p/vm"));
        assert_eq!(
            check_console(&o, Some("/dev/pts/4")).unwrap(),
            PathBuf::from("/dev/pts/4")
        );
        for bad in [
            Some("/dev/pts/5"),
            Some("/dev/pts/4/"),
            Some("/etc/passwd"),
            None,
        ] {
            assert!(check_console(&o, bad).is_err(), "{bad:?}");
        }
        let old = Owner { tty: None, ..o };
        assert!(check_console(&old, Some("/dev/pts/4")).is_err());
        // A record naming something other than a pty is no record.
        assert_eq!(Owner::decode("domid=1 pid=1 start=2 tty=/etc/passwd"), None);
        let no_tty = "domid=1 pid=1 start=2 run_dir=/a";
        assert_eq!(Owner::decode(no_tty).map(|o| o.tty), Some(None));
    }

    #[test]
    fn liveness_needs_the_same_start_time() {
        let me = Owner::me(1, Path::new("/run/vm"), Path::new("/dev/pts/1"), None);
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert!(!Owner {
            start: me.start + 1,
            ..me.clone()
        }
        .is_alive());
        assert!(!Owner {
            pid: u32::MAX,
            ..me
        }
        .is_alive());
    }

    #[test]
    fn verdicts() {
        let dead = |_: &Owner| false;
        let live = |_: &Owner| true;
        let there = |_: &Path| true;
        let removed = |_: &Path| false;
        let o = owner(Some("/s/pods/p/vm"));
        assert_eq!(verdict("p", None, Some("p"), dead, there), Verdict::Forget);
        assert_eq!(
            verdict("p", Some(&o), Some("p"), live, removed),
            Verdict::Keep
        );
        assert_eq!(verdict("p", Some(&o), None, dead, there), Verdict::Forget);
        // Its domid now names another domain: that one is not ours.
        assert_eq!(
            verdict("p", Some(&o), Some("q"), dead, removed),
            Verdict::Forget
        );
        assert_eq!(
            verdict("p", Some(&o), Some("p"), dead, there),
            Verdict::Wait
        );
        assert_eq!(
            verdict("p", Some(&o), Some("p"), dead, removed),
            Verdict::Destroy
        );
        assert_eq!(
            verdict("p", Some(&owner(None)), Some("p"), dead, there),
            Verdict::Destroy
        );
    }

    #[test]
    fn takeovers_are_checked() {
        let dir = Path::new("/s/pods/p/vm");
        let rec = owner(Some("/s/pods/p/vm")).encode();
        let check = |record: Option<&str>, domain: Option<&str>| {
            check_takeover("p", dir, record, domain, |_| false)
        };
        assert_eq!(check(Some(&rec), Some("p")), Ok(7));
        assert_eq!(check(Some(&owner(None).encode()), Some("p")), Ok(7));
        let err = check(None, Some("p")).unwrap_err();
        assert!(err.contains("not recorded"), "{err}");
        let err = check(Some("junk"), Some("p")).unwrap_err();
        assert!(err.contains("not valid"), "{err}");
        let other = owner(Some("/t/pods/p/vm")).encode();
        let err = check(Some(&other), Some("p")).unwrap_err();
        assert!(err.contains("/t/pods/p/vm"), "{err}");
        let err = check(Some(&rec), None).unwrap_err();
        assert!(err.contains("gone"), "{err}");
        assert!(check(Some(&rec), Some("q")).is_err());
        let err = check_takeover("p", dir, Some(&rec), Some("p"), |o| o.pid == 1234).unwrap_err();
        assert!(err.contains("still running"), "{err}");
    }
}
