//! A small xenstore client: the wire protocol over xenstored's unix socket
//! (`/run/xenstored/socket`), with only what the backend needs: read, write,
//! directory, rm, watch.
//!
//! A message is a 16-byte header (type, request id, transaction id, payload
//! length: four native-endian u32) and a payload of at most 4096 bytes
//! (`XENSTORE_PAYLOAD_MAX`). Everything read is bounded: a header announcing
//! more is refused before any of it is read, every read has a timeout, and
//! values are checked before use.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX` from xen/io/xs_wire.h.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const PATH_MAX: usize = 3072;
/// Watch events queued while waiting for a reply; more means a flood.
const MAX_QUEUED_EVENTS: usize = 256;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    Directory = 1,
    Read = 2,
    Watch = 4,
    Unwatch = 5,
    Write = 11,
    Rm = 13,
    WatchEvent = 15,
    Error = 16,
}

impl Op {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Op::Directory,
            2 => Op::Read,
            4 => Op::Watch,
            5 => Op::Unwatch,
            11 => Op::Write,
            13 => Op::Rm,
            15 => Op::WatchEvent,
            16 => Op::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XsError {
    #[error("cannot reach xenstored at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("xenstore I/O: {0}")]
    Io(String),
    #[error("xenstored did not answer within {0:?}")]
    Timeout(Duration),
    #[error("xenstored sent a payload of {0} bytes (the protocol's limit is 4096)")]
    Oversized(u32),
    #[error("malformed xenstore message: {0}")]
    Malformed(String),
    /// xenstored's own error, e.g. `ENOENT`.
    #[error("xenstored: {0}")]
    Xenstored(String),
    #[error("invalid xenstore request: {0}")]
    BadRequest(String),
}

impl XsError {
    pub fn is_enoent(&self) -> bool {
        matches!(self, XsError::Xenstored(e) if e == "ENOENT")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, v) in [self.op, self.req_id, self.tx_id, self.len]
            .iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        out
    }

    /// Refuses a payload length beyond the protocol's limit, before anything
    /// is allocated for it.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, XsError> {
        let word =
            |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let h = Header {
            op: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        };
        if h.len as usize > PAYLOAD_MAX {
            return Err(XsError::Oversized(h.len));
        }
        Ok(h)
    }
}

/// A path or watch token we send: absolute (or `@special`), printable ASCII
/// without spaces, at most [`PATH_MAX`] bytes.
pub fn check_path(path: &str) -> Result<(), XsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "/_-.@:".contains(c);
    if path.is_empty() || path.len() > PATH_MAX || !path.chars().all(ok_char) {
        return Err(XsError::BadRequest(format!("bad xenstore path {path:?}")));
    }
    if !(path.starts_with('/') || path.starts_with('@')) || path.contains("//") {
        return Err(XsError::BadRequest(format!("bad xenstore path {path:?}")));
    }
    Ok(())
}

/// One request message.
pub fn encode_request(op: Op, req_id: u32, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(XsError::BadRequest(format!(
            "payload of {len} bytes exceeds 4096"
        )));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(
        &Header {
            op: op as u32,
            req_id,
            tx_id: 0,
            len: len as u32,
        }
        .encode(),
    );
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// The error name in an `XS_ERROR` payload (`"ENOENT\0"`).
pub fn decode_error(payload: &[u8]) -> XsError {
    let name = payload.strip_suffix(b"\0").unwrap_or(payload);
    if !name.is_empty()
        && name.len() <= 32
        && name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        XsError::Xenstored(String::from_utf8_lossy(name).into_owned())
    } else {
        XsError::Malformed(format!(
            "error reply {:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(64)])
        ))
    }
}

/// A `DIRECTORY` reply: names, each NUL-terminated.
pub fn decode_directory(payload: &[u8]) -> Result<Vec<String>, XsError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload
        .strip_suffix(b"\0")
        .ok_or_else(|| XsError::Malformed("directory reply not NUL-terminated".into()))?;
    body.split(|b| *b == 0)
        .map(|name| {
            let s = std::str::from_utf8(name)
                .map_err(|_| XsError::Malformed("directory entry is not UTF-8".into()))?;
            if s.is_empty() || s.contains('/') {
                return Err(XsError::Malformed(format!("bad directory entry {s:?}")));
            }
            Ok(s.to_string())
        })
        .collect()
}

/// A `WATCH_EVENT` payload: `path\0token\0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

pub fn decode_watch_event(payload: &[u8]) -> Result<WatchEvent, XsError> {
    let mut parts = payload.split(|b| *b == 0);
    let mut next = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(str::to_string)
            .ok_or_else(|| XsError::Malformed("watch event".into()))
    };
    let path = next()?;
    let token = next()?;
    if path.is_empty() {
        return Err(XsError::Malformed("watch event with an empty path".into()));
    }
    Ok(WatchEvent { path, token })
}

/// One connection to xenstored.
pub struct Xenstore {
    stream: UnixStream,
    next_req: u32,
    timeout: Duration,
    events: VecDeque<WatchEvent>,
}

impl Xenstore {
    /// Connects; every later exchange is bounded by `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, XsError> {
        let stream = UnixStream::connect(socket).map_err(|e| XsError::Connect {
            path: socket.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_stream(stream, timeout))
    }

    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Self {
        Self {
            stream,
            next_req: 1,
            timeout,
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, op: Op, parts: &[&[u8]]) -> Result<u32, XsError> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let msg = encode_request(op, req_id, parts)?;
        self.stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| XsError::Io(e.to_string()))?;
        self.stream
            .write_all(&msg)
            .map_err(|e| io_error(e, self.timeout))?;
        Ok(req_id)
    }

    /// Reads one whole message, giving up at `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<(Header, Vec<u8>), XsError> {
        let mut head = [0u8; HEADER_LEN];
        self.read_exact_by(&mut head, deadline)?;
        let header = Header::decode(&head)?;
        let mut payload = vec![0u8; header.len as usize];
        self.read_exact_by(&mut payload, deadline)?;
        Ok((header, payload))
    }

    fn read_exact_by(&mut self, mut buf: &mut [u8], deadline: Instant) -> Result<(), XsError> {
        while !buf.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(XsError::Timeout(self.timeout));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| XsError::Io(e.to_string()))?;
            match self.stream.read(buf) {
                Ok(0) => return Err(XsError::Io("xenstored closed the connection".into())),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e, self.timeout)),
            }
        }
        Ok(())
    }

    /// Sends a request and returns its reply payload. Watch events that
    /// arrive meanwhile are queued for [`Self::next_event`].
    fn request(&mut self, op: Op, parts: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let req_id = self.send(op, parts)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let (header, payload) = self.read_message(deadline)?;
            match Op::from_u32(header.op) {
                Some(Op::WatchEvent) => {
                    if self.events.len() >= MAX_QUEUED_EVENTS {
                        return Err(XsError::Malformed("too many queued watch events".into()));
                    }
                    self.events.push_back(decode_watch_event(&payload)?);
                }
                _ if header.req_id != req_id => {
                    return Err(XsError::Malformed(format!(
                        "reply to request {} while waiting for {req_id}",
                        header.req_id
                    )))
                }
                Some(Op::Error) => return Err(decode_error(&payload)),
                Some(got) if got == op => return Ok(payload),
                _ => {
                    return Err(XsError::Malformed(format!(
                        "reply of type {} to a request of type {}",
                        header.op, op as u32
                    )))
                }
            }
        }
    }

    /// The raw value at `path`.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(path)?;
        self.request(Op::Read, &[path.as_bytes(), b"\0"])
    }

    /// The value at `path` as text: UTF-8, no NULs or control characters,
    /// at most `max` bytes.
    pub fn read_string(&mut self, path: &str, max: usize) -> Result<String, XsError> {
        let raw = self.read(path)?;
        parse_text(&raw, max).ok_or_else(|| {
            XsError::Malformed(format!(
                "{path} holds {} bytes that are not short text",
                raw.len()
            ))
        })
    }

    /// The value at `path` as a decimal number.
    pub fn read_u64(&mut self, path: &str) -> Result<u64, XsError> {
        let text = self.read_string(path, 20)?;
        text.trim()
            .parse()
            .map_err(|_| XsError::Malformed(format!("{path} = {text:?} is not a number")))
    }

    /// Like [`Self::read_string`], with `None` for a missing node.
    pub fn read_opt(&mut self, path: &str, max: usize) -> Result<Option<String>, XsError> {
        match self.read_string(path, max) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        self.request(Op::Write, &[path.as_bytes(), b"\0", value])
            .map(drop)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        check_path(path)?;
        decode_directory(&self.request(Op::Directory, &[path.as_bytes(), b"\0"])?)
    }

    /// Removes `path` and what is below it; a missing node is fine.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        check_path(path)?;
        match self.request(Op::Rm, &[path.as_bytes(), b"\0"]) {
            Err(e) if !e.is_enoent() => Err(e),
            _ => Ok(()),
        }
    }

    /// Registers a watch; xenstored fires it once right away.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        check_path(&format!("/{token}"))?;
        self.request(
            Op::Watch,
            &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        )
        .map(drop)
    }

    /// The next watch event, or `None` when none came within `wait`.
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<WatchEvent>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + wait;
        let mut first = [0u8; 1];
        // Wait for the first byte with the caller's patience, then read the
        // rest of the message with the normal timeout.
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| XsError::Io(e.to_string()))?;
        match self.stream.read(&mut first) {
            Ok(0) => return Err(XsError::Io("xenstored closed the connection".into())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(XsError::Io(e.to_string())),
        }
        let mut head = [0u8; HEADER_LEN];
        head[0] = first[0];
        let rest_deadline = deadline.max(Instant::now()) + self.timeout;
        self.read_exact_by(&mut head[1..], rest_deadline)?;
        let header = Header::decode(&head)?;
        let mut payload = vec![0u8; header.len as usize];
        self.read_exact_by(&mut payload, rest_deadline)?;
        match Op::from_u32(header.op) {
            Some(Op::WatchEvent) => decode_watch_event(&payload).map(Some),
            _ => Err(XsError::Malformed(format!(
                "unexpected message of type {} while waiting for watch events",
                header.op
            ))),
        }
    }
}

fn io_error(e: std::io::Error, timeout: Duration) -> XsError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => XsError::Timeout(timeout),
        _ => XsError::Io(e.to_string()),
    }
}

/// Short printable text: UTF-8, at most `max` bytes, no control characters
/// (a trailing NUL, which some writers add, is dropped).
pub fn parse_text(raw: &[u8], max: usize) -> Option<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.len() > max {
        return None;
    }
    let s = std::str::from_utf8(raw).ok()?;
    (!s.chars().any(char::is_control)).then(|| s.to_string())
}

/// A xenstored reply as the wire carries it (tests' stand-in daemons).
#[cfg(test)]
pub(crate) fn reply(op: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Header {
        op,
        req_id,
        tx_id: 0,
        len: payload.len() as u32,
    }
    .encode()
    .to_vec();
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A client talking to a scripted "xenstored" on a socketpair: `serve`
    /// reads the requests and writes the canned bytes.
    fn scripted(answers: Vec<Vec<u8>>) -> (Xenstore, std::thread::JoinHandle<Vec<Vec<u8>>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut seen = Vec::new();
            for answer in answers {
                let mut head = [0u8; HEADER_LEN];
                if theirs.read_exact(&mut head).is_err() {
                    break;
                }
                let h = Header::decode(&head).unwrap();
                let mut body = vec![0u8; h.len as usize];
                theirs.read_exact(&mut body).unwrap();
                seen.push([head.to_vec(), body].concat());
                theirs.write_all(&answer).unwrap();
            }
            // Stay connected until the client hangs up.
            let _ = theirs.read(&mut [0u8; 1]);
            seen
        });
        (Xenstore::from_stream(ours, Duration::from_secs(2)), server)
    }

    #[test]
    fn header_round_trip_and_limit() {
        let h = Header {
            op: 2,
            req_id: 7,
            tx_id: 0,
            len: 4096,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let big = Header { len: 4097, ..h };
        assert_eq!(Header::decode(&big.encode()), Err(XsError::Oversized(4097)));
        let huge = Header { len: u32::MAX, ..h };
        assert_eq!(
            Header::decode(&huge.encode()),
            Err(XsError::Oversized(u32::MAX))
        );
    }

    #[test]
    fn requests_are_encoded_with_nul_separators() {
        let m = encode_request(Op::Write, 3, &[b"/a/b", b"\0", b"val"]).unwrap();
        assert_eq!(&m[..4], &11u32.to_ne_bytes());
        assert_eq!(&m[4..8], &3u32.to_ne_bytes());
        assert_eq!(&m[12..16], &8u32.to_ne_bytes());
        assert_eq!(&m[16..], b"/a/b\0val");
        let big = vec![b'x'; 4097];
        assert!(matches!(
            encode_request(Op::Write, 1, &[&big]),
            Err(XsError::BadRequest(_))
        ));
    }

    #[test]
    fn paths_are_checked() {
        assert!(check_path("/local/domain/3/name").is_ok());
        assert!(check_path("@releaseDomain").is_ok());
        for bad in ["", "local", "/a b", "/a\nb", "/a//b", "/a\0"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&format!("/{}", "a".repeat(PATH_MAX))).is_err());
    }

    #[test]
    fn directory_replies() {
        assert_eq!(
            decode_directory(b"0\x001\x0017\0").unwrap(),
            vec!["0", "1", "17"]
        );
        assert_eq!(decode_directory(b"").unwrap(), Vec::<String>::new());
        assert!(decode_directory(b"0\x001").is_err());
        assert!(decode_directory(b"a/b\0").is_err());
        assert!(decode_directory(b"\xff\0").is_err());
        assert!(decode_directory(b"a\0\0").is_err());
    }

    #[test]
    fn error_and_event_payloads() {
        assert!(decode_error(b"ENOENT\0").is_enoent());
        assert_eq!(decode_error(b"EACCES"), XsError::Xenstored("EACCES".into()));
        assert!(matches!(
            decode_error(b"\x01garbage"),
            XsError::Malformed(_)
        ));
        assert_eq!(
            decode_watch_event(b"@releaseDomain\0tok\0").unwrap(),
            WatchEvent {
                path: "@releaseDomain".into(),
                token: "tok".into()
            }
        );
        assert!(decode_watch_event(b"").is_err());
        assert!(decode_watch_event(b"/p").is_err());
    }

    #[test]
    fn text_values_are_bounded_and_printable() {
        assert_eq!(parse_text(b"/dev/pts/3", 64).as_deref(), Some("/dev/pts/3"));
        assert_eq!(parse_text(b"c1\0", 64).as_deref(), Some("c1"));
        assert_eq!(parse_text(b"a\nb", 64), None);
        assert_eq!(parse_text(b"\xff", 64), None);
        assert_eq!(parse_text(&[b'a'; 65], 64), None);
    }

    #[test]
    fn read_write_directory_over_a_socket() {
        let (mut xs, server) = scripted(vec![
            reply(2, 1, b"c1"),
            reply(11, 2, b"OK\0"),
            reply(1, 3, b"0\x005\0"),
            reply(16, 4, b"ENOENT\0"),
            reply(13, 5, b"OK\0"),
        ]);
        assert_eq!(xs.read_string("/local/domain/5/name", 64).unwrap(), "c1");
        xs.write("/tool/hyper/vms/c1", b"x").unwrap();
        assert_eq!(xs.directory("/local/domain").unwrap(), vec!["0", "5"]);
        assert_eq!(xs.read_opt("/local/domain/9/name", 64).unwrap(), None);
        xs.rm("/tool/hyper/vms/c1").unwrap();
        drop(xs);
        let seen = server.join().unwrap();
        assert_eq!(&seen[0][16..], b"/local/domain/5/name\0");
        assert_eq!(&seen[1][16..], b"/tool/hyper/vms/c1\0x");
    }

    #[test]
    fn events_during_a_request_are_queued() {
        let mut answer = reply(15, 0, b"@releaseDomain\0t\0");
        answer.extend(reply(4, 1, b"OK\0"));
        let (mut xs, _server) = scripted(vec![answer]);
        xs.watch("@releaseDomain", "t").unwrap();
        let e = xs.next_event(Duration::from_millis(10)).unwrap().unwrap();
        assert_eq!(e.path, "@releaseDomain");
        assert_eq!(xs.next_event(Duration::from_millis(50)).unwrap(), None);
    }

    #[test]
    fn hostile_replies_are_refused() {
        // Oversized: refused from the header alone.
        let mut huge = Header {
            op: 2,
            req_id: 1,
            tx_id: 0,
            len: 1 << 30,
        }
        .encode()
        .to_vec();
        huge.extend_from_slice(b"xxxx");
        let (mut xs, _s) = scripted(vec![huge]);
        assert_eq!(xs.read("/a"), Err(XsError::Oversized(1 << 30)));
        // A reply to another request, or of another type.
        let (mut xs, _s) = scripted(vec![reply(2, 99, b"v")]);
        assert!(matches!(xs.read("/a"), Err(XsError::Malformed(_))));
        let (mut xs, _s) = scripted(vec![reply(1, 1, b"v\0")]);
        assert!(matches!(xs.read("/a"), Err(XsError::Malformed(_))));
        // A value that is not short text.
        let (mut xs, _s) = scripted(vec![reply(2, 1, &[b'9'; 30])]);
        assert!(matches!(xs.read_u64("/a"), Err(XsError::Malformed(_))));
        // Truncated: the header promises more than ever comes.
        let mut short = Header {
            op: 2,
            req_id: 1,
            tx_id: 0,
            len: 100,
        }
        .encode()
        .to_vec();
        short.extend_from_slice(b"abc");
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut xs = Xenstore::from_stream(ours, Duration::from_millis(200));
        let t = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut buf = [0u8; 64];
            let _ = theirs.read(&mut buf);
            theirs.write_all(&short).unwrap();
            std::thread::sleep(Duration::from_millis(600));
        });
        let started = Instant::now();
        assert!(matches!(xs.read("/a"), Err(XsError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_millis(550));
        t.join().unwrap();
    }

    #[test]
    fn a_missing_socket_is_named() {
        let err = Xenstore::connect(
            Path::new("/nonexistent/xenstored/socket"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/xenstored/socket"),
            "{err}"
        );
    }
}
