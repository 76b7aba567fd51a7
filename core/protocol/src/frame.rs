use thiserror::Error;

/// Length of a frame header: kind (1) + stream (4) + payload length (4).
pub const HEADER_LEN: usize = 9;
/// Largest control (JSON) payload either side accepts.
pub const MAX_CONTROL_PAYLOAD: usize = 1024 * 1024;
/// Largest data payload either side accepts.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Control = 0,
    Data = 1,
    Eof = 2,
    Credit = 3,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Control,
            1 => Self::Data,
            2 => Self::Eof,
            3 => Self::Credit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub stream: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{kind:?} frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        kind: FrameKind,
        len: usize,
        max: usize,
    },
    #[error("control frame on stream {0}; control frames use stream 0")]
    ControlOnDataStream(u32),
    #[error("{0:?} frame on stream 0, which is reserved for control")]
    DataOnControlStream(FrameKind),
    #[error("credit frame with a {0}-byte payload; it must be 4 bytes")]
    BadCredit(usize),
    #[error("end-of-stream frame with a {0}-byte payload; it must be empty")]
    BadEof(usize),
}

impl Frame {
    pub fn control(payload: Vec<u8>) -> Self {
        Self {
            kind: FrameKind::Control,
            stream: 0,
            payload,
        }
    }

    pub fn data(stream: u32, payload: Vec<u8>) -> Self {
        Self {
            kind: FrameKind::Data,
            stream,
            payload,
        }
    }

    pub fn eof(stream: u32) -> Self {
        Self {
            kind: FrameKind::Eof,
            stream,
            payload: Vec::new(),
        }
    }

    pub fn credit(stream: u32, bytes: u32) -> Self {
        Self {
            kind: FrameKind::Credit,
            stream,
            payload: bytes.to_be_bytes().to_vec(),
        }
    }

    /// The granted byte count of a credit frame (validated at decode time).
    pub fn credit_bytes(&self) -> Option<u32> {
        match (self.kind, <[u8; 4]>::try_from(self.payload.as_slice())) {
            (FrameKind::Credit, Ok(bytes)) => Some(u32::from_be_bytes(bytes)),
            _ => None,
        }
    }

    /// Serialises the frame. Callers keep payloads within the limits; the
    /// decoder on the other side enforces them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.stream.to_be_bytes());
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

fn validate_header(kind_byte: u8, stream: u32, len: usize) -> Result<FrameKind, FrameError> {
    let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let max = match kind {
        FrameKind::Control => MAX_CONTROL_PAYLOAD,
        FrameKind::Data => MAX_DATA_PAYLOAD,
        FrameKind::Eof => 0,
        FrameKind::Credit => 4,
    };
    match kind {
        FrameKind::Control if stream != 0 => return Err(FrameError::ControlOnDataStream(stream)),
        FrameKind::Data | FrameKind::Eof | FrameKind::Credit if stream == 0 => {
            return Err(FrameError::DataOnControlStream(kind))
        }
        FrameKind::Eof if len != 0 => return Err(FrameError::BadEof(len)),
        FrameKind::Credit if len != 4 => return Err(FrameError::BadCredit(len)),
        _ => {}
    }
    if len > max {
        return Err(FrameError::TooLarge { kind, len, max });
    }
    Ok(kind)
}

/// Incremental decoder: feed it whatever bytes arrive, take whole frames out.
///
/// It buffers at most one header plus one (bounded) payload, so a peer that
/// sends garbage can make it return an error but never grow without bound.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: bool,
    /// Resynchronising mode (hyperstart's side): [`PAD_BYTE`]s between frames
    /// are skipped and a bad header drops input up to the next pad instead
    /// of failing for good.
    resync: bool,
    /// Dropping bytes until a pad byte, after a bad header.
    hunting: bool,
}

/// Never a frame kind, so a run of it between frames is unambiguous: a new
/// host session sends [`RESYNC_PAD_LEN`] of them before its first frame.
pub const PAD_BYTE: u8 = 0xFF;
/// Longer than any frame a host sends but a control frame's largest, so the
/// pad completes whatever partial frame a dead host session left in the
/// guest's decoder and still leaves pad bytes to skip.
pub const RESYNC_PAD_LEN: usize = HEADER_LEN + MAX_DATA_PAYLOAD + 64;
/// What hyperstart writes, raw, right before its answer to a reattach; the
/// host's nonce follows it. Everything the host read before it belongs to
/// the old session.
pub const RESYNC_MAGIC: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xffHYPER-RESYNC:";

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that survives a broken session: see [`PAD_BYTE`].
    pub fn resynchronising() -> Self {
        Self {
            resync: true,
            ..Self::default()
        }
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes the decoder wants before it can make progress;
    /// readers use it to never read past a bounded frame.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
        (HEADER_LEN + len).saturating_sub(self.buf.len()).max(1)
    }

    /// Appends bytes and returns the next complete frame, if there is one.
    /// Call again with an empty slice to drain further buffered frames.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        self.buf.extend_from_slice(bytes);
        self.next_frame()
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::UnknownKind(u8::MAX));
        }
        if self.resync {
            if self.hunting {
                let skip = self
                    .buf
                    .iter()
                    .position(|&b| b == PAD_BYTE)
                    .unwrap_or(self.buf.len());
                self.buf.drain(..skip);
                self.hunting = self.buf.is_empty();
            }
            let pad = self.buf.iter().take_while(|&&b| b == PAD_BYTE).count();
            self.buf.drain(..pad);
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let stream = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) as usize;
        let kind = match validate_header(self.buf[0], stream, len) {
            Ok(kind) => kind,
            Err(err) => {
                if self.resync {
                    // Hunt for the next pad: a new session starts behind one.
                    self.buf.drain(..1);
                    self.hunting = true;
                    return Err(err);
                }
                // A bad header leaves the stream unsynchronised: refuse all further input.
                self.failed = true;
                self.buf.clear();
                return Err(err);
            }
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame {
            kind,
            stream,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let bytes = frame.encode();
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.push(&bytes).unwrap(), Some(frame));
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn a_resynchronising_decoder_recovers_behind_a_pad() {
        let mut dec = FrameDecoder::resynchronising();
        // A dead session left half a header, then half a data frame.
        let old = Frame::data(3, vec![1; 1000]).encode();
        assert_eq!(dec.push(&old[..4]).unwrap(), None);
        let mut input = vec![PAD_BYTE; RESYNC_PAD_LEN];
        input.extend(Frame::control(b"{}".to_vec()).encode());
        // The pad completes the header with an absurd length: an error, then
        // the hunt for the pad finds the new session's frame.
        let mut first = dec.push(&input);
        let mut frames = Vec::new();
        for _ in 0..10 {
            match first {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {}
            }
            first = dec.next_frame();
        }
        assert_eq!(frames, vec![Frame::control(b"{}".to_vec())]);

        // Mid-payload: the pad completes the old frame, the rest is skipped.
        let mut dec = FrameDecoder::resynchronising();
        assert_eq!(dec.push(&old[..500]).unwrap(), None);
        let stale = dec.push(&input).unwrap().unwrap();
        assert_eq!(stale.stream, 3);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::control(b"{}".to_vec()))
        );
    }

    #[test]
    fn pad_bytes_are_an_error_for_a_strict_decoder() {
        let mut dec = FrameDecoder::new();
        assert!(dec.push(&[PAD_BYTE; HEADER_LEN]).is_err());
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::control(br#"{"ping":{}}"#.to_vec()));
        roundtrip(Frame::data(3, vec![7; MAX_DATA_PAYLOAD]));
        roundtrip(Frame::eof(3));
        roundtrip(Frame::credit(4, 4096));
    }

    #[test]
    fn byte_at_a_time_decoding() {
        let mut bytes = Frame::data(5, b"hello".to_vec()).encode();
        bytes.extend(Frame::eof(5).encode());
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in bytes {
            if let Some(f) = dec.push(&[b]).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![Frame::data(5, b"hello".to_vec()), Frame::eof(5)]
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut header = vec![FrameKind::Data as u8];
        header.extend(7u32.to_be_bytes());
        header.extend((MAX_DATA_PAYLOAD as u32 + 1).to_be_bytes());
        let mut dec = FrameDecoder::new();
        assert!(matches!(
            dec.push(&header),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(dec.pending(), 0);
        // Once failed, it stays failed.
        assert!(dec.push(&Frame::eof(1).encode()).is_err());

        let mut header = vec![FrameKind::Control as u8];
        header.extend(0u32.to_be_bytes());
        header.extend(u32::MAX.to_be_bytes());
        assert!(matches!(
            FrameDecoder::new().push(&header),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let bad = |kind: u8, stream: u32, payload: &[u8]| {
            let mut b = vec![kind];
            b.extend(stream.to_be_bytes());
            b.extend((payload.len() as u32).to_be_bytes());
            b.extend(payload);
            FrameDecoder::new().push(&b)
        };
        assert_eq!(bad(9, 1, b""), Err(FrameError::UnknownKind(9)));
        assert_eq!(bad(0, 1, b"{}"), Err(FrameError::ControlOnDataStream(1)));
        assert_eq!(
            bad(1, 0, b"x"),
            Err(FrameError::DataOnControlStream(FrameKind::Data))
        );
        assert_eq!(bad(2, 1, b"x"), Err(FrameError::BadEof(1)));
        assert_eq!(bad(3, 1, b"xyz"), Err(FrameError::BadCredit(3)));
    }

    /// A fuzz-style loop: random bytes never panic the decoder and never make
    /// it hold more than one bounded frame.
    #[test]
    fn random_input_never_panics_or_balloons() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut dec = FrameDecoder::new();
            let len = (next() % 4096) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for chunk in bytes.chunks(1 + (next() % 64) as usize) {
                match dec.push(chunk) {
                    Ok(_) => while let Ok(Some(_)) = dec.next_frame() {},
                    Err(_) => break,
                }
                assert!(dec.pending() <= HEADER_LEN + MAX_CONTROL_PAYLOAD);
            }
        }
    }
}
