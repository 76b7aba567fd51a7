//! `hyper-xen-console`: one Xen domain's console bridge (see the
//! `hyper_backend_xen::bridge` module). Started by the Xen plugin with the
//! domain's console pty and the agent socket's bound listener as inherited
//! descriptors:
//!
//!   hyper-xen-console --vm NAME --socket PATH --pty-fd N --listen-fd N
//!
//! `--vm` and `--socket` only name what it serves (a plugin that takes the
//! domain over checks them in /proc/PID/cmdline); it opens nothing by path.
//! It drops to `nobody` before it serves, and ends when the pty hangs up
//! (the domain is gone). Exit status: 0 then, 1 on an error, 2 on bad usage.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// `nobody`/`nogroup` on Debian; only numbers are needed.
const NOBODY: libc::uid_t = 65534;

struct Args {
    pty_fd: RawFd,
    listen_fd: RawFd,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut pty_fd = None;
    let mut listen_fd = None;
    let mut args = args;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let fd = || -> Result<RawFd, String> {
            value
                .parse::<RawFd>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| format!("{flag}: {value:?} is not a descriptor number above 2"))
        };
        match flag.as_str() {
            "--pty-fd" => pty_fd = Some(fd()?),
            "--listen-fd" => listen_fd = Some(fd()?),
            "--vm" | "--socket" => {}
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    match (pty_fd, listen_fd) {
        (Some(p), Some(l)) if p != l => Ok(Args {
            pty_fd: p,
            listen_fd: l,
        }),
        _ => Err("--pty-fd and --listen-fd (two different descriptors) are required".into()),
    }
}

/// Gives up root for good: the descriptors it serves are already open.
fn drop_privileges() -> std::io::Result<()> {
    // SAFETY: setgroups/setgid/setuid with plain values and no pointers
    // but a null list of length 0.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(NOBODY) != 0
            || libc::setuid(NOBODY) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `fd` is an open descriptor of this process.
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn main() {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hyper-xen-console: {e}");
            std::process::exit(2);
        }
    };
    if !is_open(args.pty_fd) || !is_open(args.listen_fd) {
        eprintln!("hyper-xen-console: the descriptors given are not open (it is started by the Xen plugin, which passes them)");
        std::process::exit(2);
    }
    // SAFETY: both descriptors were inherited from the plugin for this
    // process alone, are open (checked above) and distinct; each is owned
    // once from here on.
    let (pty, listener) = unsafe {
        (
            OwnedFd::from_raw_fd(args.pty_fd),
            UnixListener::from_raw_fd(args.listen_fd),
        )
    };
    // Only root may do this; run by hand as another user it keeps its uid.
    // SAFETY: geteuid takes nothing and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        if let Err(e) = drop_privileges() {
            eprintln!("hyper-xen-console: cannot drop to uid {NOBODY}: {e}");
            std::process::exit(1);
        }
    }
    match hyper_backend_xen::console::serve(listener, pty) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("hyper-xen-console: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_are_checked() {
        let ok = args(&[
            "--vm",
            "p",
            "--socket",
            "/r/a.sock",
            "--pty-fd",
            "5",
            "--listen-fd",
            "6",
        ])
        .unwrap();
        assert_eq!((ok.pty_fd, ok.listen_fd), (5, 6));
        for bad in [
            &["--pty-fd", "5"][..],
            &["--pty-fd", "5", "--listen-fd", "5"],
            &["--pty-fd", "1", "--listen-fd", "6"],
            &["--pty-fd", "x", "--listen-fd", "6"],
            &["--pty-fd", "5", "--listen-fd"],
            &["--other", "1", "--pty-fd", "5", "--listen-fd", "6"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
