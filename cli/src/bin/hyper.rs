//! hyper: the command line client of hyperd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hyper_cli::client::Client;
use hyper_cli::stream::StreamEnd;
use hyper_core::pods::{RunRequest, RUNTIME_FAILURE_EXIT};

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
    Run(RunArgs),
    /// Show the backends found, each one's verdict on this host, and the payload.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// List pods.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Show the client's and the daemon's versions.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Remove the pod's record when it exits.
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and feed it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (uid[:gid] or name[:group]) inside the container.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// vCPUs of the pod's VM.
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory of the pod's VM, in MiB.
    #[arg(long, short = 'm', value_name = "MiB")]
    memory: Option<u32>,
    /// A directory to use as the container's root filesystem.
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Run(args) => run(&client, args).await,
            Command::Info { json } => info(&client, json).await,
            Command::Ps { json } => ps(&client, json).await,
            Command::Version => version(&client).await,
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
    // The daemon reads the rootfs, so send an absolute path.
    let rootfs = match std::path::absolute(&args.rootfs) {
        Ok(p) => p,
        Err(e) => return fail(format!("--rootfs {}: {e}", args.rootfs.display())),
    };
    let request = RunRequest {
        rootfs,
        args: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        cpus: args.cpus,
        memory_mib: args.memory,
        remove: args.rm,
        interactive: args.interactive,
    };
    let stdin = args.interactive.then(tokio::io::stdin);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    match client.run(&request, stdin, &mut stdout, &mut stderr).await {
        Ok(StreamEnd::Exit { code, message, .. }) => {
            if let Some(m) = message {
                eprintln!("hyper: {m}");
            }
            code
        }
        Ok(StreamEnd::Error { code, message }) => {
            eprintln!("hyper: {message}");
            code
        }
        Err(e) => fail(e),
    }
}

async fn info(client: &Client, json: bool) -> i32 {
    let info = match client.get_json("/v1/info").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).unwrap_or_default()
        );
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
    println!("state dir:       {}", s(&info["state_dir"]));
    println!("pods:            {}", info["pods"]);
    0
}

async fn ps(client: &Client, json: bool) -> i32 {
    let pods = match client.get_json("/v1/pods").await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&pods).unwrap_or_default()
        );
        return 0;
    }
    println!(
        "{:<14} {:<8} {:<8} {:<6} COMMAND",
        "POD ID", "BACKEND", "STATE", "EXIT"
    );
    for p in pods.as_array().into_iter().flatten() {
        let args: Vec<&str> = p["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        let exit = p["exit_code"]
            .as_i64()
            .map_or("-".to_string(), |c| c.to_string());
        println!(
            "{:<14} {:<8} {:<8} {:<6} {}",
            p["id"].as_str().unwrap_or("-"),
            p["backend"].as_str().unwrap_or("-"),
            p["state"].as_str().unwrap_or("-"),
            exit,
            args.join(" ")
        );
    }
    0
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
