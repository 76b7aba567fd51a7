//! The one error type of this crate. Every message names what failed (the
//! reference, registry, digest or path) and, where there is one, the fix.

use std::path::PathBuf;

/// Everything that can go wrong with images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}; use NAME[:TAG] or NAME@sha256:DIGEST, e.g. busybox:latest")]
    InvalidReference { reference: String, reason: String },

    #[error("image {reference} not found in registry {registry}: check the name and tag (`{reference}`)")]
    NotFound { reference: String, registry: String },

    #[error("no local image named {name:?}: pull it first (`hyper pull {name}`) or check `hyper images`")]
    NoSuchImage { name: String },

    #[error("{name:?} matches more than one image ({candidates}); give more characters of the id")]
    Ambiguous { name: String, candidates: String },

    #[error("registry {registry} refused the credentials for {reference}: {detail}; log in again with `hyper login {registry}`")]
    AuthRefused {
        reference: String,
        registry: String,
        detail: String,
    },

    #[error("cannot reach registry {registry} for {reference}: {detail}; check that it is up, and if it speaks plain HTTP add it to [images] insecure_registries")]
    RegistryUnreachable {
        reference: String,
        registry: String,
        detail: String,
    },

    #[error("registry {registry} failed for {reference}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },

    #[error("image {reference} has no {wanted} variant; the index offers: {available}; pick one of those platforms")]
    PlatformNotFound {
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("{what} of {reference}: unsupported media type {media_type:?}; only Docker v2 (schema2) and OCI images are supported")]
    UnsupportedMediaType {
        reference: String,
        what: String,
        media_type: String,
    },

    #[error("bad manifest or config for {reference}: {detail}")]
    BadManifest { reference: String, detail: String },

    #[error("blob {digest} of {reference} failed verification: expected sha256 {digest}, got {actual}; the registry served corrupt data, nothing was stored; retry or fix the registry")]
    DigestMismatch {
        reference: String,
        digest: String,
        actual: String,
    },

    #[error("blob {digest} of {reference} has the wrong size: the manifest says {expected} bytes, got {actual}{more}; nothing was stored; retry or fix the registry")]
    SizeMismatch {
        reference: String,
        digest: String,
        expected: u64,
        actual: u64,
        more: &'static str,
    },

    #[error(
        "layer {digest} of {reference} is unsafe and was refused: {detail}; nothing was stored"
    )]
    UnsafeLayer {
        reference: String,
        digest: String,
        detail: String,
    },

    #[error(
        "layer {digest} of {reference} is not a valid (gzip, zstd or plain) tar archive: {detail}"
    )]
    BadLayer {
        reference: String,
        digest: String,
        detail: String,
    },

    #[error("image {id} ({tags}) is used by a pod; stop and remove the pod first")]
    InUse { id: String, tags: String },

    #[error("cannot load {path}: {detail}; give an OCI image layout directory or a `docker save` tarball")]
    BadArchive { path: PathBuf, detail: String },

    #[error("auth file {path}: {detail}; fix it or log in again with `hyper login`")]
    AuthFile { path: PathBuf, detail: String },

    #[error("building the rootfs image of {id} failed: {detail}")]
    RootfsBuild { id: String, detail: String },

    #[error("reading the unpacked tree of {id} failed: {detail}")]
    Unpacked { id: String, detail: String },

    #[error("{op} {path}: {source}{hint}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },

    #[error("layer {digest} (#{index}) of {reference} does not match the image config: {detail}; the image's layers are not the ones its config (and id) names, so it was refused and nothing was stored")]
    DiffIdMismatch {
        reference: String,
        digest: String,
        index: usize,
        detail: String,
    },

    #[error("not enough free space in {path} for {what}: {needed} bytes needed, {free} free; free space (remove unused images, for one) and retry")]
    NoSpace {
        path: PathBuf,
        what: String,
        needed: u64,
        free: u64,
    },

    #[error("image store {path} is corrupt: {detail}; remove that file (the image will have to be pulled again)")]
    Corrupt { path: PathBuf, detail: String },
}

impl ImageError {
    /// An I/O error on `path`, with a hint for the errors a person can fix.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                "; the disk is full: free space (remove unused images, for one) and retry"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => "; run as root or fix the permissions",
            Some(libc::EROFS) => "; the file system is read-only",
            _ => "",
        };
        ImageError::Io {
            op,
            path: path.into(),
            source,
            hint,
        }
    }
}

/// A JSON error without the input's bytes: serde_json's messages quote the
/// offending value, and the input may be a file the client has no right to
/// read (`hyper load -i /etc/shadow`).
pub(crate) fn json_detail(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "not valid JSON",
        Category::Eof => "truncated JSON",
        Category::Data => {
            let m = e.to_string();
            if m.starts_with("missing field") {
                return m;
            }
            "a field has the wrong type or value"
        }
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// A tar error without the input's bytes: the tar crate's messages quote
/// header fields.
pub(crate) fn tar_detail(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => e.to_string(),
        None => "a malformed tar header or a truncated archive".into(),
    }
}
