//! hyperd's errors in `hyper`'s words: the kinds hyperd sends
//! ([`hyper_api::errors::ErrorKind`]) say what went wrong with its data;
//! the commands and flags that fix it are the client's to name.

use hyper_api::errors::{ApiError, ErrorKind};

/// The line `hyper` prints for an error hyperd sent.
pub fn word(error: &ApiError) -> String {
    let Some(kind) = &error.kind else {
        return error.message.clone();
    };
    match kind {
        ErrorKind::NoSuchPod { pod } => format!("no such pod: {pod}; `hyper ps -a` lists them"),
        ErrorKind::PodNotRunning { pod } => {
            format!("pod {pod} is not running; start it again with `hyper start {pod}`")
        }
        ErrorKind::PodRunning { pod } => {
            format!("pod {pod} is running; stop it first (`hyper stop {pod}`) or use `hyper rm -f`")
        }
        ErrorKind::NameInUse { name } => format!(
            "the name {name} is already used by a pod; remove it first (`hyper rm {name}`) or pick another --name"
        ),
        ErrorKind::BadPodName { name } => format!(
            "invalid request: --name {name}: use letters, digits, `_`, `.` and `-`, starting with a letter or digit"
        ),
        ErrorKind::RemoveWithRestart => {
            "invalid request: --rm and --restart do not go together: a pod removed when it exits cannot be restarted".into()
        }
        ErrorKind::ImageAndRootfs => {
            "invalid request: give either an image or --rootfs, not both".into()
        }
        ErrorKind::NoImage => {
            "invalid request: no image given: `hyper run IMAGE [CMD…]` or `hyper run --rootfs DIR CMD…`"
                .into()
        }
        ErrorKind::NoSuchImage { image } => format!(
            "no such image: {image}; pull it first with `hyper pull {image}` (`hyper run` does that for you)"
        ),
        ErrorKind::NoExecCommand => {
            "invalid request: no command given: `hyper exec POD CMD…`".into()
        }
        ErrorKind::NoTemplate { reason } => format!(
            "cannot start the pod from a template: {reason}; start it with --start auto or cold (or set [vm] start = \"auto\")"
        ),
        ErrorKind::SizeRefused { key, value, reason } => {
            let key = match key.as_str() {
                "cpus" => "--cpus",
                "memory_mib" => "--memory",
                other => other,
            };
            format!("invalid request: {key} {value}: {reason}")
        }
        ErrorKind::NoNetworks { dir } => format!(
            "no CNI network is configured in {dir}; install one (`make install` puts the default `hyper` network there) or pass --network none"
        ),
        ErrorKind::GuestWithoutNetwork { agent } => format!(
            "the guest agent ({agent}) does not support networks; install a payload built from this version or pass --network none"
        ),
        ErrorKind::VolumeInUse { name, pods } => format!(
            "volume {name} is in use by pod(s) {}; remove them first (`hyper rm`)",
            pods.join(", ")
        ),
        ErrorKind::NoSuchTemplate { key } => {
            format!("no template {key}; `hyper template ls` lists them")
        }
        ErrorKind::BadTemplateKey { key } => format!(
            "`{key}` is not a template key (32 hex digits, as `hyper template ls` shows)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_worded_with_flags_and_others_keep_their_message() {
        let e = ApiError::new(
            "the name web is already used by a pod",
            Some(ErrorKind::NameInUse { name: "web".into() }),
        );
        assert!(word(&e).ends_with("or pick another --name"), "{}", word(&e));
        let e = ApiError::new(
            "invalid request: cpus 64: use 1 to 64",
            Some(ErrorKind::SizeRefused {
                key: "cpus".into(),
                value: "64".into(),
                reason: "use 1 to 64".into(),
            }),
        );
        assert_eq!(word(&e), "invalid request: --cpus 64: use 1 to 64");
        assert_eq!(word(&ApiError::new("disk full", None)), "disk full");
    }

    #[test]
    fn the_kind_travels_next_to_the_message_and_unknown_kinds_read_as_none() {
        let e = ApiError::new(
            "no such pod: x",
            Some(ErrorKind::NoSuchPod { pod: "x".into() }),
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"message": "no such pod: x", "kind": "no_such_pod", "pod": "x"})
        );
        assert_eq!(serde_json::from_value::<ApiError>(json).unwrap(), e);
        let newer: ApiError =
            serde_json::from_str(r#"{"message":"m","kind":"from_the_future","x":1}"#).unwrap();
        assert_eq!(newer, ApiError::new("m", None));
        let older: ApiError = serde_json::from_str(r#"{"message":"m"}"#).unwrap();
        assert_eq!(older, ApiError::new("m", None));
    }
}
