//! hyper-vmm: runs one VM on /dev/kvm until the guest stops.
//!
//! `hyper-vmm --config vm.json` (`-`: standard input) or flags (see
//! `--help`). Writes a JSON exit status to `--status-file` (and stderr) and
//! exits 0 when the guest stopped itself or a signal stopped it, 3 for a
//! non-zero debug-exit status, 1 on errors, 2 on bad arguments, 4 when a
//! share's virtiofsd went away or stopped answering (the VM was stopped),
//! 5 when the snapshot to restore was refused.
//!
//! `hyper-vmm --check-snapshot DIR --config …` only checks that DIR is a
//! snapshot this build restores into the configured VM (the plugin asks
//! before it starts anything for a clone): exit 0, or 5 with the reason on
//! stdout.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hyper_vmm::{run, DiskConfig, NetConfig, ShareConfig, VmmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "hyper-vmm",
    about = "Run one VM on /dev/kvm (hypercontainer's KVM backend)"
)]
struct Args {
    /// A JSON VmmConfig (`-`: read it from standard input); the other
    /// flags are ignored when given.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check that this snapshot directory fits the configured VM and exit
    /// (0, or 5 with the reason on stdout); nothing is built.
    #[arg(long)]
    check_snapshot: Option<PathBuf>,
    /// ELF vmlinux with a PVH note, or a bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// `path=FILE,id=ID[,rw]` (read-only unless `rw`); repeatable.
    #[arg(long)]
    disk: Vec<String>,
    /// `fd=N,mac=MAC[,mtu=M]`: a virtio-net NIC over the inherited tap fd
    /// N; repeatable.
    #[arg(long)]
    net: Vec<String>,
    /// `tag=TAG,socket=PATH`: a virtio-fs device served by the virtiofsd
    /// listening on PATH (vhost-user); repeatable.
    #[arg(long)]
    share: Vec<String>,
    /// Serial console output file (default: stdout).
    #[arg(long)]
    console_log: Option<PathBuf>,
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Honour the debug-exit port 0xf4 (test guests).
    #[arg(long)]
    debug_exit: bool,
    /// Run without the per-thread seccomp allow-lists (to debug a VMM the
    /// filters kill; they are on by default).
    #[arg(long)]
    no_seccomp: bool,
    /// Run without the mount jail (an empty root in a private mount
    /// namespace once the VM is set up; it needs CAP_SYS_ADMIN).
    #[arg(long)]
    no_jail: bool,
    /// Drop to this uid once the VM is set up (with --gid; needs root).
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// Restore the snapshot in this directory instead of booting.
    #[arg(long)]
    restore_from: Option<PathBuf>,
    /// On SIGUSR1, save a snapshot into the directory named in this file
    /// and stop. Such a VM (a template being made) is never jailed nor
    /// dropped to --uid; its seccomp filters gain the save's calls.
    #[arg(long)]
    save_request: Option<PathBuf>,
}

fn parse_disk(s: &str) -> anyhow::Result<DiskConfig> {
    let mut path = None;
    let mut id = None;
    let mut read_only = true;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) => path = Some(PathBuf::from(v)),
            Some(("id", v)) => id = Some(v.to_string()),
            None if part == "rw" => read_only = false,
            None if part == "ro" => read_only = true,
            _ => anyhow::bail!("--disk {s:?}: unknown part {part:?} (want path=FILE,id=ID[,rw])"),
        }
    }
    Ok(DiskConfig {
        path: path.with_context(|| format!("--disk {s:?}: missing path="))?,
        id: id.with_context(|| format!("--disk {s:?}: missing id="))?,
        read_only,
    })
}

fn parse_net(s: &str) -> anyhow::Result<NetConfig> {
    let mut fd = None;
    let mut mac = None;
    let mut mtu = None;
    let want = "want fd=N,mac=aa:bb:cc:dd:ee:ff[,mtu=M]";
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("fd", v)) => {
                fd = Some(
                    v.parse()
                        .with_context(|| format!("--net {s:?}: fd {v:?} ({want})"))?,
                )
            }
            Some(("mac", v)) => mac = Some(v.to_string()),
            Some(("mtu", v)) => {
                mtu = Some(
                    v.parse()
                        .with_context(|| format!("--net {s:?}: mtu {v:?} ({want})"))?,
                )
            }
            _ => anyhow::bail!("--net {s:?}: unknown part {part:?} ({want})"),
        }
    }
    Ok(NetConfig {
        fd: fd.with_context(|| format!("--net {s:?}: missing fd= ({want})"))?,
        mac: mac.with_context(|| format!("--net {s:?}: missing mac= ({want})"))?,
        mtu,
    })
}

fn parse_share(s: &str) -> anyhow::Result<ShareConfig> {
    let mut tag = None;
    let mut socket = None;
    let want = "want tag=TAG,socket=PATH";
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tag", v)) => tag = Some(v.to_string()),
            Some(("socket", v)) => socket = Some(PathBuf::from(v)),
            _ => anyhow::bail!("--share {s:?}: unknown part {part:?} ({want})"),
        }
    }
    Ok(ShareConfig {
        tag: tag.with_context(|| format!("--share {s:?}: missing tag= ({want})"))?,
        socket: socket.with_context(|| format!("--share {s:?}: missing socket= ({want})"))?,
    })
}

fn config(args: Args) -> anyhow::Result<VmmConfig> {
    if let Some(p) = args.config {
        let text = if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), MAX_CONFIG),
                &mut text,
            )
            .context("reading the config from standard input")?;
            text
        } else {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?
        };
        return serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()));
    }
    Ok(VmmConfig {
        kernel: args.kernel.context("--kernel or --config is required")?,
        initrd: args.initrd,
        cmdline: args.cmdline,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        disks: args
            .disk
            .iter()
            .map(|d| parse_disk(d))
            .collect::<anyhow::Result<_>>()?,
        nets: args
            .net
            .iter()
            .map(|n| parse_net(n))
            .collect::<anyhow::Result<_>>()?,
        shares: args
            .share
            .iter()
            .map(|n| parse_share(n))
            .collect::<anyhow::Result<_>>()?,
        console_log: args.console_log,
        console_log_limit: hyper_vmm::config::DEFAULT_CONSOLE_LIMIT,
        agent_socket: args.agent_socket,
        status_file: args.status_file,
        debug_exit: args.debug_exit,
        seccomp: !args.no_seccomp,
        jail: !args.no_jail,
        run_as: args
            .uid
            .zip(args.gid)
            .map(|(uid, gid)| hyper_vmm::config::RunAs { uid, gid }),
        restore_from: args.restore_from,
        save_request: args.save_request,
    })
}

/// A configuration is a few KiB; more on standard input is not one.
const MAX_CONFIG: u64 = 1 << 20;

fn main() {
    // What the VMM creates (console log, status, agent socket) is private
    // even when it is started by something other than hyperd.
    // SAFETY: umask(2) only swaps the file mode creation mask; no thread
    // exists yet.
    unsafe { libc::umask(0o077) };
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPER_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let check = args.check_snapshot.clone();
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hyper-vmm: {e:#}");
            std::process::exit(2);
        }
    };
    if let Some(dir) = check {
        match hyper_vmm::snapshot::check(&dir, &cfg) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                println!("{e}");
                std::process::exit(5);
            }
        }
    }
    // Opened now: the mount jail leaves no path to open it by later.
    let status_out = cfg.status_file.as_ref().and_then(|p| {
        std::fs::File::create(p)
            .map_err(|e| eprintln!("hyper-vmm: creating {}: {e}", p.display()))
            .ok()
            .map(|f| (p, f))
    });
    let status = run(&cfg, started);
    let json = serde_json::to_string(&status)
        .unwrap_or_else(|e| format!("{{\"reason\":\"error\",\"message\":\"status: {e}\"}}"));
    if let Some((p, mut f)) = status_out {
        if let Err(e) = std::io::Write::write_all(&mut f, format!("{json}\n").as_bytes()) {
            eprintln!("hyper-vmm: writing {}: {e}", p.display());
        }
    }
    eprintln!("hyper-vmm: exit {json}");
    std::process::exit(status.exit_code());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_flags() {
        let n = parse_net("fd=5,mac=02:00:00:00:00:01,mtu=9000").unwrap();
        assert_eq!(
            (n.fd, n.mac.as_str(), n.mtu),
            (5, "02:00:00:00:00:01", Some(9000))
        );
        assert_eq!(parse_net("mac=02:00:00:00:00:01,fd=7").unwrap().mtu, None);
        for (bad, why) in [
            ("fd=5", "missing mac="),
            ("mac=02:00:00:00:00:01", "missing fd="),
            ("fd=x,mac=02:00:00:00:00:01", "fd \"x\""),
            ("fd=5,mac=02:00:00:00:00:01,mtu=70000", "mtu \"70000\""),
            ("fd=5,mac=02:00:00:00:00:01,tap=tap0", "unknown part"),
        ] {
            let e = format!("{:#}", parse_net(bad).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
