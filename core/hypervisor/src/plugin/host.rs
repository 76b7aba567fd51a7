//! The body of `hyper-plugin-host`: the small process that loads one
//! backend's `.so` and serves hyperd's calls to it, so that a plugin that
//! segfaults, aborts or hangs takes down this process (and the calls in
//! flight), never hyperd.
//!
//! `hyper-plugin-host PLUGIN.so`, with its stdin the socket to hyperd. Each
//! call runs on its own thread, so a slow call (a `wait` lasts as long as
//! its VM; hyperd sends one per VM) never holds up the others. When hyperd
//! goes away (end of the socket) the host exits at once, without running
//! any plugin destructors: the VMs it started keep running, as they did when
//! the plugin lived in hyperd, for the next hyperd to take over.

use std::io::{BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::inproc::InProcessPlugin;
use super::wire::{self, Call, Hello, Reply};
use super::PluginRequest;

/// Runs the host; returns the process's exit code.
pub fn host_main() -> i32 {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: hyper-plugin-host PLUGIN.so (started by hyperd, its stdin the socket to hyperd)");
        return 2;
    };
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("hyper-plugin-host: stdin is not usable: {e}");
            return 2;
        }
    };
    // The plugin's children (QEMU, hyper-vmm, xl) must not inherit the
    // socket as their stdin: they would keep it open after this process
    // dies, and hyperd would never see the end of it. The clone above is
    // close-on-exec; fd 0 becomes /dev/null.
    if let Err(e) = stdin_to_dev_null() {
        eprintln!("hyper-plugin-host: cannot detach stdin: {e}");
        return 2;
    }
    let mut reader = match socket.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => {
            eprintln!("hyper-plugin-host: {e}");
            return 2;
        }
    };
    let writer = Arc::new(Mutex::new(socket));
    let plugin = match InProcessPlugin::load(&path) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(&writer, &Hello::Refused(e));
            return 0;
        }
    };
    let hello = Hello::Loaded {
        name: plugin.name().to_string(),
        build_id: plugin.build_id().to_string(),
    };
    if send(&writer, &hello).is_err() {
        return 0;
    }
    let plugin = Arc::new(plugin);
    let mut buf = Vec::new();
    loop {
        match wire::read_line::<Call>(&mut reader, &mut buf) {
            // A release only forgets a VM: it runs here, in the order the
            // calls came, so a launch or recover of the same id sent after
            // it never finds it still tracked (a thread could run it late).
            Ok(Some(call)) if matches!(call.request, PluginRequest::Release { .. }) => {
                let result = plugin.call(&call.request);
                let reply = Reply {
                    id: call.id,
                    result,
                };
                if send(&writer, &reply).is_err() {
                    std::process::exit(0);
                }
            }
            Ok(Some(call)) => {
                let plugin = plugin.clone();
                let writer = writer.clone();
                let spawned = std::thread::Builder::new()
                    .name("plugin-call".into())
                    .spawn(move || {
                        let result = plugin.call(&call.request);
                        if send(
                            &writer,
                            &Reply {
                                id: call.id,
                                result,
                            },
                        )
                        .is_err()
                        {
                            // hyperd is gone: so are we.
                            std::process::exit(0);
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("hyper-plugin-host: cannot start a thread for a call: {e}");
                    std::process::exit(1);
                }
            }
            // hyperd closed its end: it has exited (or dropped the plugin).
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("hyper-plugin-host: bad message from hyperd: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn send<T: serde::Serialize>(writer: &Mutex<UnixStream>, value: &T) -> std::io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    wire::write_line(&mut *w, value)?;
    w.flush()
}

fn stdin_to_dev_null() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 of an open fd we own onto fd 0; no memory is passed, and
    // nothing in this process reads fd 0 (the socket was cloned above).
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
