//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"…\n","stream":"stdout","time":"2026-11-28T15:04:05.123456789Z"}`,
//! in `container.log`, rotated by size to `container.log.1`, `.2`, …
//!
//! A write that fails (disk full) never stops the container: the bytes are
//! counted as dropped, and the next entry that can be written says how many
//! were lost since the previous such note.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Longest log entry: a longer line is cut into several entries, as Docker does.
pub const MAX_ENTRY: usize = 16 * 1024;
pub const LOG_FILE: &str = "container.log";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_size: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

/// Appends one container's output to its log.
pub struct LogWriter {
    dir: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    /// Bytes of a line not ended yet, per stream (stdout, stderr).
    partial: [Vec<u8>; 2],
    dropped: u64,
    /// Bytes dropped since the last notice: each notice tells about its own
    /// stretch of failures, not the total since the container started.
    unreported: u64,
    last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl LogWriter {
    pub fn new(dir: &Path, rotation: Rotation) -> Self {
        Self {
            dir: dir.to_path_buf(),
            rotation,
            file: None,
            size: 0,
            partial: [Vec::new(), Vec::new()],
            dropped: 0,
            unreported: 0,
            last_error: None,
        }
    }

    /// Bytes lost to failed writes so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let now = rfc3339_now();
        let mut pending = std::mem::take(&mut self.partial[stream.index()]);
        pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos + 1;
            self.write_chunked(stream, &pending[start..end], &now);
            start = end;
        }
        // An unfinished line is held back, but never more than one entry's worth.
        let rest = &pending[start..];
        let whole = rest.len() - rest.len() % MAX_ENTRY;
        if whole > 0 {
            self.write_chunked(stream, &rest[..whole], &now);
        }
        self.partial[stream.index()] = rest[whole..].to_vec();
    }

    /// Writes out what is left of unfinished lines (the container exited).
    pub fn flush(&mut self) {
        let now = rfc3339_now();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream.index()]);
            if !rest.is_empty() {
                self.write_chunked(stream, &rest, &now);
            }
        }
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    fn write_chunked(&mut self, stream: Stream, bytes: &[u8], time: &str) {
        for chunk in bytes.chunks(MAX_ENTRY) {
            self.write_entry(stream, &String::from_utf8_lossy(chunk), time);
        }
    }

    fn write_entry(&mut self, stream: Stream, log: &str, time: &str) {
        let mut line = Vec::new();
        if self.unreported > 0 {
            // Say what was lost before the first entry that makes it. Both
            // go in one append, so a nearly full disk cannot take the short
            // notice and then drop the entry after it.
            let note = format!(
                "[hyperd: {} bytes of this container's output were dropped: {}]\n",
                self.unreported,
                self.last_error.as_deref().unwrap_or("write failed")
            );
            line = encode("stderr", &note, time);
        }
        line.extend_from_slice(&encode(stream.name(), log, time));
        match self.append(&line) {
            Ok(()) => {
                self.unreported = 0;
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.is_none() {
                    tracing::warn!(dir = %self.dir.display(), "container log write failed: {e}; dropping output");
                }
                self.dropped += log.len() as u64;
                self.unreported += log.len() as u64;
                self.last_error = Some(e.to_string());
            }
        }
    }

    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.size + line.len() as u64 > self.rotation.max_size {
            self.rotate()?;
        }
        if self.file.is_none() {
            let path = self.dir.join(LOG_FILE);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("log file not open"));
        };
        match file.write_all(line) {
            Ok(()) => {
                self.size += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // A partial line would break the reader: cut it off again.
                let _ = file.set_len(self.size);
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let keep = self.rotation.max_files.max(1);
        let base = self.dir.join(LOG_FILE);
        let _ = std::fs::remove_file(rotated(&base, keep - 1));
        for n in (1..keep).rev() {
            let from = if n == 1 {
                base.clone()
            } else {
                rotated(&base, n - 1)
            };
            let _ = std::fs::rename(from, rotated(&base, n));
        }
        if keep == 1 {
            let _ = std::fs::remove_file(&base);
        }
        self.size = 0;
        Ok(())
    }
}

fn rotated(base: &Path, n: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn encode(stream: &str, log: &str, time: &str) -> Vec<u8> {
    let entry = Entry {
        log: log.to_string(),
        stream: stream.to_string(),
        time: time.to_string(),
    };
    let mut line = serde_json::to_vec(&entry).unwrap_or_default();
    line.push(b'\n');
    line
}

/// The files of the log in `dir`, oldest first (rotated ones, then the
/// live one).
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join(LOG_FILE);
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| rotated(&base, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(base);
    files
}

/// Every entry of the log in `dir`, oldest first (rotated files included);
/// unreadable lines are skipped. Holds the whole log: for a client, stream
/// it with [`read_file_upto`] or take its end with [`read_tail`].
pub fn read_all(dir: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    for path in log_files(dir) {
        entries.extend(read_file(&path, 0).0);
    }
    entries
}

/// Entries of one file from byte `offset`, and the offset after the last
/// complete line read.
pub fn read_file(path: &Path, offset: u64) -> (Vec<Entry>, u64) {
    read_file_upto(path, offset, u64::MAX)
}

/// As [`read_file`], stopping after the line that crosses `max_bytes` read:
/// call again from the returned offset for the rest (same offset back: the
/// end).
pub fn read_file_upto(path: &Path, offset: u64, max_bytes: u64) -> (Vec<Entry>, u64) {
    let mut entries = Vec::new();
    let Ok(file) = File::open(path) else {
        return (entries, offset);
    };
    let mut reader = BufReader::new(file);
    if std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset)).is_err() {
        return (entries, offset);
    }
    let mut pos = offset;
    let mut line = Vec::new();
    while pos - offset < max_bytes {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) if line.ends_with(b"\n") => {
                pos += n as u64;
                if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                    entries.push(e);
                }
            }
            Ok(_) => break, // a line still being written
        }
    }
    (entries, pos)
}

/// How much of a log file [`read_tail`] reads at a time, from the end.
const TAIL_BLOCK: u64 = 64 * 1024;
/// A line longer than this is skipped by [`read_tail`] (the writer never
/// writes one; a damaged file might hold one).
const TAIL_MAX_LINE: usize = 4 << 20;

/// The last `n` entries of the log in `dir`, oldest first, read backwards
/// from the end of the newest file: memory is `n` entries plus a block and
/// a line, whatever the size of the log (issue 13: 8 `logs --tail`
/// followers of a big rotated log cost +380 MB when the whole was loaded).
pub fn read_tail(dir: &Path, n: usize) -> Vec<Entry> {
    let mut newest_first: Vec<Entry> = Vec::new();
    for path in log_files(dir).iter().rev() {
        if newest_first.len() >= n {
            break;
        }
        tail_of_file(path, n - newest_first.len(), &mut newest_first);
    }
    newest_first.reverse();
    newest_first
}

/// Pushes up to `n` entries of `path`, newest first, onto `out`. A last
/// line without its newline (being written) is left out.
fn tail_of_file(path: &Path, n: usize, out: &mut Vec<Entry>) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else {
        return;
    };
    let Ok(mut pos) = file.metadata().map(|m| m.len()) else {
        return;
    };
    let start_len = out.len();
    // Bytes [pos, pos + buf.len()) of the file; once `trimmed`, it ends
    // with the newline of a complete line.
    let mut buf: Vec<u8> = Vec::new();
    let mut trimmed = false;
    while out.len() - start_len < n {
        if pos == 0 && buf.is_empty() {
            return;
        }
        let more = pos > 0;
        if more {
            let from = pos.saturating_sub(TAIL_BLOCK);
            let mut block = vec![0u8; (pos - from) as usize];
            if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut block).is_err() {
                return;
            }
            block.extend_from_slice(&buf);
            buf = block;
            pos = from;
        }
        if !trimmed {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => {
                    buf.truncate(i + 1);
                    trimmed = true;
                }
                None if pos == 0 => return,
                None => {
                    if buf.len() > TAIL_MAX_LINE {
                        buf.clear();
                    }
                    continue;
                }
            }
        }
        // Take complete lines off the end while their start is known.
        while out.len() - start_len < n && !buf.is_empty() {
            let body = &buf[..buf.len() - 1];
            match body.iter().rposition(|&b| b == b'\n') {
                Some(j) => {
                    if let Ok(e) = serde_json::from_slice::<Entry>(&buf[j + 1..]) {
                        out.push(e);
                    }
                    buf.truncate(j + 1);
                }
                None if pos == 0 => {
                    if let Ok(e) = serde_json::from_slice::<Entry>(&buf) {
                        out.push(e);
                    }
                    buf.clear();
                }
                None => {
                    if buf.len() > TAIL_MAX_LINE {
                        // Skip the giant line: what is before it ends
                        // with a newline again once read.
                        buf.clear();
                        trimmed = false;
                    }
                    break;
                }
            }
        }
        if !more && buf.is_empty() {
            return;
        }
    }
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// Now as RFC 3339 with nanoseconds in UTC, the json-file `time` format.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

pub use hyper_api::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_the_end_across_blocks_and_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(
            dir.path(),
            Rotation {
                max_size: 150 * 1024,
                max_files: 4,
            },
        );
        for i in 0..6000 {
            // Lines of varying length cross the 64 KiB read blocks.
            let line = format!("line {i} {}\n", "y".repeat(i % 97));
            w.write(
                if i % 3 == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                },
                line.as_bytes(),
            );
        }
        w.write(Stream::Stdout, b"still being writ");
        w.flush();
        assert!(dir.path().join(format!("{LOG_FILE}.2")).exists());
        // The writer flushes the partial line too; a reader of the live
        // file may see one without its newline: add one by hand.
        let mut f = OpenOptions::new()
            .append(true)
            .open(log_path(dir.path()))
            .unwrap();
        f.write_all(br#"{"log":"half"#).unwrap();
        let all = read_all(dir.path());
        assert!(all.len() > 1000);
        for n in [
            0,
            1,
            2,
            7,
            100,
            1000,
            all.len() - 1,
            all.len(),
            all.len() + 50,
        ] {
            let tail = read_tail(dir.path(), n);
            let want = &all[all.len().saturating_sub(n)..];
            assert_eq!(tail.len(), want.len(), "n={n}");
            assert!(
                tail.iter()
                    .zip(want)
                    .all(|(a, b)| a.log == b.log && a.time == b.time),
                "n={n}"
            );
        }
        assert!(read_tail(&dir.path().join("none"), 5).is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            rfc3339(1_795_879_445, 123),
            "2026-11-28T15:24:05.000000123Z"
        );
    }

    #[test]
    fn lines_become_entries_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(dir.path(), Rotation::default());
        w.write(Stream::Stdout, b"one\ntw");
        w.write(Stream::Stderr, b"err\n");
        w.write(Stream::Stdout, b"o\nthree");
        w.flush();
        let e = read_all(dir.path());
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "one\n"),
                ("stderr", "err\n"),
                ("stdout", "two\n"),
                ("stdout", "three")
            ]
        );
        assert!(e[0].time.ends_with('Z'));
    }

    #[test]
    fn long_lines_are_cut_and_binary_is_kept_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(dir.path(), Rotation::default());
        w.write(Stream::Stdout, &vec![b'x'; MAX_ENTRY * 2 + 10]);
        w.write(Stream::Stdout, b"\xff\n");
        w.flush();
        let e = read_all(dir.path());
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].log.len(), MAX_ENTRY);
        assert!(e[2].log.ends_with("\u{fffd}\n"));
    }

    #[test]
    fn rotation_keeps_max_files_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(
            dir.path(),
            Rotation {
                max_size: 200,
                max_files: 3,
            },
        );
        for i in 0..40 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        w.flush();
        assert!(dir.path().join("container.log.2").exists());
        assert!(!dir.path().join("container.log.3").exists());
        let e = read_all(dir.path());
        assert_eq!(e.last().unwrap().log, "line 39\n");
        let numbers: Vec<u32> = e
            .iter()
            .map(|e| e.log.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert!(numbers.len() < 40);
    }

    #[test]
    fn failed_writes_are_counted_and_reported_later() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("gone");
        std::fs::create_dir(&sub).unwrap();
        let mut w = LogWriter::new(&sub, Rotation::default());
        std::fs::remove_dir(&sub).unwrap();
        w.write(Stream::Stdout, b"lost\n");
        assert_eq!(w.dropped(), 5);
        std::fs::create_dir(&sub).unwrap();
        w.write(Stream::Stdout, b"kept\n");
        w.flush();
        let e = read_all(&sub);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].log.contains("5 bytes"), "{:?}", e[0]);
        assert_eq!(e[1].log, "kept\n");

        // A second stretch of failures: its notice counts only its own bytes.
        w.file = None;
        std::fs::remove_dir_all(&sub).unwrap();
        w.write(Stream::Stdout, b"lost again\n");
        assert_eq!(w.dropped(), 16);
        std::fs::create_dir(&sub).unwrap();
        w.write(Stream::Stdout, b"kept\n");
        let e = read_all(&sub);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].log.starts_with("[hyperd: 11 bytes of"), "{:?}", e[0]);
        assert_eq!(e[1].log, "kept\n");
    }
}
