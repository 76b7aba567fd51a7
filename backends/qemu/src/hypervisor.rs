//! The configured QEMU backend: probing the host and launching VMs.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::command::{run_bounded, BoundedOutput};
use hyper_hypervisor::virtiofs::{self, Virtiofsds};
use hyper_hypervisor::{
    AgentChannel, Capabilities, Hypervisor, HypervisorError, ProbeReport, ShareTransport, Vm,
    VmInfo, VmSpec,
};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::accel::{self, choose_accel, AccelChoice};
use crate::cmdline::{qemu_args_for, Boot, RunPaths};
use crate::config::QemuConfig;
use crate::memory::template_memory_path;
use crate::nic::{self, Taps};
use crate::procfs;
use crate::qmp::{Qmp, QmpError};
use crate::spec;
use crate::template::meta::Layout;
use crate::vm::{remove_run_files, QemuVm};

pub const BACKEND_NAME: &str = "qemu";

const VERSION_TIMEOUT: Duration = Duration::from_secs(5);
/// `-version` prints one short paragraph.
const VERSION_OUTPUT_LIMIT: u64 = 64 * 1024;
/// From spawn to a listening QMP socket; QEMU opens it before loading the
/// kernel, so this does not include any guest boot time.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const QMP_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// From a connected QMP socket to QEMU's greeting and its first answer.
/// QEMU answers only once it has built the machine (RAM, TCG buffer, the
/// kernel loaded), and twenty QEMUs starting at once on a loaded 2-core
/// host took longer than 5 s (CI and bench/threads.py saw it). A QEMU that
/// dies closes the socket and is reported at once; this bound is only for
/// one that hangs alive.
const QMP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed handshake, how long QEMU gets to finish exiting so that
/// its own error message can be reported.
const EXIT_AFTER_FAILURE: Duration = Duration::from_secs(2);
const STALE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_BYTES: usize = 4096;
const LOG_TAIL_LINES: usize = 20;

pub struct QemuHypervisor {
    config: QemuConfig,
    /// The binary's version, with the identity (device, inode, size,
    /// mtime) of the file it was read from: asked once per binary, not at
    /// every template save and restore.
    version: std::sync::Mutex<Option<(BinaryId, String)>>,
}

type BinaryId = (u64, u64, u64, i64, i64);

fn binary_id(path: &Path) -> Result<BinaryId, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

impl QemuHypervisor {
    pub fn new(config: QemuConfig) -> Self {
        Self {
            config,
            version: std::sync::Mutex::new(None),
        }
    }

    /// The configured binary's version (`-version`), cached while the file
    /// stays the same.
    pub async fn binary_version(&self) -> Result<String, String> {
        let id = binary_id(&self.config.binary)?;
        if let Ok(cached) = self.version.lock() {
            if let Some((cached_id, version)) = cached.as_ref() {
                if *cached_id == id {
                    return Ok(version.clone());
                }
            }
        }
        let version = qemu_version(&self.config.binary).await?;
        if let Ok(mut cached) = self.version.lock() {
            *cached = Some((id, version.clone()));
        }
        Ok(version)
    }

    /// What a template of `spec` records, or a clone of `spec` must match
    /// ([`crate::template::meta::Layout`]).
    pub(crate) async fn layout(&self, spec: &VmSpec) -> Result<Layout, HypervisorError> {
        let unavailable = |reason| HypervisorError::Unavailable {
            backend: BACKEND_NAME.to_string(),
            reason,
        };
        let accel = self.accel().map_err(unavailable)?;
        self.check_binary().map_err(unavailable)?;
        let version = self.binary_version().await.map_err(unavailable)?;
        Layout::of(&self.config, accel.accel, &version, spec).map_err(HypervisorError::InvalidSpec)
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    fn console_limit(&self) -> u64 {
        self.config.console_log_limit_mib.saturating_mul(1 << 20)
    }

    fn accel(&self) -> Result<AccelChoice, String> {
        let dev_kvm = accel::dev_kvm_status();
        choose_accel(
            self.config.accel,
            dev_kvm.as_ref().map(|_| ()).map_err(String::as_str),
            accel::is_kvm_pvm(),
        )
    }

    fn check_binary(&self) -> Result<(), String> {
        let binary = &self.config.binary;
        let fix = "install qemu-system-x86 (Debian: `apt-get install qemu-system-x86`) or set `binary` in [hypervisor.qemu]";
        let meta = std::fs::metadata(binary)
            .map_err(|e| format!("QEMU binary {}: {e}; {fix}", binary.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "QEMU binary {} is not an executable file; {fix}",
                binary.display()
            ));
        }
        Ok(())
    }

    /// [`Hypervisor::launch`], returning the concrete VM (whose
    /// [`QemuVm::qmp_command`] tests and tools can use).
    pub async fn launch_qemu(&self, spec: VmSpec) -> Result<QemuVm, HypervisorError> {
        let template = if spec.save_as_template {
            Some(self.layout(&spec).await?)
        } else {
            None
        };
        let mut vm = self.launch_with(spec, Boot::Cold).await?;
        if let Some(layout) = template {
            vm.set_template(layout);
        }
        Ok(vm)
    }

    /// [`Hypervisor::restore`], returning the concrete VM.
    pub async fn restore_qemu(
        &self,
        spec: VmSpec,
        template: &Path,
    ) -> Result<QemuVm, HypervisorError> {
        crate::template::restore(self, spec, template).await
    }

    /// The one launch path, for a cold boot and a clone's restore.
    pub(crate) async fn launch_with(
        &self,
        spec: VmSpec,
        boot: Boot<'_>,
    ) -> Result<QemuVm, HypervisorError> {
        let unavailable = |reason| HypervisorError::Unavailable {
            backend: BACKEND_NAME.to_string(),
            reason,
        };
        let accel = self.accel().map_err(unavailable)?;
        spec::validate(
            &spec,
            self.config.machine,
            accel.accel,
            spec::host_memory_mib(),
        )
        .map_err(HypervisorError::InvalidSpec)?;
        self.check_binary().map_err(unavailable)?;

        // Found before anything starts: a missing virtiofsd is the host's
        // problem, named with how to install it.
        let virtiofsd = if spec.shares.is_empty() {
            None
        } else {
            Some(
                virtiofs::find_binary(self.config.virtiofsd.as_deref())
                    .map_err(|e| unavailable(e.to_string()))?,
            )
        };

        let paths = RunPaths::new(&spec.run_dir);
        stop_stale(&paths).await;
        let memory = template_memory_path(&spec.run_dir);
        for path in [
            &paths.qmp,
            &paths.agent,
            &paths.pid,
            &paths.migrate,
            &memory,
        ] {
            remove_if_present(path)?;
        }
        if spec.save_as_template {
            // Made here, private to hyperd's user (QEMU would create it
            // world-readable) and full size: QEMU maps it as it is.
            create_memory_file(&memory, spec.memory_mib).map_err(|e| {
                HypervisorError::Io(format!("cannot create {}: {e}", memory.display()))
            })?;
        }
        let io = |what: &str, path: &Path, e: std::io::Error| {
            HypervisorError::Io(format!("cannot {what} {}: {e}", path.display()))
        };
        let log = std::fs::File::create(&paths.log).map_err(|e| io("create", &paths.log, e))?;
        crate::console::reset(&spec.console_log).map_err(|e| io("create", &spec.console_log, e))?;
        let log_err = log.try_clone().map_err(|e| io("reopen", &paths.log, e))?;

        // The shares' daemons listen before QEMU connects to them; from
        // here every failure stops them.
        let daemons = match &virtiofsd {
            Some(binary) => Virtiofsds::start(binary, &spec).await?,
            None => Virtiofsds::none(&spec.run_dir),
        };
        let (child, qmp) = match self
            .spawn_qemu(&spec, &paths, accel.clone(), boot, (log, log_err))
            .await
        {
            Ok(spawned) => spawned,
            Err(e) => {
                daemons.stop().await;
                return Err(e);
            }
        };
        let pid = child.id();
        tracing::info!(vm = %spec.id, ?pid, shares = spec.shares.len(), "QEMU is running");
        let info = VmInfo {
            id: spec.id.clone(),
            agent_channel: AgentChannel::UnixSocket(paths.agent.clone()),
            pid,
        };
        let console = (spec.console_log.clone(), self.console_limit());
        QemuVm::start(info, child, paths, qmp, console, daemons).await
    }

    /// Starts QEMU for `spec` and completes the QMP handshake. On failure
    /// nothing of it is left (process, taps, run files).
    async fn spawn_qemu(
        &self,
        spec: &VmSpec,
        paths: &RunPaths,
        accel: AccelChoice,
        boot: Boot<'_>,
        (log, log_err): (std::fs::File, std::fs::File),
    ) -> Result<(Child, Qmp), HypervisorError> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            HypervisorError::Io(format!("cannot {what} {}: {e}", path.display()))
        };
        // Last before the spawn: from here every failure releases the taps.
        let step = std::time::Instant::now();
        let taps = Taps::attach(&spec.id, &spec.nics).await?;
        tracing::debug!(target: "hyper::timing", vm = %spec.id, step = "taps attach", ms = step.elapsed().as_secs_f64() * 1000.0, "step done");
        let tap_fds = taps.raw_fds();
        let args = qemu_args_for(&self.config, accel.accel, spec, &tap_fds, boot);
        tracing::info!(vm = %spec.id, accel = accel.accel.as_str(), reason = %accel.reason, "starting QEMU");
        tracing::debug!(vm = %spec.id, ?args, "QEMU command line");
        let mut command = Command::new(&self.config.binary);
        // SAFETY: the closure only calls fcntl(2), which is async-signal-safe,
        // on descriptors `taps` keeps open until after the spawn; it
        // allocates nothing.
        unsafe {
            command.pre_exec(move || nic::inherit(&tap_fds));
        }
        if let Err(e) = hyper_hypervisor::process::confine_vmm(command.as_std_mut(), spec) {
            taps.release().await;
            return Err(HypervisorError::LaunchFailed(format!(
                "cannot confine QEMU: {e}"
            )));
        }
        let spawned = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // The VM must survive a dropped handle; the reaper task owns it.
            .kill_on_drop(false)
            // Its own process group: a Ctrl-C meant for hyperd in a terminal
            // must not reach the VM, which may outlive hyperd.
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                taps.release().await;
                return Err(HypervisorError::LaunchFailed(format!(
                    "cannot start {}: {e}",
                    self.config.binary.display()
                )));
            }
        };
        let Some(pid) = child.id() else {
            taps.release().await;
            let status = child
                .wait()
                .await
                .map_err(|e| HypervisorError::Io(e.to_string()))?;
            return Err(HypervisorError::LaunchFailed(exited_early(status, paths)));
        };
        if let Err(e) = procfs::write_pid_file(&paths.pid, pid) {
            abort(&mut child, paths, pid).await;
            taps.release().await;
            return Err(io("write", &paths.pid, e));
        }
        let expected = match boot {
            Boot::Cold => "running",
            Boot::Incoming { .. } => "inmigrate",
        };
        let step = std::time::Instant::now();
        let qmp = match connect_qmp(&mut child, paths, expected).await {
            Ok(qmp) => qmp,
            Err(message) => {
                abort(&mut child, paths, pid).await;
                taps.release().await;
                return Err(HypervisorError::LaunchFailed(message));
            }
        };
        tracing::debug!(target: "hyper::timing", vm = %spec.id, step = "qmp handshake", ms = step.elapsed().as_secs_f64() * 1000.0, "step done");
        // QEMU holds the taps now; it alone keeps them alive.
        taps.handed_over();
        Ok((child, qmp))
    }
}

/// "QEMU emulator version 7.2.22 (Debian …)" -> "7.2.22".
pub fn parse_version(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.contains("version "))?;
    let (_, rest) = line.split_once("version ")?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Runs `binary -version`, bounded in time and output.
async fn qemu_version(binary: &Path) -> Result<String, String> {
    let shown = binary.display();
    let mut command = Command::new(binary);
    command.arg("-version");
    let BoundedOutput {
        status,
        stdout: out,
        stderr: err,
    } = run_bounded(
        command,
        &format!("{shown} -version"),
        VERSION_TIMEOUT,
        VERSION_OUTPUT_LIMIT,
    )
    .await
    .map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&out);
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        return Err(format!(
            "`{shown} -version` failed ({status}): {}",
            err.trim()
        ));
    }
    parse_version(&out).ok_or_else(|| {
        format!(
            "`{shown} -version` printed no version: {:?}",
            out.lines().next().unwrap_or("")
        )
    })
}

/// The last lines of qemu.log, where QEMU writes why it failed.
fn log_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("; ")
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

fn with_log(message: String, paths: &RunPaths) -> String {
    match log_tail(&paths.log) {
        tail if tail.is_empty() => format!("{message} (qemu.log is empty)"),
        tail => format!("{message}; QEMU said: {tail}"),
    }
}

fn exited_early(status: ExitStatus, paths: &RunPaths) -> String {
    with_log(
        format!(
            "QEMU exited ({}) before the VM was up",
            describe_exit(status)
        ),
        paths,
    )
}

/// Waits for QEMU's QMP socket and completes the handshake. Every step is
/// bounded; if QEMU dies first, its own error message is reported.
/// `expected` is the run state QEMU must report: `running`, or `inmigrate`
/// for a clone waiting for its template's state.
async fn connect_qmp(child: &mut Child, paths: &RunPaths, expected: &str) -> Result<Qmp, String> {
    let deadline = Instant::now() + QMP_CONNECT_TIMEOUT;
    let stream = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("cannot check on QEMU: {e}"))?
        {
            return Err(exited_early(status, paths));
        }
        match UnixStream::connect(&paths.qmp).await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(with_log(
                    format!(
                        "QEMU did not open its QMP socket {} within {QMP_CONNECT_TIMEOUT:?}: {e}",
                        paths.qmp.display()
                    ),
                    paths,
                ))
            }
            Err(_) => tokio::time::sleep(QMP_POLL_INTERVAL).await,
        }
    };
    let handshake = async {
        let mut qmp = Qmp::handshake(stream).await?;
        let status = qmp.execute("query-status", None, Duration::MAX).await?;
        Ok::<_, QmpError>((qmp, status))
    };
    let failure = match tokio::time::timeout(QMP_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok((qmp, status))) => match status.get("status").and_then(|s| s.as_str()) {
            Some(s) if s == expected => return Ok(qmp),
            _ => format!("QEMU reports the VM as {status} instead of {expected}"),
        },
        Ok(Err(e)) => format!("QMP handshake with QEMU failed: {e}"),
        Err(_) => format!("QMP handshake with QEMU got no answer within {QMP_HANDSHAKE_TIMEOUT:?}"),
    };
    // QEMU opens the QMP socket before it sets up the machine, so a bad
    // kernel shows up here as a closed connection: report QEMU's reason.
    if let Ok(Ok(status)) = tokio::time::timeout(EXIT_AFTER_FAILURE, child.wait()).await {
        return Err(exited_early(status, paths));
    }
    Err(with_log(failure, paths))
}

/// Stops a QEMU we started that is still running: SIGKILL, reap (bounded),
/// then remove its files.
async fn abort(child: &mut Child, paths: &RunPaths, pid: u32) {
    if let Err(e) = child.start_kill() {
        tracing::debug!(pid, "kill after a failed launch: {e}");
    }
    if tokio::time::timeout(STALE_EXIT_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid, "QEMU did not exit after SIGKILL");
    }
    remove_run_files(paths, pid);
}

/// A launch into a run directory whose qemu.pid names a live QEMU of that
/// same directory (e.g. left over by a crashed earlier attempt): kill it, so
/// two VMs never fight over one set of sockets. The pid is only trusted if
/// its command line names this directory's QMP socket, so a recycled pid is
/// never killed.
async fn stop_stale(paths: &RunPaths) {
    let Some(pid) = procfs::read_pid_file(&paths.pid) else {
        return;
    };
    let qmp_arg = paths.qmp_arg();
    if !procfs::is_running(pid) || !procfs::cmdline_mentions(pid, qmp_arg.as_bytes()) {
        return;
    }
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return;
    };
    tracing::warn!(pid, dir = %paths.dir.display(), "killing a QEMU left running in this run directory");
    // SAFETY: kill(2) has no memory-safety preconditions, and `raw` >= 2
    // (read_pid_file) names exactly one process, checked just above to be
    // this run directory's QEMU.
    if unsafe { libc::kill(raw, libc::SIGKILL) } != 0 {
        tracing::warn!(pid, "cannot kill: {}", std::io::Error::last_os_error());
        return;
    }
    let deadline = Instant::now() + STALE_EXIT_TIMEOUT;
    while procfs::is_running(pid) && Instant::now() < deadline {
        tokio::time::sleep(QMP_POLL_INTERVAL).await;
    }
}

/// A template VM's RAM file: mode 0600, `memory_mib` MiB (sparse).
fn create_memory_file(path: &Path, memory_mib: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(u64::from(memory_mib) << 20)
}

fn remove_if_present(path: &Path) -> Result<(), HypervisorError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HypervisorError::Io(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

#[async_trait]
impl Hypervisor for QemuHypervisor {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recover: true,
            share_transport: Some(ShareTransport::VirtioFs),
            templates: true,
        }
    }

    async fn probe(&self) -> ProbeReport {
        let mut details = BTreeMap::new();
        details.insert(
            "binary".to_string(),
            self.config.binary.display().to_string(),
        );
        details.insert(
            "machine".to_string(),
            self.config.machine.as_str().to_string(),
        );
        let unusable = |reason: String, details| ProbeReport {
            usable: false,
            reason,
            details,
        };
        if let Err(reason) = self.check_binary() {
            return unusable(reason, details);
        }
        let version = match qemu_version(&self.config.binary).await {
            Ok(v) => v,
            Err(reason) => return unusable(reason, details),
        };
        details.insert("version".to_string(), version.clone());
        // Only VMs with directory shares need it: reported, not required.
        let virtiofsd = match virtiofs::find_binary(self.config.virtiofsd.as_deref()) {
            Ok(path) => path.display().to_string(),
            Err(e) => e.to_string(),
        };
        details.insert("virtiofsd".to_string(), virtiofsd);
        match self.accel() {
            Ok(choice) => {
                details.insert("accel".to_string(), choice.accel.as_str().to_string());
                details.insert("accel_reason".to_string(), choice.reason.clone());
                ProbeReport {
                    usable: true,
                    reason: format!(
                        "QEMU {version} can boot guests with {}: {}",
                        choice.accel.as_str().to_uppercase(),
                        choice.reason
                    ),
                    details,
                }
            }
            Err(reason) => {
                details.insert("accel_reason".to_string(), reason.clone());
                unusable(reason, details)
            }
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.launch_qemu(spec).await?))
    }

    async fn restore(&self, spec: VmSpec, template: &Path) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.restore_qemu(spec, template).await?))
    }

    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let paths = RunPaths::new(&spec.run_dir);
        // The pid file names the QEMU of this run directory; a pid that does
        // not match it is someone else's.
        let (info, process) =
            hyper_hypervisor::adopt::take_over(&spec, &info, pid_start, &paths.agent, |pid| {
                procfs::read_pid_file(&paths.pid) == Some(pid)
            })?;
        let pid = process.pid();
        tracing::info!(vm = %spec.id, pid, "took over a running QEMU");
        // Its shares' daemons too; one that is gone fails the VM at once.
        let daemons = Virtiofsds::recover(&spec);
        let console = (spec.console_log.clone(), self.console_limit());
        Ok(Box::new(QemuVm::adopt(
            info, process, paths, console, daemons,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"
            ),
            Some("7.2.22".to_string())
        );
        assert_eq!(
            parse_version("QEMU emulator version 9.1.0\n"),
            Some("9.1.0".to_string())
        );
        assert_eq!(parse_version("hello"), None);
    }

    #[test]
    fn log_tails() {
        let dir = tempfile::tempdir().unwrap();
        let paths = RunPaths::new(dir.path());
        assert_eq!(with_log("boom".into(), &paths), "boom (qemu.log is empty)");
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\n\n"));
        }
        std::fs::write(&paths.log, text).unwrap();
        let tail = log_tail(&paths.log);
        assert!(
            tail.starts_with("line 80; ") && tail.ends_with("line 99"),
            "{tail}"
        );
    }

    #[tokio::test]
    async fn probe_reports_a_missing_binary() {
        let hv = QemuHypervisor::new(QemuConfig {
            binary: "/nonexistent/qemu-system-x86_64".into(),
            ..QemuConfig::default()
        });
        let report = hv.probe().await;
        assert!(!report.usable);
        assert!(
            report.reason.contains("/nonexistent/qemu-system-x86_64"),
            "{}",
            report.reason
        );
        assert!(
            report.reason.contains("apt-get install qemu-system-x86"),
            "{}",
            report.reason
        );
    }

    /// Runs `qemu_version` on a fake binary made of `script`.
    async fn fake_version(script: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu");
        std::fs::write(&fake, script).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A fork in another test thread can briefly hold the script open for
        // writing (ETXTBSY); that is the test's race, not the code's.
        for _ in 0..10 {
            match qemu_version(&fake).await {
                Err(e) if e.contains("Text file busy") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other,
            }
        }
        qemu_version(&fake).await
    }

    #[tokio::test]
    async fn probe_bounds_a_hanging_binary() {
        let started = std::time::Instant::now();
        let err = fake_version("#!/bin/sh\nexec sleep 60\n")
            .await
            .unwrap_err();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < VERSION_TIMEOUT + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn probe_reports_a_failing_binary() {
        let err = fake_version("#!/bin/sh\necho 'cannot do it' >&2\nexit 3\n")
            .await
            .unwrap_err();
        assert!(
            err.contains("cannot do it") && err.contains("exit status: 3"),
            "{err}"
        );
    }
}
