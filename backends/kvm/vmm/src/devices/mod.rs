//! Device models. Everything here takes guest input: no panics, every
//! offset, size and index is checked, and faults are counted and logged
//! with a rate limit so a hostile guest cannot flood the host's logs.

pub mod blk;
pub mod bus;
pub mod console;
pub mod debug_exit;
pub mod fs;
pub mod i8042;
pub mod mmio;
pub mod net;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A device's lock. A thread that panicked holding it left the device in
/// some state a guest could have produced anyway: carry on with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Invalid accesses the guest made; logged for the first few, then every
/// 4096th.
#[derive(Debug, Default)]
pub struct GuestFaults(AtomicU64);

impl GuestFaults {
    pub fn record(&self, what: std::fmt::Arguments<'_>) {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n < 32 || n.is_multiple_of(4096) {
            tracing::warn!(count = n + 1, "guest fault: {what}");
        }
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub static GUEST_FAULTS: GuestFaults = GuestFaults(AtomicU64::new(0));

/// Records a guest fault with `format!` arguments.
#[macro_export]
macro_rules! guest_fault {
    ($($arg:tt)*) => {
        $crate::devices::GUEST_FAULTS.record(format_args!($($arg)*))
    };
}

#[cfg(test)]
pub(crate) mod testring;
