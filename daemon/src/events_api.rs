//! hyperd's operator endpoints (docs/API.md):
//!
//! * `GET /v1/events?since=&until=&filters=` (also `/events`): the pods'
//!   events as NDJSON, Docker's way: the kept ones from `since`, then the
//!   new ones as they happen until `until` (without `until`, until the
//!   client goes). Times in Docker's forms (RFC 3339, unix seconds, a
//!   duration before now such as `10m`); `filters` is Docker's JSON
//!   (`{"pod":["web"],"event":["die","start"]}`).
//! * `GET /metrics`: Prometheus text format.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_core::events::{parse_time, unix_nanos, Event, Filters};
use hyper_core::pods::Runtime;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::images_api::{error, ndjson_response};

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    pub since: Option<String>,
    pub until: Option<String>,
    pub filters: Option<String>,
}

pub async fn events(State(rt): State<Arc<Runtime>>, Query(q): Query<EventsQuery>) -> Response {
    let now = SystemTime::now();
    let time = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_time(flag, s, now))
            .transpose()
    };
    let (since, until) = match (time("since", &q.since), time("until", &q.until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let filters = match q.filters.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => match Filters::from_json(f) {
            Ok(f) => f,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
        None => Filters::default(),
    };
    let sub = rt.events().subscribe();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    let in_range = move |e: &Event| {
        since.is_none_or(|s| e.time_nano >= s) && until.is_none_or(|u| e.time_nano <= u)
    };
    tokio::spawn(async move {
        // The kept events: only with `since` or `until`, as in Docker (a
        // plain `hyper events` shows what happens from now on).
        if since.is_some() || until.is_some() {
            for e in sub
                .past
                .iter()
                .filter(|e| in_range(e) && filters.matches(e))
            {
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
        }
        let now_nano = unix_nanos(SystemTime::now());
        let Some(wait) = until.map_or(Some(Duration::MAX), |u| {
            u.checked_sub(now_nano).map(Duration::from_nanos)
        }) else {
            // `until` has passed: the past is all there is.
            return;
        };
        let deadline = tokio::time::sleep(wait.min(Duration::from_secs(100 * 365 * 86_400)));
        tokio::pin!(deadline);
        let (mut live, mut closed) = (sub.live, sub.closed);
        let closing = async move {
            // A dropped sender ends the stream as well.
            let _ = closed.wait_for(|c| *c).await.is_ok();
        };
        tokio::pin!(closing);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = &mut closing => return,
                _ = tx.closed() => return,
                next = live.recv() => match next {
                    Ok(e) => {
                        if until.is_some_and(|u| e.time_nano > u) {
                            return;
                        }
                        if filters.matches(&e) && tx.send(line(&e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("events: a slow client lost {n} event(s)");
                        let note = serde_json::json!({"type": "daemon", "action": "events_lost", "attributes": {"count": n.to_string()}});
                        let mut bytes = note.to_string().into_bytes();
                        bytes.push(b'\n');
                        if tx.send(bytes).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    ndjson_response(rx)
}

fn line(e: &Event) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(e).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

pub async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    let text = rt.metrics_text().await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
