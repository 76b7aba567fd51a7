//! A scripted hyperstart on the other end of a real unix socket, for the
//! tests of the agent client and of the pod path.

use std::time::Duration;

use hyper_protocol::{
    AgentError, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, Reply, Request,
    RESYNC_MAGIC,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::AgentClient;

/// A scripted guest on the other end of a real unix socket.
pub(crate) struct FakeGuest {
    pub(crate) stream: UnixStream,
    pub(crate) decoder: FrameDecoder,
}

impl FakeGuest {
    pub(crate) async fn send(&mut self, msg: &GuestMessage) {
        let bytes = Frame::control(serde_json::to_vec(msg).unwrap()).encode();
        self.stream.write_all(&bytes).await.unwrap();
    }

    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub(crate) async fn recv(&mut self) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return f;
            }
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "host closed");
            if let Some(f) = self.decoder.push(&buf[..n]).unwrap() {
                return f;
            }
        }
    }

    pub(crate) async fn recv_request(&mut self) -> HostMessage {
        let f = self.recv().await;
        assert_eq!(f.kind, FrameKind::Control);
        serde_json::from_slice(&f.payload).unwrap()
    }

    /// The host's next request, skipping its data frames (stdin, credit);
    /// `None` once the host hung up or sent something this guest cannot
    /// read.
    pub(crate) async fn next_request(&mut self) -> Option<HostMessage> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(f) = self.decoder.next_frame().ok()? {
                if f.kind == FrameKind::Control {
                    return serde_json::from_slice(&f.payload).ok();
                }
            }
            let n = self.stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if let Some(f) = self.decoder.push(&buf[..n]).ok()? {
                if f.kind == FrameKind::Control {
                    return serde_json::from_slice(&f.payload).ok();
                }
            }
        }
    }

    pub(crate) async fn reply(&mut self, id: u64, result: Result<Reply, AgentError>) {
        self.send(&GuestMessage::Response { id, result }).await;
    }
}

pub(crate) fn listen() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    (dir, path, listener)
}

pub(crate) async fn accept(listener: UnixListener) -> FakeGuest {
    let (stream, _) = listener.accept().await.unwrap();
    FakeGuest {
        stream,
        decoder: FrameDecoder::new(),
    }
}

/// Accepts a reattaching host: sends `tail` (an old session's bytes),
/// reads the Reattach and writes the resync marker. The request's id.
pub(crate) async fn accept_reattach(listener: UnixListener, tail: &[u8]) -> (FakeGuest, u64) {
    let (stream, _) = listener.accept().await.unwrap();
    let mut guest = FakeGuest {
        stream,
        decoder: FrameDecoder::resynchronising(),
    };
    if !tail.is_empty() {
        guest.send_raw(tail).await;
    }
    let msg = guest.recv_request().await;
    let Request::Reattach { nonce } = msg.request else {
        panic!("expected reattach, got {msg:?}");
    };
    let mut marker = RESYNC_MAGIC.to_vec();
    marker.extend_from_slice(nonce.as_bytes());
    guest.send_raw(&marker).await;
    (guest, msg.id)
}

pub(crate) async fn connected() -> (AgentClient, FakeGuest, tempfile::TempDir) {
    let (dir, path, listener) = listen();
    let guest = tokio::spawn(async move {
        let mut g = accept(listener).await;
        g.send(&GuestMessage::Ready {
            min_version: hyper_protocol::PROTOCOL_VERSION,
            max_version: hyper_protocol::PROTOCOL_VERSION,
            capabilities: vec!["flow-control".into()],
            agent: "fake".into(),
        })
        .await;
        let hello = g.recv_request().await;
        assert!(matches!(
            hello.request,
            Request::Hello { version, .. } if version == hyper_protocol::PROTOCOL_VERSION
        ));
        g.reply(hello.id, Ok(Reply::Ok)).await;
        g
    });
    let (client, ready) = AgentClient::connect(&path, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ready.version, hyper_protocol::PROTOCOL_VERSION);
    (client, guest.await.unwrap(), dir)
}
