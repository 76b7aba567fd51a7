//! Whether a pid really is the QEMU of a given run directory (its pid file
//! and command line). Memory, CPU and liveness come from the backend kit
//! (`hyper_hypervisor::process`).

use std::io;
use std::path::Path;

pub use hyper_hypervisor::adopt::cmdline_mentions;
pub use hyper_hypervisor::process::is_running;

/// Reads a pid file. Only pids that can name one ordinary process are
/// accepted: 0 and negative values mean process groups or "every process"
/// to kill(2), and 1 is init.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (pid >= 2 && i32::try_from(pid).is_ok()).then_some(pid)
}

/// Writes a pid file atomically, so a reader never sees half of it.
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(is_running(me));
        let exe = std::env::args().next().unwrap();
        assert!(cmdline_mentions(me, exe.as_bytes()));
        assert!(!cmdline_mentions(
            me,
            b"certainly-not-an-argument-of-this-test"
        ));
        assert!(!cmdline_mentions(me, b""));
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qemu.pid");
        assert_eq!(read_pid_file(&p), None);
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(read_pid_file(&p), Some(1234));
        for bad in ["0", "1", "-1", "4294967295", "abc", ""] {
            std::fs::write(&p, bad).unwrap();
            assert_eq!(read_pid_file(&p), None, "{bad}");
        }
    }
}
