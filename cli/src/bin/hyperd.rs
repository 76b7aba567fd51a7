//! hyperd: the daemon. Loads the backend plugins, cleans up after a previous
//! instance, and serves the REST API on a unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use hyper_core::config::Config;
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
    let runtime = Arc::new(Runtime::new(config).await?);
    match runtime.clean_leftovers() {
        Ok(0) => {}
        Ok(n) => tracing::info!("cleaned up {n} pod(s) left by a previous hyperd"),
        Err(e) => tracing::warn!("cleaning up leftovers: {e}"),
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
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
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
