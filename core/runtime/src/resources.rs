//! A pod's size as the host can give it (as users write it:
//! [`hyper_api::resources`]): vCPUs and memory beyond what this host has are refused before a
//! VM is launched, with Docker's kind of message, rather than left to time
//! out at boot.

pub use hyper_api::resources::parse_memory;

/// What this host has: online CPUs and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u32,
    /// `MemTotal` of /proc/meminfo, in MiB; `None` if it cannot be read.
    pub memory_mib: Option<u64>,
}

impl HostResources {
    /// This host's, now.
    pub fn read() -> Self {
        // SAFETY: sysconf takes no pointers and has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let cpus = u32::try_from(online).ok().filter(|n| *n > 0).unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total_mib(&m));
        Self { cpus, memory_mib }
    }

    /// Refuses `vcpus` or `memory_mib` this host cannot give a VM; `*_key`
    /// is where the user asked for each (the request's `cpus`, a pod
    /// file's `vcpus =`, `[vm] vcpus`).
    pub fn check(
        &self,
        (vcpus, vcpus_key): (u32, &str),
        (memory_mib, memory_key): (u32, &str),
    ) -> Result<(), SizeRefusal> {
        if vcpus > self.cpus {
            let n = self.cpus;
            let s = if n == 1 { "" } else { "s" };
            let are = if n == 1 { "is" } else { "are" };
            return Err(SizeRefusal::vcpus(
                vcpus_key,
                vcpus,
                format!("range of CPUs is from 1 to {n}, as there {are} only {n} CPU{s} available"),
            ));
        }
        if let Some(total) = self.memory_mib {
            if u64::from(memory_mib) > total {
                return Err(SizeRefusal::memory(
                    memory_key,
                    memory_mib,
                    format!(
                        "the host has only {total} MiB of memory (MemTotal); ask for at most that"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A VM size that cannot be given: where it was asked for (`key`), the
/// value as asked, and why. Its text names the key; clients that know the
/// key under another name (`hyper`'s `--cpus` for the request's `cpus`)
/// word it themselves from the parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {value}: {reason}")]
pub struct SizeRefusal {
    pub key: String,
    /// As asked: `64`, `4096 MiB`.
    pub value: String,
    pub reason: String,
}

impl SizeRefusal {
    pub fn vcpus(key: &str, vcpus: u32, reason: String) -> Self {
        Self {
            key: key.into(),
            value: vcpus.to_string(),
            reason,
        }
    }

    pub fn memory(key: &str, memory_mib: u32, reason: String) -> Self {
        Self {
            key: key.into(),
            value: format!("{memory_mib} MiB"),
            reason,
        }
    }
}

/// `MemTotal:  2014256 kB` → MiB.
fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_host_are_refused_as_docker_does() {
        let host = HostResources {
            cpus: 2,
            memory_mib: Some(1900),
        };
        assert_eq!(host.check((2, "cpus"), (1900, "memory_mib")), Ok(()));
        assert_eq!(
            host.check((64, "cpus"), (256, "memory_mib"))
                .unwrap_err()
                .to_string(),
            "cpus 64: range of CPUs is from 1 to 2, as there are only 2 CPUs available"
        );
        let err = host.check((1, "cpus"), (4096, "memory_mib")).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.value.as_str()),
            ("memory_mib", "4096 MiB")
        );
        assert!(
            err.to_string()
                .starts_with("memory_mib 4096 MiB: the host has only 1900 MiB"),
            "{err}"
        );
        let one = HostResources {
            cpus: 1,
            memory_mib: None,
        };
        assert_eq!(
            one.check((2, "vcpus ="), (1 << 30, "memory_mib ="))
                .unwrap_err()
                .to_string(),
            "vcpus = 2: range of CPUs is from 1 to 1, as there is only 1 CPU available"
        );
        assert_eq!(one.check((1, "cpus"), (1 << 30, "memory_mib")), Ok(()));
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let m = "MemTotal:        2014256 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total_mib(m), Some(1967));
        assert_eq!(mem_total_mib("MemFree: 1 kB\n"), None);
        let here = HostResources::read();
        assert!(here.cpus >= 1);
        assert!(here.memory_mib.is_some_and(|m| m > 0));
    }
}
