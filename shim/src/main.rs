//! `containerd-shim-hyper-v2`: containerd's shim v2 for runtime
//! `io.containerd.hyper.v2`. Each task is a pod of one container in a VM of
//! its own, run by the hypercontainer core (`hyper-core`) inside this
//! process: the shim loads the backend plugin and the payload from the
//! hypercontainer config the runtime options name (`ConfigPath`), as hyperd
//! does; hyperd itself is not needed.
//!
//! containerd runs the binary three ways (runtime/v2 of containerd):
//! * `start`: spawns the long-lived shim server and prints its socket
//!   address (the `containerd-shim` crate's bootstrap);
//! * `delete`: cleans up after a shim server that died (see [`cleanup`]);
//! * with `-socket`: the server, serving the Task service ([`service`]).

mod bundle;
mod cleanup;
mod confine;
mod metrics;
mod mounts;
mod service;
mod stdio;

use async_trait::async_trait;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::asynchronous::{publisher::RemotePublisher, spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::{api, Config, Error, Flags, StartOpts};
use std::sync::Arc;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.hyper.v2";

struct HyperShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl Shim for HyperShim {
    type T = service::TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HyperShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim server per task, but a CRI pod's containers are served
        // by their sandbox's shim (as Kata's are): its server is found at
        // the address the sandbox's id gives.
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        if let bundle::Role::Member { sandbox } = bundle::role_of(&bundle) {
            let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &sandbox);
            if !cleanup::server_alive(&address) {
                return Err(Error::Other(format!(
                    "container {} of CRI sandbox {sandbox}: the sandbox's shim is not running at {address}",
                    opts.id
                )));
            }
            write_str_to_file("address", &address).await?;
            return Ok(address);
        }
        let grouping = opts.id.clone();
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        // containerd runs `delete` whenever its connection to a task's
        // server closes; a server that still answers (a CRI sandbox's, which
        // serves its other tasks) owns what it runs, and nothing is touched.
        let alive = std::fs::read_to_string(bundle.join("address"))
            .is_ok_and(|a| cleanup::server_alive(a.trim()));
        if !alive {
            cleanup::after_dead_shim(&bundle, &self.namespace, &self.id).await;
        }
        let mut resp = api::DeleteResponse::new();
        resp.set_exited_at(Timestamp::now());
        // As runc's shim reports a task it had to clean up after: SIGKILL.
        resp.set_exit_status(128 + libc::SIGKILL as u32);
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::TaskService::new(self.namespace.clone(), self.exit.clone(), publisher)
    }
}

#[tokio::main]
async fn main() {
    // The core waits for its own children (the plugin host, which starts
    // the VMM; mkfs.erofs): the crate's SIGCHLD reaper would steal their
    // statuses. Set before the crate installs its signal handlers.
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<HyperShim>(RUNTIME_ID, Some(config)).await;
    // Done (the server stopped, or start/delete answered): exit without
    // waiting for the runtime's blocking threads.
    std::process::exit(0);
}
