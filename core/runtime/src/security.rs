//! A container's confinement (see [`hyper_api::security`]), as the runtime
//! checks a request's.

pub use hyper_api::security::*;
use hyper_protocol::{Confinement, Rlimit};

/// [`confinement`] as a run error (an invalid request); the ulimits are
/// checked too.
pub fn check(security: &Security) -> Result<Confinement, crate::pods::RunError> {
    rlimits(security)?;
    confinement(security).map_err(|e| crate::pods::RunError::Invalid(e.0))
}

/// [`Security::rlimits`] as a run error (an invalid request).
pub fn rlimits(security: &Security) -> Result<Vec<Rlimit>, crate::pods::RunError> {
    security
        .rlimits()
        .map_err(|e| crate::pods::RunError::Invalid(e.0))
}
