//! hyperd: the daemon. Loads the backend plugins, cleans up after a previous
//! instance, and serves the REST API on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hyper_core::config::{Config, ConfigError};
use hyper_core::plugins::Plugins;
use hyper_core::pods::Runtime;

#[derive(Parser)]
#[command(name = "hyperd", version, about = "The hypercontainer daemon")]
struct Args {
    /// Config file (default /etc/hyper/config.toml; built-in defaults if absent).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

fn main() {
    // First, before any thread or file exists: everything hyperd, its
    // plugins and the VMMs they spawn create is private (H4).
    hyper_core::private::set_private_umask();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyperd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(args)) {
        eprintln!("hyperd: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref()).map_err(|e| match e {
        ConfigError::Read { .. } => anyhow::anyhow!("{e}; pass an existing file with --config"),
        e => e.into(),
    })?;
    let socket = config.runtime.socket.clone();
    let state_dir = config.runtime.state_dir.clone();
    hyper_core::private::create_private_dir(&state_dir)
        .with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    // State an older hyperd left readable (0644 files under 0755 dirs).
    let tightened = hyper_core::private::tighten(&state_dir, &[socket.as_path()])
        .with_context(|| format!("cannot make state_dir {} private", state_dir.display()))?;
    if tightened.changed > 0 {
        tracing::info!(
            "made {} file(s) and dir(s) under {} private (mode 0600/0700)",
            tightened.changed,
            state_dir.display()
        );
    }
    let socket_gid = match &config.runtime.socket_group {
        Some(group) => Some(group_id(group).with_context(|| {
            format!(
                "{}: key runtime.socket_group: no group named {group}; create it (groupadd {group}) or remove the key",
                config.source_name()
            )
        })?),
        None => None,
    };
    let plugins = Plugins::load(&config).await?;
    let runtime = Arc::new(Runtime::new(config, plugins)?);
    // Records read and takeovers started; the API is served while they
    // run, listing those pods as `recovering`.
    let takeovers = match runtime.begin_restore() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("restoring pods: {e}");
            None
        }
    };

    if let Some(dir) = socket.parent() {
        hyper_core::private::create_private_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Some(gid) = socket_gid {
        hyper_core::private::open_path_to_socket(&socket, &state_dir, gid).with_context(|| {
            format!(
                "cannot let group {gid} reach {} (key runtime.socket_group)",
                socket.display()
            )
        })?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            anyhow::bail!(
                "another hyperd is serving {}; stop it first",
                socket.display()
            );
        }
        std::fs::remove_file(&socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    // Bound under umask 077: the socket is born owner-only, never more open
    // than it ends up. Only with socket_group is it then given to the group
    // and opened to it (0660): a window where it is narrower, never wider.
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {} (key runtime.socket)", socket.display()))?;
    if let Some(gid) = socket_gid {
        std::os::unix::fs::chown(&socket, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("cannot open {} to its group", socket.display()))?;
    }
    tracing::info!("serving on {}", socket.display());
    if let Some(takeovers) = takeovers {
        tokio::spawn(async move {
            let r = takeovers.finish().await;
            if r.reattached > 0 {
                tracing::info!("took over {} running pod(s)", r.reattached);
            }
            if r.cleaned > 0 {
                tracing::info!("cleaned up {} pod(s) left by a previous hyperd", r.cleaned);
            }
        });
    }

    let app = hyper_daemon::server::router(runtime.clone());
    let events = runtime.clone();
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        // Followers of `hyper events` would hold the graceful shutdown
        // open forever.
        events.events().close();
    };
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<hyper_daemon::peer::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving the API")?;
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The id of group `name`, from the system's group database.
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut group: libc::group = empty_group();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: a NUL-terminated name, a
    // group struct and a buffer of `buf.len()` bytes we own, and `result`.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

fn empty_group() -> libc::group {
    // SAFETY: libc::group is a plain C struct of integers and pointers, for
    // which all-zero bytes are a valid (empty) value.
    unsafe { std::mem::zeroed() }
}
