//! Real-registry tests: Debian's docker-registry started by
//! tests/registry/start.sh and seeded by tests/registry/seed.py.
//!   eval "$(tests/registry/start.sh >/dev/null; cat /tmp/hyper-test-registry/env)"
//!   tests/registry/seed.py
//!   cargo test -p hyper-images --test registry
//! Skipped (with a printed reason) when HYPER_TEST_REGISTRY is unset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper_images::{save_login, ImageError, ImageStore, NoProgress, PullOptions, PullProgress};

fn registry() -> Option<String> {
    match std::env::var("HYPER_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => Some(r),
        _ => {
            eprintln!("SKIPPED: HYPER_TEST_REGISTRY is unset; run tests/registry/start.sh and seed.py, then source /tmp/hyper-test-registry/env");
            None
        }
    }
}

fn opts(reg: &str) -> PullOptions {
    PullOptions {
        insecure_registries: vec![reg.to_string()],
        ..Default::default()
    }
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&tmp.path().join("images")).unwrap();
    (tmp, s)
}

fn blobs(s: &ImageStore) -> usize {
    std::fs::read_dir(s.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

fn tmp_entries(s: &ImageStore) -> usize {
    std::fs::read_dir(s.root().join("tmp")).unwrap().count()
}

#[derive(Default)]
struct Recorder {
    resolved: Mutex<Vec<String>>,
    started: AtomicUsize,
    cached: AtomicUsize,
    done: AtomicUsize,
    progress: AtomicUsize,
}

impl PullProgress for Recorder {
    fn resolved(&self, r: &str, d: &str) {
        self.resolved.lock().unwrap().push(format!("{r} {d}"));
    }
    fn layer_started(&self, _: &str, _: u64, cached: bool) {
        self.started.fetch_add(1, Ordering::SeqCst);
        if cached {
            self.cached.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn layer_progress(&self, _: &str, _: u64) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
    fn layer_done(&self, _: &str) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// A rootfs "builder" that records the unpacked tree as a listing.
fn listing_builder(src: &Path, dest: &Path) -> Result<(), String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(
                        &std::fs::read(&p).unwrap()[..m.len().min(16) as usize]
                    )
                    .trim()
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    std::fs::write(dest, out.join("\n")).map_err(|e| e.to_string())
}

async fn pull_listing(s: &ImageStore, reg: &str, name: &str) -> (hyper_images::Image, String) {
    let img = s
        .pull(&format!("{reg}/{name}"), &opts(reg), Arc::new(NoProgress))
        .await
        .unwrap();
    let p: PathBuf = s.rootfs(&img, &listing_builder).unwrap();
    let listing = std::fs::read_to_string(p).unwrap();
    (img, listing)
}

#[tokio::test]
async fn pull_busybox_and_build_rootfs() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let rec = Arc::new(Recorder::default());
    let img = s
        .pull(&format!("{reg}/hyper/busybox"), &opts(&reg), rec.clone())
        .await
        .unwrap();
    assert_eq!(img.repo_tags, vec![format!("{reg}/hyper/busybox:latest")]);
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(img.layers.len(), 1);
    assert!(img.repo_digests[0].starts_with(&format!("{reg}/hyper/busybox@sha256:")));
    assert_eq!(rec.resolved.lock().unwrap().len(), 1);
    assert_eq!(
        (
            rec.started.load(Ordering::SeqCst),
            rec.done.load(Ordering::SeqCst),
            rec.cached.load(Ordering::SeqCst)
        ),
        (1, 1, 0)
    );
    assert!(rec.progress.load(Ordering::SeqCst) >= 1);
    let p = s.rootfs(&img, &listing_builder).unwrap();
    let listing = std::fs::read_to_string(&p).unwrap();
    assert!(listing.contains("bin/sh -> busybox"), "{listing}");
    assert!(
        listing.contains("etc/passwd = root:x:0:0:root"),
        "{listing}"
    );
    // cached: same path, no rebuild
    let p2 = s
        .rootfs(&img, &|_: &Path, _: &Path| Err("must not rebuild".into()))
        .unwrap();
    assert_eq!(p, p2);
    // second pull: every layer cached; found by short name forms and id
    let rec2 = Arc::new(Recorder::default());
    s.pull(
        &format!("{reg}/hyper/busybox:latest"),
        &opts(&reg),
        rec2.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rec2.cached.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.find(&format!("{reg}/hyper/busybox")).unwrap().unwrap().id,
        img.id
    );
    assert_eq!(s.find(&img.id[7..15]).unwrap().unwrap().id, img.id);
    // by digest: same image, the digest recorded
    let by_digest = img.repo_digests[0].clone();
    let again = s
        .pull(&by_digest, &opts(&reg), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(again.id, img.id);
    assert_eq!(s.find(&by_digest).unwrap().unwrap().id, img.id);
    // rmi frees everything
    let r = s
        .remove(&format!("{reg}/hyper/busybox:latest"), &|_| false)
        .unwrap();
    assert_eq!(r.deleted, vec![img.id.clone()]);
    assert_eq!(blobs(&s), 0);
    assert!(!p.exists());
}

#[tokio::test]
async fn whiteouts_opaque_dirs_zstd_and_schema2() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let (img, l) = pull_listing(&s, &reg, "hyper/layers:latest").await;
    assert_eq!(img.layers.len(), 4);
    assert!(
        !l.contains("data/a ") && l.contains("data/b = b") && l.contains("data/c = c"),
        "{l}"
    );
    assert!(
        l.contains("opq/new = new") && !l.contains("opq/old") && !l.contains("opq/sub"),
        "{l}"
    );
    assert!(!l.contains("etc/motd") && !l.contains(".wh."), "{l}");
    let (_, l) = pull_listing(&s, &reg, "hyper/zstd").await;
    assert!(
        l.contains("zstd.txt = zstd layer") && l.contains("bin/busybox"),
        "{l}"
    );
    let (img, l) = pull_listing(&s, &reg, "hyper/docker").await;
    assert!(l.contains("docker.txt = schema2"), "{l}");
    assert_eq!(
        img.config.entrypoint,
        Some(vec!["/bin/sh".to_string(), "-c".to_string()])
    );
    assert_eq!(img.config.working_dir.as_deref(), Some("/tmp"));
    // the busybox layer is shared by all three: stored once
    assert_eq!(blobs(&s), 3 + 4 + 2 + 1);
}

#[tokio::test]
async fn multi_arch_index() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let (_, l) = pull_listing(&s, &reg, "hyper/multiarch").await;
    assert!(l.contains("arch = amd64"), "{l}");
    let mut o = opts(&reg);
    o.platform = "linux/arm64".parse().unwrap();
    let img = s
        .pull(&format!("{reg}/hyper/multiarch"), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    let l = std::fs::read_to_string(s.rootfs(&img, &listing_builder).unwrap()).unwrap();
    assert!(l.contains("arch = arm64"), "{l}");
    let err = s
        .pull(
            &format!("{reg}/hyper/armonly"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::PlatformNotFound { .. }), "{msg}");
    assert!(
        msg.contains("linux/arm64/v8")
            && msg.contains("linux/arm/v7")
            && msg.contains("linux/amd64"),
        "{msg}"
    );
}

#[tokio::test]
async fn hostile_images_are_refused_and_leave_nothing() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    for (name, want) in [
        ("hyper/evil-traversal", "unsafe"),
        ("hyper/evil-symlink", "unsafe"),
        ("hyper/evil-hardlink", "unsafe"),
        ("hyper/evil-digest", "digest"),
        ("hyper/evil-truncated", "size"),
    ] {
        let err = s
            .pull(&format!("{reg}/{name}"), &opts(&reg), Arc::new(NoProgress))
            .await
            .unwrap_err();
        let ok = match want {
            "unsafe" => matches!(err, ImageError::UnsafeLayer { .. }),
            "digest" => matches!(err, ImageError::DigestMismatch { .. }),
            _ => matches!(err, ImageError::SizeMismatch { .. }),
        };
        assert!(ok, "{name}: {err}");
        eprintln!("{name}: {err}");
        assert!(s.list().unwrap().is_empty(), "{name}: an image was stored");
        assert_eq!(blobs(&s), 0, "{name}: blobs left in the store");
        assert_eq!(tmp_entries(&s), 0, "{name}: temp files left");
    }
    assert!(!Path::new("/tmp/hyper-evil-traversal").exists());
    assert!(!Path::new("/tmp/hyper-evil-symlink").exists());
}

/// H2: a lure with busybox's exact config (so its id) and another layer is
/// refused; a digest-pinned pull of the real busybox then runs its layers.
#[tokio::test]
async fn lure_with_a_trusted_config_is_refused_then_the_pinned_pull_is_real() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let err = s
        .pull(
            &format!("{reg}/hyper/evil-lure"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    eprintln!("lure: {err}");
    assert!(s.list().unwrap().is_empty(), "the lure was recorded");
    assert_eq!(blobs(&s), 0, "the lure's blobs were kept");
    assert_eq!(tmp_entries(&s), 0);
    // The real image's manifest digest, from a store of its own.
    let (_t2, other) = store();
    let real = other
        .pull(
            &format!("{reg}/hyper/busybox"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    let pinned = real.repo_digests[0].clone();
    let (img, listing) = {
        let img = s
            .pull(&pinned, &opts(&reg), Arc::new(NoProgress))
            .await
            .unwrap();
        let p = s.rootfs(&img, &listing_builder).unwrap();
        (img.clone(), std::fs::read_to_string(p).unwrap())
    };
    assert_eq!(img.id, real.id, "the lure had the same id");
    assert!(listing.contains("bin/sh -> busybox"), "{listing}");
    assert!(!listing.contains("lure"), "{listing}");
}

#[tokio::test]
async fn clear_errors() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let err = s
        .pull(
            &format!("{reg}/hyper/busybox:nope"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let err = s
        .pull(
            &format!("{reg}/hyper/no-such-repo"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    // nothing listens on port 1
    let err = s
        .pull(
            "127.0.0.1:1/hyper/busybox",
            &opts("127.0.0.1:1"),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryUnreachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("insecure_registries"), "{err}");
    // HTTPS to a plain-HTTP registry that is not listed as insecure
    let err = s
        .pull(
            &format!("{reg}/hyper/busybox"),
            &PullOptions::default(),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    eprintln!("not insecure: {err}");
    assert!(s.list().unwrap().is_empty());
}

#[tokio::test]
async fn basic_auth_registry() {
    let Some(_) = registry() else { return };
    let (Ok(areg), Ok(user), Ok(pass)) = (
        std::env::var("HYPER_TEST_REGISTRY_AUTH"),
        std::env::var("HYPER_TEST_REGISTRY_USER"),
        std::env::var("HYPER_TEST_REGISTRY_PASSWORD"),
    ) else {
        eprintln!("SKIPPED: HYPER_TEST_REGISTRY_AUTH/_USER/_PASSWORD unset");
        return;
    };
    let (t, s) = store();
    let auth_file = t.path().join("auth.json");
    let mut o = opts(&areg);
    let err = s
        .pull(&format!("{areg}/hyper/busybox"), &o, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    save_login(&auth_file, &areg, &user, "wrong").unwrap();
    o.auth_file = Some(auth_file.clone());
    let err = s
        .pull(&format!("{areg}/hyper/busybox"), &o, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::AuthRefused { .. }), "{err}");
    assert!(err.to_string().contains("hyper login"), "{err}");
    save_login(&auth_file, &areg, &user, &pass).unwrap();
    let img = s
        .pull(&format!("{areg}/hyper/busybox"), &o, Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
}

#[tokio::test]
async fn concurrent_pulls_of_the_same_image() {
    let Some(reg) = registry() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let a = ImageStore::open(&root).unwrap();
    let b = ImageStore::open(&root).unwrap();
    let name = format!("{reg}/hyper/many");
    let (oa, ob) = (opts(&reg), opts(&reg));
    let (ra, rb) = tokio::join!(
        a.pull(&name, &oa, Arc::new(NoProgress)),
        b.pull(&name, &ob, Arc::new(NoProgress))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.id, rb.id);
    assert_eq!(a.list().unwrap().len(), 1);
    assert_eq!(a.list().unwrap()[0].repo_tags.len(), 1);
    assert_eq!(blobs(&a), 21);
    assert_eq!(tmp_entries(&a), 0);
}

#[tokio::test]
async fn pull_many_layers_timing() {
    let Some(reg) = registry() else { return };
    let (_t, s) = store();
    let rec = Arc::new(Recorder::default());
    let t0 = std::time::Instant::now();
    let img = s
        .pull(&format!("{reg}/hyper/many"), &opts(&reg), rec.clone())
        .await
        .unwrap();
    let pull = t0.elapsed();
    assert_eq!(img.layers.len(), 20);
    assert_eq!(rec.done.load(Ordering::SeqCst), 20);
    let t1 = std::time::Instant::now();
    let mkfs = |src: &Path, dest: &Path| -> Result<(), String> {
        let out = std::process::Command::new("mkfs.erofs")
            .arg("-T0")
            .arg(dest)
            .arg(src)
            .output()
            .map_err(|e| format!("mkfs.erofs: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let have_mkfs = std::process::Command::new("mkfs.erofs")
        .arg("--help")
        .output()
        .is_ok();
    let p = if have_mkfs {
        s.rootfs(&img, &mkfs).unwrap()
    } else {
        s.rootfs(&img, &listing_builder).unwrap()
    };
    let build = t1.elapsed();
    let size = std::fs::metadata(&p).unwrap().len();
    eprintln!(
        "FIGURE many (20 layers, {} layer bytes): pull {pull:?}; unpack + {} {build:?}, image {size} bytes",
        img.size,
        if have_mkfs { "mkfs.erofs" } else { "listing" }
    );
}

#[test]
fn load_skopeo_archives() {
    let Some(_) = registry() else { return };
    let Ok(dir) = std::env::var("HYPER_TEST_ARCHIVES") else {
        eprintln!("SKIPPED: HYPER_TEST_ARCHIVES unset");
        return;
    };
    let dir = PathBuf::from(dir);
    if !dir.join("busybox-oci/index.json").exists() {
        eprintln!(
            "SKIPPED: no archives in {} (seed.py needs skopeo)",
            dir.display()
        );
        return;
    }
    let (_t, s) = store();
    let a = s.load(&dir.join("busybox-oci")).unwrap();
    let b = s.load(&dir.join("busybox-docker.tar")).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        b[0].repo_tags,
        vec!["docker.io/hyper/busybox:latest".to_string()]
    );
    assert_eq!(a[0].config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(b[0].config.cmd, Some(vec!["sh".to_string()]));
    let l = std::fs::read_to_string(s.rootfs(&b[0], &listing_builder).unwrap()).unwrap();
    assert!(l.contains("bin/sh -> busybox"), "{l}");
}

/// Disk full while pulling: a 4 MiB tmpfs holds the store (root only).
#[tokio::test]
async fn disk_full_leaves_the_store_consistent() {
    let Some(reg) = registry() else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: cannot mount tmpfs");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let s = ImageStore::open(&mnt.join("images")).unwrap();
    let err = s
        .pull(
            &format!("{reg}/hyper/many"),
            &opts(&reg),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    // Refused before the download by the free-space check (or, if space
    // went while it ran, by ENOSPC).
    assert!(
        matches!(err, ImageError::NoSpace { .. }) || msg.contains("disk is full"),
        "{msg}"
    );
    assert!(s.list().unwrap().is_empty());
    assert_eq!(tmp_entries(&s), 0, "temp files left");
    assert_eq!(blobs(&s), 0, "unreferenced blobs left");
    // the store still works: a small image fits
    s.pull(
        &format!("{reg}/hyper/busybox"),
        &opts(&reg),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
}
