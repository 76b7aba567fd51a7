//! The kernel command line: where hyperstart learns its channel.

use std::path::PathBuf;

use hyper_protocol::{CHANNEL_PORT_NAME, CMDLINE_CHANNEL_KEY, CMDLINE_DISK_PREFIX};

/// Where the host-facing channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelSpec {
    /// A device path such as `/dev/hvc1` or `/dev/ttyS1`.
    Device(PathBuf),
    /// A virtio-serial port name, looked up in `/sys/class/virtio-ports`.
    Port(String),
}

/// Splits the command line into words the way the kernel does: whitespace
/// separates, double quotes group (and are dropped).
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The value of `key=...`; the last occurrence wins, as for kernel parameters.
pub fn value(cmdline: &str, key: &str) -> Option<String> {
    words(cmdline)
        .into_iter()
        .filter_map(|w| {
            w.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
        .next_back()
}

pub fn channel(cmdline: &str) -> ChannelSpec {
    match value(cmdline, CMDLINE_CHANNEL_KEY) {
        Some(v) if v.starts_with('/') => ChannelSpec::Device(PathBuf::from(v)),
        Some(v) if !v.is_empty() => ChannelSpec::Port(v),
        _ => ChannelSpec::Port(CHANNEL_PORT_NAME.to_string()),
    }
}

/// The device a backend without disk serials (Xen's blkfront) named for the
/// disk `id`: `hyper.disk.<id>=xvda`. Only a plain device name is taken.
pub fn disk_alias(cmdline: &str, id: &str) -> Option<String> {
    let name = value(cmdline, &format!("{CMDLINE_DISK_PREFIX}{id}"))?;
    let plain = !name.is_empty()
        && name.len() <= 32
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    plain.then_some(name)
}

pub fn debug(cmdline: &str) -> bool {
    matches!(
        value(cmdline, "hyper.debug").as_deref(),
        Some("1" | "true" | "yes" | "on")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_from_cmdline() {
        assert_eq!(
            channel("quiet hyper.debug=1 console=ttyS0 hyper.channel=sh.hyper.channel.0 pci=off\n"),
            ChannelSpec::Port("sh.hyper.channel.0".into())
        );
        assert_eq!(
            channel("console=hvc0 hyper.channel=/dev/hvc1"),
            ChannelSpec::Device("/dev/hvc1".into())
        );
        assert_eq!(
            channel("quiet"),
            ChannelSpec::Port(CHANNEL_PORT_NAME.into())
        );
        assert_eq!(
            channel("hyper.channel="),
            ChannelSpec::Port(CHANNEL_PORT_NAME.into())
        );
        // Last one wins; similar keys do not match.
        assert_eq!(
            channel("hyper.channel=a hyper.channelx=b hyper.channel=c"),
            ChannelSpec::Port("c".into())
        );
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(
            value(r#"a="x y" hyper.channel="/dev/ttyS1""#, "a").as_deref(),
            Some("x y")
        );
        assert_eq!(
            channel(r#"a="x y" hyper.channel="/dev/ttyS1""#),
            ChannelSpec::Device("/dev/ttyS1".into())
        );
    }

    #[test]
    fn disk_aliases() {
        let c = "quiet hyper.channel=/dev/hvc0 hyper.disk.hyper-rootfs0=xvda hyper.disk.data=xvdb";
        assert_eq!(disk_alias(c, "hyper-rootfs0").as_deref(), Some("xvda"));
        assert_eq!(disk_alias(c, "data").as_deref(), Some("xvdb"));
        assert_eq!(disk_alias(c, "hyper-rootfs1"), None);
        assert_eq!(disk_alias("hyper.disk.a=../sda", "a"), None);
        assert_eq!(disk_alias("hyper.disk.a=/dev/sda", "a"), None);
        assert_eq!(disk_alias("hyper.disk.a=..", "a"), None);
        assert_eq!(disk_alias("hyper.disk.a=", "a"), None);
    }

    #[test]
    fn debug_flag() {
        assert!(debug("quiet hyper.debug=1"));
        assert!(!debug("quiet hyper.debug=0"));
        assert!(!debug("quiet"));
    }
}
