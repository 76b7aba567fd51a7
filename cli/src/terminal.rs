//! The client's terminal for `-t`: raw mode, its size, and the detach keys.

use std::os::fd::RawFd;

use hyper_protocol::TerminalSize;

/// Docker's default detach sequence: Ctrl-P Ctrl-Q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on `fd`, if it is one with a size.
pub fn size(fd: RawFd) -> Option<TerminalSize> {
    // SAFETY: winsize is plain data; all-zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the valid pointer given.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TerminalSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The size of whichever of stdin, stdout and stderr is a terminal.
pub fn client_size() -> Option<TerminalSize> {
    [0, 1, 2].into_iter().find_map(size)
}

/// Raw mode on a terminal for as long as it lives; the old settings come
/// back when it is dropped, on every way out including a panic.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    pub fn enable(fd: RawFd) -> std::io::Result<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes to the valid pointer given.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only changes the struct given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads the valid struct given.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Parses Docker's `--detach-keys` format: comma-separated keys, each a
/// single character or `ctrl-X` (X one of a-z, @, [, \, ], ^, _).
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    let bad = |key: &str| {
        format!("--detach-keys: invalid key {key:?}: use single characters or ctrl-a … ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_, separated by commas (default {DEFAULT_DETACH_KEYS})")
    };
    let mut keys = Vec::new();
    for key in spec.split(',') {
        let lower = key.to_ascii_lowercase();
        let byte = match lower.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => match c.as_bytes()[0] {
                b @ b'a'..=b'z' => b - b'a' + 1,
                b @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_') => b - b'@',
                _ => return Err(bad(key)),
            },
            Some(_) => return Err(bad(key)),
            None if key.len() == 1 && key.is_ascii() => key.as_bytes()[0],
            None => return Err(bad(key)),
        };
        keys.push(byte);
    }
    if keys.is_empty() {
        return Err(bad(spec));
    }
    Ok(keys)
}

/// Finds the detach sequence in what the user types. Bytes that may start
/// the sequence are held back until it is clear whether they do; the rest
/// pass through.
#[derive(Debug)]
pub struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    pub fn new(keys: Vec<u8>) -> Self {
        Self { keys, matched: 0 }
    }

    /// What to send on from `input`, and whether the sequence is complete
    /// (then nothing after it is sent).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: release what was held.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(
            parse_detach_keys(DEFAULT_DETACH_KEYS).unwrap(),
            vec![16, 17]
        );
        assert_eq!(
            parse_detach_keys("ctrl-@,a,CTRL-_").unwrap(),
            vec![0, b'a', 31]
        );
        assert_eq!(parse_detach_keys("ctrl-\\").unwrap(), vec![28]);
        for bad in ["", "ctrl-", "ctrl-ab", "ctrl-1", "ab", "a,,b", "é"] {
            let e = parse_detach_keys(bad).unwrap_err();
            assert!(e.contains("--detach-keys"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_detach_sequence_is_found_across_reads_and_never_sent() {
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.feed(b"ab"), (b"ab".to_vec(), false));
        assert_eq!(s.feed(&[b'x', 16]), (b"x".to_vec(), false));
        assert_eq!(s.feed(&[17, b'z']), (Vec::new(), true));
        // A prefix that does not go on is released unchanged.
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.feed(&[16, b'q']), (vec![16, b'q'], false));
        assert_eq!(s.feed(&[16, 16, 17]), (vec![16], true));
        // Ctrl-P alone, as used by shells, still gets through once the
        // next key shows it was not a detach.
        let mut s = DetachScanner::new(vec![16, 17]);
        assert_eq!(s.feed(&[16]), (Vec::new(), false));
        assert_eq!(s.feed(b"\r"), (vec![16, b'\r'], false));
    }
}
