//! hyperd's side of the boundary: each plugin runs in its own host process
//! (`hyper-plugin-host`, see [`super::host`]), reached over a socket, and is
//! wrapped back into the async [`Hypervisor`] trait.
//!
//! * A call is one line out and one line back; the caller awaits a oneshot,
//!   so a dropped call costs nothing in hyperd.
//! * Each VM has one exit watcher: a single `wait` call, sent when the VM is
//!   launched (or taken back), whose reply fills a watch channel that any
//!   number of [`Vm::wait`] callers read. A cancelled waiter costs nothing.
//! * When the host process dies (a plugin that segfaults or aborts, a kill),
//!   the calls in flight fail with [`HypervisorError::PluginDied`] naming the
//!   plugin and the signal; one thread restarts the host, configures its
//!   hypervisors again from their tables, and takes every live VM back
//!   through the backend's `recover` (the VMs are separate processes, or Xen
//!   domains, and outlive the host), so their waiters never notice.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use super::abi::{PluginReply, PluginRequest, PluginResult};
use super::inproc::LoadError;
use super::wire::{self, Call, Hello, Reply};
use crate::{
    Capabilities, ConfigProblem, Hypervisor, HypervisorError, ProbeReport, Vm, VmExit, VmInfo,
    VmSpec, VmStats,
};

/// The host binary's file name; hyperd looks for it beside itself.
pub const HOST_BINARY: &str = "hyper-plugin-host";
/// How long a new host may take to load its plugin and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Restarts tried in a row before the plugin is given up as down.
const RESTART_ATTEMPTS: u32 = 5;
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few map operations that cannot leave
    // the data half-updated, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where `hyper-plugin-host` is: `$HYPER_PLUGIN_HOST`, else beside the
/// running binary (or one level up, for cargo's test binaries in `deps/`).
pub fn default_host_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HYPER_PLUGIN_HOST") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(HOST_BINARY))
        .find(|p| p.is_file());
    found
}

/// Why a host process ended, for errors and logs.
fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(st) => match (st.code(), st.signal()) {
            (_, Some(sig)) => format!(
                "its host process was killed by signal {sig} ({}){}",
                signal_name(sig),
                if st.core_dumped() {
                    ", core dumped"
                } else {
                    ""
                }
            ),
            (Some(code), _) => format!("its host process exited with status {code}"),
            _ => format!("its host process ended ({st})"),
        },
        Err(e) => format!("its host process ended (status unknown: {e})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

fn died(plugin: &str, reason: &str) -> HypervisorError {
    HypervisorError::PluginDied {
        plugin: plugin.to_string(),
        reason: reason.to_string(),
    }
}

fn unexpected(plugin: &str, reply: &PluginReply) -> HypervisorError {
    HypervisorError::Plugin(format!(
        "plugin {plugin} gave an unexpected reply: {reply:?}"
    ))
}

/// Who is waiting for a reply.
enum Waiter {
    Blocking(std::sync::mpsc::Sender<PluginResult>),
    Async(oneshot::Sender<PluginResult>),
    /// The one exit watcher of this VM.
    VmExit(String),
    /// Nobody (a `release`).
    Nobody,
}

#[derive(Default)]
struct Pending {
    /// Set once the host has died: no new calls.
    dead: Option<String>,
    calls: HashMap<u64, Waiter>,
}

/// One host process and the socket to it.
struct Conn {
    plugin: String,
    generation: u64,
    pid: u32,
    writer: Mutex<UnixStream>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

impl Conn {
    fn send(&self, request: PluginRequest, waiter: Waiter) -> Result<(), HypervisorError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut pending = lock(&self.pending);
            if let Some(reason) = &pending.dead {
                return Err(died(&self.plugin, reason));
            }
            pending.calls.insert(id, waiter);
        }
        let written = wire::write_line(&mut *lock(&self.writer), &Call { id, request });
        if let Err(e) = written {
            lock(&self.pending).calls.remove(&id);
            return Err(died(
                &self.plugin,
                &format!("cannot write to its host process: {e}"),
            ));
        }
        Ok(())
    }

    async fn call(&self, request: PluginRequest) -> PluginResult {
        let call = request.name();
        let (tx, rx) = oneshot::channel();
        let result = async {
            self.send(request, Waiter::Async(tx))?;
            rx.await.map_err(|_| self.reply_lost())?
        }
        .await;
        super::call_errors::count(&self.plugin, call, &result);
        result
    }

    fn reply_lost(&self) -> HypervisorError {
        HypervisorError::Plugin(format!("plugin {}: reply lost", self.plugin))
    }

    /// For the quick calls made outside async code (configure, and the
    /// restart thread). Never call from a plugin's reply path.
    fn call_blocking(&self, request: PluginRequest) -> PluginResult {
        let call = request.name();
        let (tx, rx) = std::sync::mpsc::channel();
        let result = self
            .send(request, Waiter::Blocking(tx))
            .and_then(|()| rx.recv().map_err(|_| self.reply_lost())?);
        super::call_errors::count(&self.plugin, call, &result);
        result
    }

    fn take(&self, id: u64) -> Option<Waiter> {
        lock(&self.pending).calls.remove(&id)
    }

    /// Marks the connection dead and hands back whoever was waiting.
    fn die(&self, reason: &str) -> Vec<Waiter> {
        let mut pending = lock(&self.pending);
        pending.dead = Some(reason.to_string());
        pending.calls.drain().map(|(_, w)| w).collect()
    }

    /// Closes the socket: the host process exits when it sees the end.
    fn close(&self) {
        let _ = lock(&self.writer).shutdown(std::net::Shutdown::Both);
    }
}

struct HvEntry {
    table: serde_json::Value,
    /// The handle in the current host process.
    handle: Option<u64>,
}

struct VmEntry {
    hv: usize,
    spec: VmSpec,
    info: VmInfo,
    pid_start: Option<u64>,
    /// The host generation this VM is known to (and watched by).
    generation: u64,
    /// Tells this VM apart from a later one with the same id.
    token: u64,
    exit: watch::Sender<ExitSlot>,
}

#[derive(Default)]
struct State {
    conn: Option<Arc<Conn>>,
    /// Why there is no host process, while there is none.
    down: Option<String>,
    generation: u64,
    hypervisors: Vec<HvEntry>,
    vms: HashMap<String, VmEntry>,
}

struct Host {
    path: PathBuf,
    host_binary: PathBuf,
    name: String,
    build_id: String,
    state: Mutex<State>,
}

/// A started host process that has said hello.
struct Started {
    child: Child,
    socket: UnixStream,
    reader: BufReader<UnixStream>,
    name: String,
    build_id: String,
}

fn start_process(path: &Path, host_binary: &Path) -> Result<Started, LoadError> {
    let fail = |reason: String| LoadError::Host {
        path: path.to_path_buf(),
        host: host_binary.to_path_buf(),
        reason,
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| fail(format!("socketpair: {e}")))?;
    let mut child = Command::new(host_binary)
        .arg(path)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        // Its own process group: a Ctrl-C meant for hyperd in a terminal
        // must not kill the host under hyperd's own orderly shutdown. When
        // hyperd goes, the host sees the socket end and exits.
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start it: {e}")))?;
    let hello = (|| {
        ours.set_read_timeout(Some(HELLO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(ours.try_clone().map_err(|e| e.to_string())?);
        let hello = wire::read_line::<Hello>(&mut reader, &mut Vec::new())
            .map_err(|e| format!("no hello within {HELLO_TIMEOUT:?}: {e}"))?;
        ours.set_read_timeout(None).map_err(|e| e.to_string())?;
        Ok::<_, String>((hello, reader))
    })();
    let (hello, reader) = match hello {
        Ok((Some(hello), reader)) => (hello, reader),
        Ok((None, _)) => {
            let reason = describe_exit(child.wait());
            return Err(fail(format!(
                "it ended before loading the plugin: {reason}"
            )));
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(e));
        }
    };
    match hello {
        Hello::Loaded { name, build_id } => Ok(Started {
            child,
            socket: ours,
            reader,
            name,
            build_id,
        }),
        Hello::Refused(e) => {
            let _ = child.wait();
            Err(e)
        }
    }
}

impl Host {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn conn(&self) -> Result<Arc<Conn>, HypervisorError> {
        let st = self.state();
        st.conn.clone().ok_or_else(|| {
            died(
                &self.name,
                st.down
                    .as_deref()
                    .unwrap_or("its host process is not running"),
            )
        })
    }

    /// Starts serving a new host process: a thread reads its replies.
    fn attach(self: &Arc<Self>, started: Started, generation: u64) -> Arc<Conn> {
        let Started {
            child,
            socket,
            reader,
            ..
        } = started;
        let conn = Arc::new(Conn {
            plugin: self.name.clone(),
            generation,
            pid: child.id(),
            writer: Mutex::new(socket),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
        });
        let host = Arc::downgrade(self);
        let reading = conn.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("plugin-{}", self.name))
            .spawn(move || read_replies(host, reading, reader, child));
        if let Err(e) = spawned {
            // Without a reader nothing would ever be answered: fail now.
            conn.die(&format!("cannot start its reader thread: {e}"));
            conn.close();
        }
        conn
    }

    fn exited(&self, vm: &str, generation: u64, result: PluginResult) {
        let exit = match result {
            Ok(PluginReply::Exited(exit)) => Ok(exit),
            Ok(other) => Err(unexpected(&self.name, &other)),
            Err(e) => Err(e),
        };
        if let Some(entry) = self.state().vms.get(vm) {
            if entry.generation == generation {
                entry.exit.send_replace(Some(exit));
            }
        }
    }

    /// Arms the exit watcher of `vm` on `conn`.
    fn watch_exit(&self, conn: &Conn, vm: &str) {
        if let Err(e) = conn.send(
            PluginRequest::Wait { vm: vm.to_string() },
            Waiter::VmExit(vm.to_string()),
        ) {
            // The host died on the way: its restart arms the watcher again.
            tracing::debug!(vm, "exit watcher not armed: {e}");
        }
    }

    /// Runs on the dead host's reader thread.
    fn restart(self: &Arc<Self>, dead: &Arc<Conn>, reason: String) {
        {
            let mut st = self.state();
            if !st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
                // A host that never went live (it died during a restart).
                return;
            }
            st.conn = None;
            st.down = Some(format!("{reason}; restarting it"));
            for hv in &mut st.hypervisors {
                hv.handle = None;
            }
        }
        tracing::error!(plugin = %self.name, "backend plugin died: {reason}; restarting its host process");
        let mut delay = FIRST_RESTART_DELAY;
        let mut last = String::new();
        for attempt in 1..=RESTART_ATTEMPTS {
            match self.reconnect() {
                Ok(n) => {
                    tracing::info!(plugin = %self.name, vms = n, attempt, "plugin host restarted; its VMs were taken back");
                    return;
                }
                Err(e) => {
                    tracing::warn!(plugin = %self.name, attempt, "restarting the plugin host: {e}");
                    last = e;
                }
            }
            std::thread::sleep(delay);
            delay *= 2;
        }
        let why = format!(
            "{reason}; it could not be restarted ({RESTART_ATTEMPTS} attempts, last: {last})"
        );
        tracing::error!(plugin = %self.name, "{why}; its VMs are reported as ended");
        let mut st = self.state();
        st.down = Some(why.clone());
        for vm in st.vms.values() {
            vm.exit.send_if_modified(|slot| {
                if slot.is_some() {
                    return false;
                }
                *slot = Some(Err(died(&self.name, &why)));
                true
            });
        }
    }

    /// Starts a new host, configures it like the dead one and takes every
    /// live VM back. Returns how many VMs it took back.
    fn reconnect(self: &Arc<Self>) -> Result<usize, String> {
        let started = start_process(&self.path, &self.host_binary).map_err(|e| e.to_string())?;
        if started.name != self.name || started.build_id != self.build_id {
            return Err(format!(
                "{} now holds plugin {} ({}), not {} ({}); restart hyperd to load it",
                self.path.display(),
                started.name,
                started.build_id,
                self.name,
                self.build_id
            ));
        }
        let generation = {
            let mut st = self.state();
            st.generation += 1;
            st.generation
        };
        let conn = self.attach(started, generation);
        let result = self.take_back(&conn);
        if result.is_err() {
            conn.close();
        }
        result
    }

    fn take_back(self: &Arc<Self>, conn: &Arc<Conn>) -> Result<usize, String> {
        let tables: Vec<serde_json::Value> = self
            .state()
            .hypervisors
            .iter()
            .map(|h| h.table.clone())
            .collect();
        let mut handles = Vec::with_capacity(tables.len());
        for table in tables {
            match conn.call_blocking(PluginRequest::Configure { table }) {
                Ok(PluginReply::Configured { hypervisor }) => handles.push(hypervisor),
                Ok(other) => return Err(unexpected(&self.name, &other).to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut taken = 0;
        // VMs launched while the host was restarting are picked up on a
        // second round, after the new host is published.
        for round in 0..2 {
            let todo: Vec<(String, usize, VmSpec, VmInfo, Option<u64>)> = {
                let mut st = self.state();
                if round == 1 {
                    st.conn = Some(conn.clone());
                    st.down = None;
                    for (hv, handle) in st.hypervisors.iter_mut().zip(&handles) {
                        hv.handle = Some(*handle);
                    }
                }
                st.vms
                    .iter()
                    .filter(|(_, v)| v.generation != conn.generation)
                    .map(|(id, v)| {
                        (
                            id.clone(),
                            v.hv,
                            v.spec.clone(),
                            v.info.clone(),
                            v.pid_start,
                        )
                    })
                    .collect()
            };
            for (id, hv, spec, info, pid_start) in todo {
                let Some(&hypervisor) = handles.get(hv) else {
                    continue;
                };
                let outcome = conn.call_blocking(PluginRequest::Recover {
                    hypervisor,
                    spec,
                    info,
                    pid_start,
                });
                if let Err(HypervisorError::PluginDied { reason, .. }) = &outcome {
                    return Err(reason.clone());
                }
                let mut st = self.state();
                let Some(entry) = st.vms.get_mut(&id) else {
                    // Dropped meanwhile: the new host need not track it.
                    drop(st);
                    let _ = conn.send(PluginRequest::Release { vm: id }, Waiter::Nobody);
                    continue;
                };
                entry.generation = conn.generation;
                match outcome {
                    Ok(PluginReply::Launched(_)) => {
                        drop(st);
                        self.watch_exit(conn, &id);
                        taken += 1;
                    }
                    Ok(other) => {
                        entry
                            .exit
                            .send_replace(Some(Err(unexpected(&self.name, &other))));
                    }
                    // The VM ended while its host was down.
                    Err(e) => {
                        tracing::warn!(plugin = %self.name, vm = %id, "VM not taken back after the plugin's restart: {e}");
                        entry.exit.send_replace(Some(Err(e)));
                    }
                }
            }
        }
        Ok(taken)
    }

    /// Launch, restore or recover: registers the VM and arms its exit
    /// watcher.
    async fn start_vm(
        self: &Arc<Self>,
        hv: usize,
        spec: VmSpec,
        how: StartMode,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let (conn, handle) = {
            let st = self.state();
            let conn = st.conn.clone();
            let handle = st.hypervisors.get(hv).and_then(|h| h.handle);
            match (conn, handle) {
                (Some(c), Some(h)) => (c, h),
                _ => {
                    return Err(died(
                        &self.name,
                        st.down
                            .as_deref()
                            .unwrap_or("its host process is not running"),
                    ))
                }
            }
        };
        let request = match &how {
            StartMode::Launch => PluginRequest::Launch {
                hypervisor: handle,
                spec: spec.clone(),
            },
            StartMode::Restore(template) => PluginRequest::Restore {
                hypervisor: handle,
                spec: spec.clone(),
                template: template.clone(),
            },
            StartMode::Recover(info, pid_start) => PluginRequest::Recover {
                hypervisor: handle,
                spec: spec.clone(),
                info: info.clone(),
                pid_start: *pid_start,
            },
        };
        let info = match conn.call(request).await? {
            PluginReply::Launched(info) => info,
            other => return Err(unexpected(&self.name, &other)),
        };
        let pid_start = match &how {
            StartMode::Recover(_, start) => *start,
            StartMode::Launch | StartMode::Restore(_) => {
                info.pid.and_then(crate::adopt::process_start_time)
            }
        };
        static TOKENS: AtomicU64 = AtomicU64::new(1);
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        let (exit_tx, exit) = watch::channel(None);
        let live = {
            let mut st = self.state();
            st.vms.insert(
                info.id.clone(),
                VmEntry {
                    hv,
                    spec,
                    info: info.clone(),
                    pid_start,
                    generation: conn.generation,
                    token,
                    exit: exit_tx,
                },
            );
            st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn))
        };
        // Otherwise the host died after launching it: its restart takes the
        // VM back and arms the watcher.
        if live {
            self.watch_exit(&conn, &info.id);
        }
        Ok(Box::new(PluginVm {
            host: self.clone(),
            info,
            token,
            exit,
        }))
    }
}

/// How [`Host::start_vm`] gets its VM.
enum StartMode {
    Launch,
    /// A clone of the template in this directory.
    Restore(std::path::PathBuf),
    /// Take over a running VM (`info`, its pid's start time).
    Recover(VmInfo, Option<u64>),
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(conn) = self.state().conn.take() {
            conn.close();
        }
    }
}

fn read_replies(
    host: Weak<Host>,
    conn: Arc<Conn>,
    mut reader: BufReader<UnixStream>,
    mut child: Child,
) {
    let mut buf = Vec::new();
    let broken = loop {
        match wire::read_line::<Reply>(&mut reader, &mut buf) {
            Ok(Some(Reply { id, result })) => match conn.take(id) {
                Some(Waiter::Async(tx)) => {
                    let _ = tx.send(result);
                }
                Some(Waiter::Blocking(tx)) => {
                    let _ = tx.send(result);
                }
                Some(Waiter::VmExit(vm)) => {
                    if let Some(host) = host.upgrade() {
                        host.exited(&vm, conn.generation, result);
                    }
                }
                Some(Waiter::Nobody) | None => {}
            },
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if let Some(e) = &broken {
        tracing::error!(plugin = %conn.plugin, "bad reply from the plugin's host process: {e}; stopping it");
        let _ = child.kill();
    }
    let reason = describe_exit(child.wait());
    for waiter in conn.die(&reason) {
        match waiter {
            Waiter::Async(tx) => {
                let _ = tx.send(Err(died(&conn.plugin, &reason)));
            }
            Waiter::Blocking(tx) => {
                let _ = tx.send(Err(died(&conn.plugin, &reason)));
            }
            Waiter::VmExit(_) | Waiter::Nobody => {}
        }
    }
    if let Some(host) = host.upgrade() {
        host.restart(&conn, reason);
    }
}

/// A plugin running in its host process, which passed the ABI and build
/// checks there.
pub struct LoadedPlugin {
    host: Arc<Host>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.host.path)
            .field("name", &self.host.name)
            .finish()
    }
}

impl LoadedPlugin {
    /// Starts a host process for the plugin at `path` (with the host binary
    /// found by [`default_host_binary`]), which loads it and checks its ABI
    /// version and build identity.
    ///
    /// Loading runs the library's initialisers: only load from a directory
    /// that only root can write (`[runtime] plugin_dir`).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let host = default_host_binary().ok_or_else(|| LoadError::Host {
            path: path.to_path_buf(),
            host: PathBuf::from(HOST_BINARY),
            reason: "not found beside this program; install it there (`make install`) or set HYPER_PLUGIN_HOST".into(),
        })?;
        Self::load_with_host(path, &host)
    }

    pub fn load_with_host(path: &Path, host_binary: &Path) -> Result<Self, LoadError> {
        let started = start_process(path, host_binary)?;
        let host = Arc::new(Host {
            path: path.to_path_buf(),
            host_binary: host_binary.to_path_buf(),
            name: started.name.clone(),
            build_id: started.build_id.clone(),
            state: Mutex::new(State::default()),
        });
        let conn = host.attach(started, 0);
        host.state().conn = Some(conn);
        Ok(Self { host })
    }

    pub fn name(&self) -> &str {
        &self.host.name
    }

    pub fn path(&self) -> &Path {
        &self.host.path
    }

    pub fn build_id(&self) -> &str {
        &self.host.build_id
    }

    /// The pid of the plugin's current host process, if it runs.
    pub fn host_pid(&self) -> Option<u32> {
        self.host.state().conn.as_ref().map(|c| c.pid)
    }

    /// Validates `table` (the plugin's own `[hypervisor.<name>]` table) and
    /// builds the hypervisor. Blocking and quick.
    pub fn configure(
        self: &Arc<Self>,
        table: serde_json::Value,
    ) -> Result<PluginHypervisor, ConfigureError> {
        let conn = self.host.conn()?;
        match conn.call_blocking(PluginRequest::Configure {
            table: table.clone(),
        })? {
            PluginReply::Configured { hypervisor } => {
                let capabilities =
                    match conn.call_blocking(PluginRequest::Capabilities { hypervisor })? {
                        PluginReply::Capabilities(c) => c,
                        other => return Err(unexpected(self.name(), &other).into()),
                    };
                let index = {
                    let mut st = self.host.state();
                    // A host restarted meanwhile does not know it yet.
                    let current = st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn));
                    st.hypervisors.push(HvEntry {
                        table,
                        handle: current.then_some(hypervisor),
                    });
                    st.hypervisors.len() - 1
                };
                Ok(PluginHypervisor {
                    plugin: self.clone(),
                    index,
                    capabilities,
                })
            }
            PluginReply::ConfigRejected { problems } => Err(ConfigureError::Rejected(problems)),
            other => Err(unexpected(self.name(), &other).into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Rejected(Vec<ConfigProblem>),
    #[error(transparent)]
    Call(#[from] HypervisorError),
}

/// A configured backend living in a plugin.
pub struct PluginHypervisor {
    plugin: Arc<LoadedPlugin>,
    index: usize,
    capabilities: Capabilities,
}

impl PluginHypervisor {
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }

    fn handle(&self) -> Result<(Arc<Conn>, u64), HypervisorError> {
        let conn = self.plugin.host.conn()?;
        let handle = self
            .plugin
            .host
            .state()
            .hypervisors
            .get(self.index)
            .and_then(|h| h.handle)
            .ok_or_else(|| died(self.name(), "its host process is restarting"))?;
        Ok((conn, handle))
    }
}

#[async_trait]
impl Hypervisor for PluginHypervisor {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn probe(&self) -> ProbeReport {
        let result = match self.handle() {
            Ok((conn, hypervisor)) => conn.call(PluginRequest::Probe { hypervisor }).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(PluginReply::Probe(report)) => report,
            Ok(other) => ProbeReport {
                usable: false,
                reason: unexpected(self.name(), &other).to_string(),
                details: Default::default(),
            },
            Err(e) => ProbeReport {
                usable: false,
                reason: e.to_string(),
                details: Default::default(),
            },
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        self.plugin
            .host
            .start_vm(self.index, spec, StartMode::Launch)
            .await
    }

    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        self.plugin
            .host
            .start_vm(self.index, spec, StartMode::Recover(info, pid_start))
            .await
    }

    async fn restore(
        &self,
        spec: VmSpec,
        template: &std::path::Path,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        self.plugin
            .host
            .start_vm(self.index, spec, StartMode::Restore(template.to_path_buf()))
            .await
    }
}

struct PluginVm {
    host: Arc<Host>,
    info: VmInfo,
    token: u64,
    exit: watch::Receiver<ExitSlot>,
}

impl PluginVm {
    async fn call(&self, request: PluginRequest) -> PluginResult {
        self.host.conn()?.call(request).await
    }

    fn expect_done(&self, reply: PluginReply) -> Result<(), HypervisorError> {
        match reply {
            PluginReply::Done => Ok(()),
            other => Err(unexpected(&self.host.name, &other)),
        }
    }
}

#[async_trait]
impl Vm for PluginVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut exit = self.exit.clone();
        let slot = exit.wait_for(Option::is_some).await.map_err(|_| {
            HypervisorError::Plugin(format!(
                "plugin {}: the VM's exit watcher is gone",
                self.host.name
            ))
        })?;
        slot.clone().unwrap_or_else(|| {
            Err(HypervisorError::Plugin(format!(
                "plugin {}: no exit recorded",
                self.host.name
            )))
        })
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let reply = self
            .call(PluginRequest::Shutdown {
                vm: self.info.id.clone(),
                grace_ms,
            })
            .await?;
        self.expect_done(reply)
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        let reply = self
            .call(PluginRequest::Kill {
                vm: self.info.id.clone(),
            })
            .await?;
        self.expect_done(reply)
    }

    async fn save_template(&self, dir: &std::path::Path) -> Result<(), HypervisorError> {
        let reply = self
            .call(PluginRequest::SaveTemplate {
                vm: self.info.id.clone(),
                dir: dir.to_path_buf(),
            })
            .await?;
        self.expect_done(reply)
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        match self
            .call(PluginRequest::Stats {
                vm: self.info.id.clone(),
            })
            .await?
        {
            PluginReply::Stats(stats) => Ok(stats),
            other => Err(unexpected(&self.host.name, &other)),
        }
    }
}

impl Drop for PluginVm {
    fn drop(&mut self) {
        // Never blocks: the release goes out without waiting for its reply.
        let conn = {
            let mut st = self.host.state();
            if st
                .vms
                .get(&self.info.id)
                .is_none_or(|v| v.token != self.token)
            {
                return;
            }
            st.vms.remove(&self.info.id);
            st.conn.clone()
        };
        if let Some(conn) = conn {
            let request = PluginRequest::Release {
                vm: self.info.id.clone(),
            };
            if let Err(e) = conn.send(request, Waiter::Nobody) {
                tracing::debug!(vm = %self.info.id, "plugin did not release the VM: {e}");
            }
        }
    }
}
