//! The rules both ends apply to the text of a [`NetworkSpec`]: the host
//! (hyper-network) checks `--dns-search`, `--add-host` and `--hostname`
//! with them and filters the host's resolv.conf through them, and hyperstart
//! refuses a message that breaks them. One definition, so a value the host
//! lets through is never one the guest refuses.

use crate::NetworkSpec;

impl NetworkSpec {
    /// `nameserver` lines (glibc and musl read 3; more are passed through,
    /// as Docker does).
    pub const MAX_NAMESERVERS: usize = 8;
    pub const MAX_SEARCH: usize = 8;
    pub const MAX_OPTIONS: usize = 16;
    /// Addresses of one interface.
    pub const MAX_ADDRESSES: usize = 16;
    /// Names on one `/etc/hosts` line.
    pub const MAX_HOST_NAMES: usize = 16;
    /// A DNS name (RFC 1035).
    pub const MAX_DNS_NAME: usize = 253;
    /// The kernel's limit on the hostname (`HOST_NAME_MAX`).
    pub const MAX_HOSTNAME: usize = 64;
    /// One resolver option (`ndots:5`).
    pub const MAX_OPTION: usize = 64;
}

/// A host or domain name: dot-separated labels of `[A-Za-z0-9_-]`, 1..=63
/// bytes each, not starting with `-`, one trailing dot allowed; at most
/// `max` bytes. `_` is allowed because real names use it (SRV-style labels,
/// Docker container names). Nothing in it can break a line of
/// /etc/hosts or resolv.conf.
pub fn valid_dns_name(name: &str, max: usize) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= max
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// A pod's hostname: a DNS name of at most [`NetworkSpec::MAX_HOSTNAME`]
/// bytes, without the trailing dot.
pub fn valid_hostname(name: &str) -> bool {
    !name.ends_with('.') && valid_dns_name(name, NetworkSpec::MAX_HOSTNAME)
}

/// A resolv.conf option: `ndots:5`, `edns0`, `timeout:2`, `trust-ad`.
pub fn valid_resolver_option(opt: &str) -> bool {
    (1..=NetworkSpec::MAX_OPTION).contains(&opt.len())
        && opt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_fit_a_hosts_line() {
        for ok in [
            "web",
            "host.docker.internal",
            "_sip._tcp.example.com.",
            "4f2a0c1d9e7b",
        ] {
            assert!(valid_dns_name(ok, 253), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a",
            "a.-b",
            "a b",
            "a\nb",
            "#x",
            "a:b",
            &"x".repeat(64),
        ] {
            assert!(!valid_dns_name(bad, 253), "{bad:?}");
        }
        assert!(!valid_dns_name("a.b.c", 4));
        assert!(
            valid_hostname("web-1") && !valid_hostname("web.") && !valid_hostname(&"a".repeat(65))
        );
        assert!(valid_resolver_option("ndots:5") && valid_resolver_option("trust-ad"));
        assert!(!valid_resolver_option("a b") && !valid_resolver_option(""));
    }
}
