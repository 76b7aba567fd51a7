//! A container's confinement (see [`hyper_api::security`]), as the runtime
//! checks a request's.

pub use hyper_api::security::*;
use hyper_protocol::Confinement;

/// [`confinement`] as a run error (an invalid request).
pub fn check(security: &Security) -> Result<Confinement, crate::pods::RunError> {
    confinement(security).map_err(|e| crate::pods::RunError::Invalid(e.0))
}
