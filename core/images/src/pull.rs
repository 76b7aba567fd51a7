//! Pulling from a registry with `oci-client`.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::manifest::{self, Descriptor, Parsed};
use crate::reference::ImageRef;
use crate::store::{read_login, unique, ImageStore, NewImage};
use crate::{Image, ImageError, PullOptions, PullProgress};

struct Ctx<'a> {
    client: Client,
    auth: RegistryAuth,
    r: &'a ImageRef,
    shown: String,
}

impl Ctx<'_> {
    fn map_err(&self, e: OciDistributionError) -> ImageError {
        let reference = self.shown.clone();
        let registry = self.r.registry().to_string();
        let text = e.to_string();
        match &e {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => ImageError::AuthRefused {
                reference,
                registry,
                detail: text,
            },
            OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound {
                reference,
                registry,
            },
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
                ImageError::RegistryUnreachable {
                    reference,
                    registry,
                    detail: text,
                }
            }
            OciDistributionError::RegistryError { .. }
            | OciDistributionError::ServerError { .. } => {
                let dbg = format!("{e:?}");
                if dbg.contains("ManifestUnknown")
                    || dbg.contains("NameUnknown")
                    || dbg.contains("code: 404")
                    || dbg.contains("NotFound")
                {
                    ImageError::NotFound {
                        reference,
                        registry,
                    }
                } else if dbg.contains("Unauthorized")
                    || dbg.contains("Denied")
                    || dbg.contains("code: 401")
                    || dbg.contains("code: 403")
                {
                    ImageError::AuthRefused {
                        reference,
                        registry,
                        detail: text,
                    }
                } else {
                    ImageError::Registry {
                        reference,
                        registry,
                        detail: text,
                    }
                }
            }
            _ => ImageError::Registry {
                reference,
                registry,
                detail: text,
            },
        }
    }

    async fn manifest(&self, r: &Reference) -> Result<(Vec<u8>, String), ImageError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(r, &self.auth, manifest::ACCEPTED)
            .await
            .map_err(|e| self.map_err(e))?;
        if bytes.len() as u64 > manifest::MAX_MANIFEST_BYTES {
            return Err(ImageError::BadManifest {
                reference: self.shown.clone(),
                detail: format!("manifest of {} bytes is too large", bytes.len()),
            });
        }
        let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
        if let Some(want) = r.digest() {
            if want != actual {
                return Err(ImageError::DigestMismatch {
                    reference: self.shown.clone(),
                    digest: want.into(),
                    actual,
                });
            }
        }
        Ok((
            bytes.to_vec(),
            if digest.starts_with("sha256:") {
                digest
            } else {
                actual
            },
        ))
    }
}

pub(crate) async fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
    progress: Arc<dyn PullProgress>,
) -> Result<Image, ImageError> {
    let r = ImageRef::parse(reference)?;
    let registry = r.registry().to_string();
    let auth = match &opts.auth_file {
        Some(f) => match read_login(f, &registry)? {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        },
        None => RegistryAuth::Anonymous,
    };
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        max_concurrent_download: opts.max_concurrent_downloads.max(1),
        ..Default::default()
    });
    let ctx = Ctx {
        client,
        auth,
        r: &r,
        shown: r.display(),
    };
    let (bytes, top_digest) = ctx.manifest(&r.inner).await?;
    let mut from_index = true;
    let manifest = match manifest::parse(&ctx.shown, &bytes, None)? {
        Parsed::Manifest(m) => {
            from_index = false;
            m
        }
        Parsed::Index(list) => {
            let d = manifest::pick_platform(&ctx.shown, &list, &opts.platform)?;
            manifest::check_digest(&ctx.shown, &d.digest)?;
            let pr = r.inner.clone_with_digest(d.digest.clone());
            let (bytes, _) = ctx.manifest(&pr).await?;
            match manifest::parse(&ctx.shown, &bytes, Some(&d.media_type))? {
                Parsed::Manifest(m) => m,
                Parsed::Index(_) => {
                    return Err(ImageError::BadManifest {
                        reference: ctx.shown.clone(),
                        detail: "an index points at another index".into(),
                    })
                }
            }
        }
    };
    progress.resolved(&ctx.shown, &top_digest);
    tracing::info!(reference = %ctx.shown, digest = %top_digest, layers = manifest.layers.len(), "pulling");

    if manifest.config.size > manifest::MAX_CONFIG_BYTES {
        return Err(ImageError::BadManifest {
            reference: ctx.shown.clone(),
            detail: format!("config of {} bytes is too large", manifest.config.size),
        });
    }
    fetch_blob(store, &ctx, &manifest.config, None).await?;
    let cfg_path = store.blob_path(&manifest.config.digest);
    let cfg = std::fs::read(&cfg_path).map_err(|e| ImageError::io("read", &cfg_path, e))?;
    let info = manifest::parse_config(&ctx.shown, &cfg)?;
    if let (false, Some((os, arch))) = (from_index, &info.platform) {
        if *os != opts.platform.os || *arch != opts.platform.architecture {
            tracing::warn!(reference = %ctx.shown, image = %format!("{os}/{arch}"), wanted = %opts.platform, "image platform differs from the wanted one");
        }
    }

    let download: u64 = manifest
        .layers
        .iter()
        .filter(|l| !store.blob_path(&l.digest).exists())
        .map(|l| l.size)
        .fold(0, u64::saturating_add);
    store.ensure_space(&format!("the layers of {}", ctx.shown), download)?;
    let jobs = manifest
        .layers
        .iter()
        .map(|l| fetch_blob(store, &ctx, l, Some(progress.clone())));
    futures_util::stream::iter(jobs)
        .buffer_unordered(opts.max_concurrent_downloads.max(1))
        .try_collect::<Vec<()>>()
        .await?;

    let layers: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
    let (s, shown, ls, ds) = (
        store.clone(),
        ctx.shown.clone(),
        layers.clone(),
        info.diff_ids.clone(),
    );
    let unpacked_size = tokio::task::spawn_blocking(move || s.check_layers(&shown, &ls, &ds))
        .await
        .map_err(|e| ImageError::io("check layers of", ctx.shown.clone(), io::Error::other(e)))??;

    let new = NewImage {
        config_digest: manifest.config.digest.clone(),
        info,
        layers: manifest
            .layers
            .iter()
            .map(|l| (l.digest.clone(), l.size))
            .collect(),
        unpacked_size,
        repo_tag: if r.digest.is_some() {
            None
        } else {
            r.repo_tag()
        },
        repo_digest: Some(format!("{}@{top_digest}", r.repo)),
    };
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.commit_image(new))
        .await
        .map_err(|e| ImageError::io("record", ctx.shown.clone(), io::Error::other(e)))?
}

/// Downloads one blob to a temp file and renames it into the store only
/// after its size and digest check.
async fn fetch_blob(
    store: &ImageStore,
    ctx: &Ctx<'_>,
    d: &Descriptor,
    progress: Option<Arc<dyn PullProgress>>,
) -> Result<(), ImageError> {
    let dest = store.blob_path(&d.digest);
    if let Ok(m) = std::fs::metadata(&dest) {
        if m.len() == d.size {
            if let Some(p) = &progress {
                p.layer_started(&d.digest, d.size, true);
                p.layer_done(&d.digest);
            }
            return Ok(());
        }
    }
    if let Some(p) = &progress {
        p.layer_started(&d.digest, d.size, false);
    }
    // Removed on every path out, including this future being dropped when
    // another download fails.
    let tmp = TempPath(store.tmp_dir().join(format!("blob-{}.part", unique())));
    download(ctx, d, &tmp.0, progress.as_deref()).await?;
    std::fs::rename(&tmp.0, &dest).map_err(|e| ImageError::io("rename into", &dest, e))?;
    if let Some(p) = &progress {
        p.layer_done(&d.digest);
    }
    Ok(())
}

struct TempPath(std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn download(
    ctx: &Ctx<'_>,
    d: &Descriptor,
    tmp: &std::path::Path,
    progress: Option<&dyn PullProgress>,
) -> Result<(), ImageError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| ImageError::io("create", tmp, e))?;
    let mut stream = ctx
        .client
        .pull_blob_stream(&ctx.r.inner, d.digest.as_str())
        .await
        .map_err(|e| ctx.map_err(e))?;
    let mut hasher = Sha256::new();
    let mut done: u64 = 0;
    let mut last_report: u64 = 0;
    let size_err = |actual: u64, more: &'static str| ImageError::SizeMismatch {
        reference: ctx.shown.clone(),
        digest: d.digest.clone(),
        expected: d.size,
        actual,
        more,
    };
    let mut stream_err = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                stream_err = Some(e);
                break;
            }
        };
        done += chunk.len() as u64;
        if done > d.size {
            return Err(size_err(done, " or more"));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| ImageError::io("write", tmp, e))?;
        if let Some(p) = progress {
            if done - last_report >= 256 << 10 || done == d.size {
                p.layer_progress(&d.digest, done);
                last_report = done;
            }
        }
    }
    // oci-client's own verification fails the last chunk on a bad digest:
    // tell a short blob and a corrupt one apart ourselves.
    if done != d.size {
        return Err(size_err(done, ""));
    }
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != d.digest {
        return Err(ImageError::DigestMismatch {
            reference: ctx.shown.clone(),
            digest: d.digest.clone(),
            actual,
        });
    }
    if let Some(e) = stream_err {
        return Err(ImageError::Registry {
            reference: ctx.shown.clone(),
            registry: ctx.r.registry().into(),
            detail: format!("download of {}: {e}", d.digest),
        });
    }
    file.sync_all()
        .map_err(|e| ImageError::io("sync", tmp, e))?;
    Ok(())
}
