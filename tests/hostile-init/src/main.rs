//! A hostile guest init for the e2e tests: it takes hyperstart's place as
//! the initramfs `/init`, finds the agent channel the way hyperstart does
//! (`hyper.channel=` on the kernel command line: a virtio-serial port name
//! or a device path), passes READY/Hello, and then attacks the host.
//!
//! The attack is named by the file `/attack` in the initramfs (the e2e
//! harness writes it) or `hyper.attack=` on the command line:
//!
//! * `reattach-flood`: `Reattached` answers for invented ids, each listing
//!   many invented processes (H1);
//! * `stream-flood`: data and end-of-stream frames on thousands of stream
//!   ids the host never opened;
//! * `huge-frame`: a frame header claiming a 4 GiB payload;
//! * `bad-json`: control frames that are not JSON;
//! * `bogus-flood`: well-formed but unexpected messages (exits of unknown
//!   processes, answers to requests never sent): the log flood of M3;
//! * `overrun`: sends the container's stdout beyond the credit the host
//!   granted, before answering its start (so no credit came back yet);
//! * `silent`: answers Hello and then nothing, ever;
//! * `mute`: starts the pod and its container, then answers nothing more
//!   (a guest that stopped answering: `hyper stop` must not wait on it);
//! * `console-flood`: starts the container honestly and writes its serial
//!   console (`/dev/ttyS0`) without end (the console log's cap, M2).
//! * `network-garbage`: answers the pod's network (`StartPod`) with a
//!   failure whose message is escape sequences and 60 KB of filler, then
//!   with bad JSON: the pod must fail and leave none of its host network.
//!
//! Nothing here is careful: it is an attacker. It never exits (it is PID 1).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_protocol::{
    AgentError, AgentErrorKind, Frame, FrameDecoder, FrameKind, GuestMessage, HostMessage,
    ProcessState, Reply, Request, CHANNEL_PORT_NAME, CMDLINE_CHANNEL_KEY, INITIAL_WINDOW,
    MAX_DATA_PAYLOAD,
};

fn log(msg: &str) {
    // The console, if the kernel gave us one.
    let _ = std::io::stderr().write_all(format!("hostile-init: {msg}\n").as_bytes());
}

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings for the call's
    // duration; data is NULL.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}

fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn find_channel(spec: &str) -> Option<PathBuf> {
    if spec.starts_with('/') {
        return Path::new(spec).exists().then(|| PathBuf::from(spec));
    }
    std::fs::read_dir("/sys/class/virtio-ports")
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).ok()?;
            (name.trim_end() == spec).then(|| Path::new("/dev").join(e.file_name()))
        })
}

struct Chan {
    file: File,
    decoder: FrameDecoder,
}

impl Chan {
    fn send(&mut self, frame: &Frame) {
        self.raw(&frame.encode());
    }

    fn raw(&mut self, bytes: &[u8]) {
        if self.file.write_all(bytes).is_err() {
            // The host hung up: nothing more to attack.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn msg(&mut self, msg: &GuestMessage) {
        let json = serde_json::to_vec(msg).unwrap_or_default();
        self.send(&Frame::control(json));
    }

    fn reply(&mut self, id: u64, reply: Reply) {
        self.msg(&GuestMessage::Response {
            id,
            result: Ok(reply),
        });
    }

    fn next_frame(&mut self) -> Frame {
        let mut buf = [0u8; 65536];
        loop {
            if let Ok(Some(f)) = self.decoder.next_frame() {
                return f;
            }
            match self.file.read(&mut buf) {
                Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(100)),
                Ok(n) => {
                    if let Ok(Some(f)) = self.decoder.push(&buf[..n]) {
                        return f;
                    }
                }
            }
        }
    }

    fn next_request(&mut self) -> HostMessage {
        loop {
            let f = self.next_frame();
            if f.kind == FrameKind::Control {
                if let Ok(m) = serde_json::from_slice(&f.payload) {
                    return m;
                }
            }
        }
    }

    /// Serves requests honestly until a container has started; its stdio
    /// stream id.
    fn start_container(&mut self) -> u32 {
        loop {
            let m = self.next_request();
            match m.request {
                Request::NewContainer(spec) => {
                    self.reply(m.id, Reply::Started { pid: 2 });
                    return spec.process.stdio;
                }
                Request::Ping => self.reply(m.id, Reply::Pong),
                _ => self.reply(m.id, Reply::Ok),
            }
        }
    }
}

fn forever(chan: &mut Chan) -> ! {
    loop {
        let _ = chan.next_frame();
    }
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        mount("proc", "/proc", "proc");
        mount("sysfs", "/sys", "sysfs");
        mount("devtmpfs", "/dev", "devtmpfs");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let attack = std::fs::read_to_string("/attack")
        .ok()
        .map(|a| a.trim().to_string())
        .or_else(|| cmdline_value(&cmdline, "hyper.attack"))
        .unwrap_or_else(|| "silent".into());
    let spec = cmdline_value(&cmdline, CMDLINE_CHANNEL_KEY).unwrap_or(CHANNEL_PORT_NAME.into());
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = loop {
        if let Some(path) = find_channel(&spec) {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&path)
            {
                break f;
            }
        }
        if Instant::now() > deadline {
            log(&format!("no channel {spec}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut chan = Chan {
        file,
        decoder: FrameDecoder::new(),
    };
    log(&format!("attack: {attack}"));
    chan.msg(&GuestMessage::Ready {
        min_version: hyper_protocol::MIN_PROTOCOL_VERSION,
        max_version: hyper_protocol::PROTOCOL_VERSION,
        // Everything hyperstart advertises, so the host takes it for one.
        capabilities: hyper_protocol::capability::ALL.map(String::from).to_vec(),
        agent: "hostile-init".into(),
    });
    let hello = chan.next_request();
    chan.reply(hello.id, Reply::Ok);

    match attack.as_str() {
        "reattach-flood" => {
            let processes: Vec<ProcessState> = (0..200u32)
                .map(|i| ProcessState {
                    container: "c".into(),
                    process: format!("invented-{i}"),
                    stdio: 1000 + 2 * i,
                    stderr: 1001 + 2 * i,
                    exit_status: None,
                    output_open: true,
                    oom_killed: false,
                })
                .collect();
            for id in 10_000u64.. {
                chan.reply(
                    id,
                    Reply::Reattached {
                        processes: processes.clone(),
                    },
                );
            }
        }
        "stream-flood" => {
            let mut bytes = Vec::new();
            for stream in 1000..11_000u32 {
                bytes.extend(Frame::data(stream, vec![b'x'; 1024]).encode());
                bytes.extend(Frame::eof(stream).encode());
            }
            loop {
                chan.raw(&bytes);
            }
        }
        "huge-frame" => {
            let mut header = vec![FrameKind::Data as u8];
            header.extend(7u32.to_be_bytes());
            header.extend(u32::MAX.to_be_bytes());
            chan.raw(&header);
            let junk = vec![0xa5u8; 1 << 20];
            loop {
                chan.raw(&junk);
            }
        }
        "bad-json" => {
            let frame = Frame::control(b"{\"response\": [not json".to_vec()).encode();
            let batch: Vec<u8> = std::iter::repeat_n(frame, 1000).flatten().collect();
            loop {
                chan.raw(&batch);
            }
        }
        "bogus-flood" => {
            for i in 0u64.. {
                chan.msg(&GuestMessage::ProcessExit {
                    container: "c".into(),
                    process: format!("ghost-{i}"),
                    status: 1,
                    oom_killed: false,
                });
                chan.reply(1_000_000 + i, Reply::Pong);
            }
        }
        "overrun" => {
            // The container's stdout beyond its window before the start is
            // even answered, so no credit can have come back yet.
            loop {
                let m = chan.next_request();
                let Request::NewContainer(spec) = m.request else {
                    chan.reply(m.id, Reply::Ok);
                    continue;
                };
                let payload = vec![b'o'; MAX_DATA_PAYLOAD];
                for _ in 0..(INITIAL_WINDOW as usize / MAX_DATA_PAYLOAD + 2) {
                    chan.send(&Frame::data(spec.process.stdio, payload.clone()));
                }
                chan.reply(m.id, Reply::Started { pid: 2 });
                break;
            }
        }
        "mute" => {
            chan.start_container();
        }
        "network-garbage" => loop {
            let m = chan.next_request();
            if !matches!(m.request, Request::StartPod(_)) {
                chan.reply(m.id, Reply::Ok);
                continue;
            }
            let message = format!(
                "network-garbage\x1b[2J\x1b]0;owned\x07\r{}",
                "\u{202e}x".repeat(20_000)
            );
            chan.msg(&GuestMessage::Response {
                id: m.id,
                result: Err(AgentError::new(AgentErrorKind::Failed, message)),
            });
            chan.raw(&Frame::control(b"{\"response\": [not json".to_vec()).encode());
        },
        "console-flood" => {
            std::thread::spawn(|| {
                let line = b"hostile-init: flooding the console\n".repeat(64);
                if let Ok(mut tty) = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open("/dev/ttyS0")
                {
                    loop {
                        let _ = tty.write_all(&line);
                    }
                }
            });
            chan.start_container();
        }
        _ => {}
    }
    forever(&mut chan)
}
