//! hyperd: the daemon. Loads the backend plugins, cleans up after a previous
//! instance, and serves the REST API on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hyper_core::config::Config;
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
    let config = Config::load(args.config.as_deref())?;
    let socket = config.runtime.socket.clone();
    std::fs::create_dir_all(&config.runtime.state_dir).with_context(|| {
        format!(
            "cannot create state_dir {}",
            config.runtime.state_dir.display()
        )
    })?;
    let plugins = Plugins::load(&config).await?;
    let runtime = Arc::new(Runtime::new(config, plugins)?);
    match runtime.restore().await {
        Ok(r) => {
            if r.reattached > 0 {
                tracing::info!("took over {} running pod(s)", r.reattached);
            }
            if r.cleaned > 0 {
                tracing::info!("cleaned up {} pod(s) left by a previous hyperd", r.cleaned);
            }
        }
        Err(e) => tracing::warn!("restoring pods: {e}"),
    }

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
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
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {} (key runtime.socket)", socket.display()))?;
    let mode = match &runtime.config().runtime.socket_group {
        Some(group) => {
            let gid = group_id(group).with_context(|| {
                format!(
                    "{}: key runtime.socket_group: no group named {group}; create it (groupadd {group}) or remove the key",
                    runtime.config().source_name()
                )
            })?;
            std::os::unix::fs::chown(&socket, Some(0), Some(gid))
                .with_context(|| format!("cannot give {} to group {group}", socket.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict {}", socket.display()))?;
    tracing::info!("serving on {}", socket.display());

    let app = hyper_cli::server::router(runtime.clone());
    let shutdown = async {
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
    };
    axum::serve(listener, app)
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
