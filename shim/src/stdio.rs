//! A task's stdio through the fifos containerd made (the paths in
//! CreateTaskRequest): the container's output into stdout/stderr, the
//! stdin fifo into the container.

use std::path::PathBuf;

use hyper_core::pods::{Output, Stdin};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Chunks of output in flight between the core and the fifos: the channel
/// is bounded, so a slow reader slows the container (the guest's flow
/// control) instead of filling the shim's memory.
pub const OUTPUT_CHUNKS: usize = 64;
const STDIN_CHUNK: usize = 64 * 1024;

/// Opens a fifo's write end (waits for its reader, as runc's shim does);
/// `None` for no path.
async fn open_writer(path: &str) -> Option<tokio::fs::File> {
    if path.is_empty() {
        return None;
    }
    match tokio::fs::OpenOptions::new().write(true).open(path).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(
                fifo = path,
                "cannot open for output: {e}; dropping that stream"
            );
            None
        }
    }
}

/// Carries the container's output to the fifos until the core closes the
/// channel (the process ended and its output was read). With a terminal
/// everything is on stdout. Output of a stream whose reader went away is
/// dropped, so the container never waits on a reader that is gone.
pub async fn pump_output(mut rx: mpsc::Receiver<Output>, stdout: String, stderr: String) {
    let mut out = open_writer(&stdout).await;
    let mut err = if stderr == stdout {
        None
    } else {
        open_writer(&stderr).await
    };
    while let Some(chunk) = rx.recv().await {
        let (sink, bytes, name) = match &chunk {
            Output::Stdout(b) => (&mut out, b, "stdout"),
            Output::Stderr(b) => (&mut err, b, "stderr"),
        };
        if let Some(f) = sink {
            if let Err(e) = f.write_all(bytes).await {
                tracing::debug!("{name} fifo: {e}; its reader is gone");
                *sink = None;
            }
        }
    }
    for f in [out, err].into_iter().flatten() {
        let mut f = f;
        let _ = f.flush().await;
    }
}

/// Carries the stdin fifo into the container until containerd's CloseIO
/// (`close`: the client's input ended) or the container stops reading. The
/// fifo is opened read-write, as a reader that never waits for a writer:
/// its end of file is CloseIO, not the writer going (containerd's writer
/// may come late or never). At CloseIO what the client wrote and the pump
/// has not read yet is still in the fifo: it is carried first, then the
/// container reads end of file.
pub async fn pump_stdin(
    path: PathBuf,
    tx: mpsc::Sender<Stdin>,
    mut close: tokio::sync::oneshot::Receiver<()>,
) {
    let f = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(fifo = %path.display(), "cannot open stdin: {e}");
            let _ = tx.send(Stdin::Close).await;
            return;
        }
    };
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = tokio::select! {
            biased;
            ready = f.readable() => match ready.map(|()| f.try_read(&mut buf)) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => 0,
            },
            _ = &mut close => {
                // Drain what is buffered, without waiting for more.
                while let Ok(n) = f.try_read(&mut buf) {
                    if n == 0 || tx.send(Stdin::Data(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                0
            }
        };
        if n == 0 {
            let _ = tx.send(Stdin::Close).await;
            return;
        }
        if tx.send(Stdin::Data(buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}
