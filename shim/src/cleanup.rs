//! What a task leaves and how it goes: the rootfs mount in the bundle, and
//! the core's state for the task (pod records, the rootfs image, the VM's
//! run dir) under `<config state_dir>/shim/<hash of namespace/id>`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file in the bundle naming the hypercontainer config the task ran
/// with, so `delete` (which containerd runs without runtime options) finds
/// the task's state.
const CONFIG_NOTE: &str = "hyper-config-path";

/// The core's state directory for task `id` of `namespace`: short, as the
/// VM's unix sockets live under it (108 bytes at most).
pub fn task_state_dir(state_dir: &Path, namespace: &str, id: &str) -> PathBuf {
    let hash = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    let name: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    state_dir.join("shim").join(name)
}

/// Whether a shim server accepts connections at `address`
/// (`unix:///run/containerd/s/…`).
pub fn server_alive(address: &str) -> bool {
    let path = address.trim_start_matches("unix://");
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

pub fn remember_config(bundle: &Path, config: &Path) -> std::io::Result<()> {
    std::fs::write(
        bundle.join(CONFIG_NOTE),
        config.as_os_str().as_encoded_bytes(),
    )
}

/// Unmounts what the shim mounted at `target` (lazily: a reader that still
/// holds it cannot keep the task from going).
pub fn unmount(target: &Path) {
    let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(target = %target.display(), "umount: {e}");
        }
    }
}

pub fn remove_state(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), "cannot remove the task's state: {e}");
        }
    }
}

/// `containerd-shim-hyper-v2 delete`, run by containerd in the bundle of a
/// task whose shim server is gone: the VMs the core recorded for the task
/// are killed and the pods removed (`Runtime::discard_left_pods`), then the
/// rootfs mount and the task's state go.
pub async fn after_dead_shim(bundle: &Path, namespace: &str, id: &str) {
    // The task's state dir goes last: once it is gone, everything else
    // this cleanup does (VMs, the rootfs mount, the dead server's socket)
    // is done, so whoever watches for it sees a finished cleanup.
    let mut state_to_remove = None;
    if let Ok(config) = std::fs::read(bundle.join(CONFIG_NOTE)) {
        let config = PathBuf::from(String::from_utf8_lossy(&config).into_owned());
        match hyper_core::config::Config::load(Some(&config)) {
            Ok(mut config) => {
                let dir = task_state_dir(&config.runtime.state_dir, namespace, id);
                if dir.is_dir() {
                    config.runtime.state_dir = dir.clone();
                    stop_recorded_pods(config).await;
                    state_to_remove = Some(dir);
                }
            }
            Err(e) => tracing::warn!("delete: {e}"),
        }
    }
    unmount(&bundle.join("rootfs"));
    // The dead server's socket (its address file is in the bundle).
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let path = Path::new(address.trim().trim_start_matches("unix://"));
        if path
            .symlink_metadata()
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), "delete: {e}");
            }
        }
    }
    if let Some(dir) = state_to_remove {
        remove_state(&dir);
    }
}

/// Stops the VMs of the pods recorded under the config's state dir and
/// removes the pods (the core's `discard_left_pods`; no plugin is needed
/// for that).
async fn stop_recorded_pods(config: hyper_core::config::Config) {
    let plugins = hyper_core::plugins::Plugins {
        backends: Vec::new(),
        failures: Vec::new(),
        hypervisor: Err("not loaded: cleaning up after a dead shim".into()),
    };
    match hyper_core::pods::Runtime::new(config, plugins) {
        Ok(runtime) => match runtime.discard_left_pods().await {
            Ok(n) => tracing::info!("delete: removed {n} pod(s)"),
            Err(e) => tracing::warn!("delete: {e}"),
        },
        Err(e) => tracing::warn!("delete: {e}"),
    }
}
