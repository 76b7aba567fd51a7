//! The pods' events, as `docker events` has them: create, start, die (with
//! the exit code), oom, restart, destroy, takeover, stop, kill, exec_start
//! and exec_die. hyperd keeps and sends them (`hyper_core::events`);
//! `hyper events` filters and prints them with what is here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What happened to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded, before its VM boots.
    Create,
    /// Its containers run (also after each restart).
    Start,
    /// It ended: `exitCode`.
    Die,
    /// An OOM kill: `scope=guest` when the guest's OOM killer killed a
    /// container's first process (`container` names it), `scope=host` when
    /// the VMM's host cgroup's OOM killer killed the VMM.
    Oom,
    /// Started again: by its restart policy (`reason=policy`,
    /// `restartCount`) or by `hyper restart` (`reason=restart`).
    Restart,
    /// Its record and files were removed.
    Destroy,
    /// A restarted hyperd adopted it, VM and session.
    Takeover,
    /// `hyper stop` ended it.
    Stop,
    /// `hyper kill`: `signal`.
    Kill,
    /// `hyper exec` started a process: `execID`.
    ExecStart,
    /// That process ended: `execID`, `exitCode`.
    ExecDie,
}

impl Action {
    pub const ALL: [Action; 11] = [
        Action::Create,
        Action::Start,
        Action::Die,
        Action::Oom,
        Action::Restart,
        Action::Destroy,
        Action::Takeover,
        Action::Stop,
        Action::Kill,
        Action::ExecStart,
        Action::ExecDie,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Start => "start",
            Action::Die => "die",
            Action::Oom => "oom",
            Action::Restart => "restart",
            Action::Destroy => "destroy",
            Action::Takeover => "takeover",
            Action::Stop => "stop",
            Action::Kill => "kill",
            Action::ExecStart => "exec_start",
            Action::ExecDie => "exec_die",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One event, as `GET /v1/events` sends it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What it happened to: always `pod` for now.
    #[serde(rename = "type")]
    pub kind: String,
    pub action: Action,
    /// The pod's id.
    pub id: String,
    /// `name`, `image`, `backend` where the pod has them, and the action's
    /// own (`exitCode`, `signal`, `restartCount`, `reason`, `execID`).
    pub attributes: BTreeMap<String, String>,
    /// Unix seconds.
    pub time: u64,
    /// Unix nanoseconds; strictly increasing within one hyperd.
    pub time_nano: u64,
}

/// `t` in nanoseconds since the epoch (0 before it).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A filter or time a client gave that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    #[error("--filter {0}: expected KEY=VALUE, e.g. pod=web or event=die")]
    Malformed(String),
    #[error("--filter {key}=…: unknown key {key}; use pod, event, image or backend")]
    UnknownKey { key: String },
    #[error("--filter event={0}: unknown event; use one of {list}", list = action_list())]
    UnknownEvent(String),
    #[error("filters: not a JSON object of KEY → [VALUE…]: {0}")]
    Json(String),
    #[error("{flag} {value}: not a time; give RFC 3339 (2026-12-07T10:00:00Z, 2026-12-07), unix seconds (1796637600.5) or a duration before now (10m, 1h30m)")]
    Time { flag: String, value: String },
}

fn action_list() -> String {
    Action::ALL
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

const FILTER_KEYS: [&str; 4] = ["pod", "event", "image", "backend"];

/// Which events a client wants: values of one key are alternatives, keys
/// all have to match (Docker's rule). Empty: every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    /// `--filter` arguments: each `KEY=VALUE`, or several joined by commas
    /// (`pod=web,event=die`). `container` is taken for `pod`.
    pub fn parse_cli(items: &[String]) -> Result<Self, EventsError> {
        let mut filters = Filters::default();
        for item in items {
            for part in item.split(',').filter(|p| !p.is_empty()) {
                let Some((key, value)) = part.split_once('=') else {
                    return Err(EventsError::Malformed(part.to_string()));
                };
                if value.is_empty() {
                    return Err(EventsError::Malformed(part.to_string()));
                }
                filters.add(key.trim(), value.trim())?;
            }
        }
        Ok(filters)
    }

    /// The `filters` query parameter: Docker's JSON, `{"event":["die"]}`
    /// or `{"event":{"die":true}}`.
    pub fn from_json(text: &str) -> Result<Self, EventsError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| EventsError::Json(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(EventsError::Json("not an object".into()));
        };
        let mut filters = Filters::default();
        for (key, values) in map {
            let values: Vec<String> = match values {
                serde_json::Value::Array(a) => a
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Ok(s),
                        other => Err(EventsError::Json(format!("{key}: {other} is not a string"))),
                    })
                    .collect::<Result<_, _>>()?,
                serde_json::Value::Object(o) => o
                    .into_iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k)
                    .collect(),
                serde_json::Value::String(s) => vec![s],
                other => return Err(EventsError::Json(format!("{key}: {other}"))),
            };
            for v in values {
                filters.add(&key, &v)?;
            }
        }
        Ok(filters)
    }

    fn add(&mut self, key: &str, value: &str) -> Result<(), EventsError> {
        let key = if key == "container" { "pod" } else { key };
        if !FILTER_KEYS.contains(&key) {
            return Err(EventsError::UnknownKey { key: key.into() });
        }
        if key == "event" && Action::parse(value).is_none() {
            return Err(EventsError::UnknownEvent(value.into()));
        }
        self.0
            .entry(key.to_string())
            .or_default()
            .push(value.to_string());
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    /// A pod matches by full id, id prefix or name.
    pub fn matches(&self, event: &Event) -> bool {
        self.0.iter().all(|(key, values)| {
            values.iter().any(|v| match key.as_str() {
                "pod" => {
                    event.id.starts_with(v.as_str()) || event.attributes.get("name") == Some(v)
                }
                "event" => event.action.as_str() == v,
                "image" => event.attributes.get("image") == Some(v),
                "backend" => event.attributes.get("backend") == Some(v),
                _ => false,
            })
        })
    }
}

/// A time as `docker events --since/--until` takes it, in unix nanoseconds:
/// RFC 3339 (`2026-12-07T10:00:00Z`, with or without fractions and zone
/// offset; no zone means UTC), a date (`2026-12-07`), unix seconds with an
/// optional fraction (`1796637600.5`), or a duration before `now` in Go's
/// form (`10m`, `1h30m`, `90s`, `1.5h`).
pub fn parse_time(flag: &str, value: &str, now: SystemTime) -> Result<u64, EventsError> {
    let bad = || EventsError::Time {
        flag: flag.to_string(),
        value: value.to_string(),
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(bad());
    }
    if let Some(nanos) = unix_seconds(v) {
        return Ok(nanos);
    }
    if let Some(ago) = go_duration(v) {
        return Ok(unix_nanos(now.checked_sub(ago).unwrap_or(UNIX_EPOCH)));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return nanos_of(t.timestamp(), t.timestamp_subsec_nanos()).ok_or_else(bad);
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, format) {
            let t = t.and_utc();
            return nanos_of(t.timestamp(), t.timestamp_subsec_nanos()).ok_or_else(bad);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let t = d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc();
        return nanos_of(t.timestamp(), 0).ok_or_else(bad);
    }
    Err(bad())
}

fn nanos_of(secs: i64, nanos: u32) -> Option<u64> {
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::from(nanos))
}

/// `1796637600` or `1796637600.123456789`.
fn unix_seconds(v: &str) -> Option<u64> {
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let nanos: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Go's `time.ParseDuration` for what a client gives: a sequence of
/// decimal numbers each with a unit (ns, us, µs, ms, s, m, h); at least one.
fn go_duration(v: &str) -> Option<Duration> {
    let mut rest = v;
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The attributes every event of a pod carries: its name, image and backend.
pub fn pod_attributes(
    name: Option<&str>,
    image: Option<&str>,
    backend: &str,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(name) = name {
        a.insert("name".into(), name.to_string());
    }
    if let Some(image) = image {
        a.insert("image".into(), image.to_string());
    }
    if !backend.is_empty() {
        a.insert("backend".into(), backend.to_string());
    }
    a
}

/// The line `hyper events` prints for an event, as `docker events` does:
/// `TIME pod ACTION ID (key=value, …)`.
pub fn format_line(e: &Event) -> String {
    let time = crate::time::rfc3339(e.time, (e.time_nano % 1_000_000_000) as u32);
    let attrs: Vec<String> = e
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if attrs.is_empty() {
        format!("{time} {} {} {}", e.kind, e.action.as_str(), e.id)
    } else {
        format!(
            "{time} {} {} {} ({})",
            e.kind,
            e.action.as_str(),
            e.id,
            attrs.join(", ")
        )
    }
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
    fn cli_filters_parse_repeated_and_comma_joined() {
        let f = Filters::parse_cli(&["pod=web,event=die".into(), "event=start".into()]).unwrap();
        assert_eq!(f.0["pod"], ["web"]);
        assert_eq!(f.0["event"], ["die", "start"]);
        let f = Filters::parse_cli(&["container=abc".into()]).unwrap();
        assert_eq!(f.0["pod"], ["abc"]);
        assert_eq!(
            Filters::parse_cli(&["pod".into()]),
            Err(EventsError::Malformed("pod".into()))
        );
        assert_eq!(
            Filters::parse_cli(&["volume=x".into()]),
            Err(EventsError::UnknownKey {
                key: "volume".into()
            })
        );
        let err = Filters::parse_cli(&["event=explode".into()]).unwrap_err();
        assert!(err.to_string().contains("exec_start"), "{err}");
        // Round trip through the query parameter, in both of Docker's forms.
        assert_eq!(Filters::from_json(&f.to_json()).unwrap(), f);
        let f2 = Filters::from_json(r#"{"event":{"die":true,"start":false}}"#).unwrap();
        assert_eq!(f2.0["event"], ["die"]);
        assert!(Filters::from_json("[1]").is_err());
        assert!(Filters::from_json(r#"{"event":[1]}"#).is_err());
    }

    #[test]
    fn filters_match_id_prefix_or_name_and_and_keys() {
        let e = Event {
            kind: "pod".into(),
            action: Action::Die,
            id: "0123456789ab".into(),
            attributes: attrs(&[("name", "web"), ("image", "busybox"), ("backend", "qemu")]),
            time: 1,
            time_nano: 1_000_000_000,
        };
        let f = |s: &[&str]| {
            Filters::parse_cli(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap()
        };
        assert!(f(&[]).matches(&e));
        assert!(f(&["pod=0123"]).matches(&e));
        assert!(f(&["pod=web"]).matches(&e));
        assert!(!f(&["pod=we"]).matches(&e));
        assert!(f(&["pod=other,pod=web"]).matches(&e));
        assert!(f(&["pod=web,event=die"]).matches(&e));
        assert!(!f(&["pod=web,event=start"]).matches(&e));
        assert!(f(&["image=busybox", "backend=qemu"]).matches(&e));
        assert!(!f(&["backend=xen"]).matches(&e));
    }

    #[test]
    fn times_take_dockers_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_637_600);
        let t = |v: &str| parse_time("--since", v, now);
        let s = |secs: u64| secs * 1_000_000_000;
        assert_eq!(t("1796637000"), Ok(s(1_796_637_000)));
        assert_eq!(t("1796637000.5"), Ok(s(1_796_637_000) + 500_000_000));
        assert_eq!(t("10m"), Ok(s(1_796_637_000)));
        assert_eq!(t("1h30m"), Ok(s(1_796_637_600 - 5400)));
        assert_eq!(t("1.5h"), Ok(s(1_796_637_600 - 5400)));
        assert_eq!(t("250ms"), Ok(s(1_796_637_600) - 250_000_000));
        assert_eq!(t("2026-12-07T10:00:00Z"), Ok(s(1_796_637_600)));
        assert_eq!(t("2026-12-07T11:00:00+01:00"), Ok(s(1_796_637_600)));
        assert_eq!(
            t("2026-12-07T10:00:00.25Z"),
            Ok(s(1_796_637_600) + 250_000_000)
        );
        assert_eq!(t("2026-12-07T10:00:00"), Ok(s(1_796_637_600)));
        assert_eq!(t("2026-12-07T10:00"), Ok(s(1_796_637_600)));
        assert_eq!(t("2026-12-07"), Ok(s(1_796_601_600)));
        for bad in [
            "",
            "yesterday",
            "10x",
            "m",
            "1.2.3",
            "-5m",
            "1e9",
            "1969-12-31T23:00:00Z",
        ] {
            let err = t(bad).unwrap_err();
            assert!(err.to_string().starts_with("--since"), "{bad}: {err}");
        }
    }

    #[test]
    fn lines_read_like_dockers() {
        let e = Event {
            kind: "pod".into(),
            action: Action::Die,
            id: "abc".into(),
            attributes: attrs(&[("exitCode", "0"), ("name", "web")]),
            time: 1_796_637_600,
            time_nano: 1_796_637_600_000_000_007,
        };
        assert_eq!(
            format_line(&e),
            "2026-12-07T10:00:00.000000007Z pod die abc (exitCode=0, name=web)"
        );
    }
}
