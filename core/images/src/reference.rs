//! Image references, Docker Hub style: `busybox` is
//! `docker.io/library/busybox:latest`.

use oci_client::Reference;

use crate::ImageError;

/// A parsed, normalized reference.
#[derive(Clone, Debug)]
pub struct ImageRef {
    pub inner: Reference,
    /// "docker.io/library/busybox" (no tag, no digest)
    pub repo: String,
    /// Some("latest") when neither tag nor digest was given
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let invalid = |reason: String| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason,
        };
        if reference.is_empty()
            || reference.len() > 512
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("empty, too long, or contains white space".into()));
        }
        let inner: Reference = reference.parse().map_err(|e| invalid(format!("{e}")))?;
        let digest = inner.digest().map(str::to_string);
        if let Some(d) = &digest {
            crate::manifest::check_digest(reference, d)
                .map_err(|_| invalid(format!("bad digest {d:?}")))?;
        }
        let tag = match (inner.tag(), &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        let repo = format!("{}/{}", inner.registry(), inner.repository());
        Ok(ImageRef {
            inner,
            repo,
            tag,
            digest,
        })
    }

    /// "docker.io/library/busybox:latest", if the reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo))
    }

    /// The registry as written in auth files and `insecure_registries`: "host:port" or "docker.io".
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// "docker.io/library/busybox:latest" or "host/repo@sha256:…" for messages.
    pub fn display(&self) -> String {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => format!("{}@{d}", self.repo),
            (Some(t), None) => format!("{}:{t}", self.repo),
            (None, None) => self.repo.clone(),
        }
    }
}

/// Normalizes a tag name ("busybox" -> "docker.io/library/busybox:latest").
pub fn normalize_tag(name: &str) -> Result<String, ImageError> {
    let r = ImageRef::parse(name)?;
    if r.digest.is_some() {
        return Err(ImageError::InvalidReference {
            reference: name.into(),
            reason: "a tag cannot contain a digest".into(),
        });
    }
    r.repo_tag().ok_or_else(|| ImageError::InvalidReference {
        reference: name.into(),
        reason: "no tag".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_forms() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(r.registry(), "docker.io");
        let r = ImageRef::parse("library/busybox:1.36").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "docker.io/library/busybox:1.36");
        let r = ImageRef::parse("user/app").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "docker.io/user/app:latest");
        assert_eq!(
            normalize_tag("docker.io/library/busybox:latest").unwrap(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn host_port_and_digest() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let r = ImageRef::parse(&format!("127.0.0.1:5000/test/busybox@{d}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repo, "127.0.0.1:5000/test/busybox");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        assert_eq!(r.display(), format!("127.0.0.1:5000/test/busybox@{d}"));
        let r = ImageRef::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "localhost:5000/a/b:v1");
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "library/UPPER",
            "a b",
            "busybox@sha256:xyz",
            "busybox@md5:00",
            "-x",
            "a:b:c:d",
        ] {
            assert!(
                matches!(
                    ImageRef::parse(bad),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{bad}"
            );
        }
    }
}
