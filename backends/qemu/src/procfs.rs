//! What /proc says about a QEMU process: its memory and CPU use, whether it
//! is still there, and whether a pid really is the QEMU of a given run
//! directory.

use std::io;
use std::path::Path;

use hyper_hypervisor::VmStats;

/// `VmRSS:     1234 kB` in /proc/<pid>/status, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

/// `Pss:       1234 kB` in /proc/<pid>/smaps_rollup, in bytes.
pub fn parse_smaps_pss(smaps: &str) -> Option<u64> {
    kib_field(smaps, "Pss:")
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The fields of /proc/<pid>/stat after the command name, which is in
/// parentheses and may itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let end = stat.rfind(')')?;
    Some(stat[end + 1..].split_whitespace().collect())
}

/// utime + stime from /proc/<pid>/stat, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    // After the name: state is field 3 of the man page, so utime (14) and
    // stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The one-letter state from /proc/<pid>/stat (`R`, `S`, `Z` …).
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

fn proc_path(pid: u32, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// Host memory and CPU use of `pid`.
pub fn read_stats(pid: u32) -> io::Result<VmStats> {
    let malformed = |file: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {}", proc_path(pid, file)),
        )
    };
    let status = std::fs::read_to_string(proc_path(pid, "status"))?;
    let rss_bytes = parse_status_rss(&status).ok_or_else(|| malformed("status"))?;
    // smaps_rollup needs Linux 4.14 and ptrace access: Pss is optional.
    let pss_bytes = std::fs::read_to_string(proc_path(pid, "smaps_rollup"))
        .ok()
        .and_then(|s| parse_smaps_pss(&s));
    let stat = std::fs::read_to_string(proc_path(pid, "stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| malformed("stat"))?;
    let cpu_time_ms = ticks.saturating_mul(1000) / clock_ticks_per_second();
    Ok(VmStats {
        rss_bytes,
        pss_bytes,
        cpu_time_ms,
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(proc_path(pid, "stat"))
        .ok()
        .and_then(|s| parse_stat_state(&s))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Whether one of `pid`'s arguments contains `needle`.
pub fn cmdline_mentions(pid: u32, needle: &[u8]) -> bool {
    let Ok(cmdline) = std::fs::read(proc_path(pid, "cmdline")) else {
        return false;
    };
    !needle.is_empty()
        && cmdline
            .split(|&b| b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

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
    fn parsing() {
        let status = "Name:\tqemu\nVmPeak:\t 9000 kB\nVmRSS:\t  133120 kB\n";
        assert_eq!(parse_status_rss(status), Some(133120 * 1024));
        assert_eq!(
            parse_smaps_pss("Rss: 10 kB\nPss:    7 kB\nPss_Anon: 1 kB\n"),
            Some(7168)
        );
        let stat =
            "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 1000";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_state(stat), Some('S'));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let stats = read_stats(me).unwrap();
        assert!(stats.rss_bytes > 0);
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
