//! The spec's confinement of a task's process, as the core takes a run's
//! (`hyper run --cap-drop ALL --cap-add … --security-opt …`):
//! `process.capabilities.bounding` is the capability set (exactly: the
//! default set is dropped and the spec's added), `process.noNewPrivileges`
//! is `no-new-privileges`, and `linux.seccomp` (the OCI form of a Docker
//! profile) the seccomp filter. A spec without capabilities keeps the
//! core's default set; one without seccomp keeps the core's default
//! profile (the guest's own filter, stricter than none).

use hyper_core::security::Security;

use crate::bundle::{Linux, Process};

#[derive(Debug, thiserror::Error)]
#[error("the spec's {field}: {message}")]
pub struct ConfineError {
    pub field: &'static str,
    pub message: String,
}

/// The core's security options for the spec's process.
pub fn security(process: &Process, linux: Option<&Linux>) -> Result<Security, ConfineError> {
    let mut security = Security::default();
    if let Some(caps) = &process.capabilities {
        security.cap_drop = vec!["ALL".into()];
        security.cap_add = caps.bounding.clone();
    }
    security
        .security_opt
        .push(format!("no-new-privileges={}", process.no_new_privileges));
    if let Some(profile) = linux.and_then(|l| l.seccomp.as_ref()) {
        let json = serde_json::to_string(profile).map_err(|e| ConfineError {
            field: "linux.seccomp",
            message: e.to_string(),
        })?;
        security.security_opt.push(format!("seccomp={json}"));
    }
    // Checked here so a bad spec fails Create with the spec's field named.
    security.confinement().map_err(|e| ConfineError {
        field: if linux.and_then(|l| l.seccomp.as_ref()).is_some() {
            "process.capabilities or linux.seccomp"
        } else {
            "process.capabilities"
        },
        message: e.to_string(),
    })?;
    Ok(security)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_core::security::capability_bit;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_specs_bounding_set_is_the_capability_set_exactly() {
        let p = process(
            r#"{"args":["x"],"capabilities":{"bounding":["CAP_CHOWN","CAP_NET_ADMIN"],"effective":["CAP_CHOWN"]},"noNewPrivileges":true}"#,
        );
        let c = security(&p, None).unwrap().confinement().unwrap();
        let want = capability_bit("CHOWN").unwrap() | capability_bit("NET_ADMIN").unwrap();
        assert_eq!(c.capabilities, want);
        assert!(c.no_new_privileges);
        // The core's default profile still applies.
        assert!(c.seccomp.is_some());
    }

    #[test]
    fn none_at_all_and_no_new_privileges_false_are_kept() {
        let p = process(r#"{"args":["x"],"capabilities":{},"noNewPrivileges":false}"#);
        let c = security(&p, None).unwrap().confinement().unwrap();
        assert_eq!(c.capabilities, 0);
        assert!(!c.no_new_privileges);
        // No capabilities in the spec: the core's default set.
        let p = process(r#"{"args":["x"]}"#);
        let c = security(&p, None).unwrap().confinement().unwrap();
        assert_eq!(
            c.capabilities,
            hyper_core::security::docker_default_capabilities()
        );
    }

    #[test]
    fn an_unknown_capability_or_a_bad_profile_names_the_field() {
        let p = process(r#"{"args":["x"],"capabilities":{"bounding":["CAP_NOPE"]}}"#);
        let e = security(&p, None).unwrap_err().to_string();
        assert!(
            e.contains("process.capabilities") && e.contains("CAP_NOPE"),
            "{e}"
        );
        let p = process(r#"{"args":["x"]}"#);
        let linux: Linux =
            serde_json::from_str(r#"{"seccomp":{"defaultAction":"SCMP_ACT_BOGUS"}}"#).unwrap();
        let e = security(&p, Some(&linux)).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp"), "{e}");
    }

    #[test]
    fn the_specs_seccomp_profile_is_the_filter() {
        let p = process(r#"{"args":["x"]}"#);
        let linux: Linux = serde_json::from_str(
            r#"{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}}"#,
        )
        .unwrap();
        let c = security(&p, Some(&linux)).unwrap().confinement().unwrap();
        let filter = c.seccomp.expect("a filter");
        assert_eq!(filter.rules.len(), 2, "{filter:?}");
    }
}
