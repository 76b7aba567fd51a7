//! Running `xl`, bounded in time and output, and reading what it prints.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hyper_hypervisor::command::run_bounded;
use tokio::process::Command;

/// More than any xl subcommand we run prints; the rest is dropped.
const OUTPUT_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlOutput {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl XlOutput {
    /// The lines a person needs: libxl's errors, or the last few lines.
    pub fn reason(&self) -> String {
        let text = format!("{}\n{}", self.stderr, self.stdout);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let errors: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("error") || l.contains("rror:") || l.contains("failed"))
            .collect();
        let chosen = if errors.is_empty() {
            &lines[..]
        } else {
            &errors[..]
        };
        let tail = &chosen[chosen.len().saturating_sub(8)..];
        let joined = tail.join("; ");
        if joined.is_empty() {
            format!("xl exited with {} and printed nothing", self.status)
        } else {
            joined
        }
    }
}

/// Runs `xl ARGS…` with a time limit; a hung xl is killed.
pub async fn run(xl: &Path, args: &[&str], limit: Duration) -> Result<XlOutput, String> {
    let shown = format!("{} {}", xl.display(), args.join(" "));
    let mut command = Command::new(xl);
    command.args(args);
    let out = run_bounded(command, &shown, limit, OUTPUT_LIMIT)
        .await
        .map_err(|e| e.to_string())?;
    let (status, stdout, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    Ok(XlOutput {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Runs `xl ARGS…` with its output going to the file `log` rather than to
/// pipes: `xl create` leaves a monitor process behind that may hold on to
/// its parent's stdout/stderr, so waiting for EOF could wait for the domain's
/// end. Only the process's own exit is awaited; the output is the log's
/// last 64 KiB. With `cgroup`, xl and everything it leaves behind (its
/// monitor, the hotplug scripts) start in the pod's host cgroup.
pub async fn run_logged(
    xl: &Path,
    args: &[&str],
    limit: Duration,
    log: &Path,
    cgroup: Option<&hyper_hypervisor::CgroupPlacement>,
) -> Result<XlOutput, String> {
    let shown = format!("{} {}", xl.display(), args.join(" "));
    let file =
        std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut command = Command::new(xl);
    if let Some(placement) = cgroup {
        hyper_hypervisor::process::place_in_cgroup(command.as_std_mut(), placement)
            .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .map_err(|_| format!("`{shown}` did not finish within {limit:?}"))?
        .map_err(|e| format!("`{shown}`: {e}"))?;
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(OUTPUT_LIMIT as usize);
    Ok(XlOutput {
        success: status.success(),
        status: status.to_string(),
        stdout: String::from_utf8_lossy(&bytes[start..]).into_owned(),
        stderr: String::new(),
    })
}

/// `xen_version : 4.17.6-pre` and friends from `xl info`.
pub fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// One domain's row of `xl list NAME`:
/// `Name  ID  Mem VCPUs  State  Time(s)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListRow {
    pub domid: u32,
    pub mem_mib: u64,
    pub state: String,
    pub cpu_secs: f64,
}

pub fn parse_list(output: &str, name: &str) -> Option<ListRow> {
    output.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[0] != name {
            return None;
        }
        let cpu_secs: f64 = f[5].parse().ok()?;
        Some(ListRow {
            domid: f[1].parse().ok()?,
            mem_mib: f[2].parse().ok()?,
            state: f[4].to_string(),
            cpu_secs: if cpu_secs.is_finite() && cpu_secs >= 0.0 {
                cpu_secs
            } else {
                0.0
            },
        })
    })
}

/// `-b----`: shut down (`s`), crashed (`c`) or dying (`d`): it will not run again.
pub fn is_finished(state: &str) -> bool {
    state.contains('s') || state.contains('c') || state.contains('d')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_prefer_libxl_errors() {
        let out = XlOutput {
            success: false,
            status: "exit status: 3".into(),
            stdout: "Parsing config from /r/xl.cfg\n".into(),
            stderr: "libxl: error: libxl_dom.c:60:libxl__domain_cpupool: cannot get domain info\n\
                     libxl: error: libxl_create.c:1280:initiate_domain_create: cannot make domain: -3\n"
                .into(),
        };
        let r = out.reason();
        assert!(r.starts_with("libxl: error: libxl_dom.c"), "{r}");
        assert!(r.contains("cannot make domain: -3"), "{r}");
        assert!(!r.contains("Parsing"), "{r}");
        let quiet = XlOutput {
            stdout: String::new(),
            stderr: String::new(),
            ..out
        };
        assert_eq!(
            quiet.reason(),
            "xl exited with exit status: 3 and printed nothing"
        );
    }

    #[test]
    fn list_rows() {
        let out = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                   Domain-0                                     0   768     1     r-----      12.3\n\
                   a1b2c3                                       4   128     1     -b----       1.5\n";
        assert_eq!(
            parse_list(out, "a1b2c3"),
            Some(ListRow {
                domid: 4,
                mem_mib: 128,
                state: "-b----".into(),
                cpu_secs: 1.5
            })
        );
        assert_eq!(parse_list(out, "a1b2"), None);
        assert_eq!(parse_list("a1b2c3 x 1 1 -b---- 1\n", "a1b2c3"), None);
        assert!(is_finished("---s--"));
        assert!(is_finished("----c-"));
        assert!(!is_finished("-b----"));
        assert!(!is_finished("r-----"));
    }

    #[test]
    fn info_fields() {
        let info = "host : q\nxen_version            : 4.17.6-pre\nfree_memory : 1100\n";
        assert_eq!(info_field(info, "xen_version"), Some("4.17.6-pre"));
        assert_eq!(info_field(info, "free_memory"), Some("1100"));
        assert_eq!(info_field(info, "xen_major"), None);
    }

    /// A child that keeps the output open after the process exits (as xl's
    /// monitor does) does not hold `run_logged` up.
    #[tokio::test]
    async fn logged_runs_wait_for_the_process_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("xl.log");
        let started = std::time::Instant::now();
        let out = run_logged(
            Path::new("/bin/sh"),
            &["-c", "echo 'libxl: error: boom' >&2; sleep 20 & exit 3"],
            Duration::from_secs(10),
            &log,
            None,
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!out.success);
        assert_eq!(out.reason(), "libxl: error: boom");
    }

    #[tokio::test]
    async fn a_hung_xl_is_bounded() {
        let started = std::time::Instant::now();
        let err = run(Path::new("/bin/sleep"), &["30"], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let err = run(
            Path::new("/nonexistent/xl"),
            &["info"],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(err.contains("/nonexistent/xl"), "{err}");
    }
}
