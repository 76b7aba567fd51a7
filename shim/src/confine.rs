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
    // `RLIMIT_NOFILE` is Docker's `nofile`; the core checks the names.
    security.ulimits = process
        .rlimits
        .iter()
        .map(|r| {
            let name = r.kind.strip_prefix("RLIMIT_").unwrap_or(&r.kind);
            format!("{}={}:{}", name.to_ascii_lowercase(), r.soft, r.hard)
        })
        .collect();
    security.rlimits().map_err(|e| ConfineError {
        field: "process.rlimits",
        message: e.to_string(),
    })?;
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
    fn the_specs_rlimits_become_ulimits_and_bad_ones_name_the_field() {
        let p = process(
            r#"{"args":["x"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":4096,"soft":1024},{"type":"RLIMIT_CORE","hard":0,"soft":0}]}"#,
        );
        let s = security(&p, None).unwrap();
        let limits = s.rlimits().unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(
            (limits[0].resource.as_str(), limits[0].soft, limits[0].hard),
            ("nofile", 1024, 4096)
        );
        assert_eq!(limits[1].resource, "core");
        let p = process(r#"{"args":["x"],"rlimits":[{"type":"RLIMIT_BOGUS","hard":1,"soft":1}]}"#);
        let e = security(&p, None).unwrap_err().to_string();
        assert!(e.contains("process.rlimits"), "{e}");
        let p = process(r#"{"args":["x"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":2}]}"#);
        let e = security(&p, None).unwrap_err().to_string();
        assert!(e.contains("above the hard limit"), "{e}");
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
