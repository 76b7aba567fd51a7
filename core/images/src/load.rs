//! `load`: OCI image layout directories and `docker save` tarballs, both
//! untrusted: every blob is hashed as it is copied, and layers are checked.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{json_detail, tar_detail};
use crate::manifest::{self, Parsed};
use crate::reference::normalize_tag;
use crate::store::{unique, ImageStore, NewImage};
use crate::{Image, ImageError, Platform};

fn bad(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::BadArchive {
        path: path.into(),
        detail: detail.into(),
    }
}

pub(crate) fn load(store: &ImageStore, path: &Path) -> Result<Vec<Image>, ImageError> {
    let meta = fs::metadata(path).map_err(|e| ImageError::io("open", path, e))?;
    if meta.is_dir() {
        load_layout(store, path)
    } else {
        load_docker_archive(store, path)
    }
}

/// Copies `reader` into the store, hashing; verifies `expect` if given.
/// Returns (digest, size).
fn copy_blob(
    store: &ImageStore,
    src: &Path,
    reader: &mut dyn Read,
    expect: Option<(&str, u64)>,
    limit: u64,
) -> Result<(String, u64), ImageError> {
    let tmp = store.tmp_dir().join(format!("load-{}.part", unique()));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ImageError::io("create", &tmp, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n: u64 = 0;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io("read", src, e)),
            };
            n += k as u64;
            if n > limit {
                return Err(bad(src, format!("a blob is larger than {limit} bytes")));
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])
                .map_err(|e| ImageError::io("write", &tmp, e))?;
        }
        let digest = format!("sha256:{:x}", h.finalize());
        if let Some((d, size)) = expect {
            if n != size {
                return Err(ImageError::SizeMismatch {
                    reference: src.display().to_string(),
                    digest: d.into(),
                    expected: size,
                    actual: n,
                    more: "",
                });
            }
            if digest != d {
                return Err(ImageError::DigestMismatch {
                    reference: src.display().to_string(),
                    digest: d.into(),
                    actual: digest,
                });
            }
        }
        f.sync_all().map_err(|e| ImageError::io("sync", &tmp, e))?;
        let dest = store.blob_path(&digest);
        fs::rename(&tmp, &dest).map_err(|e| ImageError::io("rename into", &dest, e))?;
        Ok((digest, n))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

pub(crate) fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let f = fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    read_small_from(f, path, limit)
}

fn read_small_from(f: fs::File, path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImageError::io("read", path, e))?;
    if out.len() as u64 > limit {
        return Err(bad(path, format!("larger than {limit} bytes")));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<LayoutEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

fn layout_blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    manifest::check_digest(&dir.display().to_string(), digest)?;
    Ok(dir.join("blobs/sha256").join(&digest["sha256:".len()..]))
}

/// Opens `rel` (e.g. "blobs/sha256/<hex>") inside the layout `dir` without
/// following a symlink at any component below `dir`, and only if it is a
/// regular file: a layout must not make hyperd read (and report the size
/// or digest of) a file elsewhere.
fn open_in_layout(dir: &Path, rel: &Path) -> Result<fs::File, ImageError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::{FromRawFd, OwnedFd};
    let full = dir.join(rel);
    let refuse = |what: &str| bad(dir, format!("{}: {what}", rel.display()));
    let mut at: OwnedFd = fs::File::open(dir)
        .map_err(|e| ImageError::io("open", dir, e))?
        .into();
    let comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let name = std::ffi::CString::new(c.as_bytes()).map_err(|_| refuse("bad name"))?;
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_NONBLOCK
            } else {
                libc::O_DIRECTORY
            };
        // SAFETY: `at` is an open directory fd and `name` a NUL-terminated
        // single component; the returned fd is owned below.
        let fd = unsafe {
            libc::openat(
                std::os::unix::io::AsRawFd::as_raw_fd(&at),
                name.as_ptr(),
                flags,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                    refuse("is a symlink or goes through one; a layout's files must be its own")
                }
                _ => ImageError::io("open", &full, e),
            });
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        at = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    let f = fs::File::from(at);
    let m = f.metadata().map_err(|e| ImageError::io("stat", &full, e))?;
    if !m.is_file() {
        return Err(refuse("is not a regular file"));
    }
    Ok(f)
}

fn load_layout(store: &ImageStore, dir: &Path) -> Result<Vec<Image>, ImageError> {
    let shown = dir.display().to_string();
    let index_path = dir.join("index.json");
    let raw = read_small_from(
        open_in_layout(dir, Path::new("index.json"))?,
        &index_path,
        manifest::MAX_MANIFEST_BYTES,
    )?;
    let index: LayoutIndex = serde_json::from_slice(&raw)
        .map_err(|e| bad(dir, format!("index.json: {}", json_detail(&e))))?;
    if index.manifests.is_empty() {
        return Err(bad(dir, "index.json lists no images"));
    }
    let mut out = Vec::new();
    for entry in index.manifests {
        let name = entry
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| {
                entry
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/') || n.contains(':'))
            })
            .and_then(|n| normalize_tag(n).ok());
        let mpath = layout_blob(dir, &entry.digest)?;
        let bytes = read_small_from(
            open_in_layout(dir, mpath.strip_prefix(dir).unwrap_or(&mpath))?,
            &mpath,
            manifest::MAX_MANIFEST_BYTES,
        )?;
        if bytes.len() as u64 != entry.size
            || format!("sha256:{:x}", Sha256::digest(&bytes)) != entry.digest
        {
            return Err(bad(
                dir,
                format!(
                    "manifest {} does not match its digest or size",
                    entry.digest
                ),
            ));
        }
        let m = match manifest::parse(&shown, &bytes, Some(&entry.media_type))? {
            Parsed::Manifest(m) => m,
            Parsed::Index(list) => {
                let d = manifest::pick_platform(&shown, &list, &Platform::default())?;
                let p = layout_blob(dir, &d.digest)?;
                let b = read_small_from(
                    open_in_layout(dir, p.strip_prefix(dir).unwrap_or(&p))?,
                    &p,
                    manifest::MAX_MANIFEST_BYTES,
                )?;
                if format!("sha256:{:x}", Sha256::digest(&b)) != d.digest {
                    return Err(bad(
                        dir,
                        format!("manifest {} does not match its digest", d.digest),
                    ));
                }
                match manifest::parse(&shown, &b, Some(&d.media_type))? {
                    Parsed::Manifest(m) => m,
                    Parsed::Index(_) => return Err(bad(dir, "nested indexes are not supported")),
                }
            }
        };
        for d in std::iter::once(&m.config).chain(m.layers.iter()) {
            if store.blob_path(&d.digest).exists() {
                continue;
            }
            let p = layout_blob(dir, &d.digest)?;
            let mut f = open_in_layout(dir, p.strip_prefix(dir).unwrap_or(&p))?;
            copy_blob(store, &p, &mut f, Some((&d.digest, d.size)), d.size)?;
        }
        let cfg = read_small(
            &store.blob_path(&m.config.digest),
            manifest::MAX_CONFIG_BYTES,
        )?;
        let info = manifest::parse_config(&shown, &cfg)?;
        let layers: Vec<String> = m.layers.iter().map(|l| l.digest.clone()).collect();
        let unpacked_size = store.check_layers(&shown, &layers, &info.diff_ids)?;
        let repo_digest = name.as_ref().and_then(|n| {
            n.rsplit_once(':')
                .map(|(repo, _)| format!("{repo}@{}", entry.digest))
        });
        out.push(
            store.commit_image(NewImage {
                config_digest: m.config.digest.clone(),
                info,
                layers: m
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
                unpacked_size,
                repo_tag: name,
                repo_digest,
            })?,
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Normalizes a path inside the tarball ("./a/../b" -> "b"); None if it escapes.
fn norm(p: &Path) -> Option<String> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            _ => return None,
        }
    }
    Some(
        out.iter()
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
    )
}

fn load_docker_archive(store: &ImageStore, path: &Path) -> Result<Vec<Image>, ImageError> {
    let shown = path.display().to_string();
    let open = || -> Result<tar::Archive<fs::File>, ImageError> {
        Ok(tar::Archive::new(
            fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?,
        ))
    };
    let terr = |e: io::Error| bad(path, format!("not a tar archive: {}", tar_detail(&e)));
    // Pass 1: manifest.json and symlinks.
    let mut entries_json: Option<Vec<SaveEntry>> = None;
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut a = open()?;
    for e in a.entries().map_err(terr)? {
        let mut e = e.map_err(terr)?;
        let p = e.path().map_err(terr)?.into_owned();
        let Some(name) = norm(&p) else { continue };
        if e.header().entry_type().is_symlink() {
            if let Ok(Some(t)) = e.link_name() {
                let joined = p.parent().unwrap_or(Path::new("")).join(t);
                if let Some(target) = norm(&joined) {
                    aliases.insert(name, target);
                }
            }
        } else if name == "manifest.json" {
            let mut buf = Vec::new();
            (&mut e)
                .take(manifest::MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(terr)?;
            if buf.len() as u64 > manifest::MAX_MANIFEST_BYTES {
                return Err(bad(path, "manifest.json is too large"));
            }
            entries_json = Some(
                serde_json::from_slice(&buf)
                    .map_err(|e| bad(path, format!("manifest.json: {}", json_detail(&e))))?,
            );
        }
    }
    let entries = entries_json.ok_or_else(|| {
        bad(
            path,
            "no manifest.json inside (is it a `docker save` tarball?)",
        )
    })?;
    if entries.is_empty() {
        return Err(bad(path, "manifest.json lists no images"));
    }
    let resolve = |p: &str| -> String {
        let mut cur = norm(Path::new(p)).unwrap_or_default();
        for _ in 0..16 {
            match aliases.get(&cur) {
                Some(t) => cur = t.clone(),
                None => break,
            }
        }
        cur
    };
    let mut wanted: HashMap<String, Option<(String, u64)>> = HashMap::new();
    for en in &entries {
        if en.layers.len() > manifest::MAX_LAYERS {
            return Err(bad(path, "too many layers"));
        }
        wanted.insert(resolve(&en.config), None);
        for l in &en.layers {
            wanted.insert(resolve(l), None);
        }
    }
    // Pass 2: copy the wanted files into the store.
    let mut a = open()?;
    for e in a.entries().map_err(terr)? {
        let mut e = e.map_err(terr)?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let p = e.path().map_err(terr)?.into_owned();
        let Some(name) = norm(&p) else { continue };
        if let Some(slot) = wanted.get_mut(&name) {
            if slot.is_none() {
                *slot = Some(copy_blob(
                    store,
                    path,
                    &mut e,
                    None,
                    store.limits.max_bytes,
                )?);
            }
        }
    }
    let get = |p: &str| -> Result<(String, u64), ImageError> {
        wanted
            .get(&resolve(p))
            .cloned()
            .flatten()
            .ok_or_else(|| bad(path, format!("{p} is listed in manifest.json but missing")))
    };
    let mut out = Vec::new();
    for en in &entries {
        let (cfg_digest, cfg_size) = get(&en.config)?;
        if cfg_size > manifest::MAX_CONFIG_BYTES {
            return Err(bad(path, "image config too large"));
        }
        let cfg = read_small(&store.blob_path(&cfg_digest), manifest::MAX_CONFIG_BYTES)?;
        let info = manifest::parse_config(&shown, &cfg)?;
        let layers: Vec<(String, u64)> =
            en.layers.iter().map(|l| get(l)).collect::<Result<_, _>>()?;
        let digests: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
        let unpacked_size = store.check_layers(&shown, &digests, &info.diff_ids)?;
        let tags: Vec<String> = en
            .repo_tags
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|t| normalize_tag(t).ok())
            .collect();
        let mut image = None;
        let first = tags.first().cloned();
        for tag in std::iter::once(first).chain(tags.iter().skip(1).cloned().map(Some)) {
            image = Some(store.commit_image(NewImage {
                config_digest: cfg_digest.clone(),
                info: crate::manifest::ConfigInfo {
                    created: info.created.clone(),
                    config: info.config.clone(),
                    platform: None,
                    diff_ids: info.diff_ids.clone(),
                },
                layers: layers.clone(),
                unpacked_size,
                repo_tag: tag,
                repo_digest: None,
            })?);
        }
        if let Some(i) = image {
            out.push(i);
        }
    }
    Ok(out)
}
