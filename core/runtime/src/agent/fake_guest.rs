//! A scripted hyperstart on the other end of a real unix socket, for the
//! tests of the agent client and of the pod path.

use std::time::Duration;

use hyper_protocol::{
    AgentError, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage, Reply, Request,
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

pub(crate) async fn connected() -> (AgentClient, FakeGuest, tempfile::TempDir) {
    let (dir, path, listener) = listen();
    let guest = tokio::spawn(async move {
        let mut g = accept(listener).await;
        g.send(&GuestMessage::Ready {
            min_version: 1,
            max_version: 1,
            capabilities: vec!["flow-control".into()],
            agent: "fake".into(),
        })
        .await;
        let hello = g.recv_request().await;
        assert!(matches!(hello.request, Request::Hello { version: 1, .. }));
        g.reply(hello.id, Ok(Reply::Ok)).await;
        g
    });
    let (client, ready) = AgentClient::connect(&path, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ready.version, 1);
    (client, guest.await.unwrap(), dir)
}
