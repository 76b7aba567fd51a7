//! How long each step of a pod's network took, as debug events of target
//! `hyper::timing` (`HYPER_LOG=info,hyper::timing=debug`): one line per step
//! with the pod, the step and its milliseconds. `bench/netstart.py` reads
//! them for its per-step medians. Cheap: one `Instant` per step, and the
//! event is filtered out at the default level.

use std::time::Instant;

/// The target of every timing event (the core's too).
pub const TARGET: &str = "hyper::timing";

/// Logs that `step` of pod `pod` took from `started` to now.
pub fn step_done(pod: &str, step: &str, started: Instant) {
    tracing::debug!(
        target: "hyper::timing",
        pod,
        step,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "step done"
    );
}
