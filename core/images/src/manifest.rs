//! Manifests, indexes and image configs, Docker v2 (schema2) and OCI, parsed
//! leniently with our own types so both media-type families share one path.

use serde::Deserialize;

use crate::error::json_detail;
use crate::{ImageConfig, ImageError, Platform};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Upper bounds on what a registry or archive may make us hold in memory.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
pub const MAX_LAYERS: usize = 512;

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<DescPlatform>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DescPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Either an index (manifest list) or an image manifest.
pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest(Manifest),
}

#[derive(Clone, Debug)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

fn bad(reference: &str, detail: impl Into<String>) -> ImageError {
    ImageError::BadManifest {
        reference: reference.to_string(),
        detail: detail.into(),
    }
}

/// Parses a manifest or an index. `content_type` is the HTTP Content-Type (or
/// the descriptor's media type), used when the body has no `mediaType`.
pub fn parse(
    reference: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<Parsed, ImageError> {
    let raw: Raw = serde_json::from_slice(bytes)
        .map_err(|e| bad(reference, format!("manifest: {}", json_detail(&e))))?;
    if raw.schema_version == Some(1) {
        return Err(ImageError::UnsupportedMediaType {
            reference: reference.into(),
            what: "manifest".into(),
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
        });
    }
    let mt = raw
        .media_type
        .clone()
        .or_else(|| content_type.map(str::to_string))
        .unwrap_or_default();
    if let Some(list) = raw.manifests {
        if !(mt.is_empty() || mt == OCI_INDEX || mt == DOCKER_LIST) {
            return Err(ImageError::UnsupportedMediaType {
                reference: reference.into(),
                what: "index".into(),
                media_type: mt,
            });
        }
        if list.len() > 4096 {
            return Err(bad(reference, "index lists more than 4096 manifests"));
        }
        return Ok(Parsed::Index(list));
    }
    if !(mt.is_empty() || mt == OCI_MANIFEST || mt == DOCKER_MANIFEST) {
        return Err(ImageError::UnsupportedMediaType {
            reference: reference.into(),
            what: "manifest".into(),
            media_type: mt,
        });
    }
    let config = raw
        .config
        .ok_or_else(|| bad(reference, "manifest has no config"))?;
    let layers = raw.layers.unwrap_or_default();
    if layers.len() > MAX_LAYERS {
        return Err(bad(
            reference,
            format!("{} layers (more than {MAX_LAYERS})", layers.len()),
        ));
    }
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Err(ImageError::UnsupportedMediaType {
            reference: reference.into(),
            what: "config".into(),
            media_type: config.media_type,
        });
    }
    check_digest(reference, &config.digest)?;
    for l in &layers {
        if !l.media_type.is_empty() && !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(ImageError::UnsupportedMediaType {
                reference: reference.into(),
                what: format!("layer {}", l.digest),
                media_type: l.media_type.clone(),
            });
        }
        check_digest(reference, &l.digest)?;
    }
    Ok(Parsed::Manifest(Manifest { config, layers }))
}

/// Accepts only `sha256:<64 lowercase hex>`: digests become file names.
pub fn check_digest(reference: &str, digest: &str) -> Result<(), ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(bad(
            reference,
            format!("unsupported or malformed digest {digest:?} (only sha256 is supported)"),
        )),
    }
}

/// Picks the manifest of `want` from an index; the error names what it has.
pub fn pick_platform<'a>(
    reference: &str,
    list: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let matches = |d: &&Descriptor| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && match (&want.variant, &p.variant) {
                    (Some(w), Some(v)) => w == v,
                    (Some(_), None) => true,
                    (None, _) => true,
                }
        })
    };
    // Prefer an exact variant match, then any variant.
    let exact = list.iter().filter(matches).find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.variant == want.variant)
    });
    if let Some(d) = exact.or_else(|| list.iter().find(matches)) {
        return Ok(d);
    }
    let mut available: Vec<String> = list
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    available.dedup();
    Err(ImageError::PlatformNotFound {
        reference: reference.into(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "(no platforms)".into()
        } else {
            available.join(", ")
        },
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    rootfs: Option<RawRootfs>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
}

/// What an image config blob tells us.
pub struct ConfigInfo {
    pub created: Option<String>,
    pub config: ImageConfig,
    pub platform: Option<(String, String)>,
    /// `rootfs.diff_ids`: the sha256 of each layer's uncompressed tar, bottom
    /// first. What the image id (the config digest) really pins.
    pub diff_ids: Vec<String>,
}

pub fn parse_config(reference: &str, bytes: &[u8]) -> Result<ConfigInfo, ImageError> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| bad(reference, format!("image config: {}", json_detail(&e))))?;
    let rc = raw.config.unwrap_or_default();
    let diff_ids = raw.rootfs.unwrap_or_default().diff_ids.unwrap_or_default();
    if diff_ids.len() > MAX_LAYERS {
        return Err(bad(
            reference,
            format!(
                "config lists {} diff_ids (more than {MAX_LAYERS})",
                diff_ids.len()
            ),
        ));
    }
    for d in &diff_ids {
        check_digest(reference, d)?;
    }
    Ok(ConfigInfo {
        created: raw.created,
        config: ImageConfig {
            env: rc.env.unwrap_or_default(),
            cmd: rc.cmd,
            entrypoint: rc.entrypoint,
            working_dir: rc.working_dir.filter(|w| !w.is_empty()),
            user: rc.user.filter(|u| !u.is_empty()),
        },
        platform: match (raw.os, raw.architecture) {
            (Some(o), Some(a)) => Some((o, a)),
            _ => None,
        },
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str, variant: Option<&str>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: 1,
            platform: Some(DescPlatform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
        }
    }

    #[test]
    fn picks_amd64_and_names_platforms_when_missing() {
        let list = vec![
            desc("linux", "arm64", Some("v8"), 1),
            desc("linux", "amd64", None, 2),
            desc("unknown", "unknown", None, 3),
        ];
        let p = pick_platform("x", &list, &Platform::default()).unwrap();
        assert_eq!(p.digest, list[1].digest);
        let only_arm = vec![list[0].clone(), list[2].clone()];
        let err = pick_platform("x", &only_arm, &Platform::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64/v8"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn picks_arm_variant() {
        let list = vec![
            desc("linux", "arm", Some("v6"), 1),
            desc("linux", "arm", Some("v7"), 2),
        ];
        let want = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert_eq!(
            pick_platform("x", &list, &want).unwrap().digest,
            list[1].digest
        );
    }

    #[test]
    fn parses_docker_and_oci_and_refuses_others() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let docker = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{d}","size":3}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{d}","size":5}}]}}"#
        );
        assert!(
            matches!(parse("r", docker.as_bytes(), None).unwrap(), Parsed::Manifest(m) if m.layers.len() == 1)
        );
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":3}}]}}"#
        );
        assert!(
            matches!(parse("r", idx.as_bytes(), Some(OCI_INDEX)).unwrap(), Parsed::Index(l) if l.len() == 1)
        );
        let v1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(matches!(
            parse("r", v1.as_bytes(), None),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let evil =
            r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":3},"layers":[]}"#
                .to_string();
        assert!(matches!(
            parse("r", evil.as_bytes(), None),
            Err(ImageError::BadManifest { .. })
        ));
        let helm = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{d}","size":3}},"layers":[]}}"#
        );
        assert!(matches!(
            parse("r", helm.as_bytes(), None),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn parses_config() {
        let c = br#"{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/w","User":""}}"#;
        let info = parse_config("r", c).unwrap();
        assert_eq!(info.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(info.config.env, vec!["PATH=/bin".to_string()]);
        assert_eq!(info.config.working_dir.as_deref(), Some("/w"));
        assert_eq!(info.config.user, None);
        assert_eq!(info.created.as_deref(), Some("2024-01-01T00:00:00Z"));
    }
}
