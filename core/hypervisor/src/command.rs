//! Running a short host command (a version query, an `xl` subcommand)
//! bounded in time and output: a command that hangs is killed, one that
//! prints without end fills its pipe and hits the time limit.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// What a bounded command printed (each stream cut at the limit) and how
/// it ended.
#[derive(Debug)]
pub struct BoundedOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    #[error("cannot run `{shown}`: {source}")]
    Spawn {
        shown: String,
        source: std::io::Error,
    },
    #[error("`{shown}` did not finish within {limit:?}")]
    TimedOut { shown: String, limit: Duration },
    #[error("`{shown}`: {source}")]
    Wait {
        shown: String,
        source: std::io::Error,
    },
}

/// Runs `command` (stdin null, stdout and stderr captured) for at most
/// `limit`, keeping at most `max_output` bytes of each stream; on timeout
/// the child is killed. `shown` names the command in errors.
pub async fn run_bounded(
    mut command: Command,
    shown: &str,
    limit: Duration,
    max_output: u64,
) -> Result<BoundedOutput, BoundedError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped on timeout: then it must not linger.
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BoundedError::Spawn {
            shown: shown.to_string(),
            source,
        })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (out, err) = tokio::join!(
            read_bounded(stdout, max_output),
            read_bounded(stderr, max_output)
        );
        (child.wait().await, out, err)
    };
    let (status, stdout, stderr) =
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| BoundedError::TimedOut {
                shown: shown.to_string(),
                limit,
            })?;
    let status = status.map_err(|source| BoundedError::Wait {
        shown: shown.to_string(),
        source,
    })?;
    Ok(BoundedOutput {
        status,
        stdout,
        stderr,
    })
}

async fn read_bounded(stream: Option<impl AsyncRead + Unpin>, max: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(stream) = stream {
        // Beyond the limit the child blocks on a full pipe and the overall
        // timeout ends it; nothing here grows without bound.
        let _ = stream.take(max).read_to_end(&mut buf).await;
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[tokio::test]
    async fn output_and_status_are_kept_within_the_limit() {
        let out = run_bounded(
            sh("echo hello; echo oops >&2; exit 3"),
            "sh",
            Duration::from_secs(60),
            4,
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"hell");
        assert_eq!(out.stderr, b"oops");
    }

    #[tokio::test]
    async fn a_command_that_hangs_or_is_missing_is_an_error() {
        let e = run_bounded(sh("sleep 60"), "sleep", Duration::from_millis(200), 64)
            .await
            .unwrap_err();
        assert!(matches!(e, BoundedError::TimedOut { .. }), "{e}");
        assert_eq!(e.to_string(), "`sleep` did not finish within 200ms");
        let e = run_bounded(
            Command::new("/nonexistent/tool"),
            "/nonexistent/tool",
            Duration::from_secs(60),
            64,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run `/nonexistent/tool`: "),
            "{e}"
        );
    }
}
