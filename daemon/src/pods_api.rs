//! hyperd's pod endpoints (docs/API.md lists them with examples).
//!
//! * `GET    /v1/pods?all=true`            pod records (running ones unless `all`)
//! * `POST   /v1/pods`                     body: a `RunRequest`; starts a detached pod → `{"id"}`
//! * `POST   /v1/pods/create`              body: `{"pod": PodFile, "name"?}`; a pod of several containers → `{"id"}`
//! * `GET    /v1/pods/{pod}`               one pod (id, unique id prefix or name)
//! * `POST   /v1/pods/{pod}/stop?t=SECS`   SIGTERM, then the VM is taken down after SECS
//! * `POST   /v1/pods/{pod}/kill?signal=N` a signal to each container's first process
//! * `POST   /v1/pods/{pod}/wait`          blocks until it exits → `{"exit_code"}`
//! * `DELETE /v1/pods/{pod}?force=true`    removes it (a running one only with force)
//! * `GET    /v1/pods/{pod}/logs?follow=&tail=N&timestamps=`  NDJSON log entries
//! * `GET    /v1/pods/{pod}/stats`         host memory and CPU of its VM
//! * `POST   /v1/pods/{pod}/exec`          body: an `ExecRequest`; upgrades to the stdio stream
//! * `POST   /v1/pods/{pod}/attach`        body: `{}`; upgrades to the main process's stdio stream
//! * `POST   /v1/pods/{pod}/start`         starts an exited pod again → `{"id"}`
//! * `POST   /v1/pods/{pod}/restart?t=SECS` stop, then start → `{"id"}`

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_core::logs;
use hyper_core::podfile::PodFile;
use hyper_core::pods::{ExecRequest, PodRecord, RunError, RunRequest, Runtime, Started};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::images_api::{error, error_of_kind, ndjson_response};
use crate::peer::{check_rootfs_dirs, Peer};
use crate::upgrade::{upgrade_stream, StreamJob};

/// The pod a request's path names (full id, unique id prefix or name),
/// resolved; an unknown or ambiguous one is answered before the handler.
pub struct PodId {
    pub id: String,
    /// As the client wrote it, for messages.
    pub given: String,
}

impl FromRequestParts<Arc<Runtime>> for PodId {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        rt: &Arc<Runtime>,
    ) -> Result<Self, Self::Rejection> {
        let Path(given) = Path::<String>::from_request_parts(parts, rt)
            .await
            .map_err(IntoResponse::into_response)?;
        let id = rt.resolve(&given).map_err(|e| run_error(&e))?;
        // A pod being taken over can be looked at, not acted on yet.
        if parts.method != axum::http::Method::GET && rt.is_recovering(&id) {
            return Err(error(
                StatusCode::CONFLICT,
                format!("pod {given} is recovering: this hyperd is taking it over after a restart; try again in a moment"),
            ));
        }
        Ok(Self { id, given })
    }
}

/// How a pod looks to clients: its record, and whether its VM runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodView {
    #[serde(flatten)]
    pub record: PodRecord,
    pub running: bool,
    /// Being taken over after a restart of hyperd.
    #[serde(default)]
    pub recovering: bool,
    /// The pod's host cgroup and its use, while its VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<hyper_core::cgroups::Usage>,
}

pub fn run_error(e: &RunError) -> Response {
    let status = match e {
        RunError::NotFound(_) | RunError::NoSuchImage(_) | RunError::NoSuchPod(_) => {
            StatusCode::NOT_FOUND
        }
        RunError::Conflict(_)
        | RunError::VolumeInUse { .. }
        | RunError::NotRunning(_)
        | RunError::Running(_)
        | RunError::NameInUse(_) => StatusCode::CONFLICT,
        RunError::Invalid(_)
        | RunError::Network(_)
        | RunError::BadName(_)
        | RunError::RemoveWithRestart
        | RunError::ImageAndRootfs
        | RunError::NoImage
        | RunError::NoExecCommand
        | RunError::Size(_)
        | RunError::NoNetworks(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_of_kind(status, e.to_string(), e.kind())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub all: bool,
}

pub async fn list(State(rt): State<Arc<Runtime>>, Query(q): Query<ListQuery>) -> Response {
    let pods: Vec<PodView> = rt
        .list()
        .into_iter()
        .map(|record| PodView {
            running: rt.is_running(&record.id),
            recovering: rt.is_recovering(&record.id),
            cgroup: None,
            record,
        })
        .filter(|p| q.all || p.running || p.recovering)
        .collect();
    Json(pods).into_response()
}

pub async fn create(
    State(rt): State<Arc<Runtime>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<RunRequest>,
) -> Response {
    if let Err(refused) = check_rootfs_dirs(peer, req.rootfs.iter().cloned().collect()).await {
        return refused;
    }
    if let Some(refused) = crate::peer::refuse_host_volumes(peer, &req.volumes) {
        return refused;
    }
    // With `interactive` the process's stdin stays open for `attach`.
    started_response(rt.create(req, None).await)
}

/// `{"id"}` for a pod that runs; 422 with the exit code when its command
/// could not start.
fn started_response(started: Result<Started, RunError>) -> Response {
    match started {
        Ok(started) => match started.early {
            // The command could not start (e.g. 127): say so, as `run` would.
            Some(outcome) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({
                    "id": started.id,
                    "exit_code": outcome.exit_code,
                    "message": outcome.message.unwrap_or_default(),
                })),
            )
                .into_response(),
            None => Json(serde_json::json!({ "id": started.id })).into_response(),
        },
        Err(e) => run_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePodRequest {
    pub pod: PodFile,
    #[serde(default)]
    pub name: Option<String>,
}

pub async fn create_pod(
    State(rt): State<Arc<Runtime>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(req): Json<CreatePodRequest>,
) -> Response {
    let dirs = req
        .pod
        .containers
        .iter()
        .filter_map(|c| c.rootfs.clone())
        .collect();
    if let Err(refused) = check_rootfs_dirs(peer, dirs).await {
        return refused;
    }
    let host_volumes: Vec<_> = req.pod.volumes.iter().filter_map(|v| v.request()).collect();
    if let Some(refused) = crate::peer::refuse_host_volumes(peer, &host_volumes) {
        return refused;
    }
    match rt.create_pod(req.pod, req.name).await {
        Ok(id) => Json(serde_json::json!({ "id": id })).into_response(),
        Err(e) => run_error(&e),
    }
}

pub async fn inspect(State(rt): State<Arc<Runtime>>, PodId { id, given: pod }: PodId) -> Response {
    match rt.record(&id) {
        Some(record) => Json(PodView {
            running: rt.is_running(&id),
            recovering: rt.is_recovering(&id),
            cgroup: rt.cgroup_usage(&id),
            record,
        })
        .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no such pod: {pod}")),
    }
}

/// A 409 for a verb that needs a running pod, when it is not.
fn not_running(rt: &Runtime, id: &str, pod: &str, verb: &str) -> Option<Response> {
    (!rt.is_running(id)).then(|| {
        error(
            StatusCode::CONFLICT,
            format!("pod {pod} is not running: {verb} needs a running pod; start it first (`hyper start {pod}`)"),
        )
    })
}

/// `hyper attach`: nothing to say yet besides the pod in the path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {}

pub async fn attach(
    State(rt): State<Arc<Runtime>>,
    PodId { id, given: pod }: PodId,
    req: Request,
) -> Response {
    if let Some(refused) = not_running(&rt, &id, &pod, "attach") {
        return refused;
    }
    upgrade_stream::<AttachRequest>(req, move |_| StreamJob::Attach { rt, pod: id }).await
}

pub async fn start(State(rt): State<Arc<Runtime>>, PodId { id, .. }: PodId) -> Response {
    started_response(rt.start(&id).await)
}

pub async fn restart(
    State(rt): State<Arc<Runtime>>,
    PodId { id, .. }: PodId,
    Query(q): Query<StopQuery>,
) -> Response {
    started_response(rt.restart(&id, stop_grace(&q)).await)
}

fn stop_grace(q: &StopQuery) -> Duration {
    Duration::from_secs(q.t.unwrap_or(10).min(3600))
}

#[derive(Debug, Deserialize)]
pub struct StopQuery {
    #[serde(default)]
    pub t: Option<u64>,
}

pub async fn stop(
    State(rt): State<Arc<Runtime>>,
    PodId { id, .. }: PodId,
    Query(q): Query<StopQuery>,
) -> Response {
    match rt.stop(&id, stop_grace(&q)).await {
        Ok(code) => Json(serde_json::json!({ "id": id, "exit_code": code })).into_response(),
        Err(e) => run_error(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct KillQuery {
    #[serde(default)]
    pub signal: Option<String>,
}

/// `KILL`, `SIGKILL`, `9`: Docker accepts all three.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return None,
    })
}

pub async fn kill(
    State(rt): State<Arc<Runtime>>,
    PodId { id, .. }: PodId,
    Query(q): Query<KillQuery>,
) -> Response {
    let name = q.signal.unwrap_or_else(|| "KILL".into());
    let Some(signal) = parse_signal(&name) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown signal {name}: use a number or a name such as TERM, KILL, HUP"),
        );
    };
    match rt.kill(&id, signal).await {
        Ok(()) => Json(serde_json::json!({ "id": id })).into_response(),
        Err(e) => run_error(&e),
    }
}

pub async fn wait(State(rt): State<Arc<Runtime>>, PodId { id, .. }: PodId) -> Response {
    match rt.wait(&id).await {
        Ok(code) => Json(serde_json::json!({ "id": id, "exit_code": code })).into_response(),
        Err(e) => run_error(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    pub force: bool,
    /// Docker's `v`: remove the pod's anonymous volumes too.
    #[serde(default)]
    pub v: bool,
}

pub async fn remove(
    State(rt): State<Arc<Runtime>>,
    PodId { id, .. }: PodId,
    Query(q): Query<RemoveQuery>,
) -> Response {
    match rt.remove(&id, q.force, q.v).await {
        Ok(()) => Json(serde_json::json!({ "id": id })).into_response(),
        Err(e) => run_error(&e),
    }
}

pub async fn stats(State(rt): State<Arc<Runtime>>, PodId { id, .. }: PodId) -> Response {
    match rt.stats(&id).await {
        Ok(stats) => Json(serde_json::json!({
            "id": id,
            "stats": stats,
            "cgroup": rt.cgroup_usage(&id),
        }))
        .into_response(),
        Err(e) => run_error(&e),
    }
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub tail: Option<usize>,
    /// A container of a pod of several; else the main one.
    #[serde(default)]
    pub container: Option<String>,
}

/// How much of a log file one batch of `logs` reads (then sends).
const LOG_BATCH: u64 = 1 << 20;

/// How often a follower looks for new log lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub async fn logs(
    State(rt): State<Arc<Runtime>>,
    PodId { id, .. }: PodId,
    Query(q): Query<LogsQuery>,
) -> Response {
    let dir = match rt.log_dir(&id, q.container.as_deref()) {
        Ok(dir) => dir,
        Err(e) => return run_error(&e),
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        match q.tail {
            // Only the end: read backwards, bounded by N entries.
            Some(n) => {
                let dir = dir.clone();
                let entries = tokio::task::spawn_blocking(move || logs::read_tail(&dir, n))
                    .await
                    .unwrap_or_default();
                if send_entries(&tx, entries.iter()).await.is_err() {
                    return;
                }
            }
            // All of it, a file at a time and a bounded batch at a time.
            None => {
                for path in logs::log_files(&dir) {
                    let mut offset = 0;
                    loop {
                        let p = path.clone();
                        let (entries, next) = tokio::task::spawn_blocking(move || {
                            logs::read_file_upto(&p, offset, LOG_BATCH)
                        })
                        .await
                        .unwrap_or((Vec::new(), offset));
                        if send_entries(&tx, entries.iter()).await.is_err() {
                            return;
                        }
                        if next == offset {
                            break;
                        }
                        offset = next;
                    }
                }
            }
        }
        if !q.follow {
            return;
        }
        // Follow the live file from its current end until the pod exits.
        let path = logs::log_path(&dir);
        let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        loop {
            let running = rt.is_running(&id);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            if len < offset {
                offset = 0; // rotated
            }
            let (entries, next) = logs::read_file(&path, offset);
            offset = next;
            if send_entries(&tx, entries.iter()).await.is_err() {
                return;
            }
            if !running {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            if tx.is_closed() {
                return;
            }
        }
    });
    ndjson_response(rx)
}

/// Sends entries as NDJSON in chunks of about 64 KiB: one HTTP chunk per
/// entry would cost a syscall each on both sides.
async fn send_entries<'a>(
    tx: &mpsc::Sender<Vec<u8>>,
    entries: impl Iterator<Item = &'a logs::Entry>,
) -> Result<(), ()> {
    const CHUNK: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(CHUNK);
    for entry in entries {
        serde_json::to_writer(&mut buf, entry).map_err(|_| ())?;
        buf.push(b'\n');
        if buf.len() >= CHUNK {
            tx.send(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)))
                .await
                .map_err(|_| ())?;
        }
    }
    if !buf.is_empty() {
        tx.send(buf).await.map_err(|_| ())?;
    }
    Ok(())
}

pub async fn exec(
    State(rt): State<Arc<Runtime>>,
    PodId { id, given: pod }: PodId,
    req: Request,
) -> Response {
    if let Some(refused) = not_running(&rt, &id, &pod, "exec") {
        return refused;
    }
    upgrade_stream::<ExecRequest>(req, move |exec: ExecRequest| StreamJob::Exec {
        rt,
        pod: id,
        exec,
    })
    .await
}
