//! Making a template clone its own (`Request::Resume`).
//!
//! Every clone of a template wakes up with the template's kernel state: the
//! same CRNG key, the wall clock of the moment the template was saved, the
//! block devices' sizes and the NIC MACs of the template's placeholder
//! devices. Before any container runs, hyperstart mixes fresh host entropy
//! into the pool and forces a reseed, sets the clock, re-probes its virtio
//! block and network devices (so their capacity and MAC come from the
//! clone's devices, and nothing the template's placeholder disks left in the
//! page cache survives), and gives each NIC the MAC the host names.
//!
//! The boot id is not set here: the kernel draws it on its first read, and
//! nothing reads it before a clone resumes, so each clone draws its own
//! from the reseeded CRNG.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::log::{debug, log};
use hyper_protocol::{AgentError, AgentErrorKind, NetworkSpec, ResumeSpec};

use crate::net::{self, netlink::Netlink};

type Result<T> = std::result::Result<T, AgentError>;

/// The virtio drivers whose devices carry per-clone state the guest reads
/// only when it probes them.
const REPROBED_DRIVERS: [&str; 2] = ["virtio_blk", "virtio_net"];
const VIRTIO_DRIVERS: &str = "/sys/bus/virtio/drivers";
const SYS_BLOCK: &str = "/sys/block";
/// `_IO(0x12, 97)`: write back and drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;
const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long a re-probed NIC may take to come back.
const NIC_WAIT: Duration = Duration::from_secs(5);

/// `_IOW('R', 0x03, int[2])`: add entropy to the input pool and credit it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

fn invalid(message: impl Into<String>) -> AgentError {
    AgentError::new(AgentErrorKind::InvalidRequest, message)
}

fn failed(message: impl Into<String>) -> AgentError {
    AgentError::new(AgentErrorKind::Failed, message)
}

/// A checked `ResumeSpec`.
#[derive(Debug)]
pub struct Plan {
    pub entropy: Vec<u8>,
    pub realtime: libc::timespec,
    pub macs: Vec<[u8; 6]>,
}

/// Checks every field before anything is changed.
pub fn validate(spec: &ResumeSpec) -> Result<Plan> {
    let hex = spec.entropy_hex.as_bytes();
    let max_hex = ResumeSpec::MAX_ENTROPY * 2;
    if !hex.len().is_multiple_of(2) || hex.len() > max_hex {
        return Err(invalid(format!(
            "resume: entropy_hex must be an even number of hex digits, at most {max_hex}"
        )));
    }
    let entropy = hex
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| invalid("resume: entropy_hex holds a character that is not a hex digit"))?;
    if entropy.len() < ResumeSpec::MIN_ENTROPY {
        return Err(invalid(format!(
            "resume: {} bytes of entropy; at least {} are needed to reseed",
            entropy.len(),
            ResumeSpec::MIN_ENTROPY
        )));
    }
    let secs = spec.realtime_ns / 1_000_000_000;
    let realtime = libc::timespec {
        tv_sec: libc::time_t::try_from(secs)
            .map_err(|_| invalid("resume: realtime_ns is out of range"))?,
        // Below 1e9, so it fits every c_long.
        tv_nsec: (spec.realtime_ns % 1_000_000_000) as libc::c_long,
    };
    if spec.nic_macs.len() > NetworkSpec::MAX_INTERFACES {
        return Err(invalid(format!(
            "resume: {} NIC MACs; at most {}",
            spec.nic_macs.len(),
            NetworkSpec::MAX_INTERFACES
        )));
    }
    let macs = spec
        .nic_macs
        .iter()
        .map(|m| {
            net::parse_mac(m).ok_or_else(|| {
                invalid(format!(
                    "resume: {m:?} is not a unicast MAC (aa:bb:cc:dd:ee:ff)"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        entropy,
        realtime,
        macs,
    })
}

/// Applies a checked plan: entropy first, so nothing after it (a boot id,
/// a container's first random bytes) comes from the template's CRNG.
pub fn apply(plan: &Plan) -> Result<()> {
    reseed(&plan.entropy)?;
    set_clock(&plan.realtime)?;
    for driver in REPROBED_DRIVERS {
        reprobe(&Path::new(VIRTIO_DRIVERS).join(driver))?;
    }
    drop_block_caches(Path::new(SYS_BLOCK))?;
    set_macs(Path::new(SYS_CLASS_NET), &plan.macs)
}

/// The disks whose cached blocks may be the template's: every block device
/// but loop and RAM disks, by name.
fn disks(sys_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with("loop") && !name.starts_with("ram"))
        .collect();
    names.sort();
    names
}

/// Drops every disk's buffer cache, so no block the template read from its
/// placeholder disks (a partition scan at boot reads the first ones) is
/// served in place of the clone's own. Re-probing does that for virtio
/// disks; Xen's blkfront keeps its gendisk across `xl restore`, and its
/// cache with it (a clone's erofs then read the placeholder's zeros:
/// "Structure needs cleaning").
fn drop_block_caches(sys_block: &Path) -> Result<()> {
    for name in disks(sys_block) {
        let path = Path::new("/dev").join(&name);
        let disk = match std::fs::File::open(&path) {
            Ok(disk) => disk,
            // Unbound just now, or no node: nothing of it is cached.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(failed(format!(
                    "resume: cannot open {}: {e}",
                    path.display()
                )))
            }
        };
        // SAFETY: BLKFLSBUF takes no argument; `disk` is an open block
        // device for the duration of the call.
        let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKFLSBUF as _, 0) };
        if rc != 0 {
            return Err(failed(format!(
                "resume: cannot drop the cache of {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Mixes `entropy` into the input pool, credited, and forces a CRNG reseed.
fn reseed(entropy: &[u8]) -> Result<()> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| failed(format!("resume: cannot open /dev/urandom: {e}")))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + entropy.len());
    let bits = libc::c_int::try_from(entropy.len() * 8)
        .map_err(|_| invalid("resume: too much entropy"))?;
    let size =
        libc::c_int::try_from(entropy.len()).map_err(|_| invalid("resume: too much entropy"))?;
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    // The kernel reads buf as __u32 words; pad to a whole word.
    info.resize(8 + entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: `random` is an open fd for the call's duration; `info` is a
    // rand_pool_info of `8 + buf_size` initialised bytes (rounded up to a
    // whole __u32) that the kernel only reads.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        return Err(failed(format!(
            "resume: RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument; `random` is an open fd.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(failed(format!(
            "resume: RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        )));
    }
    debug!(
        "resume: {} bytes of host entropy mixed in, CRNG reseeded",
        entropy.len()
    );
    Ok(())
}

fn set_clock(now: &libc::timespec) -> Result<()> {
    // SAFETY: `now` points at a valid timespec for the call's duration.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, now) };
    if rc != 0 {
        return Err(failed(format!(
            "resume: cannot set the clock: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The devices bound to a driver (`virtio0`, `virtio3` …), in device order.
fn bound_devices(driver: &Path) -> Vec<String> {
    let mut devices: Vec<(u32, String)> = std::fs::read_dir(driver)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = name.strip_prefix("virtio")?.parse().ok()?;
            Some((index, name))
        })
        .collect();
    devices.sort();
    devices.into_iter().map(|(_, name)| name).collect()
}

/// Unbinds every device of `driver` and binds them again in device order,
/// so the driver probes each afresh (capacity, MAC) and the kernel names
/// them as at boot. A driver that is not there (no such devices, as on
/// Xen) is nothing to do.
fn reprobe(driver: &Path) -> Result<()> {
    let devices = bound_devices(driver);
    if devices.is_empty() {
        return Ok(());
    }
    let write = |file: &str, device: &str| {
        std::fs::write(driver.join(file), device).map_err(|e| {
            failed(format!(
                "resume: cannot {file} {device} from {}: {e}",
                driver.display()
            ))
        })
    };
    for device in &devices {
        write("unbind", device)?;
    }
    for device in &devices {
        write("bind", device)?;
    }
    debug!(
        "resume: re-probed {} through {}",
        devices.join(", "),
        driver.display()
    );
    Ok(())
}

/// The guest's NICs (every interface backed by a device, so not `lo`), in
/// the order the kernel made them.
fn nics(sys_class_net: &Path) -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir(sys_class_net)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let dir = entry.path();
            dir.join("device").exists().then_some(())?;
            let index = std::fs::read_to_string(dir.join("ifindex"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((index, name))
        })
        .collect();
    found.sort();
    found
}

/// Gives NIC N the MAC `macs[N]`, waiting (bounded) for re-probed NICs.
fn set_macs(sys_class_net: &Path, macs: &[[u8; 6]]) -> Result<()> {
    if macs.is_empty() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + NIC_WAIT;
    let found = loop {
        let found = nics(sys_class_net);
        if found.len() >= macs.len() || std::time::Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if found.len() < macs.len() {
        return Err(failed(format!(
            "resume: the host names {} NICs, the guest has {}",
            macs.len(),
            found.len()
        )));
    }
    let mut nl = Netlink::open().map_err(|e| failed(format!("resume: netlink socket: {e}")))?;
    for ((index, name), mac) in found.iter().zip(macs) {
        nl.set_mac(*index, mac).map_err(|e| {
            failed(format!(
                "resume: cannot give {name} the MAC {}: {e}",
                net::format_mac(mac)
            ))
        })?;
    }
    if found.len() > macs.len() {
        log!(
            "resume: the guest has {} NICs, the host named {}",
            found.len(),
            macs.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ResumeSpec {
        ResumeSpec {
            entropy_hex: "ab".repeat(64),
            realtime_ns: 1_765_000_000_123_456_789,
            nic_macs: vec!["02:42:0a:58:00:05".into()],
        }
    }

    #[test]
    fn a_good_spec_becomes_a_plan() {
        let plan = validate(&spec()).unwrap();
        assert_eq!(plan.entropy, vec![0xab; 64]);
        assert_eq!(plan.realtime.tv_sec, 1_765_000_000);
        assert_eq!(plan.realtime.tv_nsec, 123_456_789);
        assert_eq!(plan.macs, vec![[2, 0x42, 10, 0x58, 0, 5]]);
    }

    #[test]
    fn every_bad_field_is_refused_before_anything_changes() {
        type Breaks = fn(&mut ResumeSpec);
        let cases: Vec<(Breaks, &str)> = vec![
            (|s| s.entropy_hex = "ab".repeat(31), "at least 32"),
            (|s| s.entropy_hex = "a".repeat(65), "even number"),
            (|s| s.entropy_hex = "ab".repeat(513), "at most 1024"),
            (|s| s.entropy_hex = "zz".repeat(32), "not a hex digit"),
            (|s| s.entropy_hex = "é".repeat(32), "not a hex digit"),
            (|s| s.realtime_ns = u64::MAX, ""),
            (
                |s| s.nic_macs = vec!["01:00:5e:00:00:01".into()],
                "not a unicast MAC",
            ),
            (
                |s| s.nic_macs = vec!["02:42:0a:58:00:05".into(); 9],
                "at most 8",
            ),
        ];
        for (bad, needle) in cases {
            let mut s = spec();
            bad(&mut s);
            match validate(&s) {
                // u64::MAX ns is year 2554: representable with a 64-bit
                // time_t, so it passes; anything else must fail.
                Ok(_) if s.realtime_ns == u64::MAX => {}
                Ok(plan) => panic!("{s:?} was accepted as {plan:?}"),
                Err(e) => {
                    assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
                    assert!(e.message.contains(needle), "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn devices_are_rebound_in_device_order_not_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["virtio10", "virtio2", "module", "uevent"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(bound_devices(dir.path()), ["virtio2", "virtio10"]);
        std::fs::write(dir.path().join("unbind"), "").unwrap();
        std::fs::write(dir.path().join("bind"), "").unwrap();
        reprobe(dir.path()).unwrap();
        // The last write to each file is the last device.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bind")).unwrap(),
            "virtio10"
        );
    }

    #[test]
    fn every_disk_but_loop_and_ram_disks_has_its_cache_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["xvdb", "loop0", "ram1", "vda", "xvda"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(disks(dir.path()), ["vda", "xvda", "xvdb"]);
        assert!(disks(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn a_missing_driver_is_nothing_to_reprobe() {
        reprobe(Path::new("/nonexistent/virtio_blk")).unwrap();
    }

    #[test]
    fn nics_are_the_interfaces_with_a_device_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, index, device) in [("lo", 1, false), ("eth1", 3, true), ("eth0", 2, true)] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("ifindex"), format!("{index}\n")).unwrap();
            if device {
                std::fs::create_dir(d.join("device")).unwrap();
            }
        }
        assert_eq!(
            nics(dir.path()),
            vec![(2, "eth0".to_string()), (3, "eth1".to_string())]
        );
    }
}
