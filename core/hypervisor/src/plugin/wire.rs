//! What hyperd and a plugin's host process (`hyper-plugin-host`) say to each
//! other over their socket: one JSON object per line. The host speaks first
//! ([`Hello`]); then every [`Call`] gets one [`Reply`] with its `id`, in any
//! order (a `wait` may be answered long after later calls).

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::abi::{PluginRequest, PluginResult};
use super::inproc::LoadError;

/// The longest line either side accepts. Replies are small (a VM's info,
/// stats, a probe report); this only bounds a misbehaving peer.
pub(crate) const MAX_LINE: usize = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Hello {
    /// The plugin passed the ABI and build checks.
    Loaded { name: String, build_id: String },
    /// It did not: the loader's own error, sent back typed.
    Refused(LoadError),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Call {
    pub id: u64,
    pub request: PluginRequest,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub id: u64,
    pub result: PluginResult,
}

/// Writes `value` as one line.
pub(crate) fn write_line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes)?;
    out.flush()
}

/// Reads one line of at most [`MAX_LINE`] bytes and parses it. `Ok(None)` at
/// a clean end of the stream.
pub(crate) fn read_line<T: for<'de> Deserialize<'de>>(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    buf.clear();
    let mut limited = std::io::Read::take(&mut *input, MAX_LINE as u64 + 1);
    let n = limited.read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if n > MAX_LINE {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                "a truncated line".to_string()
            },
        ));
    }
    serde_json::from_slice(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
