//! The xl configuration of one domain, and the kernel command line bits the
//! backend adds.

use std::path::{Path, PathBuf};

use hyper_hypervisor::{nic, NicSpec, ShareSpec, VmSpec};

use crate::config::GuestType;
use crate::share;

/// Guest device names for the spec's disks, in order.
pub const MAX_DISKS: usize = 26;
const MAX_ID_LEN: usize = 64;
const MIN_MEMORY_MIB: u32 = 32;
const MAX_VCPUS: u32 = 128;
/// NICs per domain (xl devids 0…).
pub const MAX_NICS: usize = 8;
/// netback's largest MTU (64 KiB less an Ethernet + VLAN header).
const MAX_MTU: u32 = 65517;
/// 9pfs devices per domain (each is a ring pair and grant pages in the
/// device model).
pub const MAX_SHARES: usize = 16;
/// What the domain's 9pfs server does with guest credentials: `none` is
/// passthrough (files get the guest's uid, gid and mode; the device model
/// runs as root in dom0) with failures to chown ignored. `mapped-xattr`
/// would keep them in xattrs instead, so the host would not see the
/// container's owners and modes.
pub const SECURITY_MODEL: &str = "none";

/// The guest's device for the `n`th disk: `xvda`, `xvdb` …
pub fn vdev(n: usize) -> Option<String> {
    (n < MAX_DISKS).then(|| format!("xvd{}", char::from(b'a' + n as u8)))
}

/// The kernel command line: the core's, then the agent channel on the PV
/// console and the disk aliases. `loglevel=0` keeps kernel messages off the
/// console, which carries the channel (a PV domU's kernel console is hvc0).
pub fn kernel_cmdline(base: &str, spec: &VmSpec) -> String {
    let mut parts: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    parts.push("loglevel=0".into());
    parts.push(hyper_protocol::channel_arg("/dev/hvc0"));
    for (n, disk) in spec.disks.iter().enumerate() {
        if let Some(dev) = vdev(n) {
            parts.push(hyper_protocol::disk_arg(&disk.id, &dev));
        }
    }
    parts.join(" ")
}

fn plain(what: &str, s: &str) -> Result<(), String> {
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(format!("{what} {s:?} contains a quote, backslash or control character, which xl's config syntax cannot carry"));
    }
    Ok(())
}

/// A VM id becomes the domain name: `[A-Za-z0-9_.-]`, at most 64 bytes.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok) || id.starts_with(['-', '.']) {
        return Err(format!(
            "VM id {id:?} cannot be a Xen domain name: use 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]"
        ));
    }
    Ok(())
}

/// Checks what the xl config needs of the spec.
pub fn validate(spec: &VmSpec) -> Result<(), String> {
    check_id(&spec.id)?;
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(format!("vcpus = {}: use 1 to {MAX_VCPUS}", spec.vcpus));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory_mib = {}: a Xen domU needs at least {MIN_MEMORY_MIB} MiB",
            spec.memory_mib
        ));
    }
    if spec.disks.len() > MAX_DISKS {
        return Err(format!("{} disks: at most {MAX_DISKS}", spec.disks.len()));
    }
    for (what, path) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
        let s = path
            .to_str()
            .ok_or_else(|| format!("{what} path is not UTF-8"))?;
        plain(what, s)?;
        if !path.is_absolute() {
            return Err(format!("{what} path {s} is not absolute"));
        }
    }
    for disk in &spec.disks {
        let s = disk.path.to_str().ok_or("disk path is not UTF-8")?;
        plain("disk path", s)?;
        if s.contains(',') || !disk.path.is_absolute() {
            return Err(format!(
                "disk path {s:?} must be absolute and free of commas for xl"
            ));
        }
        let id_ok = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
        if disk.id.is_empty() || disk.id.len() > 20 || !disk.id.chars().all(id_ok) {
            return Err(format!(
                "disk id {:?}: use 1-20 characters of [A-Za-z0-9_-]",
                disk.id
            ));
        }
    }
    plain("kernel command line", &spec.cmdline)?;
    validate_shares(&spec.shares)?;
    if spec.nics.len() > MAX_NICS {
        return Err(format!("{} NICs: at most {MAX_NICS}", spec.nics.len()));
    }
    for (n, nic) in spec.nics.iter().enumerate() {
        nic::validate(nic).map_err(|e| format!("NIC {n}: {e}"))?;
        if nic.mtu > MAX_MTU {
            return Err(format!(
                "NIC {n}: MTU {}: netback takes at most {MAX_MTU}",
                nic.mtu
            ));
        }
    }
    Ok(())
}

/// Tags the guest mounts by, sources xl's p9 spec can carry (its parser
/// splits on commas, and keeps what follows `path=` whole).
fn validate_shares(shares: &[ShareSpec]) -> Result<(), String> {
    if shares.len() > MAX_SHARES {
        return Err(format!(
            "{} shares: a Xen domain takes at most {MAX_SHARES}",
            shares.len()
        ));
    }
    let tag_ok = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
    for (n, share) in shares.iter().enumerate() {
        let tag = &share.tag;
        if tag.is_empty() || tag.len() > ShareSpec::MAX_TAG || !tag.chars().all(tag_ok) {
            return Err(format!(
                "share {n}: tag {tag:?}: use 1-{} characters of [A-Za-z0-9_-]",
                ShareSpec::MAX_TAG
            ));
        }
        if shares[..n].iter().any(|s| &s.tag == tag) {
            return Err(format!("share {n}: tag {tag:?} is used twice"));
        }
        let src = share
            .source
            .to_str()
            .ok_or_else(|| format!("share {tag}: its source path is not UTF-8"))?;
        plain("share source", src)?;
        if src.contains(',') || !share.source.is_absolute() {
            return Err(format!(
                "share {tag}: source {src:?} must be absolute and free of commas for xl"
            ));
        }
    }
    Ok(())
}

/// One p9 spec of xl.cfg; no spaces: xl keeps them in the values.
fn p9(share: &ShareSpec, share_dir: &Path, vm_id: &str) -> String {
    format!(
        "\"tag={},security_model={SECURITY_MODEL},path={}\"",
        share.tag,
        share::served_path(share_dir, vm_id, share).to_string_lossy()
    )
}

/// Where xl finds one of the spec's disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTarget {
    /// The image itself (Xen's `block` script attaches it), or the loop
    /// device the backend attached it to ([`crate::loopdev`]).
    pub path: PathBuf,
    /// The hotplug script that names a loop device to blkback
    /// (`block-hyper`); `None`: Xen's default `block`.
    pub script: Option<PathBuf>,
}

impl DiskTarget {
    /// The spec's images as they are, for Xen's `block` script.
    pub fn images(spec: &VmSpec) -> Vec<Self> {
        spec.disks
            .iter()
            .map(|d| DiskTarget {
                path: d.path.clone(),
                script: None,
            })
            .collect()
    }
}

/// One vif spec of xl.cfg: the guest's MAC and the backend's hotplug
/// script (bridge-less; see `scripts/vif-hyper`).
fn vif(nic: &NicSpec, script: &Path) -> String {
    // Validated: the parsed form, so nothing but the address reaches xl.
    let mac = nic::Mac::parse(&nic.mac).map_or_else(|_| nic.mac.clone(), |m| m.to_string());
    format!("\"mac={mac}, script={}\"", script.to_string_lossy())
}

/// The xl config file. Call [`validate`] first. `share_dir`: where the
/// read-only shares' bind mounts are ([`share::prepare`]); `targets`: where
/// each of the spec's disks is, in order.
pub fn render(
    spec: &VmSpec,
    guest_type: GuestType,
    vif_script: &Path,
    share_dir: &Path,
    targets: &[DiskTarget],
) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k} = {v}\n"));
    let q = |s: &str| format!("\"{s}\"");
    line("name", q(&spec.id));
    line("type", q(guest_type.as_str()));
    line("kernel", q(&spec.kernel.to_string_lossy()));
    line("ramdisk", q(&spec.initrd.to_string_lossy()));
    line("extra", q(&kernel_cmdline(&spec.cmdline, spec)));
    line("memory", spec.memory_mib.to_string());
    line("maxmem", spec.memory_mib.to_string());
    line("vcpus", spec.vcpus.to_string());
    let disks: Vec<String> = spec
        .disks
        .iter()
        .zip(targets)
        .enumerate()
        .filter_map(|(n, (d, target))| {
            let access = if d.read_only { "ro" } else { "rw" };
            // `target=` last: xl takes the rest of the item as the path.
            let script = target
                .script
                .as_ref()
                .map(|s| format!("script={}, ", s.to_string_lossy()))
                .unwrap_or_default();
            vdev(n).map(|dev| {
                format!(
                    "\"format=raw, vdev={dev}, access={access}, {script}target={}\"",
                    target.path.to_string_lossy()
                )
            })
        })
        .collect();
    line("disk", format!("[ {} ]", disks.join(", ")));
    let vifs: Vec<String> = spec.nics.iter().map(|n| vif(n, vif_script)).collect();
    line("vif", format!("[ {} ]", vifs.join(", ")));
    if !spec.shares.is_empty() {
        // libxl starts the domain's device model (QEMU) in dom0 for these.
        let p9s: Vec<String> = spec
            .shares
            .iter()
            .map(|s| p9(s, share_dir, &spec.id))
            .collect();
        line("p9", format!("[ {} ]", p9s.join(", ")));
    }
    line("on_poweroff", q("destroy"));
    line("on_reboot", q("destroy"));
    line("on_crash", q("destroy"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_hypervisor::DiskSpec;

    const SCRIPT: &str = "/etc/xen/scripts/vif-hyper";
    const SHARES: &str = "/run/hyper-xen/shares";

    fn render(spec: &VmSpec, guest_type: GuestType, script: &Path) -> String {
        super::render(
            spec,
            guest_type,
            script,
            Path::new(SHARES),
            &DiskTarget::images(spec),
        )
    }

    fn nic() -> NicSpec {
        NicSpec {
            netns: "/run/netns/hyper-a1b2c3".into(),
            peer: "eth0".into(),
            device: "tap0".into(),
            mac: "02:00:0A:58:00:07".into(),
            mtu: 1500,
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            id: "a1b2c3".into(),
            kernel: "/payload/hyperkernel".into(),
            initrd: "/payload/hyperstart.img".into(),
            cmdline: "quiet panic=-1 rdinit=/init".into(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![DiskSpec {
                path: "/state/rootfs/abc.erofs".into(),
                read_only: true,
                id: "hyper-rootfs0".into(),
            }],
            console_log: "/state/pods/a1b2c3/console.log".into(),
            run_dir: "/state/pods/a1b2c3/vm".into(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        }
    }

    #[test]
    fn renders_a_pv_domain() {
        let text = render(&spec(), GuestType::Pv, Path::new(SCRIPT));
        assert_eq!(
            text,
            "name = \"a1b2c3\"\n\
             type = \"pv\"\n\
             kernel = \"/payload/hyperkernel\"\n\
             ramdisk = \"/payload/hyperstart.img\"\n\
             extra = \"quiet panic=-1 rdinit=/init loglevel=0 hyper.channel=/dev/hvc0 hyper.disk.hyper-rootfs0=xvda\"\n\
             memory = 128\n\
             maxmem = 128\n\
             vcpus = 1\n\
             disk = [ \"format=raw, vdev=xvda, access=ro, target=/state/rootfs/abc.erofs\" ]\n\
             vif = [  ]\n\
             on_poweroff = \"destroy\"\n\
             on_reboot = \"destroy\"\n\
             on_crash = \"destroy\"\n"
        );
        assert!(render(&spec(), GuestType::Pvh, Path::new(SCRIPT)).contains("type = \"pvh\"\n"));
    }

    /// Disks the backend attached to loop devices: the device is the
    /// target, `block-hyper` the script, the guest sees the same vdevs and
    /// access modes and finds them by the same ids.
    #[test]
    fn loop_attached_disks_name_their_device_and_script() {
        let mut s = spec();
        s.disks.push(DiskSpec {
            path: "/d/data.img".into(),
            read_only: false,
            id: "data".into(),
        });
        let targets: Vec<DiskTarget> = ["/dev/loop3", "/dev/loop7"]
            .iter()
            .map(|p| DiskTarget {
                path: p.into(),
                script: Some("/etc/xen/scripts/block-hyper".into()),
            })
            .collect();
        let text = super::render(
            &s,
            GuestType::Pv,
            Path::new(SCRIPT),
            Path::new(SHARES),
            &targets,
        );
        assert!(
            text.contains(
                "disk = [ \"format=raw, vdev=xvda, access=ro, script=/etc/xen/scripts/block-hyper, target=/dev/loop3\", \
                 \"format=raw, vdev=xvdb, access=rw, script=/etc/xen/scripts/block-hyper, target=/dev/loop7\" ]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("hyper.disk.hyper-rootfs0=xvda hyper.disk.data=xvdb\""),
            "{text}"
        );
    }

    #[test]
    fn several_disks_get_their_own_devices_and_aliases() {
        let mut s = spec();
        s.disks.push(DiskSpec {
            path: "/d/data.img".into(),
            read_only: false,
            id: "data".into(),
        });
        let text = render(&s, GuestType::Pv, Path::new(SCRIPT));
        assert!(
            text.contains("vdev=xvdb, access=rw, target=/d/data.img"),
            "{text}"
        );
        assert!(text.contains("hyper.disk.data=xvdb"), "{text}");
        s.disks.clear();
        assert!(render(&s, GuestType::Pv, Path::new(SCRIPT)).contains("disk = [  ]\n"));
        assert_eq!(vdev(25).as_deref(), Some("xvdz"));
        assert_eq!(vdev(26), None);
    }

    #[test]
    fn specs_xl_cannot_carry_are_refused() {
        assert!(validate(&spec()).is_ok());
        let mut s = spec();
        s.cmdline = "quiet init=\"/x\"".into();
        assert!(validate(&s).unwrap_err().contains("quote"));
        let mut s = spec();
        s.id = "../etc".into();
        assert!(validate(&s).unwrap_err().contains("domain name"));
        let mut s = spec();
        s.id = "x".repeat(65);
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.disks[0].path = "/a,b.img".into();
        assert!(validate(&s).unwrap_err().contains("commas"));
        let mut s = spec();
        s.disks[0].id = "id with space".into();
        assert!(validate(&s).is_err());
        let mut s = spec();
        s.kernel = "relative/kernel".into();
        assert!(validate(&s).unwrap_err().contains("not absolute"));
        let mut s = spec();
        s.memory_mib = 16;
        assert!(validate(&s).unwrap_err().contains("at least 32"));
        let mut s = spec();
        s.vcpus = 0;
        assert!(validate(&s).is_err());
    }

    /// Block volumes: read-write vbds after the read-only rootfs, each with
    /// its id on the kernel command line (blkfront has no serial), which is
    /// how hyperstart finds `Block{disk_id}` volumes.
    #[test]
    fn read_write_volumes_are_vbds_with_stable_ids() {
        let mut s = spec();
        for (n, id) in ["vol-a", "vol_b"].iter().enumerate() {
            s.disks.push(DiskSpec {
                path: format!("/state/volumes/{id}.img").into(),
                read_only: false,
                id: (*id).into(),
            });
            assert_eq!(s.disks.len(), n + 2);
        }
        assert!(validate(&s).is_ok());
        let text = render(&s, GuestType::Pv, Path::new(SCRIPT));
        assert!(
            text.contains(
                "disk = [ \"format=raw, vdev=xvda, access=ro, target=/state/rootfs/abc.erofs\", \
                 \"format=raw, vdev=xvdb, access=rw, target=/state/volumes/vol-a.img\", \
                 \"format=raw, vdev=xvdc, access=rw, target=/state/volumes/vol_b.img\" ]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hyper.disk.hyper-rootfs0=xvda hyper.disk.vol-a=xvdb hyper.disk.vol_b=xvdc\""
            ),
            "{text}"
        );
        // The same spec renders the same devices: ids stay where they were.
        assert_eq!(text, render(&s, GuestType::Pv, Path::new(SCRIPT)));
    }

    fn share(tag: &str, source: &str, read_only: bool) -> ShareSpec {
        ShareSpec {
            tag: tag.into(),
            source: source.into(),
            read_only,
        }
    }

    #[test]
    fn shares_are_p9_entries_and_read_only_ones_come_from_their_bind_mount() {
        let text = render(&spec(), GuestType::Pv, Path::new(SCRIPT));
        assert!(!text.contains("p9"), "no share, no device model: {text}");
        let mut s = spec();
        s.shares = vec![
            share("hv-data", "/srv/data", false),
            share("hv_conf", "/srv/conf", true),
        ];
        assert!(validate(&s).is_ok());
        let text = render(&s, GuestType::Pvh, Path::new(SCRIPT));
        assert!(
            text.contains(
                "p9 = [ \"tag=hv-data,security_model=none,path=/srv/data\", \
                 \"tag=hv_conf,security_model=none,path=/run/hyper-xen/shares/a1b2c3/hv_conf\" ]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn shares_xl_cannot_carry_are_refused() {
        let bad = |f: fn(&mut ShareSpec)| {
            let mut s = spec();
            let mut sh = share("t", "/srv/t", false);
            f(&mut sh);
            s.shares.push(sh);
            validate(&s).unwrap_err()
        };
        assert!(bad(|s| s.tag = String::new()).contains("tag"));
        assert!(bad(|s| s.tag = "a,security_model=mapped".into()).contains("tag"));
        assert!(bad(|s| s.tag = "t".repeat(37)).contains("1-36"));
        assert!(bad(|s| s.source = "/srv/a,path=/etc".into()).contains("commas"));
        assert!(bad(|s| s.source = "srv/t".into()).contains("absolute"));
        assert!(bad(|s| s.source = "/srv/\"x".into()).contains("quote"));
        let mut s = spec();
        s.shares = vec![share("t", "/a", false), share("t", "/b", true)];
        assert!(validate(&s).unwrap_err().contains("used twice"));
        let mut s = spec();
        s.shares = (0..=MAX_SHARES)
            .map(|n| share(&format!("t{n}"), "/a", false))
            .collect();
        assert!(validate(&s).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn each_nic_is_a_vif_with_its_mac_and_the_script() {
        let mut s = spec();
        s.nics.push(nic());
        let mut second = nic();
        second.mac = "02:00:0a:58:00:08".into();
        second.peer = "eth1".into();
        second.device = "tap1".into();
        s.nics.push(second);
        assert!(validate(&s).is_ok());
        let text = render(&s, GuestType::Pv, Path::new(SCRIPT));
        assert!(
            text.contains(
                "vif = [ \"mac=02:00:0a:58:00:07, script=/etc/xen/scripts/vif-hyper\", \
                 \"mac=02:00:0a:58:00:08, script=/etc/xen/scripts/vif-hyper\" ]\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn nics_xl_or_the_kernel_cannot_take_are_refused() {
        let bad = |f: fn(&mut NicSpec)| {
            let mut s = spec();
            let mut n = nic();
            f(&mut n);
            s.nics.push(n);
            validate(&s).unwrap_err()
        };
        // The kit's checks, named by NIC.
        assert!(bad(|n| n.mac = "02:00:0a:58:00".into()).starts_with("NIC 0: invalid NIC mac"));
        assert!(bad(|n| n.mac = "02:00:0a:58:00:07, script=/bin/x".into()).contains("mac"));
        assert!(bad(|n| n.mac = "01:00:5e:00:00:01".into()).contains("unicast"));
        assert!(bad(|n| n.device = "a-very-long-name0".into()).contains("device"));
        assert!(bad(|n| n.device = "eth0".into()).contains("differ"));
        assert!(bad(|n| n.mtu = 0).contains("mtu"));
        assert!(bad(|n| n.netns = "netns/x".into()).contains("absolute"));
        // netback's own limit.
        assert!(bad(|n| n.mtu = 65530).contains("at most 65517"));
        let mut s = spec();
        s.nics = vec![nic(); MAX_NICS + 1];
        assert!(validate(&s).unwrap_err().contains("at most 8"));
    }
}
