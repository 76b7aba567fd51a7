//! A volume as a user asks for it: Docker's `-v SRC:DST[:OPTS]` and
//! `--mount type=…,src=…,dst=…[,readonly]` forms, parsed into one
//! [`VolumeRequest`], and the checks every request passes whichever way it
//! came (the REST API takes the parsed form as JSON, so [`validate`] runs
//! on what a client sends too). Every error names the part that is wrong.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::check_volume_name;

/// Longest container or host path accepted (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// At most this many volumes per container (the guest bounds them too).
pub const MAX_VOLUMES: usize = 64;
/// A block volume's size: at least 1 MiB (ext4 needs some room), at most
/// 16 TiB.
pub const MIN_BLOCK_BYTES: u64 = 1 << 20;
pub const MAX_BLOCK_BYTES: u64 = 16 << 40;
/// The filesystems `mkfs=` knows.
pub const MKFS_TYPES: &[&str] = &["ext4"];

/// What backs a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A host directory.
    Bind,
    /// A named volume's directory (`state_dir/volumes/NAME/_data`).
    Volume,
    /// A tmpfs in the guest, private to the container.
    Tmpfs,
    /// A host file or block device, or a named block volume, as a disk
    /// holding an ext4 filesystem.
    Block,
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
            MountKind::Block => "block",
        })
    }
}

/// One mount of a container, as asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// `bind`: an absolute host directory. `volume`: a volume name.
    /// `block`: an absolute host file or block device, or a volume name.
    /// `tmpfs`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
    /// A missing host directory is created (`-v`, as Docker does); without
    /// it (`--mount type=bind`) it is an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_host_dir: bool,
    /// `tmpfs`: the size limit in MiB; unset: the guest kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size_mib: Option<u32>,
    /// `block` with a volume name: the size of the disk made on first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `block`: the filesystem to make on a new named volume (`ext4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkfs: Option<String>,
    /// `volume`: do not copy the image's content at `target` into the
    /// volume when it is empty (Docker's `nocopy` / `volume-nocopy`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
}

/// A request that cannot be used, naming the flag and the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {given}: {message}")]
pub struct RequestError {
    /// `-v`, `--mount`, or `volume` for a request that came as JSON.
    pub flag: &'static str,
    /// What the user wrote (or the request's target).
    pub given: String,
    pub message: String,
}

impl VolumeRequest {
    /// An anonymous volume: `volume` without a source (`-v /path`); the
    /// runtime makes one with a random name, removed with the pod by
    /// `--rm` or `hyper rm -v`.
    pub fn is_anonymous(&self) -> bool {
        self.kind == MountKind::Volume && self.source.is_none()
    }

    /// A named volume's name, for `volume` and named `block` requests.
    pub fn volume_name(&self) -> Option<&str> {
        match (self.kind, self.source.as_deref()) {
            (MountKind::Volume, Some(name)) => Some(name),
            (MountKind::Block, Some(src)) if !src.starts_with('/') => Some(src),
            _ => None,
        }
    }

    /// The host path a `bind` or path `block` request names.
    pub fn host_path(&self) -> Option<&str> {
        match (self.kind, self.source.as_deref()) {
            (MountKind::Bind | MountKind::Block, Some(p)) if p.starts_with('/') => Some(p),
            _ => None,
        }
    }

    /// Docker's `Mode` of a mount: `ro`, or empty.
    pub fn mode(&self) -> &'static str {
        if self.readonly {
            "ro"
        } else {
            ""
        }
    }
}

/// Parses Docker's `-v [SRC:]DST[:OPTS]`. `SRC` is an absolute host
/// directory (created if missing, as Docker does) or a volume name
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, created on first use); without it, an
/// anonymous volume is made. `OPTS` are `ro` or `rw`, and `nocopy` for a
/// volume (comma-separated).
pub fn parse_volume(text: &str) -> Result<VolumeRequest, RequestError> {
    let err = |message: String| RequestError {
        flag: "-v",
        given: text.to_string(),
        message,
    };
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        // `/path:ro` is a destination and a mode, not a source and a
        // destination: Docker refuses it, and so does this.
        [s, t] if s.starts_with('/') && is_mode_list(t) => {
            return Err(err(format!(
                "{t:?} after an anonymous volume's path: an anonymous volume takes no options here; name it (NAME:{s}:{t}) or use --mount type=volume,dst={s},…"
            )))
        }
        [s, t] => (Some(*s), *t, None),
        [s, t, o] => (Some(*s), *t, Some(*o)),
        _ => {
            return Err(err(
                "too many ':': use HOSTDIR:CTRPATH[:ro|rw], NAME:CTRPATH[:ro|rw|nocopy] or CTRPATH"
                    .into(),
            ))
        }
    };
    if source == Some("") {
        return Err(err(
            "the source (before the first ':') is empty: give an absolute host directory or a volume name".into(),
        ));
    }
    let mut readonly = None;
    let mut nocopy = false;
    if let Some(opts) = opts {
        for opt in opts.split(',') {
            let ro = match opt {
                "ro" => true,
                "rw" => false,
                "nocopy" => {
                    nocopy = true;
                    continue;
                }
                "" => return Err(err("an empty option after ':': use ro, rw or nocopy".into())),
                other => {
                    return Err(err(format!(
                        "option {other:?} is not supported: use ro, rw or nocopy"
                    )))
                }
            };
            if readonly.is_some_and(|r| r != ro) {
                return Err(err("ro and rw together: give one".into()));
            }
            readonly = Some(ro);
        }
    }
    if let Some(source) = source {
        if !source.starts_with('/') && (source.starts_with('.') || source.contains('/')) {
            return Err(err(format!(
                "source {source}: a relative host path: give an absolute one (it is resolved on the hyperd host)"
            )));
        }
    }
    let kind = match source {
        Some(s) if s.starts_with('/') => MountKind::Bind,
        _ => MountKind::Volume,
    };
    if nocopy && kind == MountKind::Bind {
        return Err(err(
            "nocopy is for a volume: a host directory is never copied into".into(),
        ));
    }
    let req = VolumeRequest {
        kind,
        source: source.map(str::to_string),
        target: target.to_string(),
        readonly: readonly.unwrap_or(false),
        create_host_dir: kind == MountKind::Bind,
        tmpfs_size_mib: None,
        size_bytes: None,
        mkfs: None,
        nocopy,
    };
    check(&req).map_err(err)?;
    Ok(req)
}

/// Whether `text` is a list of `-v` options (`ro`, `rw,nocopy`, …).
fn is_mode_list(text: &str) -> bool {
    !text.is_empty()
        && text
            .split(',')
            .all(|o| matches!(o, "ro" | "rw" | "nocopy" | "z" | "Z"))
}

/// Parses Docker's `--mount type=bind|volume|tmpfs|block,src=…,dst=…
/// [,readonly][,volume-nocopy][,tmpfs-size=…][,size=…][,mkfs=ext4]`
/// (`source`/`src`, `destination`/`dst`/`target`, `readonly`/`ro`; the
/// type is `volume` when left out, and `type=volume` without a source is an
/// anonymous volume, as in Docker). The value is one CSV record, as
/// Docker reads it: a field holding a comma is quoted whole
/// (`"src=/a,b"`), a quote in it doubled.
pub fn parse_mount(text: &str) -> Result<VolumeRequest, RequestError> {
    let err = |message: String| RequestError {
        flag: "--mount",
        given: text.to_string(),
        message,
    };
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    let mut tmpfs_size = None;
    let mut size = None;
    let mut mkfs = None;
    let mut nocopy = false;
    let mut seen = BTreeSet::new();
    let fields = split_csv(text).map_err(err)?;
    for field in &fields {
        let field = field.as_str();
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field.trim(), None),
        };
        let key = match key {
            "src" | "source" => "source",
            "dst" | "destination" | "target" => "destination",
            "ro" | "readonly" => "readonly",
            other => other,
        };
        if !key.is_empty() && !seen.insert(key) {
            return Err(err(format!("{key} is given twice")));
        }
        let value_of = |value: Option<&str>| {
            value
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| err(format!("{key} needs a value: {key}=…")))
        };
        match key {
            "" => return Err(err("an empty field (two commas in a row?)".into())),
            "type" => {
                kind = Some(match value_of(value)?.as_str() {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    "block" => MountKind::Block,
                    other => {
                        return Err(err(format!(
                            "type={other}: use bind, volume, tmpfs or block"
                        )))
                    }
                })
            }
            "source" => source = Some(value_of(value)?),
            "destination" => target = Some(value_of(value)?),
            "readonly" => {
                readonly = match value {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(v) => {
                        return Err(err(format!(
                            "readonly={v}: use readonly, readonly=true or readonly=false"
                        )))
                    }
                }
            }
            "tmpfs-size" => {
                let bytes =
                    parse_size(&value_of(value)?).map_err(|m| err(format!("tmpfs-size: {m}")))?;
                let mib = bytes.div_ceil(1 << 20);
                tmpfs_size =
                    Some(u32::try_from(mib).map_err(|_| err("tmpfs-size: too large".into()))?);
            }
            "size" => {
                size = Some(parse_size(&value_of(value)?).map_err(|m| err(format!("size: {m}")))?)
            }
            "mkfs" => mkfs = Some(value_of(value)?),
            "volume-nocopy" => {
                nocopy = match value {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(v) => {
                        return Err(err(format!(
                            "volume-nocopy={v}: use volume-nocopy, volume-nocopy=true or volume-nocopy=false"
                        )))
                    }
                }
            }
            "bind-propagation" | "bind-nonrecursive" | "bind-recursive" | "volume-driver"
            | "volume-opt" | "volume-label" | "volume-subpath" | "tmpfs-mode" | "consistency" => {
                return Err(err(format!("{key} is not supported")))
            }
            other => {
                return Err(err(format!(
                    "unknown key {other:?}: use type, src, dst, readonly, volume-nocopy, tmpfs-size, size, mkfs"
                )))
            }
        }
    }
    let kind = kind.unwrap_or(MountKind::Volume);
    let Some(target) = target else {
        return Err(err("no destination: add dst=/path/in/container".into()));
    };
    let req = VolumeRequest {
        kind,
        source,
        target,
        readonly,
        create_host_dir: false,
        tmpfs_size_mib: tmpfs_size,
        size_bytes: size,
        mkfs,
        nocopy,
    };
    check(&req).map_err(err)?;
    Ok(req)
}

/// The fields of one CSV record (RFC 4180, as Go's `encoding/csv` reads
/// Docker's `--mount`): separated by commas; a field that starts with `"`
/// runs to the next lone `"` (a doubled `""` is one quote inside it) and
/// may hold commas; a quote anywhere else, or text after a closing quote,
/// is an error naming the field.
pub fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let n = fields.len() + 1;
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("field {n}: a quote that is never closed")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => {
                    return Err(format!(
                        "field {n} ({field:?}): text after its closing quote; quote the whole field (\"key=value\")"
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(format!(
                            "field {n} ({field}\"…): a quote inside an unquoted field; quote the whole field (\"key=value\") and double the quotes in it"
                        ))
                    }
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Checks one request, whichever way it came; the error names the part.
fn check(req: &VolumeRequest) -> Result<(), String> {
    check_target(&req.target).map_err(|m| format!("destination {}: {m}", req.target))?;
    let src = req.source.as_deref();
    let only = |what: &str, given: bool| {
        if given {
            Err(format!(
                "{what} is only for type={}",
                match what {
                    "tmpfs-size" => "tmpfs",
                    _ => "block",
                }
            ))
        } else {
            Ok(())
        }
    };
    if req.kind != MountKind::Tmpfs {
        only("tmpfs-size", req.tmpfs_size_mib.is_some())?;
    }
    if req.kind != MountKind::Block {
        only("size", req.size_bytes.is_some())?;
        only("mkfs", req.mkfs.is_some())?;
    }
    if req.nocopy && req.kind != MountKind::Volume {
        return Err("nocopy (volume-nocopy) is only for type=volume".into());
    }
    if req.create_host_dir && req.kind != MountKind::Bind {
        return Err("only a host directory (bind) can be created".into());
    }
    match req.kind {
        MountKind::Tmpfs => {
            if src.is_some() {
                return Err("a tmpfs has no source: leave src out".into());
            }
            if req.tmpfs_size_mib == Some(0) {
                return Err("tmpfs-size 0: leave it out for the default".into());
            }
        }
        MountKind::Bind => {
            let src = src.ok_or("no source: add src=/host/dir")?;
            check_host_path(src)?;
        }
        MountKind::Volume => {
            // None: an anonymous volume, named by the runtime.
            if let Some(name) = src {
                check_volume_name(name).map_err(|e| format!("source: {e}"))?;
            }
        }
        MountKind::Block => {
            let src = src.ok_or("no source: give src=/host/file or src=VOLUME")?;
            if src.starts_with('/') {
                check_host_path(src)?;
                if req.size_bytes.is_some() || req.mkfs.is_some() {
                    return Err(
                        "size and mkfs are for a named block volume (src=NAME), not a host file"
                            .into(),
                    );
                }
            } else {
                check_volume_name(src).map_err(|e| format!("source: {e}"))?;
            }
            if let Some(size) = req.size_bytes {
                if !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&size) {
                    return Err(format!("size {size} bytes: use 1m to 16t"));
                }
            }
            if let Some(fs) = &req.mkfs {
                if !MKFS_TYPES.contains(&fs.as_str()) {
                    return Err(format!("mkfs={fs}: only ext4 is supported"));
                }
            }
        }
    }
    Ok(())
}

/// A container path: absolute, not `/`, no `.`/`..` component, no NUL,
/// at most [`MAX_PATH`] bytes.
pub fn check_target(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("not an absolute path: mounts in the container need one".into());
    }
    check_path_text(path)?;
    if path.split('/').all(str::is_empty) {
        return Err("the container's root cannot be a mount".into());
    }
    Ok(())
}

/// A host path: absolute (a relative one would be resolved against hyperd's
/// directory, not the client's), no `.`/`..` component, no NUL.
pub fn check_host_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "source {path}: a relative host path: give an absolute one"
        ));
    }
    check_path_text(path).map_err(|m| format!("source {path}: {m}"))
}

fn check_path_text(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} bytes"));
    }
    if path.contains('\0') {
        return Err("holds a NUL byte".into());
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err("holds a . or .. component: give the path itself".into());
    }
    Ok(())
}

/// Checks the requests of one container together: each on its own, at most
/// [`MAX_VOLUMES`], no two at one destination.
pub fn validate(reqs: &[VolumeRequest]) -> Result<(), RequestError> {
    if reqs.len() > MAX_VOLUMES {
        return Err(RequestError {
            flag: "volume",
            given: format!("{} mounts", reqs.len()),
            message: format!("at most {MAX_VOLUMES}"),
        });
    }
    let mut targets = BTreeSet::new();
    for req in reqs {
        let err = |message: String| RequestError {
            flag: "volume",
            given: req.target.clone(),
            message,
        };
        check(req).map_err(err)?;
        if !targets.insert(normalize(&req.target)) {
            return Err(err(
                "two mounts at one destination: give each its own".into()
            ));
        }
    }
    Ok(())
}

/// A checked container path without repeated or trailing slashes.
pub fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// `1048576`, `512k`, `64m`, `1g`, `2t` (binary units, an optional `b` or
/// `ib` after the letter, any case).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: give a number of bytes, or with k, m, g or t"))?;
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{text:?}: the unit must be k, m, g or t")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dirs_and_named_volumes_parse_like_docker() {
        let r = parse_volume("/srv/data:/data").unwrap();
        assert_eq!(r.kind, MountKind::Bind);
        assert_eq!(r.source.as_deref(), Some("/srv/data"));
        assert_eq!(r.target, "/data");
        assert!(!r.readonly && r.create_host_dir);
        assert_eq!(r.host_path(), Some("/srv/data"));

        let r = parse_volume("cache:/var/cache:ro").unwrap();
        assert_eq!(r.kind, MountKind::Volume);
        assert_eq!(r.volume_name(), Some("cache"));
        assert!(r.readonly && !r.create_host_dir);
        assert!(!parse_volume("/a:/b:rw").unwrap().readonly);
        assert!(parse_volume("/a:/b:ro,ro").unwrap().readonly);
    }

    #[test]
    fn each_bad_volume_flag_names_its_part() {
        for (flag, part) in [
            ("/data:ro", "anonymous"),
            ("data", "destination data: not an absolute"),
            ("/a:/b:nocopy", "nocopy is for a volume"),
            (":/data", "source"),
            ("a:b:c:d", "too many"),
            ("/a:/b:rx", "\"rx\""),
            ("/a:/b:ro,rw", "ro and rw"),
            ("/a:/b:", "empty option"),
            ("./rel:/b", "relative"),
            ("rel/dir:/b", "relative"),
            ("x:/b", "invalid"),
            ("-x:/b", "invalid"),
            ("/a/../etc:/b", ".."),
            ("/a:data", "destination data: not an absolute"),
            ("/a:/", "root"),
            ("/a://", "root"),
            ("/a:/x/../y", ".."),
            ("/a:", "destination : not an absolute"),
        ] {
            let e = parse_volume(flag).unwrap_err().to_string();
            assert!(e.starts_with(&format!("-v {flag}: ")), "{e}");
            assert!(e.contains(part), "{flag}: {e} lacks {part}");
        }
    }

    #[test]
    fn mounts_parse_with_docker_keys_and_ours() {
        let r = parse_mount("type=bind,src=/srv,dst=/data,readonly").unwrap();
        assert_eq!(
            (r.kind, r.readonly, r.create_host_dir),
            (MountKind::Bind, true, false)
        );
        let r = parse_mount("source=vol1,target=/v").unwrap();
        assert_eq!((r.kind, r.volume_name()), (MountKind::Volume, Some("vol1")));
        let r = parse_mount("type=tmpfs,dst=/t,tmpfs-size=64m").unwrap();
        assert_eq!(r.tmpfs_size_mib, Some(64));
        let r = parse_mount("type=block,src=db,dst=/db,size=1g,mkfs=ext4").unwrap();
        assert_eq!(r.size_bytes, Some(1 << 30));
        assert_eq!(r.volume_name(), Some("db"));
        let r = parse_mount("type=block,src=/dev/vdz,dst=/db,ro=true").unwrap();
        assert_eq!(r.host_path(), Some("/dev/vdz"));
        assert!(r.readonly);
        assert!(
            !parse_mount("type=bind,src=/a,dst=/b,readonly=false")
                .unwrap()
                .readonly
        );
    }

    #[test]
    fn each_bad_mount_names_its_part() {
        for (flag, part) in [
            ("type=nfs,src=/a,dst=/b", "type=nfs"),
            ("type=bind,dst=/b", "no source"),
            ("type=bind,src=/a", "no destination"),
            ("type=bind,src=rel,dst=/b", "relative"),
            (
                "type=bind,src=/a,dst=/b,volume-nocopy",
                "only for type=volume",
            ),
            (
                "type=volume,dst=/b,volume-nocopy=maybe",
                "volume-nocopy=maybe",
            ),
            (
                "\"type=bind,src=/a,dst=/b",
                "field 1: a quote that is never closed",
            ),
            ("type=bind,\"src=/a\"x,dst=/b", "field 2"),
            ("type=bind,src=/a\"b,dst=/b", "field 2"),
            ("type=tmpfs,src=/a,dst=/b", "tmpfs has no source"),
            ("type=tmpfs,dst=/b,tmpfs-size=0", "tmpfs-size 0"),
            (
                "type=bind,src=/a,dst=/b,tmpfs-size=1m",
                "only for type=tmpfs",
            ),
            ("type=volume,src=v1,dst=/b,size=1g", "only for type=block"),
            ("type=block,src=/f,dst=/b,size=1g", "named block volume"),
            ("type=block,src=db,dst=/b,mkfs=xfs", "only ext4"),
            ("type=block,src=db,dst=/b,size=1k", "1m to 16t"),
            ("type=block,src=db,dst=/b,size=lots", "size:"),
            (
                "type=bind,src=/a,dst=/b,bind-propagation=shared",
                "not supported",
            ),
            ("type=bind,src=/a,dst=/b,colour=red", "unknown key"),
            ("type=bind,src=/a,src=/c,dst=/b", "twice"),
            ("type=bind,,src=/a,dst=/b", "empty field"),
            ("type=bind,src=,dst=/b", "needs a value"),
            ("type=bind,src=/a,dst=/b,readonly=yes", "readonly=yes"),
            ("type=bind,src=/a,dst=relative", "not an absolute"),
        ] {
            let e = parse_mount(flag).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--mount {flag}: ")), "{e}");
            assert!(e.contains(part), "{flag}: {e} lacks {part}");
        }
    }

    #[test]
    fn anonymous_volumes_and_nocopy_parse_like_docker() {
        let r = parse_volume("/var/lib/app").unwrap();
        assert_eq!((r.kind, r.source.as_deref()), (MountKind::Volume, None));
        assert!(r.is_anonymous() && !r.nocopy && !r.create_host_dir);
        assert_eq!(r.volume_name(), None);
        let r = parse_volume("cache:/c:ro,nocopy").unwrap();
        assert!(r.readonly && r.nocopy && !r.is_anonymous());
        let r = parse_mount("type=volume,dst=/d,volume-nocopy").unwrap();
        assert!(r.is_anonymous() && r.nocopy);
        let r = parse_mount("dst=/d,volume-nocopy=false").unwrap();
        assert!(r.is_anonymous() && !r.nocopy);
        assert!(!parse_volume("/a:/b").unwrap().is_anonymous());
    }

    #[test]
    fn mount_values_are_csv_and_may_quote_a_comma() {
        let r = parse_mount("type=bind,\"src=/srv/a,b\",dst=/data").unwrap();
        assert_eq!(r.source.as_deref(), Some("/srv/a,b"));
        let r = parse_mount("\"type=bind\",src=/s,\"dst=/x \"\"y\"\"\"").unwrap();
        assert_eq!(r.target, "/x \"y\"");
        assert_eq!(split_csv("a,,b").unwrap(), ["a", "", "b"]);
        assert_eq!(split_csv("\"\"").unwrap(), [""]);
        assert_eq!(split_csv("a,\"b,c\"").unwrap(), ["a", "b,c"]);
        assert!(split_csv("\"a\"b")
            .unwrap_err()
            .contains("after its closing quote"));
    }

    #[test]
    fn requests_from_json_are_checked_as_flags_are() {
        let ok = parse_volume("/a:/data").unwrap();
        let mut twice = vec![ok.clone(), parse_volume("v1:/data/").unwrap()];
        let e = validate(&twice).unwrap_err().to_string();
        assert!(e.contains("one destination"), "{e}");
        twice.pop();
        assert!(validate(&twice).is_ok());
        let bad: VolumeRequest =
            serde_json::from_str(r#"{"type":"bind","source":"/a","target":"/"}"#).unwrap();
        assert!(validate(&[bad]).is_err());
        let bad: VolumeRequest = serde_json::from_str(
            r#"{"type":"volume","source":"v1","target":"/x","create_host_dir":true}"#,
        )
        .unwrap();
        assert!(validate(&[bad]).is_err());
        assert!(
            serde_json::from_str::<VolumeRequest>(r#"{"type":"bind","target":"/x","what":1}"#)
                .is_err()
        );
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<VolumeRequest>(&json).unwrap(), ok);
        let many = vec![ok; MAX_VOLUMES + 1];
        assert!(validate(&many).is_err());
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2tb"), Ok(2 << 40));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999t").is_err());
        assert_eq!(normalize("/a//b/"), "/a/b");
    }
}
