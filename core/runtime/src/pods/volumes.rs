//! A pod's volumes (issue 15): the requests of its containers (`-v`,
//! `--mount`, a pod file's host and named volumes) resolved at create into
//! [`MountRecord`]s kept in `pod.json`, and from those, at each launch, the
//! VM's shares and extra disks and the guest's volumes and mounts
//! ([`plan`]). Also named volumes as the API serves them, and the locks
//! that keep a block volume to one running pod.
//!
//! The path of `-v /srv:/data`: the CLI parses it (hyper-volumes) into a
//! `VolumeRequest` in the `RunRequest`; `create` checks it and resolves the
//! host directory (made if missing, as Docker does) into a `MountRecord`;
//! `launch` plans one `ShareSpec` per distinct host directory (tag
//! `hyper-vol0`, …) the backend serves (virtiofsd / 9p), and `boot` sends
//! hyperstart a pod volume `hyper-vol0` of source `Share` and a `MountSpec`
//! binding it at `/data` in the container.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper_hypervisor::{DiskSpec, ShareSpec, ShareTransport};
use hyper_protocol::{MountSpec, VolumeSource, VolumeSpec};
use hyper_volumes::{
    BlockLock, MountKind, NamedVolume, StoreError, VolumeKind, VolumeOptions, VolumeRequest,
};
use serde::{Deserialize, Serialize};

use super::model::{PodRecord, PodState, RunError};
use super::{lock, Runtime};
use crate::podfile::PodFile;

/// One mount of one container, resolved at create; `hyper inspect` shows
/// them as Docker's `Mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// The named volume, for `volume` and named `block` mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The host directory or file (a named volume's `_data` or
    /// `disk.img`), its symlinks resolved at create; none for a tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The path in the container.
    pub destination: String,
    /// The container, by name in a pod file; empty: the pod's only one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// `ro` or empty, as Docker shows it.
    #[serde(default)]
    pub mode: String,
    pub rw: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size_mib: Option<u32>,
    /// An anonymous volume made for this pod (`-v /path`): removed with it
    /// by `--rm` and `hyper rm -v`, kept by a plain `hyper rm` (as Docker).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

/// What a pod's mounts become in its VM.
#[derive(Debug, Default, PartialEq)]
pub(super) struct VolumePlan {
    pub shares: Vec<ShareSpec>,
    /// Read-write disks of block volumes, after the rootfs disks.
    pub disks: Vec<DiskSpec>,
    /// The guest's pod-level volumes for these mounts.
    pub volumes: Vec<VolumeSpec>,
    /// The mounts of each container, by its name (empty: the only one).
    pub mounts: BTreeMap<String, Vec<MountSpec>>,
}

impl VolumePlan {
    /// Whether the guest needs [`hyper_protocol::capability::HOST_VOLUMES`].
    pub fn needs_host_volumes(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| !v.source.is_tmpfs() || v.readonly)
    }
}

/// The share tag and guest volume name of the `n`th distinct host
/// directory; the disk id of the `n`th block volume.
fn share_tag(n: usize) -> String {
    format!("hyper-vol{n}")
}
fn block_id(n: usize) -> String {
    format!("hyper-blk{n}")
}
fn tmpfs_name(n: usize) -> String {
    format!("hyper-tmp{n}")
}

/// The VM side and the guest side of `mounts`: one share per distinct host
/// directory (read-only only when every mount of it is), one disk per block
/// file, one tmpfs per tmpfs mount. `transport` is the backend's; a share
/// without one is refused naming `backend`.
pub(super) fn plan(
    mounts: &[MountRecord],
    transport: Option<ShareTransport>,
    backend: &str,
) -> Result<VolumePlan, RunError> {
    let mut plan = VolumePlan::default();
    // Host path → index in `volumes`.
    let mut shared: BTreeMap<(bool, PathBuf), usize> = BTreeMap::new();
    let (mut n_share, mut n_block, mut n_tmpfs) = (0, 0, 0);
    for m in mounts {
        let volume = match (m.kind, &m.source) {
            (MountKind::Tmpfs, _) => {
                let name = tmpfs_name(n_tmpfs);
                n_tmpfs += 1;
                plan.volumes.push(VolumeSpec {
                    name: name.clone(),
                    size_mib: m.tmpfs_size_mib.unwrap_or(0),
                    source: VolumeSource::Tmpfs,
                    readonly: false,
                });
                name
            }
            (kind, Some(source)) => {
                let block = kind == MountKind::Block;
                let key = (block, source.clone());
                if let Some(&i) = shared.get(&key) {
                    let v = &mut plan.volumes[i];
                    v.readonly &= !m.rw;
                    if let Some(s) = plan.shares.iter_mut().find(|s| s.tag == v.name) {
                        s.read_only &= !m.rw;
                    }
                    v.name.clone()
                } else {
                    let (name, source_spec) = if block {
                        let id = block_id(n_block);
                        n_block += 1;
                        plan.disks.push(DiskSpec {
                            path: source.clone(),
                            read_only: false,
                            id: id.clone(),
                        });
                        let disk = VolumeSource::Block {
                            disk_id: id.clone(),
                            fstype: "ext4".into(),
                        };
                        (id, disk)
                    } else {
                        let Some(transport) = transport else {
                            return Err(RunError::Invalid(format!(
                                "the {backend} backend cannot share host directories (it has no share transport): {} cannot be mounted; use a tmpfs or block volume, or another backend",
                                source.display()
                            )));
                        };
                        let tag = share_tag(n_share);
                        n_share += 1;
                        plan.shares.push(ShareSpec {
                            tag: tag.clone(),
                            source: source.clone(),
                            read_only: !m.rw,
                        });
                        let share = VolumeSource::Share {
                            tag: tag.clone(),
                            transport: guest_transport(transport),
                        };
                        (tag, share)
                    };
                    shared.insert(key, plan.volumes.len());
                    plan.volumes.push(VolumeSpec {
                        name: name.clone(),
                        size_mib: 0,
                        source: source_spec,
                        readonly: !m.rw,
                    });
                    name
                }
            }
            (_, None) => {
                return Err(RunError::Failed(format!(
                    "internal error: the {} mount at {} has no source",
                    m.kind, m.destination
                )))
            }
        };
        plan.mounts
            .entry(m.container.clone())
            .or_default()
            .push(MountSpec {
                volume,
                path: m.destination.clone(),
                readonly: !m.rw,
            });
    }
    Ok(plan)
}

pub(super) fn guest_transport(t: ShareTransport) -> hyper_protocol::ShareTransport {
    match t {
        ShareTransport::VirtioFs => hyper_protocol::ShareTransport::VirtioFs,
        ShareTransport::Xen9p => hyper_protocol::ShareTransport::Xen9p,
    }
}

/// A container's mounts in the order they are made: a mount inside
/// another comes after it (Docker sorts them the same way).
pub(super) fn in_mount_order(mut mounts: Vec<MountSpec>) -> Vec<MountSpec> {
    mounts.sort_by_key(|m| m.path.split('/').filter(|c| !c.is_empty()).count());
    mounts
}

/// The requests of a pod file's containers: each mount of a host or named
/// pod volume, by container.
pub(super) fn pod_file_requests(pod: &PodFile) -> Vec<(String, VolumeRequest)> {
    let mut out = Vec::new();
    for c in &pod.containers {
        for m in &c.mounts {
            let Some(v) = pod.volumes.iter().find(|v| v.name == m.volume) else {
                continue;
            };
            if let Some(mut req) = v.request() {
                req.target = m.path.clone();
                req.readonly |= m.readonly;
                out.push((c.name.clone(), req));
            }
        }
    }
    out
}

/// Named volumes as `hyper volume ls/inspect` show them: the volume and the
/// pods whose records name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeView {
    #[serde(flatten)]
    pub volume: NamedVolume,
    /// Pods (by id) that use it, running or not; `rm` is refused while
    /// there are any.
    pub used_by: Vec<String>,
}

fn store_error(e: StoreError) -> RunError {
    match e {
        StoreError::NotFound(_) => RunError::NotFound(e.to_string()),
        StoreError::BadName { .. } | StoreError::Invalid { .. } | StoreError::WrongKind { .. } => {
            RunError::Invalid(e.to_string())
        }
        StoreError::InUse { .. } => RunError::Conflict(e.to_string()),
        StoreError::Mkfs { .. } | StoreError::Io { .. } => RunError::Failed(e.to_string()),
    }
}

impl Runtime {
    /// Resolves every container's volume requests (checked already) into
    /// the mounts the record keeps: host paths checked (a missing `-v`
    /// directory made), named volumes made on first use, anonymous ones
    /// made, and an empty volume filled from the image (copy-up).
    /// `requests` are (container name, request); `images` the image id of
    /// each container that has one. On an error, the anonymous volumes
    /// made so far are removed again.
    pub(super) fn resolve_volumes(
        &self,
        requests: &[(String, VolumeRequest)],
        images: &BTreeMap<String, String>,
    ) -> Result<Vec<MountRecord>, RunError> {
        let mut out = Vec::with_capacity(requests.len());
        for (container, req) in requests {
            let named = |e: RunError| match e {
                RunError::Invalid(m) if !container.is_empty() => {
                    RunError::Invalid(format!("container {container}: {m}"))
                }
                RunError::Failed(m) if !container.is_empty() => {
                    RunError::Failed(format!("container {container}: {m}"))
                }
                other => other,
            };
            let image = images.get(container).map(String::as_str);
            match self.resolve_one(container, req, image) {
                Ok(record) => out.push(record),
                Err(e) => {
                    self.remove_anonymous_volumes(&out);
                    return Err(named(e));
                }
            }
        }
        Ok(out)
    }

    /// Removes the anonymous volumes of `mounts` that no pod's record
    /// names any more (the caller has dropped the pod's, or never listed
    /// it). One in use by another pod (named in its `-v`) stays, as in
    /// Docker; failures are logged: the pod is gone either way.
    pub(super) fn remove_anonymous_volumes(&self, mounts: &[MountRecord]) {
        for name in mounts
            .iter()
            .filter(|m| m.anonymous)
            .filter_map(|m| m.name.as_deref())
        {
            let users = self.volume_users(name);
            if !users.is_empty() {
                tracing::info!(volume = name, pods = ?users, "anonymous volume kept: other pods use it");
                continue;
            }
            match self.volumes.remove(name) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => tracing::warn!(volume = name, "cannot remove anonymous volume: {e}"),
            }
        }
    }

    /// Docker's copy-up: `volume` (a directory volume just resolved for
    /// `req`) is empty, and the container's image has a directory at its
    /// destination: that directory's content is copied in first
    /// (hyper_volumes::copyup says how an untrusted image is kept in).
    fn copy_up(&self, image_id: &str, req: &VolumeRequest, volume: &Path) -> Result<(), RunError> {
        let failed = |m: String| RunError::Failed(format!("volume {}: copy-up: {m}", req.target));
        if !hyper_volumes::is_empty_dir(volume).map_err(|e| failed(e.to_string()))? {
            return Ok(());
        }
        let image = self
            .find_image(image_id)
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| RunError::NoSuchImage(image_id.to_string()))?;
        let target = hyper_volumes::request::normalize(&req.target);
        let stats = self
            .images
            .with_unpacked(&image, &|root: &Path| {
                hyper_volumes::copyup::copy_up(root, &target, volume).map_err(|e| e.to_string())
            })
            .map_err(|e| failed(e.to_string()))?;
        if stats == hyper_volumes::copyup::CopyStats::default() {
            tracing::debug!(target = %target, "copy-up: no directory there in the image");
        } else {
            tracing::info!(
                volume = %volume.display(), target = %target, files = stats.files, dirs = stats.dirs,
                symlinks = stats.symlinks, bytes = stats.bytes, skipped = stats.skipped,
                "copied the image's content into a new volume"
            );
        }
        Ok(())
    }

    fn resolve_one(
        &self,
        container: &str,
        req: &VolumeRequest,
        image: Option<&str>,
    ) -> Result<MountRecord, RunError> {
        let mut record = MountRecord {
            kind: req.kind,
            name: None,
            source: None,
            destination: hyper_volumes::request::normalize(&req.target),
            container: container.to_string(),
            mode: req.mode().to_string(),
            rw: !req.readonly,
            tmpfs_size_mib: req.tmpfs_size_mib,
            anonymous: false,
        };
        let invalid = |m: String| RunError::Invalid(format!("volume {}: {m}", req.target));
        match req.kind {
            MountKind::Tmpfs => {}
            MountKind::Bind => {
                let src = req.source.as_deref().unwrap_or_default();
                record.source =
                    Some(host_dir(Path::new(src), req.create_host_dir).map_err(invalid)?);
            }
            MountKind::Volume | MountKind::Block => {
                if let Some(path) = req.host_path() {
                    record.source = Some(host_block(Path::new(path)).map_err(invalid)?);
                } else if req.is_anonymous() {
                    let volume = self.volumes.create_anonymous().map_err(store_error)?;
                    tracing::info!(volume = %volume.name, target = %req.target, "anonymous volume created");
                    record.anonymous = true;
                    record.name = Some(volume.name);
                    record.source = Some(volume.mountpoint);
                } else {
                    let name = req.volume_name().unwrap_or_default();
                    let opts = VolumeOptions {
                        kind: Some(if req.kind == MountKind::Block {
                            VolumeKind::Block
                        } else {
                            VolumeKind::Directory
                        }),
                        size_bytes: req.size_bytes,
                        mkfs: req.mkfs.clone(),
                        labels: Default::default(),
                    };
                    let (volume, made) = self.volumes.create(name, &opts).map_err(store_error)?;
                    if made {
                        tracing::info!(volume = name, "named volume created on first use");
                    }
                    record.name = Some(volume.name);
                    record.source = Some(volume.mountpoint);
                }
                if let (MountKind::Volume, false, Some(image), Some(source)) =
                    (req.kind, req.nocopy, image, &record.source)
                {
                    if let Err(e) = self.copy_up(image, req, source) {
                        // A volume made for this pod alone is not left
                        // behind half-filled.
                        if record.anonymous {
                            self.remove_anonymous_volumes(std::slice::from_ref(&record));
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(record)
    }

    /// The backend's share transport, if it has one.
    pub(super) fn share_transport(&self) -> Option<ShareTransport> {
        self.hypervisor
            .as_ref()
            .ok()
            .and_then(|h| h.capabilities().share_transport)
    }

    /// Locks each block file of `record` for it: refused while another
    /// running pod (of this hyperd, by its record, or of any process, by
    /// its `flock`) has it.
    pub(super) fn lock_block_volumes(
        &self,
        record: &PodRecord,
    ) -> Result<Vec<BlockLock>, RunError> {
        let blocks: Vec<&PathBuf> = record
            .mounts
            .iter()
            .filter(|m| m.kind == MountKind::Block)
            .filter_map(|m| m.source.as_ref())
            .collect();
        if blocks.is_empty() {
            return Ok(Vec::new());
        }
        let pods = self.pods();
        for path in &blocks {
            if let Some(other) = pods.values().find(|p| {
                p.id != record.id
                    && p.state != PodState::Exited
                    && p.mounts
                        .iter()
                        .any(|m| m.kind == MountKind::Block && m.source.as_ref() == Some(*path))
            }) {
                return Err(RunError::Conflict(format!(
                    "block volume {}: in use by running pod {} (two writers would corrupt its filesystem); stop that pod first",
                    path.display(),
                    other.id
                )));
            }
        }
        drop(pods);
        let mut locks = Vec::with_capacity(blocks.len());
        for path in blocks {
            if locks.iter().any(|l: &BlockLock| l.path() == path.as_path()) {
                continue;
            }
            locks.push(BlockLock::take(path).map_err(store_error)?);
        }
        Ok(locks)
    }

    /// `hyper volume create`.
    pub fn volume_create(&self, name: &str, opts: &VolumeOptions) -> Result<VolumeView, RunError> {
        let _guard = lock(&self.volume_lock);
        let (volume, _) = self.volumes.create(name, opts).map_err(store_error)?;
        Ok(self.view(volume))
    }

    /// `hyper volume ls`.
    pub fn volume_list(&self) -> Result<Vec<VolumeView>, RunError> {
        Ok(self
            .volumes
            .list()
            .map_err(store_error)?
            .into_iter()
            .map(|v| self.view(v))
            .collect())
    }

    /// `hyper volume inspect`.
    pub fn volume_inspect(&self, name: &str) -> Result<VolumeView, RunError> {
        Ok(self.view(self.volumes.get(name).map_err(store_error)?))
    }

    /// `hyper volume rm`: refused while any pod's record names it (as
    /// Docker refuses while any container, running or not, uses it).
    pub fn volume_remove(&self, name: &str) -> Result<(), RunError> {
        let _guard = lock(&self.volume_lock);
        let volume = self.volumes.get(name).map_err(store_error)?;
        let users = self.volume_users(&volume.name);
        if !users.is_empty() {
            return Err(RunError::VolumeInUse {
                name: name.to_string(),
                pods: users,
            });
        }
        self.volumes.remove(name).map_err(store_error)?;
        Ok(())
    }

    fn view(&self, volume: NamedVolume) -> VolumeView {
        VolumeView {
            used_by: self.volume_users(&volume.name),
            volume,
        }
    }

    fn volume_users(&self, name: &str) -> Vec<String> {
        self.pods()
            .values()
            .filter(|p| p.mounts.iter().any(|m| m.name.as_deref() == Some(name)))
            .map(|p| p.id.clone())
            .collect()
    }
}

/// A host directory for a bind mount: made if missing and `create` (`-v`,
/// as Docker does), else an error (`--mount type=bind`, as Docker); a file
/// where a directory is needed is an error. Symlinks are resolved.
fn host_dir(path: &Path, create: bool) -> Result<PathBuf, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "source {}: not a directory (a host path mounted as a volume must be a directory; use type=block for a disk image)",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(|e| format!("source {}: cannot create it: {e}", path.display()))?;
            // 0755 whatever hyperd's umask, as Docker makes it.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
            tracing::info!(path = %path.display(), "created a missing host directory for -v");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "bind source path does not exist: {} (create it first; -v creates it)",
                path.display()
            ))
        }
        Err(e) => return Err(format!("source {}: {e}", path.display())),
    }
    std::fs::canonicalize(path).map_err(|e| format!("source {}: {e}", path.display()))
}

/// A host file or block device for a block mount; it must exist.
fn host_block(path: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("source {}: {e}", path.display()))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(format!(
            "source {}: not a regular file or block device (a block volume is a disk image)",
            path.display()
        ));
    }
    std::fs::canonicalize(path).map_err(|e| format!("source {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(
        kind: MountKind,
        source: Option<&str>,
        dst: &str,
        rw: bool,
        container: &str,
    ) -> MountRecord {
        MountRecord {
            kind,
            name: None,
            source: source.map(PathBuf::from),
            destination: dst.into(),
            container: container.into(),
            mode: if rw { "" } else { "ro" }.into(),
            rw,
            tmpfs_size_mib: None,
            anonymous: false,
        }
    }

    #[test]
    fn one_share_per_host_dir_read_only_only_if_every_use_is() {
        let mounts = vec![
            mount(MountKind::Bind, Some("/srv/a"), "/a", false, "c1"),
            mount(
                MountKind::Volume,
                Some("/state/volumes/v/_data"),
                "/v",
                true,
                "c1",
            ),
            mount(MountKind::Bind, Some("/srv/a"), "/a2", true, "c2"),
            mount(MountKind::Bind, Some("/srv/b"), "/b", false, "c2"),
            mount(
                MountKind::Block,
                Some("/state/volumes/db/disk.img"),
                "/db",
                true,
                "c2",
            ),
            mount(MountKind::Tmpfs, None, "/t", true, "c2"),
        ];
        let p = plan(&mounts, Some(ShareTransport::VirtioFs), "qemu").unwrap();
        assert_eq!(
            p.shares,
            vec![
                ShareSpec {
                    tag: "hyper-vol0".into(),
                    source: "/srv/a".into(),
                    read_only: false
                },
                ShareSpec {
                    tag: "hyper-vol1".into(),
                    source: "/state/volumes/v/_data".into(),
                    read_only: false
                },
                ShareSpec {
                    tag: "hyper-vol2".into(),
                    source: "/srv/b".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!(
            p.disks,
            vec![DiskSpec {
                path: "/state/volumes/db/disk.img".into(),
                read_only: false,
                id: "hyper-blk0".into()
            }]
        );
        let names: Vec<_> = p
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.readonly))
            .collect();
        assert_eq!(
            names,
            [
                ("hyper-vol0", false),
                ("hyper-vol1", false),
                ("hyper-vol2", true),
                ("hyper-blk0", false),
                ("hyper-tmp0", false)
            ]
        );
        assert!(
            matches!(&p.volumes[0].source, VolumeSource::Share { tag, .. } if tag == "hyper-vol0")
        );
        assert!(
            matches!(&p.volumes[3].source, VolumeSource::Block { disk_id, fstype } if disk_id == "hyper-blk0" && fstype == "ext4")
        );
        let c1 = &p.mounts["c1"];
        assert_eq!(
            (c1[0].volume.as_str(), c1[0].readonly),
            ("hyper-vol0", true)
        );
        let c2 = &p.mounts["c2"];
        assert_eq!(
            (c2[0].volume.as_str(), c2[0].readonly),
            ("hyper-vol0", false)
        );
        assert_eq!(c2.len(), 4);
        assert!(p.needs_host_volumes());
    }

    #[test]
    fn a_backend_without_a_share_transport_is_named_in_the_refusal() {
        let mounts = vec![mount(MountKind::Bind, Some("/srv/a"), "/a", true, "")];
        let e = plan(&mounts, None, "xen").unwrap_err().to_string();
        assert!(
            e.contains("xen backend cannot share host directories"),
            "{e}"
        );
        // Tmpfs and block need no share.
        let mounts = vec![
            mount(MountKind::Tmpfs, None, "/t", true, ""),
            mount(MountKind::Block, Some("/f.img"), "/b", true, ""),
        ];
        let p = plan(&mounts, None, "xen").unwrap();
        assert!(p.shares.is_empty());
        assert_eq!(p.disks.len(), 1);
        let only_tmpfs = plan(&mounts[..1], None, "xen").unwrap();
        assert!(!only_tmpfs.needs_host_volumes());
    }

    #[test]
    fn a_pod_files_host_and_named_volumes_become_requests_per_container_mount() {
        let text = r#"
[[volume]]
name = "site"
host = "/srv/site"
readonly = true
[[volume]]
name = "cache"
named = "web-cache"
[[volume]]
name = "scratch"
size_mib = 8
[[container]]
name = "web"
rootfs = "/r"
command = ["httpd"]
mounts = [{ volume = "site", path = "/html" }, { volume = "scratch", path = "/tmp/s" }]
[[container]]
name = "sidecar"
rootfs = "/r"
command = ["sh"]
mounts = [{ volume = "cache", path = "/c", readonly = true }, { volume = "site", path = "/s" }]
"#;
        let pod = crate::podfile::parse("pod.toml", text).unwrap();
        let reqs = pod_file_requests(&pod);
        let got: Vec<_> = reqs
            .iter()
            .map(|(c, r)| {
                (
                    c.as_str(),
                    r.kind,
                    r.source.as_deref().unwrap_or(""),
                    r.target.as_str(),
                    r.readonly,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("web", MountKind::Bind, "/srv/site", "/html", true),
                ("sidecar", MountKind::Volume, "web-cache", "/c", true),
                ("sidecar", MountKind::Bind, "/srv/site", "/s", true),
            ]
        );
        assert!(hyper_volumes::request::validate(&[reqs[0].1.clone()]).is_ok());
        for (volume, key) in [
            ("host = \"rel\"", "volume[0].host"),
            ("host = \"/a\"\nnamed = \"bb\"", "volume[0].named"),
            ("named = \"-x\"", "volume[0].named"),
            ("host = \"/a\"\nsize_mib = 4", "volume[0].size_mib"),
            ("readonly = true", "volume[0].readonly"),
        ] {
            let text = format!(
                "[[volume]]\nname = \"v\"\n{volume}\n[[container]]\nname = \"c\"\nrootfs = \"/r\"\ncommand = [\"sh\"]\n"
            );
            let e = crate::podfile::parse("pod.toml", &text).unwrap_err();
            assert_eq!(e.key, key, "{volume}: {e}");
        }
    }

    #[test]
    fn nested_mounts_come_after_their_parents() {
        let m = |p: &str| MountSpec {
            volume: "v".into(),
            path: p.into(),
            readonly: false,
        };
        let sorted = in_mount_order(vec![m("/a/b/c"), m("/a"), m("/x/y"), m("/a/b")]);
        let paths: Vec<_> = sorted.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/x/y", "/a/b", "/a/b/c"]);
    }

    #[test]
    fn host_dirs_are_made_for_v_and_refused_for_mount() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("new/sub");
        let e = host_dir(&missing, false).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!missing.exists());
        let made = host_dir(&missing, true).unwrap();
        assert!(made.is_dir());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = host_dir(&file, true).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        assert!(host_block(&file).is_ok());
        assert!(host_block(dir.path())
            .unwrap_err()
            .contains("not a regular file"));
        assert!(host_block(&dir.path().join("nope")).is_err());
        // Symlinks resolve to what they point at.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&missing, &link).unwrap();
        assert_eq!(
            host_dir(&link, false).unwrap(),
            std::fs::canonicalize(&missing).unwrap()
        );
    }
}
