//! The configured KVM backend: probe and launch.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::virtiofs::{self, Virtiofsds};
use hyper_hypervisor::{
    AgentChannel, Capabilities, Hypervisor, HypervisorError, ProbeReport, ShareTransport, Vm,
    VmInfo, VmSpec,
};
use tokio::process::Command;
use tokio::time::Instant;

use super::config::KvmConfig;
use super::nics::{self, Taps};
use super::probe;
use super::vm::{on_exit, KvmVm, RunPaths};
use hyper_hypervisor::process::VmProcess;
use hyper_vmm_config::{
    host_memory_mib, valid_serial, DiskConfig, NetConfig, ShareConfig, VmmConfig, MAX_DEVICES,
    MAX_DISKS, MAX_VCPUS, MIN_MEMORY_MIB,
};

pub const BACKEND_NAME: &str = "kvm";

/// What hyper-vmm adds for the hyperkernel: the 8250 console, i8042 reset
/// for reboot/poweroff/panic (no ACPI), no PCI scan, and the agent channel
/// on the virtio-console port (/dev/hvc0; hyperstart makes it raw).
pub const PAYLOAD_ARGS: &str = "console=ttyS0 reboot=k pci=off";
/// The device hyperstart finds its channel on: the virtio console.
pub const CHANNEL_DEVICE: &str = "/dev/hvc0";

/// From spawn to the agent socket: hyper-vmm binds it once the VM is set
/// up, before the first vCPU instruction.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);
/// `hyper-vmm --check-snapshot` reads and hashes the state file (a few
/// hundred KiB) and stats the memory file.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Its exit code for a snapshot it refuses (as for a refused restore).
const CHECK_REJECTED: i32 = 5;
/// The most of its answer kept in an error.
const MAX_ANSWER: usize = 4096;

pub struct KvmHypervisor {
    config: KvmConfig,
}

impl KvmHypervisor {
    pub fn new(config: KvmConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &KvmConfig {
        &self.config
    }
}

fn invalid(m: impl Into<String>) -> HypervisorError {
    HypervisorError::InvalidSpec(m.into())
}

fn readable(what: &str, path: &Path) -> Result<(), HypervisorError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| invalid(format!("{what} {}: {e}", path.display())))
}

/// Everything about a spec that can be checked before spawning.
pub fn check_spec(spec: &VmSpec) -> Result<(), HypervisorError> {
    if spec.vcpus == 0 || spec.vcpus > u32::from(MAX_VCPUS) {
        return Err(invalid(format!(
            "vcpus = {}: this backend runs 1..={MAX_VCPUS}",
            spec.vcpus
        )));
    }
    if u64::from(spec.memory_mib) < MIN_MEMORY_MIB {
        return Err(invalid(format!(
            "memory_mib = {}: at least {MIN_MEMORY_MIB}",
            spec.memory_mib
        )));
    }
    if let Some(host) = host_memory_mib() {
        if u64::from(spec.memory_mib) > host {
            return Err(invalid(format!(
                "memory_mib = {} is larger than this host's RAM ({host} MiB): lower [vm] memory_mib",
                spec.memory_mib
            )));
        }
    }
    hyper_vmm_config::kernel_format(&spec.kernel).map_err(|e| invalid(e.to_string()))?;
    readable("initrd", &spec.initrd)?;
    if spec.disks.len() > MAX_DISKS {
        return Err(invalid(format!(
            "{} disks: at most {MAX_DISKS}",
            spec.disks.len()
        )));
    }
    if spec.disks.len() + spec.nics.len() + spec.shares.len() > MAX_DEVICES {
        return Err(invalid(format!(
            "{} disks, {} NICs and {} shares: this backend has {MAX_DEVICES} device slots",
            spec.disks.len(),
            spec.nics.len(),
            spec.shares.len()
        )));
    }
    virtiofs::validate(&spec.run_dir, &spec.shares)?;
    nics::check(&spec.nics)?;
    for d in &spec.disks {
        if !valid_serial(&d.id) {
            return Err(invalid(format!(
                "disk id {:?}: 1..=20 characters of [A-Za-z0-9_-]",
                d.id
            )));
        }
        let meta = std::fs::metadata(&d.path)
            .map_err(|e| invalid(format!("disk {}: {e}", d.path.display())))?;
        if meta.is_dir() {
            return Err(invalid(format!("disk {} is a directory", d.path.display())));
        }
        readable("disk", &d.path)?;
    }
    Ok(())
}

pub fn vmm_config(
    spec: &VmSpec,
    paths: &RunPaths,
    cfg: &KvmConfig,
    nets: Vec<NetConfig>,
    daemons: &Virtiofsds,
) -> VmmConfig {
    VmmConfig {
        kernel: spec.kernel.clone(),
        initrd: Some(spec.initrd.clone()),
        cmdline: format!(
            "{} {PAYLOAD_ARGS} {}",
            spec.cmdline.trim(),
            hyper_protocol::channel_arg(CHANNEL_DEVICE)
        ),
        vcpus: spec.vcpus.min(u32::from(MAX_VCPUS)) as u8,
        memory_mib: u64::from(spec.memory_mib),
        disks: spec
            .disks
            .iter()
            .map(|d| DiskConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                id: d.id.clone(),
            })
            .collect(),
        nets,
        shares: daemons
            .daemons()
            .iter()
            .map(|d| ShareConfig {
                tag: d.tag().to_string(),
                socket: d.socket().to_path_buf(),
            })
            .collect(),
        console_log: Some(spec.console_log.clone()),
        console_log_limit: cfg.console_log_limit_mib << 20,
        agent_socket: Some(paths.agent.clone()),
        status_file: Some(paths.status.clone()),
        debug_exit: false,
        seccomp: cfg.seccomp,
        // A VM launched to become a template runs our own payload and no
        // container, and writes its snapshot by path into the template
        // directory the core made: it is not jailed and keeps hyperd's
        // identity (docs/security/tmplkvm.md). Its seccomp filters stay,
        // with the save's few extra calls. Every other VM, a restored
        // clone included, is jailed (and drops its uid when configured).
        jail: !spec.save_as_template,
        run_as: if spec.save_as_template {
            None
        } else {
            cfg.vmm_uid
                .zip(cfg.vmm_gid)
                .map(|(uid, gid)| hyper_vmm_config::RunAs { uid, gid })
        },
        restore_from: None,
        save_request: spec.save_as_template.then(|| paths.save_request.clone()),
    }
}

#[async_trait]
impl Hypervisor for KvmHypervisor {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recover: true,
            share_transport: Some(ShareTransport::VirtioFs),
            // hyper-vmm saves on SIGUSR1 (`Vm::save_template`) and restores
            // with `restore_from` after `--check-snapshot` (`restore`);
            // tests/tests/templates.rs runs through hyperd on the KVM leg.
            templates: true,
        }
    }

    async fn probe(&self) -> ProbeReport {
        let vmm = self.config.vmm.clone();
        match tokio::task::spawn_blocking(move || probe::probe(&vmm)).await {
            Ok(r) => r,
            Err(e) => ProbeReport {
                usable: false,
                reason: format!("probe failed: {e}"),
                details: Default::default(),
            },
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        self.start(spec, None).await
    }

    /// hyper-vmm with `restore_from`: the template is checked first (the
    /// whole state file, the memory file's size, the layout against this
    /// spec) by `hyper-vmm --check-snapshot`, so a bad one is refused
    /// before a tap, a run directory or a VM exists; hyper-vmm checks it
    /// again before it builds the VM. The configured hyper-vmm checks it,
    /// not this plugin: the snapshot format is the VMM's (raw KVM
    /// structures, its build id), and the plugin links no KVM crate.
    async fn restore(&self, spec: VmSpec, template: &Path) -> Result<Box<dyn Vm>, HypervisorError> {
        check_spec(&spec)?;
        let paths = RunPaths::new(&spec.run_dir);
        let nets: Vec<NetConfig> = spec
            .nics
            .iter()
            .map(|n| NetConfig {
                fd: 3,
                mac: n.mac.clone(),
                mtu: u16::try_from(n.mtu).ok(),
            })
            .collect();
        let cfg = vmm_config(
            &spec,
            &paths,
            &self.config,
            nets,
            &Virtiofsds::none(&spec.run_dir),
        );
        self.check_template(&cfg, template).await?;
        self.start(spec, Some(template.to_path_buf())).await
    }
    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let paths = RunPaths::new(&spec.run_dir);
        // hyper-vmm keeps no pid file: its --config (inside the run
        // directory) names the VM a process runs.
        let (info, process) =
            hyper_hypervisor::adopt::take_over(&spec, &info, pid_start, &paths.agent, |pid| {
                runs_config(pid, &paths.config)
            })?;
        let pid = process.pid();
        tracing::info!(vm = %spec.id, pid, "took over a running hyper-vmm");
        let process = VmProcess::adopted(process, "hyper-vmm", on_exit(paths.clone()));
        // A share whose daemon is gone stops the VM at once (helper_died).
        let daemons = Virtiofsds::recover(&spec);
        Ok(Box::new(KvmVm::new(info, process, daemons, paths)))
    }
}

impl KvmHypervisor {
    /// Asks the configured hyper-vmm whether `template` restores into a
    /// VM configured as `cfg` (its config on stdin; the answer is its exit
    /// code, and the reason on stdout).
    async fn check_template(
        &self,
        cfg: &VmmConfig,
        template: &Path,
    ) -> Result<(), HypervisorError> {
        probe::check_vmm(&self.config.vmm).map_err(|reason| HypervisorError::Unavailable {
            backend: BACKEND_NAME.into(),
            reason,
        })?;
        let json = serde_json::to_vec(cfg).map_err(|e| HypervisorError::Plugin(e.to_string()))?;
        let mut child = Command::new(&self.config.vmm)
            .arg("--check-snapshot")
            .arg(template)
            .args(["--config", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                HypervisorError::LaunchFailed(format!(
                    "cannot run {}: {e}",
                    self.config.vmm.display()
                ))
            })?;
        let failed = |what: String| HypervisorError::Plugin(format!("template check: {what}"));
        if let Some(mut stdin) = child.stdin.take() {
            tokio::io::AsyncWriteExt::write_all(&mut stdin, &json)
                .await
                .map_err(|e| failed(format!("writing hyper-vmm's stdin: {e}")))?;
        }
        let out = tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| failed(format!("hyper-vmm gave no answer within {CHECK_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let said = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER)]);
            text.trim().to_string()
        };
        match out.status.code() {
            Some(0) => Ok(()),
            Some(CHECK_REJECTED) => Err(HypervisorError::TemplateRejected(format!(
                "{}: {}",
                template.display(),
                said(&out.stdout)
            ))),
            _ => Err(failed(format!(
                "hyper-vmm --check-snapshot ended with {}: {}",
                out.status,
                said(&out.stderr)
            ))),
        }
    }

    /// A cold boot, or (`restore`) a restore from a snapshot directory.
    async fn start(
        &self,
        spec: VmSpec,
        restore: Option<std::path::PathBuf>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let unavailable = |reason: String| HypervisorError::Unavailable {
            backend: BACKEND_NAME.into(),
            reason,
        };
        probe::dev_kvm().map_err(unavailable)?;
        if hyper_vmm_config::host_is_pvm() && !self.config.allow_pvm {
            return Err(unavailable(probe::PVM_REASON.into()));
        }
        probe::check_vmm(&self.config.vmm).map_err(unavailable)?;
        check_spec(&spec)?;

        // 0700: the agent socket and console log in it are hyperd's alone.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&spec.run_dir)
            .map_err(|e| {
                HypervisorError::Io(format!("run directory {}: {e}", spec.run_dir.display()))
            })?;
        let paths = RunPaths::new(&spec.run_dir);
        for p in [&paths.agent, &paths.status] {
            let _ = std::fs::remove_file(p);
        }
        let binary = if spec.shares.is_empty() {
            None
        } else {
            Some(virtiofs::find_binary(self.config.virtiofsd.as_deref())?)
        };
        // Dropped on any early return below: the taps close and the peers'
        // redirects are undone.
        let taps = Taps::attach(&spec.nics).await?;
        // One sandboxed virtiofsd per share, listening before hyper-vmm
        // connects; stopped on every failed launch below.
        let daemons = match &binary {
            Some(b) => Virtiofsds::start(b, &spec).await?,
            None => Virtiofsds::none(&spec.run_dir),
        };
        match self
            .spawn_vmm(&spec, &paths, &taps, &daemons, restore)
            .await
        {
            Ok((info, process)) => {
                taps.handed_over();
                Ok(Box::new(KvmVm::new(info, process, daemons, paths)))
            }
            Err(e) => {
                daemons.stop().await;
                Err(e)
            }
        }
    }

    /// Writes hyper-vmm's configuration, starts it, and waits until its
    /// agent socket exists. On failure hyper-vmm is not left running.
    async fn spawn_vmm(
        &self,
        spec: &VmSpec,
        paths: &RunPaths,
        taps: &Taps,
        daemons: &Virtiofsds,
        restore: Option<std::path::PathBuf>,
    ) -> Result<(VmInfo, VmProcess), HypervisorError> {
        let mut cfg = vmm_config(spec, paths, &self.config, taps.configs(), daemons);
        let restoring = restore.is_some();
        cfg.restore_from = restore;
        let json =
            serde_json::to_vec_pretty(&cfg).map_err(|e| HypervisorError::Plugin(e.to_string()))?;
        std::fs::write(&paths.config, json)
            .map_err(|e| HypervisorError::Io(format!("{}: {e}", paths.config.display())))?;
        let log = std::fs::File::create(&paths.log)
            .map_err(|e| HypervisorError::Io(format!("{}: {e}", paths.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HypervisorError::Io(e.to_string()))?;
        let mut cmd = Command::new(&self.config.vmm);
        cmd.arg("--config")
            .arg(&paths.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C meant for hyperd in a
            // terminal must not reach the VM, which may outlive hyperd.
            .process_group(0);
        let tap_fds = taps.raw_fds();
        if !tap_fds.is_empty() {
            // SAFETY: between fork and exec only fcntl runs (async-signal-
            // safe, no allocation: the Vec was built before the fork); the
            // fds stay open in the parent (held by `taps`), so the child's
            // copies are the taps. Their CLOEXEC is cleared in the child
            // alone: no other process the plugin starts inherits them.
            unsafe {
                cmd.pre_exec(move || {
                    for &fd in &tap_fds {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        hyper_hypervisor::process::confine_vmm(cmd.as_std_mut(), spec)
            .map_err(|e| HypervisorError::LaunchFailed(format!("cannot confine hyper-vmm: {e}")))?;
        let process =
            VmProcess::spawn(&mut cmd, "hyper-vmm", on_exit(paths.clone())).map_err(|e| {
                HypervisorError::LaunchFailed(format!(
                    "cannot run {}: {e}",
                    self.config.vmm.display()
                ))
            })?;
        let pid = process.pid();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if process.has_exited() {
                let st = match process.wait().await {
                    Ok(exit) => format!("{exit:?}"),
                    Err(e) => e.to_string(),
                };
                if restoring && paths.snapshot_rejected() {
                    return Err(HypervisorError::TemplateRejected(paths.failure_message()));
                }
                return Err(HypervisorError::LaunchFailed(format!(
                    "hyper-vmm exited ({st}) before the VM was up: {}",
                    paths.failure_message()
                )));
            }
            if paths.agent.exists() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = process.kill(Duration::from_secs(5)).await;
                return Err(HypervisorError::LaunchFailed(format!(
                    "hyper-vmm did not set up the VM within {START_TIMEOUT:?}; see {}",
                    paths.log.display()
                )));
            }
            process.wait_within(POLL).await;
        }
        let info = VmInfo {
            id: spec.id.clone(),
            agent_channel: AgentChannel::UnixSocket(paths.agent.clone()),
            pid: Some(pid),
        };
        Ok((info, process))
    }
}

/// Whether process `pid` is a hyper-vmm started with `--config config`.
fn runs_config(pid: u32, config: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = config.as_os_str().as_encoded_bytes();
    cmdline
        .split(|&b| b == 0)
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == b"--config" && w[1] == want)
}
