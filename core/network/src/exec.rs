//! Running a network's plugins per the CNI spec: each binary with the
//! `CNI_*` variables, its configuration on stdin (the conflist's `name` and
//! `cniVersion`, the previous plugin's result as `prevResult`, the
//! capabilities it declares in `runtimeConfig`), its output bounded in size
//! and its run in time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::conflist::{valid_plugin_type, Conflist};
use crate::result::CniErrorObject;
use crate::NetworkError;

/// A plugin's stdout beyond this is refused.
pub const MAX_STDOUT: usize = 1 << 20;
/// Of stderr, this much is kept for error messages.
const MAX_STDERR: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Check => "CHECK",
            Self::Del => "DEL",
        }
    }
}

/// Where plugins are and how long each may run.
#[derive(Debug, Clone)]
pub struct Plugins {
    pub dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

/// The attachment a command is about.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: &'a str,
    /// Capability name → value (`portMappings` → [...]).
    pub runtime_config: &'a Map<String, Value>,
}

impl Plugins {
    /// The binary of plugin `kind`, from the first directory that has it.
    pub fn find(&self, kind: &str, network: &str) -> Result<PathBuf, NetworkError> {
        if valid_plugin_type(kind) {
            for d in &self.dirs {
                let p = d.join(kind);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(NetworkError::MissingPlugin {
            plugin: kind.to_string(),
            network: network.to_string(),
            dirs: self.dirs.clone(),
        })
    }

    /// ADD through every plugin of `list` in order, each getting the one
    /// before's result; the last result.
    pub async fn add(&self, list: &Conflist, inv: &Invocation<'_>) -> Result<Value, NetworkError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let out = self
                .run(Command::Add, list, plugin, prev.as_ref(), inv)
                .await?;
            prev = Some(out.ok_or_else(|| NetworkError::Plugin {
                plugin: plugin_type(plugin).into(),
                network: list.name.clone(),
                command: "ADD",
                message: "printed no result".into(),
            })?);
        }
        prev.ok_or_else(|| NetworkError::Plugin {
            plugin: "(none)".into(),
            network: list.name.clone(),
            command: "ADD",
            message: "the network lists no plugin".into(),
        })
    }

    /// CHECK through every plugin with the cached result.
    pub async fn check(
        &self,
        list: &Conflist,
        inv: &Invocation<'_>,
        result: &Value,
    ) -> Result<(), NetworkError> {
        for plugin in &list.plugins {
            self.run(Command::Check, list, plugin, Some(result), inv)
                .await?;
        }
        Ok(())
    }

    /// DEL through every plugin in reverse order, with the cached result
    /// (if ADD got that far). Every plugin runs even if one before failed;
    /// the first failure is returned.
    pub async fn del(
        &self,
        list: &Conflist,
        inv: &Invocation<'_>,
        result: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.run(Command::Del, list, plugin, result, inv).await {
                tracing::warn!(network = %list.name, "CNI DEL: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs one plugin; its result on ADD.
    async fn run(
        &self,
        command: Command,
        list: &Conflist,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        inv: &Invocation<'_>,
    ) -> Result<Option<Value>, NetworkError> {
        let kind = plugin_type(plugin);
        let started = std::time::Instant::now();
        let result = self.run_once(command, list, plugin, kind, prev, inv).await;
        crate::timing::step_done(
            inv.container_id,
            &format!("cni {} {kind}", command.as_str()),
            started,
        );
        result
    }

    async fn run_once(
        &self,
        command: Command,
        list: &Conflist,
        plugin: &Map<String, Value>,
        kind: &str,
        prev: Option<&Value>,
        inv: &Invocation<'_>,
    ) -> Result<Option<Value>, NetworkError> {
        let binary = self.find(kind, &list.name)?;
        let stdin = stdin_config(list, plugin, prev, inv.runtime_config);
        let failed = |message: String| NetworkError::Plugin {
            plugin: kind.to_string(),
            network: list.name.clone(),
            command: command.as_str(),
            message,
        };
        let path = std::env::join_paths(&self.dirs)
            .map_err(|e| failed(format!("cni_plugin_dirs: {e}")))?;
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env_clear()
            // The plugins run iptables, ip, sysctl writes: give them a PATH.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.args)
            .env("CNI_PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", binary.display())))?;
        let pid = child.id();
        let (Some(mut input), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(failed("its standard streams could not be opened".into()));
        };
        let body = stdin.to_string();
        let run = async {
            let write = async {
                // A plugin that does not read its stdin is its own problem.
                let _ = input.write_all(body.as_bytes()).await;
                drop(input);
            };
            let (_, out, err, status) = tokio::join!(
                write,
                read_bounded(stdout, MAX_STDOUT),
                read_bounded(stderr, MAX_STDERR),
                child.wait()
            );
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) of the process group this plugin leads
                    // (it was spawned with process_group(0) and is our child,
                    // not yet reaped: the id is still its own).
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                return Err(failed(format!(
                    "did not finish within {} s and was killed ({}; `[network] plugin_timeout_secs` sets the limit)",
                    self.timeout.as_secs(),
                    binary.display()
                )));
            }
        };
        let status = status.map_err(|e| failed(format!("wait: {e}")))?;
        let (out, overflow) = out;
        let (err, _) = err;
        if overflow {
            return Err(failed(format!(
                "printed more than {MAX_STDOUT} bytes on stdout"
            )));
        }
        if !status.success() {
            let message = match serde_json::from_slice::<CniErrorObject>(&out) {
                Ok(e) if !e.msg.is_empty() => e.to_string(),
                _ => {
                    let text = String::from_utf8_lossy(if out.is_empty() { &err } else { &out });
                    format!("{status}: {}", shorten(text.trim()))
                }
            };
            return Err(failed(message));
        }
        if command != Command::Add {
            return Ok(None);
        }
        let value: Value = serde_json::from_slice(&out)
            .map_err(|e| failed(format!("its result is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(failed("its result is not a JSON object".into()));
        }
        // A plugin may print an error object and exit 0 (older plugins).
        if let Some(code) = value.get("code").and_then(Value::as_u64) {
            if code != 0 && value.get("interfaces").is_none() && value.get("ips").is_none() {
                let e: CniErrorObject =
                    serde_json::from_value(value.clone()).unwrap_or(CniErrorObject {
                        code: code as u32,
                        msg: "error".into(),
                        details: String::new(),
                    });
                return Err(failed(e.to_string()));
            }
        }
        Ok(Some(value))
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// One plugin's stdin: its own object with the network's `name` and
/// `cniVersion`, `prevResult`, and the `runtimeConfig` of the
/// capabilities it declares (and only those, per the spec).
pub(crate) fn stdin_config(
    list: &Conflist,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    runtime_config: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), list.name.clone().into());
    conf.insert("cniVersion".into(), list.cni_version.clone().into());
    conf.remove("capabilities");
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let declared: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            caps.iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(cap, _)| Some((cap.clone(), runtime_config.get(cap)?.clone())))
                .collect()
        })
        .unwrap_or_default();
    if !declared.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(declared));
    }
    Value::Object(conf)
}

/// Reads at most `limit` bytes; whether there was more (the rest is
/// drained so the writer never blocks).
async fn read_bounded(mut r: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut overflow = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.len() + n > limit {
                    overflow = true;
                    let room = limit - buf.len();
                    buf.extend_from_slice(&chunk[..room]);
                } else if !overflow {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (buf, overflow)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 2000;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn list(plugins: &str) -> Conflist {
        Conflist::parse(
            &format!(r#"{{"cniVersion":"1.0.0","name":"t","plugins":{plugins}}}"#),
            Path::new("/t.conflist"),
        )
        .unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn inv<'a>(rc: &'a Map<String, Value>) -> Invocation<'a> {
        Invocation {
            container_id: "c1",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            args: "IgnoreUnknown=1",
            runtime_config: rc,
        }
    }

    #[test]
    fn stdin_carries_name_version_prev_result_and_declared_capabilities_only() {
        let l = list(
            r#"[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]"#,
        );
        let mut rc = Map::new();
        rc.insert("portMappings".into(), serde_json::json!([{"hostPort": 1}]));
        rc.insert("bandwidth".into(), serde_json::json!({}));
        let first = stdin_config(&l, &l.plugins[0], None, &rc);
        assert_eq!(first["name"], "t");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());
        let prev = serde_json::json!({"ips": []});
        let second = stdin_config(&l, &l.plugins[1], Some(&prev), &rc);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(
            second["runtimeConfig"],
            serde_json::json!({"portMappings": [{"hostPort": 1}]})
        );
        assert!(second.get("capabilities").is_none());
    }

    #[tokio::test]
    async fn results_chain_errors_surface_and_hangs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes its stdin's prevResult count + 1, and the variables.
        script(
            dir.path(),
            "first",
            r#"cat >/dev/null; echo "{\"cniVersion\":\"1.0.0\",\"ips\":[],\"dns\":{\"domain\":\"$CNI_COMMAND-$CNI_IFNAME-$CNI_CONTAINERID\"}}""#,
        );
        script(
            dir.path(),
            "second",
            r#"in=$(cat); case "$in" in *prevResult*ADD-eth0-c1*) echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}';; *) exit 1;; esac"#,
        );
        script(
            dir.path(),
            "fails",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"range full"}'; exit 1"#,
        );
        script(
            dir.path(),
            "garbage",
            "echo 'not json'; echo oops >&2; exit 3",
        );
        script(dir.path(), "hangs", "exec sleep 600");
        script(dir.path(), "floods", "yes");
        let plugins = Plugins {
            dirs: vec![dir.path().to_path_buf()],
            timeout: Duration::from_secs(2),
        };
        let rc = Map::new();
        let out = plugins
            .add(&list(r#"[{"type":"first"},{"type":"second"}]"#), &inv(&rc))
            .await
            .unwrap();
        assert_eq!(out["ips"][0]["address"], "10.0.0.2/24");

        let err = plugins
            .add(&list(r#"[{"type":"fails"}]"#), &inv(&rc))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fails")
                && err.contains("no more addresses")
                && err.contains("range full"),
            "{err}"
        );
        let err = plugins
            .add(&list(r#"[{"type":"garbage"}]"#), &inv(&rc))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("garbage") && err.contains("not json"), "{err}");
        let err = plugins
            .add(&list(r#"[{"type":"hangs"}]"#), &inv(&rc))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("hangs") && err.contains("within 2 s"), "{err}");
        let err = plugins
            .add(&list(r#"[{"type":"floods"}]"#), &inv(&rc))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("floods"), "{err}");
        let err = plugins
            .add(&list(r#"[{"type":"absent"}]"#), &inv(&rc))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`absent`") && err.contains("containernetworking-plugins"),
            "{err}"
        );
        // DEL runs every plugin even after a failure, and says which failed.
        let err = plugins
            .del(
                &list(r#"[{"type":"first"},{"type":"fails"}]"#),
                &inv(&rc),
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("DEL"), "{err}");
    }
}
