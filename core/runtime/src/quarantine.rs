//! What a restarted hyperd does with a pod directory whose `pod.json` it
//! cannot use (issue 13, M5): never delete data on a parse error. A corrupt
//! record is set aside as `pod.json.corrupt-<unix time>`, the directory and
//! its logs stay, and a VM process still running from the pod's run
//! directory is left running and named in the log (without its record it
//! cannot be taken over: the backend's `recover` needs the saved spec).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

/// The name prefix of a record set aside.
pub const CORRUPT_PREFIX: &str = "pod.json.corrupt-";
/// A record larger than this is not parsed (it is set aside as corrupt).
const MAX_RECORD: u64 = 16 << 20;

/// What [`read_record`] found in a pod directory.
#[derive(Debug)]
pub enum Found<T> {
    /// A record to restore the pod from.
    Record(T),
    /// No record and nothing running: a launch that died half-way, whose
    /// directory was removed.
    Removed,
    /// Kept as it is for the operator: a corrupt record (now set aside), a
    /// record set aside earlier, or a VM still running without a record.
    Kept { reason: String },
}

/// Reads `pod_dir/pod.json`. Only a directory with no record, no record
/// set aside and no process running from its run directory is removed.
pub fn read_record<T: DeserializeOwned>(pod_dir: &Path) -> Found<T> {
    let path = pod_dir.join("pod.json");
    let problem = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_RECORD => Some(format!("{} bytes, more than a record", m.len())),
        Ok(_) => match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
                Ok(record) => return Found::Record(record),
                // serde_json's message names a line and column, never the
                // content.
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(e.to_string()),
    };
    let vms = processes_using(&pod_dir.join("vm"));
    let set_aside = match problem {
        Some(problem) => {
            let kept = quarantine(&path);
            let kept_as = match &kept {
                Ok(p) => format!("set aside as {}", p.display()),
                Err(e) => format!("left in place ({e})"),
            };
            Some(format!("its pod.json is unreadable ({problem}); {kept_as}"))
        }
        None => earlier_quarantine(pod_dir)
            .map(|p| format!("its record was set aside earlier as {}", p.display())),
    };
    if set_aside.is_none() && vms.is_empty() {
        let _ = std::fs::remove_dir_all(pod_dir);
        return Found::Removed;
    }
    let mut reason = set_aside.unwrap_or_else(|| "it has no pod.json".into());
    if vms.is_empty() {
        reason.push_str("; no VM process runs from it");
    } else {
        let pids: Vec<String> = vms.iter().map(u32::to_string).collect();
        reason.push_str(&format!(
            "; VM process(es) {} still run from {} and are NOT taken over: stop them by hand (kill {})",
            pids.join(", "),
            pod_dir.join("vm").display(),
            pids.join(" ")
        ));
    }
    reason.push_str(&format!(
        "; the directory and its logs are kept: remove {} by hand once done",
        pod_dir.display()
    ));
    tracing::error!(pod_dir = %pod_dir.display(), "pod not restored: {reason}");
    Found::Kept { reason }
}

/// Renames `pod.json` to `pod.json.corrupt-<unix time>`.
fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = path.with_file_name(format!("{CORRUPT_PREFIX}{now}"));
    let mut n = 1;
    while to.exists() {
        to = path.with_file_name(format!("{CORRUPT_PREFIX}{now}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

fn earlier_quarantine(pod_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(pod_dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(CORRUPT_PREFIX))
        .map(|e| e.path())
}

/// The processes whose command line names a path under `run_dir` (QEMU's
/// QMP socket, hyper-vmm's config): the VMM of that pod.
pub fn processes_using(run_dir: &Path) -> Vec<u32> {
    let needle = run_dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Rec {
        #[allow(dead_code)]
        id: String,
    }

    #[test]
    fn a_corrupt_record_is_set_aside_and_nothing_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("p1");
        std::fs::create_dir_all(pod.join("vm")).unwrap();
        std::fs::write(pod.join("pod.json"), b"{\"id\": \"p1\", SECRET").unwrap();
        std::fs::write(pod.join("container.log"), b"log\n").unwrap();
        let Found::Kept { reason } = read_record::<Rec>(&pod) else {
            panic!("not kept")
        };
        assert!(reason.contains("unreadable"), "{reason}");
        assert!(!reason.contains("SECRET"), "{reason}");
        assert!(pod.join("container.log").exists());
        assert!(!pod.join("pod.json").exists());
        assert!(earlier_quarantine(&pod).is_some());
        // The next restart keeps it too.
        assert!(matches!(read_record::<Rec>(&pod), Found::Kept { .. }));
    }

    #[test]
    fn a_dir_without_a_record_or_vm_is_removed_and_a_good_record_read() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("p2");
        std::fs::create_dir_all(pod.join("vm")).unwrap();
        assert!(matches!(read_record::<Rec>(&pod), Found::Removed));
        assert!(!pod.exists());
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("pod.json"), br#"{"id":"p2"}"#).unwrap();
        assert!(matches!(read_record::<Rec>(&pod), Found::Record(_)));
    }

    #[test]
    fn a_vm_running_without_a_record_keeps_its_dir() {
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("p3");
        let vm = pod.join("vm");
        std::fs::create_dir_all(&vm).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30"])
            .arg(vm.join("qmp.sock"))
            .spawn()
            .unwrap();
        // Until the child has exec'd, its cmdline is still ours (without
        // the run dir): wait for the exec, as a VM found at start has long
        // done it.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let needle = vm.as_os_str().as_encoded_bytes().to_vec();
        for _ in 0..500 {
            let seen = std::fs::read(&cmdline).unwrap_or_default();
            if seen.windows(needle.len()).any(|w| w == needle.as_slice()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = read_record::<Rec>(&pod);
        let _ = child.kill();
        let _ = child.wait();
        let Found::Kept { reason } = found else {
            panic!("removed a dir whose VM runs")
        };
        assert!(reason.contains(&child.id().to_string()), "{reason}");
        assert!(pod.exists());
    }
}
