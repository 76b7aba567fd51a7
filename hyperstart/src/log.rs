//! Console logging. Every byte on an emulated serial port costs a VM exit, so
//! hyperstart says little: errors and milestones always, the rest only with
//! `hyper.debug=1` on the kernel command line.

use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Writes one line in a single write(2) so lines from the intermediate
/// processes never interleave mid-line with ours. Errors are ignored: there is
/// nowhere else to report them, and `eprintln!` would panic.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let line = format!("hyperstart: {args}\n");
    // SAFETY: writes a valid, initialised buffer to fd 2; a closed or invalid
    // fd only makes write(2) fail, which is ignored.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
    }
}

macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::write_line(format_args!($($arg)*))
    };
}

macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::write_line(format_args!($($arg)*))
        }
    };
}

pub(crate) use {debug, log};
