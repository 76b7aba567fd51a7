//! A pod's `/etc/resolv.conf`, `/etc/hosts` and hostname settings, as
//! Docker makes them: the host's resolv.conf with loopback resolvers (a
//! local systemd-resolved or dnsmasq the pod cannot reach) dropped, Google's
//! public resolvers when none is left, and `--dns`, `--dns-search`,
//! `--dns-option` each replacing its part; `--add-host NAME:IP` lines;
//! `--hostname`. The text rules are the protocol's (`hyper_protocol::
//! valid_dns_name` and friends), so whatever passes here hyperstart accepts.

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use hyper_protocol::{
    valid_dns_name, valid_hostname, valid_resolver_option, DnsSpec, HostEntry, NetworkSpec,
};

/// Docker's fallback when the host only has loopback resolvers.
pub const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];
/// The same for a pod with IPv6 (Docker adds these when the network has it).
pub const FALLBACK_NAMESERVERS_V6: [&str; 2] = ["2001:4860:4860::8888", "2001:4860:4860::8844"];
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// The resolver reads 3 nameservers (glibc's and musl's MAXNS): more from
/// the host would only be noise.
const HOST_NAMESERVERS: usize = 3;
/// A resolv.conf is a few lines; read at most this much of the host's.
const MAX_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("--dns {0:?}: not an IP address; use e.g. --dns 1.1.1.1")]
    Nameserver(String),
    #[error("--dns-search {0:?}: not a domain name (letters, digits, '-', '_', dot-separated; '.' for none)")]
    Search(String),
    #[error("--dns-option {0:?}: not a resolver option (like ndots:5, edns0, timeout:2)")]
    Option(String),
    #[error("too many {what}: {given}, at most {max}")]
    TooMany {
        what: &'static str,
        given: usize,
        max: usize,
    },
    #[error("--add-host {entry:?}: {reason}; use NAME:IP, e.g. --add-host db:10.0.0.5 or --add-host db6:[fd00::5]")]
    AddHost { entry: String, reason: &'static str },
    #[error("--hostname {0:?}: not a host name (at most 64 bytes of letters, digits, '-', '_', '.'; no leading '-')")]
    Hostname(String),
}

/// The host's settings from resolv.conf text: loopback resolvers dropped
/// (the fallback ones when none is left), and anything the guest would
/// refuse skipped (systemd-resolved's `search .`, a zone-scoped
/// `fe80::1%eth0`), since the host's file is not the user's to fix.
pub fn parse(text: &str) -> DnsSpec {
    let mut spec = DnsSpec::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let ip = words.next().and_then(|w| w.parse::<IpAddr>().ok());
                if let Some(ip) = ip.filter(usable_nameserver) {
                    if !ip.is_loopback() && spec.nameservers.len() < HOST_NAMESERVERS {
                        spec.nameservers.push(ip.to_string());
                    }
                }
            }
            // The last `search` or `domain` line wins, as in the resolver.
            Some("search") | Some("domain") => {
                spec.search = words
                    .filter(|w| valid_dns_name(w, NetworkSpec::MAX_DNS_NAME))
                    .take(NetworkSpec::MAX_SEARCH)
                    .map(String::from)
                    .collect();
            }
            Some("options") => {
                for w in words.filter(|w| valid_resolver_option(w)) {
                    if spec.options.len() < NetworkSpec::MAX_OPTIONS {
                        spec.options.push(w.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if spec.nameservers.is_empty() {
        spec.nameservers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
    spec
}

fn usable_nameserver(ip: &IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

/// Reads the host's resolv.conf (at most 64 KiB); a missing or unreadable
/// file gives the fallback resolvers, as in Docker.
pub fn read_host(path: &Path) -> DnsSpec {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            if let Err(e) = f.take(MAX_BYTES).read_to_string(&mut text) {
                tracing::warn!(path = %path.display(), "reading the host's resolv.conf: {e}; using public resolvers");
                text.clear();
            }
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "no host resolv.conf ({e}); using public resolvers")
        }
    }
    parse(&text)
}

/// Checks `--dns`, `--dns-search` and `--dns-option` before anything is
/// made. `--dns-search .` alone means "no search domains", as in Docker.
pub fn check(servers: &[String], search: &[String], options: &[String]) -> Result<(), DnsError> {
    let too_many = |what, given: usize, max| {
        (given > max)
            .then_some(DnsError::TooMany { what, given, max })
            .map_or(Ok(()), Err)
    };
    too_many("--dns", servers.len(), NetworkSpec::MAX_NAMESERVERS)?;
    too_many("--dns-search", search.len(), NetworkSpec::MAX_SEARCH)?;
    too_many("--dns-option", options.len(), NetworkSpec::MAX_OPTIONS)?;
    for s in servers {
        let ok = s.parse::<IpAddr>().ok().filter(usable_nameserver);
        if ok.is_none() {
            return Err(DnsError::Nameserver(s.clone()));
        }
    }
    if !is_no_search(search) {
        if let Some(bad) = search
            .iter()
            .find(|s| !valid_dns_name(s, NetworkSpec::MAX_DNS_NAME))
        {
            return Err(DnsError::Search(bad.clone()));
        }
    }
    if let Some(bad) = options.iter().find(|o| !valid_resolver_option(o)) {
        return Err(DnsError::Option(bad.clone()));
    }
    Ok(())
}

fn is_no_search(search: &[String]) -> bool {
    search.len() == 1 && search[0] == "."
}

/// The pod's resolv.conf from `host` (the host's, see [`parse`]) and what
/// was asked: each part asked for replaces the host's. Call [`check`] on
/// the asked parts first; anything invalid is left out here.
pub fn resolv_with(
    host: DnsSpec,
    servers: &[String],
    search: &[String],
    options: &[String],
) -> DnsSpec {
    let nameservers = if servers.is_empty() {
        host.nameservers
    } else {
        servers
            .iter()
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .filter(usable_nameserver)
            .map(|ip| ip.to_string())
            .take(NetworkSpec::MAX_NAMESERVERS)
            .collect()
    };
    let search = if is_no_search(search) {
        Vec::new()
    } else if search.is_empty() {
        host.search
    } else {
        search
            .iter()
            .filter(|s| valid_dns_name(s, NetworkSpec::MAX_DNS_NAME))
            .take(NetworkSpec::MAX_SEARCH)
            .cloned()
            .collect()
    };
    let options = if options.is_empty() {
        host.options
    } else {
        options
            .iter()
            .filter(|o| valid_resolver_option(o))
            .take(NetworkSpec::MAX_OPTIONS)
            .cloned()
            .collect()
    };
    DnsSpec {
        nameservers,
        search,
        options,
    }
}

/// [`resolv_with`] the host's `/etc/resolv.conf`.
pub fn resolv(servers: &[String], search: &[String], options: &[String]) -> DnsSpec {
    resolv_with(
        read_host(Path::new(HOST_RESOLV_CONF)),
        servers,
        search,
        options,
    )
}

/// Docker drops IPv6 resolvers from a pod whose network has no IPv6 (they
/// would only time out), and adds IPv6 fallbacks to one that has it.
pub fn fit_to_ip_versions(spec: &mut DnsSpec, has_ipv6: bool) {
    if has_ipv6 {
        return;
    }
    spec.nameservers
        .retain(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()));
    if spec.nameservers.is_empty() {
        spec.nameservers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
}

/// One `--add-host` value: `NAME:IP` (Docker's form; the IP may be in
/// brackets, and everything after the first `:` is the IP, so IPv6 works
/// unbracketed too) or `NAME=IP`.
pub fn parse_add_host(entry: &str) -> Result<HostEntry, DnsError> {
    let bad = |reason| DnsError::AddHost {
        entry: entry.to_string(),
        reason,
    };
    let (name, ip) = match (entry.split_once('='), entry.split_once(':')) {
        (Some((n, ip)), _) if !n.contains(':') => (n, ip),
        (_, Some((n, ip))) => (n, ip),
        _ => return Err(bad("no ':' between the name and the address")),
    };
    if name.is_empty() {
        return Err(bad("no name before the ':'"));
    }
    if !valid_dns_name(name, NetworkSpec::MAX_DNS_NAME) {
        return Err(bad("the name is not a host name"));
    }
    if ip == "host-gateway" {
        return Err(bad(
            "host-gateway is not supported; give the host's address on the pod's network",
        ));
    }
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| bad("the part after ':' is not an IP address"))?;
    Ok(HostEntry {
        address: ip.to_string(),
        names: vec![name.to_string()],
    })
}

/// Every `--add-host` value, at most [`NetworkSpec::MAX_HOSTS`].
pub fn parse_add_hosts(entries: &[String]) -> Result<Vec<HostEntry>, DnsError> {
    if entries.len() > NetworkSpec::MAX_HOSTS {
        return Err(DnsError::TooMany {
            what: "--add-host",
            given: entries.len(),
            max: NetworkSpec::MAX_HOSTS,
        });
    }
    entries.iter().map(|e| parse_add_host(e)).collect()
}

/// `--hostname`: what the guest's kernel and /etc/hosts take.
pub fn check_hostname(name: &str) -> Result<(), DnsError> {
    if valid_hostname(name) {
        Ok(())
    } else {
        Err(DnsError::Hostname(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loopback_resolvers_are_replaced_as_docker_does() {
        // systemd-resolved's stub file.
        let s = parse(
            "# This is /run/systemd/resolve/stub-resolv.conf\n\
             nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
        );
        assert_eq!(s.nameservers, FALLBACK_NAMESERVERS);
        assert_eq!(s.options, ["edns0", "trust-ad"]);
        assert!(s.search.is_empty(), "{:?}", s.search);

        let s = parse(
            "nameserver ::1\nnameserver 127.0.1.1\nnameserver 10.0.0.2\n\
             nameserver bogus\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n\
             domain old.example\nsearch lan corp.example\n",
        );
        assert_eq!(s.nameservers, ["10.0.0.2", "2001:db8::53"]);
        assert_eq!(s.search, ["lan", "corp.example"]);
    }

    #[test]
    fn the_host_file_is_bounded_and_filtered_to_what_the_guest_accepts() {
        let many: String = (1..=10)
            .map(|i| format!("nameserver 10.0.0.{i}\n"))
            .collect();
        assert_eq!(parse(&many).nameservers.len(), 3);
        let s = parse("search a b c d e f g h i j\noptions ndots:2 bad\u{1}opt x\n");
        assert_eq!(s.search.len(), NetworkSpec::MAX_SEARCH);
        assert_eq!(s.options, ["ndots:2", "x"]);
        // The last search/domain line wins.
        assert_eq!(parse("search a\ndomain b\n").search, ["b"]);

        let dir = tempfile::tempdir().unwrap();
        let missing = read_host(&dir.path().join("nope"));
        assert_eq!(missing.nameservers, FALLBACK_NAMESERVERS);
        let big = dir.path().join("big");
        let mut text = "nameserver 9.9.9.9\n".to_string();
        text.push_str(&"#".repeat(1 << 20));
        text.push_str("\nnameserver 1.1.1.1\n");
        std::fs::write(&big, text).unwrap();
        assert_eq!(read_host(&big).nameservers, ["9.9.9.9"]);
    }

    #[test]
    fn what_is_asked_replaces_the_hosts_part() {
        let host = parse("nameserver 10.0.0.2\nsearch lan\noptions ndots:1\n");
        let s = resolv_with(host.clone(), &v(&["1.1.1.1"]), &v(&["example.com"]), &[]);
        assert_eq!(s.nameservers, ["1.1.1.1"]);
        assert_eq!(s.search, ["example.com"]);
        assert_eq!(s.options, ["ndots:1"]);
        // Loopback is the user's choice when asked for explicitly.
        let s = resolv_with(host.clone(), &v(&["127.0.0.1"]), &v(&["."]), &v(&["edns0"]));
        assert_eq!(s.nameservers, ["127.0.0.1"]);
        assert!(s.search.is_empty());
        assert_eq!(s.options, ["edns0"]);
        assert_eq!(resolv_with(host.clone(), &[], &[], &[]), host);
    }

    #[test]
    fn bad_overrides_are_named() {
        check(&v(&["1.1.1.1", "fd00::53"]), &v(&["."]), &v(&["ndots:5"])).unwrap();
        type Case = (Vec<String>, Vec<String>, Vec<String>, &'static str);
        let cases: [Case; 6] = [
            (v(&["dns.google"]), vec![], vec![], "--dns \"dns.google\""),
            (v(&["0.0.0.0"]), vec![], vec![], "--dns"),
            (vec![], v(&["a b"]), vec![], "--dns-search \"a b\""),
            (vec![], v(&[".", "lan"]), vec![], "--dns-search \".\""),
            (vec![], vec![], v(&["ndots 5"]), "--dns-option"),
            (
                v(&["1.1.1.1"; 9]),
                vec![],
                vec![],
                "too many --dns: 9, at most 8",
            ),
        ];
        for (servers, search, options, want) in cases {
            let e = check(&servers, &search, &options).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn ipv6_resolvers_go_when_the_pod_has_no_ipv6() {
        let mut s = parse("nameserver 2001:db8::53\nnameserver 10.0.0.2\n");
        fit_to_ip_versions(&mut s, true);
        assert_eq!(s.nameservers.len(), 2);
        fit_to_ip_versions(&mut s, false);
        assert_eq!(s.nameservers, ["10.0.0.2"]);
        let mut only6 = parse("nameserver 2001:db8::53\n");
        fit_to_ip_versions(&mut only6, false);
        assert_eq!(only6.nameservers, FALLBACK_NAMESERVERS);
    }

    #[test]
    fn add_host_entries() {
        let e = parse_add_host("db:10.0.0.5").unwrap();
        assert_eq!(
            (e.address.as_str(), e.names.as_slice()),
            ("10.0.0.5", &v(&["db"])[..])
        );
        assert_eq!(parse_add_host("db6:[fd00::5]").unwrap().address, "fd00::5");
        assert_eq!(parse_add_host("db6:fd00::5").unwrap().address, "fd00::5");
        assert_eq!(parse_add_host("my.db=10.0.0.6").unwrap().names, ["my.db"]);
        for (bad, want) in [
            ("db", "no ':'"),
            (":10.0.0.5", "no name"),
            ("a b:10.0.0.5", "not a host name"),
            ("db:", "not an IP address"),
            ("db:10.0.0", "not an IP address"),
            ("db:host-gateway", "host-gateway is not supported"),
            ("db\n127.0.0.1 evil:10.0.0.5", "not a host name"),
        ] {
            let e = parse_add_host(bad).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("NAME:IP"), "{bad}: {e}");
        }
        let many = vec!["a:1.2.3.4".to_string(); NetworkSpec::MAX_HOSTS + 1];
        assert!(matches!(
            parse_add_hosts(&many),
            Err(DnsError::TooMany { .. })
        ));
        assert_eq!(
            parse_add_hosts(&v(&["a:1.2.3.4", "b:::1"])).unwrap().len(),
            2
        );
    }

    #[test]
    fn hostnames() {
        check_hostname("web-1").unwrap();
        check_hostname("web.example").unwrap();
        for bad in ["", "web 1", "-web", "web.", &"a".repeat(65), "we\nb"] {
            let e = check_hostname(bad).unwrap_err().to_string();
            assert!(e.contains("--hostname"), "{e}");
        }
    }
}
