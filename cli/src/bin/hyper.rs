//! hyper: the command line client of hyperd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use hyper_api::pods::{ExecRequest, RestartPolicy, RunRequest, RUNTIME_FAILURE_EXIT};
use hyper_cli::client::{Client, ClientError, StreamOptions};
use hyper_cli::stream::StreamEnd;
use hyper_cli::{progress, terminal};
use hyper_protocol::TerminalSize;

#[derive(Parser)]
#[command(
    name = "hyper",
    version,
    about = "Run containers in their own virtual machines"
)]
struct Cli {
    /// hyperd's socket.
    #[arg(long, short = 'H', env = "HYPER_HOST", default_value = hyper_cli::DEFAULT_SOCKET, global = true)]
    host: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new pod (a new VM); exits with the command's status.
    Run(Box<RunArgs>),
    /// Show the backends found, each one's verdict on this host, and the payload.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// List running pods (all of them with -a).
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show everything hyperd knows about pods, as JSON.
    Inspect {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Stop pods: SIGTERM, then the VM is taken down after the grace time.
    Stop {
        /// Seconds to wait before taking the VM down.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Start exited pods again, each in a fresh VM (their logs go on).
    Start {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Stop pods, then start them again.
    Restart {
        /// Seconds to wait before taking the VM down.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Attach to a running pod's main process: its output, its stdin if it
    /// was started with -i, its terminal if with -t; exits with its status.
    Attach {
        /// Do not attach stdin.
        #[arg(long)]
        no_stdin: bool,
        /// Keys that detach from a `-i -t` pod, leaving it running.
        #[arg(long, value_name = "KEYS", default_value = terminal::DEFAULT_DETACH_KEYS)]
        detach_keys: String,
        pod: String,
    },
    /// Send a signal to pods' containers' first processes (KILL takes the VM down).
    Kill {
        #[arg(short = 's', long = "signal", default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove exited pods (running ones too with -f).
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        /// Remove the pods' anonymous volumes (`-v /path`) too, as
        /// `docker rm -v`; without it they stay (`hyper volume rm`).
        #[arg(short = 'v', long)]
        volumes: bool,
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Wait for pods to exit and print their exit codes.
    Wait {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Print a pod's logs.
    Logs {
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        #[arg(short = 't', long)]
        timestamps: bool,
        /// `POD`, or `POD/CONTAINER` for a container of a pod of several.
        pod: String,
    },
    /// Run a command in a running pod (`POD` or `POD/CONTAINER`); exits with its status.
    Exec(ExecArgs),
    /// Pods of several containers.
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Host memory and CPU of pods' VMs.
    Stats {
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Show the pods' events as they happen (and kept ones, with --since or --until).
    Events {
        /// Show events from this time: RFC 3339 (2026-12-07T10:00:00Z), unix seconds, or a duration before now (10m).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Stop at this time (same forms); without it, follow until interrupted.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only matching events: pod=ID|NAME, event=ACTION, image=NAME, backend=NAME (repeatable, or KEY=VALUE,KEY=VALUE).
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// One JSON object per line, as the API sends them.
        #[arg(long)]
        json: bool,
    },
    /// List a pod's published ports (`80/tcp -> 127.0.0.1:8080`).
    Port { pod: String },
    /// Networks (CNI configuration lists in `[network] cni_conf_dir`).
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Named volumes (`-v NAME:/path` makes one on first use).
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Booted VMs pods start from (`[vm] start`, `--start`).
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Show the client's and the daemon's versions.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from these definitions; with
    /// --dir, write hyper.1 and a page per subcommand (hyper-run.1, …) there.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Pull an image from a registry.
    Pull {
        /// e.g. `busybox`, `library/busybox:1.36`, `host:port/repo@sha256:…`
        image: String,
    },
    /// List images.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Remove images (untag a name; delete the image once no name is left).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from an OCI image layout directory or a `docker save` tarball.
    Load {
        #[arg(short = 'i', long = "input", value_name = "PATH")]
        input: PathBuf,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Save credentials for a registry (hyperd uses them to pull).
    Login {
        registry: String,
        #[arg(short = 'u', long = "username")]
        username: String,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
        #[arg(short = 'p', long = "password", conflicts_with = "password_stdin")]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum PodCommand {
    /// Create and start a pod from a pod file (TOML, or JSON if it ends in
    /// .json); prints the pod's id.
    Create {
        /// The pod file.
        #[arg(short = 'f', long = "file", value_name = "POD.toml")]
        file: PathBuf,
        /// A name for the pod (overrides the file's `name`).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// List the networks found; the first is the default one.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// List the templates in hyperd's store.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove templates (pods rebuild one when they need it).
    Rm {
        /// Remove every template.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
        #[arg(required_unless_present = "all")]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a named volume (a directory, or a disk with --kind block);
    /// prints its name. An existing one of the same kind is left as it is.
    Create {
        /// directory (shared as a host directory) or block (an extra disk).
        #[arg(long, default_value = "directory", value_parser = ["directory", "block"])]
        kind: String,
        /// A block volume's size: bytes or with k, m, g, t (1g).
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// Make this filesystem on a new block volume (ext4).
        #[arg(long, value_name = "FS")]
        mkfs: Option<String>,
        /// Set a label (KEY=VALUE).
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
        label: Vec<String>,
        name: String,
    },
    /// List named volumes.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
        /// Only the names.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Show named volumes as JSON (where their data is, which pods use them).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove named volumes and their data (refused while a pod uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ExecArgs {
    /// Keep stdin open and feed it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a terminal (raw mode and window size follow this one).
    #[arg(short = 't', long)]
    tty: bool,
    /// Keys that detach from a `-i -t` process, leaving it running.
    #[arg(long, value_name = "KEYS", default_value = terminal::DEFAULT_DETACH_KEYS)]
    detach_keys: String,
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Give the process every capability and no seccomp filter.
    #[arg(long)]
    privileged: bool,
    /// `POD CMD…`
    #[arg(trailing_var_arg = true, required = true, num_args = 2.., value_name = "POD CMD")]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Remove the pod's record when it exits.
    #[arg(long)]
    rm: bool,
    /// How its VM starts: cold (boot the payload), auto (from a template
    /// when the backend and the pod allow it, else cold) or template
    /// (template only); hyperd's `[vm] start` without it.
    #[arg(long, value_name = "MODE", value_parser = ["cold", "auto", "template"])]
    start: Option<String>,
    /// Run in the background and print the pod's id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// A name for the pod.
    #[arg(long)]
    name: Option<String>,
    /// Restart policy: no, always, on-failure[:N].
    #[arg(long, default_value = "no")]
    restart: String,
    /// Set a label (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Keep stdin open and feed it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a terminal (raw mode and window size follow this one).
    #[arg(short = 't', long)]
    tty: bool,
    /// Keys that detach from a `-i -t` process, leaving it running.
    #[arg(long, value_name = "KEYS", default_value = terminal::DEFAULT_DETACH_KEYS)]
    detach_keys: String,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (uid[:gid] or name[:group]) inside the container.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// CPUs for the pod, as Docker's --cpus: the VM gets that many vCPUs,
    /// rounded up, and a fraction (0.5, 1.5) also caps the container at
    /// that much CPU time (cpu.max in the guest).
    #[arg(long, value_name = "CPUS")]
    cpus: Option<f64>,
    /// The container's relative CPU weight, as Docker's (2 to 262144;
    /// 1024 is the default; cpu.weight in the guest).
    #[arg(long, value_name = "SHARES")]
    cpu_shares: Option<u64>,
    /// At most this many microseconds of CPU time per --cpu-period.
    #[arg(long, value_name = "MICROSECONDS")]
    cpu_quota: Option<u64>,
    /// The period of --cpu-quota, microseconds (1000 to 1000000; 100000
    /// without it).
    #[arg(long, value_name = "MICROSECONDS")]
    cpu_period: Option<u64>,
    /// Memory of the pod's VM: MiB (512) or with a unit (512m, 1g, 1048576k).
    /// The container can use all of it but the guest kernel's share; past
    /// that the guest's OOM killer ends it (OOMKilled, exit 137).
    #[arg(long, short = 'm', value_name = "MEMORY", value_parser = hyper_api::resources::parse_memory)]
    memory: Option<u32>,
    /// At most N processes and threads at once in the container (its
    /// cgroup's pids.max in the guest).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=hyper_api::resources::ResourceLimits::MAX_PIDS))]
    pids_limit: Option<u64>,
    /// Replace the image's entrypoint (`""` clears it).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// A directory to use as the container's root filesystem, instead of an image.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Every capability, no seccomp filter, no masked /proc paths, every device.
    #[arg(long)]
    privileged: bool,
    /// Add a capability (SYS_ADMIN, CAP_NET_ADMIN, ALL) to Docker's default set.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (or ALL) from Docker's default set.
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json (Docker's format), no-new-privileges[=false].
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// A resource limit for the container's processes and its execs, as
    /// Docker's: NAME=SOFT[:HARD] (nofile=1024:2048; -1 is unlimited).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimit: Vec<String>,
    /// Publish a container port on the host: [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp].
    #[arg(short = 'p', long = "publish", value_name = "[IP:]HOST:CTR[/PROTO]")]
    publish: Vec<String>,
    /// The pod's network (`hyper network ls`), or `none` for only lo; the
    /// default network without it.
    #[arg(long, value_name = "NAME|none")]
    network: Option<String>,
    /// A nameserver for the pod's /etc/resolv.conf (instead of the host's).
    #[arg(long, value_name = "IP")]
    dns: Vec<String>,
    /// A search domain for the pod's /etc/resolv.conf.
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// A resolver option for the pod's /etc/resolv.conf (e.g. ndots:2).
    #[arg(long = "dns-option", value_name = "OPT")]
    dns_option: Vec<String>,
    /// An /etc/hosts entry: NAME:IP.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// The pod's hostname (its id without it).
    #[arg(long)]
    hostname: Option<String>,
    /// Mount a host directory or a named volume: HOSTDIR:CTRPATH[:ro|rw],
    /// NAME:CTRPATH[:ro|rw][,nocopy] (made on first use; a new, empty one
    /// gets the image's content at CTRPATH unless nocopy), or CTRPATH (an
    /// anonymous volume, removed by --rm or rm -v).
    #[arg(short = 'v', long = "volume", value_name = "[SRC:]DST[:ro]")]
    volume: Vec<String>,
    /// Mount as Docker's --mount (CSV: quote a field holding a comma):
    /// type=bind|volume|tmpfs|block,src=…,dst=…[,readonly][,volume-nocopy]
    /// [,tmpfs-size=64m][,size=1g,mkfs=ext4]; type=volume without src is
    /// an anonymous volume.
    #[arg(long = "mount", value_name = "type=…,src=…,dst=…")]
    mount: Vec<String>,
    /// `IMAGE [CMD…]`, or `CMD…` with --rootfs.
    #[arg(trailing_var_arg = true, value_name = "IMAGE [CMD]")]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Neither needs hyperd. Made in memory (which cannot fail), then
    // written: a closed stdout is an error, not a panic.
    let generated = match cli.command {
        Command::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hyper", &mut buf);
            Some(Ok(buf))
        }
        Command::Man { dir: Some(ref dir) } => Some(
            clap_mangen::generate_to(Cli::command(), dir)
                .map(|()| Vec::new())
                .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display()))),
        ),
        Command::Man { dir: None } => {
            let mut buf = Vec::new();
            Some(
                clap_mangen::Man::new(Cli::command())
                    .render(&mut buf)
                    .map(|()| buf),
            )
        }
        _ => None,
    };
    if let Some(generated) = generated {
        use std::io::Write;
        return match generated.and_then(|buf| std::io::stdout().write_all(&buf)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hyper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper: cannot start the async runtime: {e}");
            return ExitCode::from(RUNTIME_FAILURE_EXIT as u8);
        }
    };
    let client = Client::new(cli.host.clone());
    let code = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run(&client, *args).await,
            Command::Info { json } => info(&client, json).await,
            Command::Ps { all, json } => ps(&client, all, json).await,
            Command::Inspect { pods } => inspect(&client, &pods).await,
            Command::Stop { time, pods } => {
                post_each(&client, &pods, &format!("stop?t={time}")).await
            }
            Command::Start { pods } => post_each(&client, &pods, "start").await,
            Command::Restart { time, pods } => {
                post_each(&client, &pods, &format!("restart?t={time}")).await
            }
            Command::Attach {
                no_stdin,
                detach_keys,
                pod,
            } => attach(&client, &pod, !no_stdin, &detach_keys).await,
            Command::Kill { signal, pods } => {
                post_each(
                    &client,
                    &pods,
                    &format!("kill?signal={}", query_escape(&signal)),
                )
                .await
            }
            Command::Rm {
                force,
                volumes,
                pods,
            } => {
                each_pod(&pods, |p| {
                    let client = &client;
                    async move {
                        client
                            .delete_json(&format!(
                                "/v1/pods/{}?force={force}&v={volumes}",
                                path_escape(&p)
                            ))
                            .await
                            .map(|_| p)
                    }
                })
                .await
            }
            Command::Wait { pods } => {
                each_pod(&pods, |p| {
                    let client = &client;
                    async move {
                        client
                            .post_json(&format!("/v1/pods/{}/wait", path_escape(&p)), &())
                            .await
                            .map(|v| v["exit_code"].to_string())
                    }
                })
                .await
            }
            Command::Logs {
                follow,
                tail,
                timestamps,
                pod,
            } => logs(&client, &pod, follow, tail, timestamps).await,
            Command::Exec(args) => exec(&client, args).await,
            Command::Pod {
                command: PodCommand::Create { file, name },
            } => pod_create(&client, &file, name).await,
            Command::Stats { pods } => stats(&client, &pods).await,
            Command::Events {
                since,
                until,
                filter,
                json,
            } => events(&client, since, until, &filter, json).await,
            Command::Port { pod } => port(&client, &pod).await,
            Command::Network {
                command: NetworkCommand::Ls { json },
            } => network_ls(&client, json).await,
            Command::Volume { command } => volume(&client, command).await,
            Command::Template { command } => template(&client, command).await,
            Command::Version => version(&client).await,
            Command::Completion { .. } | Command::Man { .. } => 0,
            Command::Pull { image } => pull(&client, &image, false).await.map_or_else(fail, |_| 0),
            Command::Images { json } => images(&client, json).await,
            Command::Rmi { images } => rmi(&client, &images).await,
            Command::Load { input } => load(&client, &input).await,
            Command::Tag { source, target } => tag(&client, &source, &target).await,
            Command::Login {
                registry,
                username,
                password_stdin,
                password,
            } => login(&client, registry, username, password_stdin, password).await,
        }
    });
    // The stdin reader may sit in a blocking read: do not wait for it.
    rt.shutdown_background();
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("hyper: {e}");
    RUNTIME_FAILURE_EXIT
}

async fn run(client: &Client, args: RunArgs) -> i32 {
    let (rootfs, image, command) = match &args.rootfs {
        Some(dir) => {
            if args.args.is_empty() && args.entrypoint.is_none() {
                return fail("no command given: `hyper run --rootfs DIR CMD…`");
            }
            // The daemon reads the rootfs, so send an absolute path.
            match std::path::absolute(dir) {
                Ok(p) => (Some(p), None, args.args.clone()),
                Err(e) => return fail(format!("--rootfs {}: {e}", dir.display())),
            }
        }
        None => {
            let Some((image, command)) = args.args.split_first() else {
                return fail(
                    "no image given: `hyper run [OPTIONS] IMAGE [CMD…]`, or `--rootfs DIR CMD…`",
                );
            };
            // Like Docker: pull what is not here yet, then run it.
            let path = format!("/v1/images/inspect?name={}", query_escape(image));
            match client.get_optional(&path).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    eprintln!("Unable to find image '{image}' locally");
                    if let Err(e) = pull(client, image, true).await {
                        return fail(e);
                    }
                }
                Err(e) => return fail(e),
            }
            (None, Some(image.clone()), command.to_vec())
        }
    };
    let restart = match RestartPolicy::parse(&args.restart) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut labels = std::collections::BTreeMap::new();
    for l in &args.label {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => return fail(format!("--label {l}: expected KEY=VALUE")),
        }
    }
    let entrypoint = args.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    let mut security = hyper_api::security::Security {
        privileged: args.privileged,
        cap_add: args.cap_add,
        cap_drop: args.cap_drop,
        security_opt: args.security_opt,
        ulimits: args.ulimit,
    };
    if let Err(e) = security.rlimits() {
        return fail(e);
    }
    if let Err(e) = hyper_api::security::read_profile_files(
        &mut security.security_opt,
        std::path::Path::new("."),
    ) {
        return fail(e);
    }
    let ports = match hyper_api::network::ports::parse_all(&args.publish) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let network = hyper_api::network::NetworkRequest {
        network: args.network.clone(),
        ports,
        dns: args.dns.clone(),
        dns_search: args.dns_search.clone(),
        dns_options: args.dns_option.clone(),
        add_hosts: args.add_host.clone(),
        netns: None,
        netns_configured: false,
    };
    if let Err(e) = network.validate() {
        return fail(e);
    }
    let mut volumes = Vec::new();
    for v in &args.volume {
        match hyper_api::volumes::parse_volume(v) {
            Ok(v) => volumes.push(v),
            Err(e) => return fail(e),
        }
    }
    for m in &args.mount {
        match hyper_api::volumes::parse_mount(m) {
            Ok(m) => volumes.push(m),
            Err(e) => return fail(e),
        }
    }
    if let Err(e) = hyper_api::volumes::validate(&volumes) {
        return fail(e);
    }
    let cpu = match hyper_api::resources::cpu_plan(&hyper_api::resources::CpuFlags {
        cpus: args.cpus,
        shares: args.cpu_shares,
        period_us: args.cpu_period,
        quota_us: args.cpu_quota,
    }) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let request = RunRequest {
        volumes,
        network,
        hostname: args.hostname.clone(),
        rootfs,
        image,
        entrypoint,
        args: command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        cpus: cpu.vcpus,
        memory_mib: args.memory,
        limits: hyper_api::resources::ResourceLimits {
            pids_max: args.pids_limit,
            cpu_max: cpu.cpu_max,
            cpu_weight: cpu.cpu_weight,
            ..Default::default()
        },
        remove: args.rm,
        interactive: args.interactive,
        name: args.name.clone(),
        labels,
        restart,
        tty: args.tty,
        tty_size: args.tty.then(terminal::client_size).flatten(),
        security,
        start: args
            .start
            .as_deref()
            .and_then(hyper_api::start::StartMode::parse),
    };
    if args.detach {
        // With -i the pod's stdin stays open for `hyper attach`.
        return match client.post_json("/v1/pods", &request).await {
            Ok(v) => {
                println!("{}", v["id"].as_str().unwrap_or("?"));
                0
            }
            Err(e) => fail(e),
        };
    }
    let attach = Attach {
        interactive: args.interactive,
        tty: args.tty,
        detach_keys: &args.detach_keys,
        resize_at_start: false,
    };
    stream_process(client, "/v1/run", &request, attach).await
}

/// `hyper attach`: stdin and the terminal as the pod was started with.
async fn attach(client: &Client, pod: &str, with_stdin: bool, detach_keys: &str) -> i32 {
    let path = format!("/v1/pods/{}", path_escape(pod));
    let view = match client.get_json(&path).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let started_with = |key: &str| view["container"][key].as_bool().unwrap_or(false);
    let attach = Attach {
        interactive: with_stdin && started_with("interactive"),
        tty: started_with("tty"),
        detach_keys,
        resize_at_start: true,
    };
    let path = format!("/v1/pods/{}/attach", path_escape(pod));
    stream_process(client, &path, &serde_json::json!({}), attach).await
}

/// How the client's stdio joins a process's.
struct Attach<'a> {
    interactive: bool,
    tty: bool,
    detach_keys: &'a str,
    /// Sends this terminal's size at once: the process's terminal was sized
    /// for another client (`hyper attach`).
    resize_at_start: bool,
}

/// Runs a stdio stream to its end: with `-t`, the terminal in raw mode
/// (restored on every way out), its resizes sent on, and the detach keys
/// watched for. Returns the exit code to exit with.
async fn stream_process<T: serde::Serialize>(
    client: &Client,
    path: &str,
    request: &T,
    attach: Attach<'_>,
) -> i32 {
    let with_terminal = attach.tty && attach.interactive;
    let detach_keys = if with_terminal {
        match terminal::parse_detach_keys(attach.detach_keys) {
            Ok(k) => Some(k),
            Err(e) => return fail(e),
        }
    } else {
        None
    };
    // Docker's behaviour: -i -t needs a terminal to read keys from; -t
    // alone works anywhere (24x80 unless some output is a terminal).
    if with_terminal && !terminal::is_tty(0) {
        return fail("the input device is not a TTY");
    }
    let resize = attach
        .tty
        .then(|| watch_window_size(attach.resize_at_start))
        .flatten();
    let raw = if with_terminal {
        match terminal::RawMode::enable(0) {
            Ok(r) => Some(r),
            Err(e) => return fail(format!("cannot put the terminal in raw mode: {e}")),
        }
    } else {
        None
    };
    let stdin = attach.interactive.then(tokio::io::stdin);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let opts = StreamOptions {
        resize,
        detach_keys,
    };
    let result = client
        .stream_with(path, request, stdin, &mut stdout, &mut stderr, opts)
        .await;
    // Messages below must be read on a terminal in its normal mode.
    drop(raw);
    match result {
        Ok(StreamEnd::Exit { code, message, .. }) => {
            if let Some(m) = message {
                eprintln!("hyper: {m}");
            }
            code
        }
        Ok(StreamEnd::Error {
            code,
            message,
            error,
        }) => {
            let api = hyper_api::errors::ApiError::new(message, error);
            eprintln!("hyper: {}", hyper_cli::errors::word(&api));
            code
        }
        Ok(StreamEnd::Detached) => 0,
        Err(e) => fail(e),
    }
}

/// The client terminal's new sizes, from SIGWINCH on (and its size now,
/// with `now`).
fn watch_window_size(now: bool) -> Option<tokio::sync::mpsc::Receiver<TerminalSize>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut winch = signal(SignalKind::window_change()).ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if let Some(size) = terminal::client_size().filter(|_| now) {
        let _ = tx.try_send(size);
    }
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some(size) = terminal::client_size() {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    Some(rx)
}

async fn info(client: &Client, json: bool) -> i32 {
    let info = match client.get_json("/v1/info").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        print_json(&info);
        return 0;
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!("hyperd version:  {}", s(&info["version"]));
    println!("config:          {}", s(&info["config"]));
    println!(
        "hypervisor:      {} (setting: {})",
        s(&info["hypervisor"]),
        s(&info["hypervisor_setting"])
    );
    if let Some(e) = info["hypervisor_error"].as_str() {
        println!("  problem:       {e}");
    }
    println!("plugin dir:      {}", s(&info["plugin_dir"]));
    println!("plugins:");
    for p in info["plugins"].as_array().into_iter().flatten() {
        println!(
            "  {} ({}, {})",
            s(&p["name"]),
            s(&p["path"]),
            s(&p["build_id"])
        );
        if let Some(e) = p["config_error"].as_str() {
            println!("    config refused: {e}");
        }
        let probe = &p["probe"];
        if probe.is_object() {
            let verdict = if probe["usable"].as_bool() == Some(true) {
                "usable"
            } else {
                "NOT usable"
            };
            println!("    {verdict}: {}", s(&probe["reason"]));
            if let Some(details) = probe["details"].as_object() {
                for (k, v) in details {
                    println!("    {k}: {}", v.as_str().unwrap_or_default());
                }
            }
        }
    }
    for f in info["plugin_failures"].as_array().into_iter().flatten() {
        println!("  refused {}: {}", s(&f["path"]), s(&f["error"]));
    }
    println!("payload:");
    println!("  kernel:        {}", s(&info["payload"]["kernel"]));
    println!("  initrd:        {}", s(&info["payload"]["initrd"]));
    println!("  cmdline:       {}", s(&info["payload"]["cmdline"]));
    if let Some(e) = info["payload_error"].as_str() {
        println!("  problem:       {e}");
    }
    println!("start:           {}", s(&info["start"]));
    if s(&info["start"]) != "cold" {
        match info["templates_unavailable"].as_str() {
            Some(why) => println!("  templates:     not in use: {why}"),
            None => println!("  templates:     {} in the store", info["templates"]),
        }
    }
    println!("state dir:       {}", s(&info["state_dir"]));
    println!("pods:            {}", info["pods"]);
    0
}

async fn ps(client: &Client, all: bool, json: bool) -> i32 {
    let pods = match client.get_json(&format!("/v1/pods?all={all}")).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        print_json(&pods);
        return 0;
    }
    println!(
        "{:<14} {:<24} {:<8} {:<16} {:<30} COMMAND",
        "POD ID", "IMAGE", "BACKEND", "STATUS", "NAME"
    );
    for p in pods.as_array().into_iter().flatten() {
        let args: Vec<&str> = p["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let status = if p["running"].as_bool() == Some(true) {
            "running".to_string()
        } else if p["recovering"].as_bool() == Some(true) {
            "recovering".to_string()
        } else {
            match p["exit_code"].as_i64() {
                Some(c) => format!("exited ({c})"),
                None => p["state"].as_str().unwrap_or("-").to_string(),
            }
        };
        let image = p["image_name"].as_str().unwrap_or("<rootfs>");
        // Everything here may come from an image or a client: escaped.
        let shown = hyper_cli::display::escape_control;
        println!(
            "{:<14} {:<24} {:<8} {:<16} {:<30} {}",
            shown(p["id"].as_str().unwrap_or("-")),
            shown(image),
            shown(p["backend"].as_str().unwrap_or("-")),
            shown(&status),
            shown(p["name"].as_str().unwrap_or("")),
            shown(&args.join(" "))
        );
    }
    0
}

/// `POD/CONTAINER` → (`POD`, `CONTAINER`). Pod ids and names never contain
/// a slash, so the first one separates them.
fn split_container(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('/') {
        Some((pod, container)) => (pod, Some(container)),
        None => (arg, None),
    }
}

/// Reads, checks and sends a pod file; pulls the images it names that are
/// not here yet, as `hyper run` does.
async fn pod_create(client: &Client, file: &std::path::Path, name: Option<String>) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let mut pod = match hyper_api::podfile::parse(&file.display().to_string(), &text) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // The daemon reads rootfs directories: relative ones are relative to the
    // pod file, and sent absolute.
    let base = file.parent().unwrap_or(std::path::Path::new("."));
    for c in &mut pod.containers {
        if let Err(e) = hyper_api::security::read_profile_files(&mut c.security.security_opt, base)
        {
            return fail(format!("{}: container {}: {e}", file.display(), c.name));
        }
        if let Some(dir) = &c.rootfs {
            match std::path::absolute(base.join(dir)) {
                Ok(p) => c.rootfs = Some(p),
                Err(e) => {
                    return fail(format!("{}: rootfs {}: {e}", file.display(), dir.display()))
                }
            }
        }
    }
    for image in pod.containers.iter().filter_map(|c| c.image.as_deref()) {
        let path = format!("/v1/images/inspect?name={}", query_escape(image));
        match client.get_optional(&path).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!("Unable to find image '{image}' locally");
                if let Err(e) = pull(client, image, true).await {
                    return fail(e);
                }
            }
            Err(e) => return fail(e),
        }
    }
    let body = serde_json::json!({ "pod": pod, "name": name });
    match client.post_json("/v1/pods/create", &body).await {
        Ok(v) => {
            println!("{}", v["id"].as_str().unwrap_or("?"));
            0
        }
        Err(e) => fail(e),
    }
}

/// Percent-encodes a path segment.
fn path_escape(value: &str) -> String {
    query_escape(value)
}

/// `POST /v1/pods/{pod}/{action}` for each pod, printing each name as
/// Docker does.
async fn post_each(client: &Client, pods: &[String], action: &str) -> i32 {
    each_pod(pods, |p| async move {
        client
            .post_json(&format!("/v1/pods/{}/{action}", path_escape(&p)), &())
            .await
            .map(|_| p)
    })
    .await
}

/// Runs `op` on each pod, printing what it returns (Docker prints the name
/// it was given) or the error; fails if any failed.
async fn each_pod<F, Fut>(pods: &[String], op: F) -> i32
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, ClientError>>,
{
    let mut code = 0;
    for pod in pods {
        match op(pod.clone()).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("hyper: {pod}: {e}");
                code = 1;
            }
        }
    }
    code
}

/// `hyper port POD`: one line per published port, as Docker prints them.
async fn port(client: &Client, pod: &str) -> i32 {
    let view = match client
        .get_json(&format!("/v1/pods/{}", path_escape(pod)))
        .await
    {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let ports = view["network"]["ports"].clone();
    let ports: Vec<hyper_api::network::PortMapping> = if ports.is_null() {
        // Not running: the ports it asks for.
        serde_json::from_value(view["container"]["network"]["ports"].clone()).unwrap_or_default()
    } else {
        serde_json::from_value(ports).unwrap_or_default()
    };
    for p in ports {
        println!("{p}");
    }
    0
}

/// `hyper network ls`.
async fn network_ls(client: &Client, json: bool) -> i32 {
    let list = match client.get_json("/v1/networks").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        print_json(&list);
        return 0;
    }
    println!("{:<20} {:<8} {:<40} PLUGINS", "NAME", "DEFAULT", "FILE");
    for n in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
        if let Some(err) = n["error"].as_str() {
            println!(
                "{:<20} {:<8} {:<40} (not usable: {err})",
                "-",
                "",
                s("file")
            );
            continue;
        }
        let plugins: Vec<&str> = n["plugins"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
            .unwrap_or_default();
        let default = if n["default"] == true { "yes" } else { "" };
        println!(
            "{:<20} {:<8} {:<40} {}",
            s("name"),
            default,
            s("file"),
            plugins.join(",")
        );
    }
    0
}

async fn volume(client: &Client, command: VolumeCommand) -> i32 {
    match command {
        VolumeCommand::Create {
            kind,
            size,
            mkfs,
            label,
            name,
        } => {
            let size_bytes = match size.as_deref().map(hyper_api::volumes::parse_size) {
                Some(Ok(n)) => Some(n),
                Some(Err(e)) => return fail(format!("--size {e}")),
                None => None,
            };
            let mut labels = serde_json::Map::new();
            for l in &label {
                match l.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        labels.insert(k.to_string(), v.into());
                    }
                    _ => return fail(format!("--label {l}: expected KEY=VALUE")),
                }
            }
            let body = serde_json::json!({
                "name": name,
                "kind": kind,
                "size_bytes": size_bytes,
                "mkfs": mkfs,
                "labels": labels,
            });
            match client.post_json("/v1/volumes", &body).await {
                Ok(v) => {
                    println!("{}", v["name"].as_str().unwrap_or(&name));
                    0
                }
                Err(e) => fail(e),
            }
        }
        VolumeCommand::Ls { json, quiet } => {
            let list = match client.get_json("/v1/volumes").await {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            if json {
                print_json(&list);
                return 0;
            }
            let volumes = list.as_array().map(Vec::as_slice).unwrap_or_default();
            if !quiet {
                println!("{:<10} {:<30} {:<10} USED BY", "KIND", "NAME", "SIZE");
            }
            for v in volumes {
                let name = v["name"].as_str().unwrap_or("-");
                if quiet {
                    println!("{name}");
                    continue;
                }
                let size = v["size_bytes"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |b| format!("{}M", b >> 20));
                let users: Vec<&str> = v["used_by"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
                    .unwrap_or_default();
                println!(
                    "{:<10} {:<30} {:<10} {}",
                    v["kind"].as_str().unwrap_or("-"),
                    name,
                    size,
                    users.join(",")
                );
            }
            0
        }
        VolumeCommand::Inspect { names } => {
            let mut out = Vec::new();
            let mut code = 0;
            for name in &names {
                match client
                    .get_json(&format!("/v1/volumes/{}", path_escape(name)))
                    .await
                {
                    Ok(v) => out.push(v),
                    Err(e) => code = fail(e),
                }
            }
            print_json(&out);
            code
        }
        VolumeCommand::Rm { names } => {
            let mut code = 0;
            for name in &names {
                match client
                    .delete_json(&format!("/v1/volumes/{}", path_escape(name)))
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(e) => code = fail(e),
                }
            }
            code
        }
    }
}

async fn template(client: &Client, command: TemplateCommand) -> i32 {
    match command {
        TemplateCommand::Ls { json } => {
            let list = match client.get_json("/v1/templates").await {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            if json {
                print_json(&list);
                return 0;
            }
            println!(
                "{:<32} {:<8} {:<6} {:<8} {:<6} {:<5} {:<8} CREATED",
                "KEY", "BACKEND", "VCPUS", "MEMORY", "DISKS", "NICS", "SIZE"
            );
            for t in list.as_array().map(Vec::as_slice).unwrap_or_default() {
                let key = t["key"].as_str().unwrap_or("-");
                let size = human_size(t["disk_bytes"].as_u64().unwrap_or(0));
                let m = &t["meta"];
                if m.is_null() {
                    let why = t["error"].as_str().unwrap_or("unreadable");
                    println!("{key:<32} (unusable: {why})");
                    continue;
                }
                let p = &m["parts"];
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let created = m["created_unix"].as_u64().map_or_else(
                    || "-".to_string(),
                    |t| format!("{} min ago", now.saturating_sub(t) / 60),
                );
                println!(
                    "{:<32} {:<8} {:<6} {:<8} {:<6} {:<5} {:<8} {}",
                    key,
                    p["backend"].as_str().unwrap_or("-"),
                    p["vcpus"],
                    format!("{}M", p["memory_mib"]),
                    p["disks"].as_array().map_or(0, Vec::len),
                    p["nics"],
                    size,
                    created
                );
            }
            0
        }
        TemplateCommand::Rm { all, keys } => {
            let targets = if all { vec!["all".to_string()] } else { keys };
            let mut code = 0;
            for key in &targets {
                match client
                    .delete_json(&format!("/v1/templates/{}", path_escape(key)))
                    .await
                {
                    Ok(v) if all => println!("removed {}", v["removed"]),
                    Ok(_) => println!("{key}"),
                    Err(e) => code = fail(e),
                }
            }
            code
        }
    }
}

async fn inspect(client: &Client, pods: &[String]) -> i32 {
    let mut found = Vec::new();
    let mut code = 0;
    for pod in pods {
        match client
            .get_json(&format!("/v1/pods/{}", path_escape(pod)))
            .await
        {
            Ok(v) => found.push(v),
            Err(e) => {
                eprintln!("hyper: {e}");
                code = 1;
            }
        }
    }
    print_json(&found);
    code
}

async fn logs(
    client: &Client,
    pod: &str,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
) -> i32 {
    use std::io::Write;
    let (pod, container) = split_container(pod);
    let mut path = format!("/v1/pods/{}/logs?follow={follow}", path_escape(pod));
    if let Some(c) = container {
        path.push_str(&format!("&container={}", query_escape(c)));
    }
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    let out = std::cell::RefCell::new(std::io::BufWriter::new(std::io::stdout().lock()));
    let err = std::cell::RefCell::new(std::io::BufWriter::new(std::io::stderr().lock()));
    let result = client
        .get_lines(
            &path,
            |entry| {
                let text = entry["log"].as_str().unwrap_or_default();
                let time = if timestamps {
                    entry["time"].as_str().unwrap_or_default()
                } else {
                    ""
                };
                let sep = if timestamps { " " } else { "" };
                let written = if entry["stream"] == "stderr" {
                    write!(err.borrow_mut(), "{time}{sep}{text}")
                } else {
                    write!(out.borrow_mut(), "{time}{sep}{text}")
                };
                written.is_ok()
            },
            || {
                let _ = out.borrow_mut().flush();
                let _ = err.borrow_mut().flush();
            },
        )
        .await;
    let _ = out.borrow_mut().flush();
    let _ = err.borrow_mut().flush();
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn exec(client: &Client, args: ExecArgs) -> i32 {
    let Some((pod, command)) = args.args.split_first() else {
        return fail("usage: hyper exec [OPTIONS] POD CMD…");
    };
    let (pod, container) = split_container(pod);
    let request = ExecRequest {
        args: command.to_vec(),
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        interactive: args.interactive,
        container: container.map(str::to_string),
        tty: args.tty,
        tty_size: args.tty.then(terminal::client_size).flatten(),
        privileged: args.privileged,
    };
    let path = format!("/v1/pods/{}/exec", path_escape(pod));
    let attach = Attach {
        interactive: args.interactive,
        tty: args.tty,
        detach_keys: &args.detach_keys,
        resize_at_start: false,
    };
    stream_process(client, &path, &request, attach).await
}

async fn stats(client: &Client, pods: &[String]) -> i32 {
    println!("{:<14} {:>12} {:>12}", "POD ID", "MEM (MiB)", "CPU (s)");
    let mut code = 0;
    for pod in pods {
        match client
            .get_json(&format!("/v1/pods/{}/stats", path_escape(pod)))
            .await
        {
            Ok(v) => {
                // The pod's host cgroup counts the VMM and its helpers;
                // without one, the VMM process alone.
                let st = &v["stats"];
                let cg = &v["cgroup"];
                let mem = cg["memory_bytes"]
                    .as_u64()
                    .or_else(|| st["rss_bytes"].as_u64())
                    .map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1048576.0));
                let cpu = cg["cpu_time_ms"]
                    .as_u64()
                    .or_else(|| st["cpu_time_ms"].as_u64())
                    .map_or("-".to_string(), |n| format!("{:.2}", n as f64 / 1e3));
                println!(
                    "{:<14} {:>12} {:>12}",
                    v["id"].as_str().unwrap_or(pod),
                    mem,
                    cpu
                );
            }
            Err(e) => {
                eprintln!("hyper: {pod}: {e}");
                code = 1;
            }
        }
    }
    code
}

/// `hyper events`: times are resolved here (a duration is before this
/// client's now), filters checked here, then hyperd streams the events.
async fn events(
    client: &Client,
    since: Option<String>,
    until: Option<String>,
    filter: &[String],
    json: bool,
) -> i32 {
    use hyper_api::events::{format_line, parse_time, Event, Filters};
    let now = std::time::SystemTime::now();
    let mut query = Vec::new();
    for (flag, key, value) in [("--since", "since", since), ("--until", "until", until)] {
        if let Some(v) = value {
            match parse_time(flag, &v, now) {
                Ok(n) => query.push(format!(
                    "{key}={}.{:09}",
                    n / 1_000_000_000,
                    n % 1_000_000_000
                )),
                Err(e) => return fail(e),
            }
        }
    }
    match Filters::parse_cli(filter) {
        Ok(f) if !f.is_empty() => query.push(format!("filters={}", query_escape(&f.to_json()))),
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let result = client
        .get_lines(
            &path,
            |value| {
                // JSON escapes control characters itself; the text line
                // carries names from clients: escaped.
                match serde_json::from_value::<Event>(value.clone()) {
                    Ok(e) if !json => {
                        println!("{}", hyper_cli::display::escape_control(&format_line(&e)))
                    }
                    // With --json, and a note from hyperd (events lost).
                    _ => println!("{value}"),
                }
                true
            },
            || {},
        )
        .await;
    match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn version(client: &Client) -> i32 {
    println!("hyper (client): {}", env!("CARGO_PKG_VERSION"));
    match client.get_json("/v1/version").await {
        Ok(v) => {
            println!("hyperd:         {}", v["version"].as_str().unwrap_or("?"));
            0
        }
        Err(e) => fail(e),
    }
}

/// Percent-encodes a query value (image names carry `:`, `/` and `@`).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Pulls `image`, showing a bar per layer on a terminal and plain lines
/// otherwise. `to_stderr` keeps a run's stdout for the container.
async fn pull(
    client: &Client,
    image: &str,
    to_stderr: bool,
) -> Result<serde_json::Value, ClientError> {
    let mut view = progress::PullView::new(to_stderr);
    let result = client.pull(image, |event| view.show(event)).await;
    view.finish();
    let pulled = result?;
    let say = |line: String| {
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "Status: downloaded {} ({})",
        image,
        pulled["id"].as_str().unwrap_or("?")
    ));
    Ok(pulled)
}

/// `docker.io/library/busybox:latest` → (`busybox`, `latest`).
fn split_name(name: &str) -> (String, String) {
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let slash = short.rfind('/').map_or(0, |i| i + 1);
    match short[slash..].rfind(':') {
        Some(i) => (
            short[..slash + i].to_string(),
            short[slash + i + 1..].to_string(),
        ),
        None => (short.to_string(), "<none>".to_string()),
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    let number = format!("{value:.2}");
    let number = number.trim_end_matches('0').trim_end_matches('.');
    format!("{number}{}", UNITS[unit])
}

async fn images(client: &Client, json: bool) -> i32 {
    let images = match client.get_json("/v1/images").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        print_json(&images);
        return 0;
    }
    println!(
        "{:<40} {:<12} {:<14} {:<22} SIZE",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for image in images.as_array().into_iter().flatten() {
        let id = image["id"].as_str().unwrap_or("-");
        let short_id: String = id.trim_start_matches("sha256:").chars().take(12).collect();
        let created: String = image["created"]
            .as_str()
            .unwrap_or("-")
            .chars()
            .take(19)
            .collect::<String>()
            .replace('T', " ");
        let size = human_size(image["size"].as_u64().unwrap_or(0));
        let tags: Vec<&str> = image["repo_tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        let names = if tags.is_empty() {
            vec!["<none>:<none>"]
        } else {
            tags
        };
        for name in names {
            let (repo, tag) = split_name(name);
            println!("{repo:<40} {tag:<12} {short_id:<14} {created:<22} {size}");
        }
    }
    0
}

async fn rmi(client: &Client, names: &[String]) -> i32 {
    let mut code = 0;
    for name in names {
        let path = format!("/v1/images?name={}", query_escape(name));
        match client.delete_json(&path).await {
            Ok(removed) => {
                for t in removed["untagged"].as_array().into_iter().flatten() {
                    println!("Untagged: {}", t.as_str().unwrap_or("?"));
                }
                for d in removed["deleted"].as_array().into_iter().flatten() {
                    println!("Deleted: {}", d.as_str().unwrap_or("?"));
                }
            }
            Err(e) => {
                eprintln!("hyper: {e}");
                code = 1;
            }
        }
    }
    code
}

async fn load(client: &Client, input: &std::path::Path) -> i32 {
    let path = match std::path::absolute(input) {
        Ok(p) => p,
        Err(e) => return fail(format!("-i {}: {e}", input.display())),
    };
    if !path.exists() {
        return fail(format!(
            "-i {}: no such file or directory; give an OCI image layout directory or a `docker save` tarball",
            input.display()
        ));
    }
    let body = serde_json::json!({ "path": path });
    match client.post_json("/v1/images/load", &body).await {
        Ok(images) => {
            for image in images.as_array().into_iter().flatten() {
                let tags: Vec<&str> = image["repo_tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .collect();
                if tags.is_empty() {
                    println!("Loaded image ID: {}", image["id"].as_str().unwrap_or("?"));
                }
                for t in tags {
                    println!("Loaded image: {t}");
                }
            }
            0
        }
        Err(e) => fail(e),
    }
}

async fn tag(client: &Client, source: &str, target: &str) -> i32 {
    let body = serde_json::json!({ "source": source, "target": target });
    match client.post_json("/v1/images/tag", &body).await {
        Ok(_) => 0,
        Err(e) => fail(e),
    }
}

async fn login(
    client: &Client,
    registry: String,
    username: String,
    password_stdin: bool,
    password: Option<String>,
) -> i32 {
    let password = match (password, password_stdin) {
        (Some(p), _) => p,
        (None, true) => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                return fail(format!("reading the password from stdin: {e}"));
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        (None, false) => return fail("give the password with --password-stdin (or -p)"),
    };
    let body =
        serde_json::json!({ "registry": registry, "username": username, "password": password });
    match client.post_json("/v1/login", &body).await {
        Ok(_) => {
            println!("Login Succeeded");
            0
        }
        Err(e) => fail(e),
    }
}

/// `--json` output: the server's JSON, pretty-printed as it came.
fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
