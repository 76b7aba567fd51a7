//! What runs inside a backend plugin: the runtime it owns, the registry of
//! configured hypervisors and live VMs, and the panic-catching dispatcher.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::abi::{PluginBuffer, PluginReply, PluginRequest, PluginResult};
use crate::{ConfigProblem, Hypervisor, HypervisorError, Vm};

/// Builds a configured backend from its TOML table (as JSON).
pub type CreateFn = fn(serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>>;

#[derive(Default)]
struct Registry {
    hypervisors: HashMap<u64, Arc<dyn Hypervisor>>,
    vms: HashMap<String, Arc<dyn Vm>>,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    let lock = REGISTRY.get_or_init(Default::default);
    // A panic while holding the lock cannot leave the maps half-updated (each
    // update is a single insert or remove), so a poisoned lock is still usable.
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The plugin's own runtime: the host's tokio context is invisible in here.
fn runtime() -> Result<&'static tokio::runtime::Runtime, HypervisorError> {
    RUNTIME
        .get_or_init(|| {
            // The plugin has its own copy of `tracing`, which the host's
            // subscriber cannot see: give it one on the same stderr and filter.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("HYPER_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .try_init();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("hyper-plugin")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the plugin's runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| HypervisorError::Plugin(e.clone()))
}

fn hypervisor(handle: u64) -> Result<Arc<dyn Hypervisor>, HypervisorError> {
    registry()
        .hypervisors
        .get(&handle)
        .cloned()
        .ok_or_else(|| HypervisorError::Plugin(format!("unknown hypervisor handle {handle}")))
}

fn vm(id: &str) -> Result<Arc<dyn Vm>, HypervisorError> {
    registry()
        .vms
        .get(id)
        .cloned()
        .ok_or_else(|| HypervisorError::NotFound(id.to_string()))
}

/// VMs are named by id across the boundary: two live VMs with one id would
/// alias each other's wait/kill/release.
fn free_id(id: &str) -> Result<(), HypervisorError> {
    if registry().vms.contains_key(id) {
        return Err(HypervisorError::InvalidSpec(format!(
            "a VM with id {id} is already running in this backend; give each launch its own id"
        )));
    }
    Ok(())
}

/// Tracks a launched, restored or recovered VM by its id.
fn track(vm: Box<dyn Vm>) -> PluginResult {
    let info = vm.info();
    registry().vms.insert(info.id.clone(), Arc::from(vm));
    Ok(PluginReply::Launched(info))
}

fn handle(create: CreateFn, request: PluginRequest) -> PluginResult {
    let rt = runtime()?;
    match request {
        PluginRequest::Configure { table } => match create(table) {
            Ok(hv) => {
                let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
                registry().hypervisors.insert(handle, hv);
                Ok(PluginReply::Configured { hypervisor: handle })
            }
            Err(problems) => Ok(PluginReply::ConfigRejected { problems }),
        },
        PluginRequest::Capabilities { hypervisor: h } => {
            Ok(PluginReply::Capabilities(hypervisor(h)?.capabilities()))
        }
        PluginRequest::Probe { hypervisor: h } => {
            let hv = hypervisor(h)?;
            Ok(PluginReply::Probe(rt.block_on(hv.probe())))
        }
        PluginRequest::Launch {
            hypervisor: h,
            spec,
        } => {
            let hv = hypervisor(h)?;
            free_id(&spec.id)?;
            track(rt.block_on(hv.launch(spec))?)
        }
        PluginRequest::Recover {
            hypervisor: h,
            spec,
            info,
            pid_start,
        } => {
            let hv = hypervisor(h)?;
            free_id(&spec.id)?;
            track(rt.block_on(hv.recover(spec, info, pid_start))?)
        }
        PluginRequest::Restore {
            hypervisor: h,
            spec,
            template,
        } => {
            let hv = hypervisor(h)?;
            free_id(&spec.id)?;
            track(rt.block_on(hv.restore(spec, &template))?)
        }
        PluginRequest::SaveTemplate { vm: id, dir } => {
            let vm = vm(&id)?;
            rt.block_on(vm.save_template(&dir))?;
            Ok(PluginReply::Done)
        }
        PluginRequest::Wait { vm: id } => {
            let vm = vm(&id)?;
            Ok(PluginReply::Exited(rt.block_on(vm.wait())?))
        }
        PluginRequest::Shutdown { vm: id, grace_ms } => {
            let vm = vm(&id)?;
            rt.block_on(vm.shutdown(Duration::from_millis(grace_ms)))?;
            Ok(PluginReply::Done)
        }
        PluginRequest::Kill { vm: id } => {
            let vm = vm(&id)?;
            rt.block_on(vm.kill())?;
            Ok(PluginReply::Done)
        }
        PluginRequest::Stats { vm: id } => {
            let vm = vm(&id)?;
            Ok(PluginReply::Stats(rt.block_on(vm.stats())?))
        }
        PluginRequest::Release { vm: id } => {
            registry().vms.remove(&id);
            Ok(PluginReply::Done)
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// The body of every plugin's exported `call`. Never unwinds.
///
/// # Safety
/// `request` must point at `request_len` readable bytes (or be null with a
/// length of 0) and `response` at a writable [`PluginBuffer`], both valid for
/// the duration of the call: what [`super::PluginDescriptor::call`] promises.
pub unsafe fn dispatch(
    create: CreateFn,
    request: *const u8,
    request_len: usize,
    response: *mut PluginBuffer,
) -> i32 {
    if response.is_null() || (request.is_null() && request_len != 0) {
        return -1;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| -> PluginResult {
        let bytes: &[u8] = if request_len == 0 {
            &[]
        } else {
            // SAFETY: the host passes a pointer to `request_len` initialised
            // bytes that it keeps alive for the duration of this call.
            unsafe { std::slice::from_raw_parts(request, request_len) }
        };
        let request: PluginRequest = serde_json::from_slice(bytes).map_err(|e| {
            HypervisorError::Plugin(format!("malformed request from the host: {e}"))
        })?;
        handle(create, request)
    }));
    let result: PluginResult = outcome.unwrap_or_else(|payload| {
        Err(HypervisorError::Plugin(format!(
            "the plugin panicked: {}",
            panic_message(payload.as_ref())
        )))
    });
    let encoded = catch_unwind(|| serde_json::to_vec(&result))
        .ok()
        .and_then(Result::ok);
    let Some(encoded) = encoded else {
        return -2;
    };
    // SAFETY: `response` is non-null (checked above) and points at a
    // PluginBuffer the host owns for the duration of this call.
    unsafe { response.write(PluginBuffer::from_vec(encoded)) };
    0
}
