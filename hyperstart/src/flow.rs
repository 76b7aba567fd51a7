//! Per-stream flow-control accounting (the protocol's credit scheme).

use hyper_protocol::{INITIAL_WINDOW, MAX_DATA_PAYLOAD};

/// What this side may still send on one guest→host stream (stdout or
/// stderr). The stream is only polled while it has credit, so a host that
/// stops granting simply leaves the output in the pipe (and the process
/// blocks on a full pipe) instead of flooding the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    available: u64,
}

impl Default for Credit {
    fn default() -> Self {
        Self {
            available: u64::from(INITIAL_WINDOW),
        }
    }
}

impl Credit {
    pub fn grant(&mut self, bytes: u32) {
        self.available = self.available.saturating_add(u64::from(bytes));
    }

    pub fn has_credit(&self) -> bool {
        self.available > 0
    }

    /// The most this side may read and send in one data frame.
    pub fn read_limit(&self) -> usize {
        usize::try_from(self.available)
            .unwrap_or(usize::MAX)
            .min(MAX_DATA_PAYLOAD)
    }

    pub fn consume(&mut self, bytes: usize) {
        self.available = self.available.saturating_sub(bytes as u64);
    }
}

/// Host→guest stdin bytes waiting for the process's stdin pipe.
///
/// This side grants credit back only for bytes that left the buffer, so an
/// honest host never has more than [`INITIAL_WINDOW`] buffered here; anything
/// beyond that is dropped rather than allowed to grow memory.
#[derive(Debug, Default)]
pub struct StdinBuffer {
    buf: Vec<u8>,
    /// The host sent end-of-stream: close the pipe once the buffer drains.
    pub eof: bool,
}

impl StdinBuffer {
    /// Queues `data`; returns how many bytes were dropped for overrunning
    /// the window.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let room = (INITIAL_WINDOW as usize).saturating_sub(self.buf.len());
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        data.len() - take
    }

    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Marks `bytes` as written to the pipe; returns the credit to grant the
    /// host for them.
    pub fn consumed(&mut self, bytes: usize) -> u32 {
        let bytes = bytes.min(self.buf.len());
        self.buf.drain(..bytes);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Throws away what is buffered (the pipe is gone); returns the credit
    /// to grant so the host's writer is not left waiting forever.
    pub fn discard(&mut self) -> u32 {
        let n = self.buf.len();
        self.buf = Vec::new();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_starts_at_the_initial_window_and_reads_are_capped() {
        let mut c = Credit::default();
        assert_eq!(c.read_limit(), MAX_DATA_PAYLOAD);
        c.consume(INITIAL_WINDOW as usize - 100);
        assert_eq!(c.read_limit(), 100);
        c.consume(100);
        assert!(!c.has_credit());
        assert_eq!(c.read_limit(), 0);
        c.grant(10);
        assert_eq!(c.read_limit(), 10);
        c.consume(1000); // never underflows
        assert!(!c.has_credit());
        c.grant(u32::MAX);
        c.grant(u32::MAX);
        assert_eq!(c.read_limit(), MAX_DATA_PAYLOAD);
    }

    #[test]
    fn stdin_is_bounded_by_the_window_and_credited_as_written() {
        let mut b = StdinBuffer::default();
        assert_eq!(b.push(&vec![1; INITIAL_WINDOW as usize - 5]), 0);
        assert_eq!(b.push(&[2; 10]), 5, "an overrun is dropped");
        assert_eq!(b.pending().len(), INITIAL_WINDOW as usize);
        assert_eq!(b.consumed(4096), 4096);
        assert_eq!(b.pending().len(), INITIAL_WINDOW as usize - 4096);
        assert_eq!(b.push(&[3; 4096]), 0, "written bytes make room again");
        assert_eq!(b.pending().last(), Some(&3));
        assert_eq!(b.consumed(usize::MAX), INITIAL_WINDOW);
        assert!(b.is_empty());
        b.push(b"abc");
        assert_eq!(b.discard(), 3);
        assert!(b.is_empty());
    }
}
