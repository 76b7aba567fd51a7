//! hyperd's log of the pods' events (see [`hyper_api::events`] for what
//! one is).
//!
//! hyperd keeps the last [`RING_CAPACITY`] events in memory (nothing on
//! disk: a restarted hyperd starts an empty log, and says `takeover` for
//! each pod it adopts), so `hyper events --since` can look back, and
//! broadcasts each new one to the clients that follow. A client reads the
//! ring and subscribes under one lock: it sees every event once, with no gap
//! between the past and the live ones. A client too slow for the broadcast
//! buffer is told how many it lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::{broadcast, watch};

pub use hyper_api::events::*;

/// Events kept for `--since`. Docker keeps 256; ours are small.
pub const RING_CAPACITY: usize = 1024;
/// Events a follower may fall behind by before it loses some.
const BROADCAST_CAPACITY: usize = 1024;

/// The in-memory log: a ring of the last events and a broadcast of the new
/// ones.
pub struct EventLog {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Event>,
    /// Set when hyperd stops: followers end their streams, so a graceful
    /// shutdown does not wait for them forever.
    closed: watch::Sender<bool>,
}

struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    last_nano: u64,
}

/// What a new follower gets: the kept events, then the live ones.
pub struct Subscription {
    pub past: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
    /// Becomes true when hyperd stops.
    pub closed: watch::Receiver<bool>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::with_capacity(RING_CAPACITY)
    }
}

impl EventLog {
    pub fn with_capacity(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(RING_CAPACITY)),
                capacity: capacity.max(1),
                last_nano: 0,
            }),
            tx,
            closed: watch::Sender::new(false),
        }
    }

    /// hyperd is stopping: every follower's stream ends.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Records an event about pod `id` now.
    pub fn emit(&self, action: Action, id: &str, attributes: BTreeMap<String, String>) {
        let mut ring = lock(&self.ring);
        let now = unix_nanos(SystemTime::now());
        // Strictly increasing, so `--since`/`--until` split the log cleanly
        // even if the clock steps back.
        let time_nano = now.max(ring.last_nano + 1);
        ring.last_nano = time_nano;
        let event = Event {
            kind: "pod".into(),
            action,
            id: id.to_string(),
            attributes,
            time: time_nano / 1_000_000_000,
            time_nano,
        };
        tracing::debug!(pod = %id, action = action.as_str(), "event");
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock: a subscriber sees it either in the ring or
        // live, never both, never neither. No follower is not an error.
        let _ = self.tx.send(event);
    }

    /// The kept events and a receiver of the new ones, taken together.
    pub fn subscribe(&self) -> Subscription {
        let ring = lock(&self.ring);
        Subscription {
            past: ring.events.iter().cloned().collect(),
            live: self.tx.subscribe(),
            closed: self.closed.subscribe(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_ring_keeps_the_last_events_in_order_with_increasing_times() {
        let log = EventLog::with_capacity(3);
        for i in 0..5 {
            log.emit(Action::Start, &format!("p{i}"), BTreeMap::new());
        }
        let sub = log.subscribe();
        let ids: Vec<&str> = sub.past.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["p2", "p3", "p4"]);
        assert!(sub.past.windows(2).all(|w| w[0].time_nano < w[1].time_nano));
        assert_eq!(sub.past[0].time, sub.past[0].time_nano / 1_000_000_000);
    }

    #[tokio::test]
    async fn a_subscriber_sees_past_then_live_events_once_each() {
        let log = EventLog::default();
        log.emit(Action::Create, "a", BTreeMap::new());
        let mut sub = log.subscribe();
        log.emit(Action::Start, "a", BTreeMap::new());
        assert_eq!(sub.past.len(), 1);
        assert_eq!(sub.past[0].action, Action::Create);
        let live = sub.live.recv().await.unwrap();
        assert_eq!(live.action, Action::Start);
        assert!(sub.live.try_recv().is_err());
        assert!(!*sub.closed.borrow());
        log.close();
        sub.closed.wait_for(|c| *c).await.unwrap();
    }

    #[test]
    fn events_serialize_as_the_api_documents() {
        let log = EventLog::default();
        log.emit(Action::ExecDie, "abc", attrs(&[("exitCode", "3")]));
        let e = &log.subscribe().past[0];
        let v: serde_json::Value = serde_json::to_value(e).unwrap();
        assert_eq!(v["type"], "pod");
        assert_eq!(v["action"], "exec_die");
        assert_eq!(v["attributes"]["exitCode"], "3");
        assert!(v["time_nano"].as_u64().unwrap() > 0);
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), *e);
    }
}
