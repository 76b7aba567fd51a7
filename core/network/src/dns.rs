//! A pod's `/etc/resolv.conf` settings: the ones asked for (`--dns`,
//! `--dns-search`, `--dns-option`), else the host's, with loopback
//! resolvers (a local systemd-resolved or dnsmasq the pod cannot reach)
//! replaced by public ones, as Docker does.

use hyper_protocol::DnsSpec;

/// Docker's fallback when the host only has loopback resolvers.
pub const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// resolv.conf honours at most three nameservers and six search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 6;
const MAX_BYTES: u64 = 64 << 10;

/// What the pod's resolv.conf says: each part asked for replaces the
/// host's.
pub fn resolv(servers: &[String], search: &[String], options: &[String]) -> DnsSpec {
    let host = read_host();
    DnsSpec {
        nameservers: if servers.is_empty() {
            host.nameservers
        } else {
            servers.to_vec()
        },
        search: if search.is_empty() {
            host.search
        } else {
            search.to_vec()
        },
        options: if options.is_empty() {
            host.options
        } else {
            options.to_vec()
        },
    }
}

fn read_host() -> DnsSpec {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(HOST_RESOLV_CONF) {
        let _ = f.take(MAX_BYTES).read_to_string(&mut text);
    }
    parse(&text)
}

/// The host's settings from resolv.conf text, loopback resolvers dropped
/// (the fallback ones when none is left).
pub fn parse(text: &str) -> DnsSpec {
    let mut spec = DnsSpec::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words
                    .next()
                    .and_then(|w| w.parse::<std::net::IpAddr>().ok())
                {
                    if !ip.is_loopback() && spec.nameservers.len() < MAX_NAMESERVERS {
                        spec.nameservers.push(ip.to_string());
                    }
                }
            }
            Some("search") | Some("domain") => {
                spec.search = words.take(MAX_SEARCH).map(String::from).collect();
            }
            Some("options") => spec.options = words.map(String::from).collect(),
            _ => {}
        }
    }
    if spec.nameservers.is_empty() {
        spec.nameservers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_replaced_as_docker_does() {
        let s = parse(
            "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
        );
        assert_eq!(s.nameservers, FALLBACK_NAMESERVERS);
        assert_eq!(s.options, ["edns0", "trust-ad"]);
        assert_eq!(s.search, ["lan"]);
        let s = parse("nameserver ::1\nnameserver 10.0.0.2\nnameserver bogus\n");
        assert_eq!(s.nameservers, ["10.0.0.2"]);
        assert!(s.search.is_empty());
    }

    #[test]
    fn what_is_asked_replaces_the_hosts() {
        let s = resolv(&["1.1.1.1".into()], &["example.com".into()], &[]);
        assert_eq!(s.nameservers, ["1.1.1.1"]);
        assert_eq!(s.search, ["example.com"]);
    }
}
