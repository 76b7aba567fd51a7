use super::*;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI image layout with one image; returns its config digest.
fn layout(dir: &Path, name: &str, layers: &[Vec<u8>], cmd: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        fs::write(blobs.join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", sha(l))).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["{cmd}"],"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let (cd, cs) = put(config.as_bytes());
    let ls: Vec<String> = layers
        .iter()
        .map(|l| {
            let (d, s) = put(l);
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{s}}}"#)
        })
        .collect();
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{}]}}"#,
        ls.join(",")
    );
    let (md, ms) = put(m.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"io.containerd.image.name":"{name}"}}}}]}}"#),
    )
    .unwrap();
    cd
}

fn blob_count(store: &ImageStore) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn load_find_tag_remove_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let shared = tar_of(&[("bin/sh", b"shell")]);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let ida = layout(
        &a,
        "busybox",
        &[shared.clone(), tar_of(&[("a", b"a")])],
        "sh",
    );
    let idb = layout(
        &b,
        "example.com:5000/x/y:v1",
        &[shared, tar_of(&[("b", b"b")])],
        "true",
    );
    let la = store.load(&a).unwrap();
    assert_eq!(la[0].id, ida);
    assert_eq!(
        la[0].repo_tags,
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    assert_eq!(la[0].config.cmd, Some(vec!["sh".to_string()]));
    store.load(&b).unwrap();
    // 2 configs + 3 layers (one shared)
    assert_eq!(blob_count(&store), 5);
    assert_eq!(store.find("busybox").unwrap().unwrap().id, ida);
    assert_eq!(
        store
            .find("docker.io/library/busybox:latest")
            .unwrap()
            .unwrap()
            .id,
        ida
    );
    assert_eq!(store.find(&ida[7..19]).unwrap().unwrap().id, ida);
    assert_eq!(store.find(&ida).unwrap().unwrap().id, ida);
    assert_eq!(
        store.find(&idb).unwrap().unwrap().repo_tags,
        vec!["example.com:5000/x/y:v1".to_string()]
    );
    assert!(store.find("nope").unwrap().is_none());
    assert!(store.find("").unwrap().is_none());

    // tag, then moving a tag takes it from the other image
    store.tag("busybox", "mine:1").unwrap();
    store.tag(&idb, "mine:1").unwrap();
    assert_eq!(store.find("mine:1").unwrap().unwrap().id, idb);
    assert!(!store
        .find(&ida)
        .unwrap()
        .unwrap()
        .repo_tags
        .contains(&"docker.io/library/mine:1".to_string()));

    // in use: refused, nothing changes
    let err = store.remove("busybox", &|i| i.id == ida).unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert!(store.find("busybox").unwrap().is_some());

    // untag one of two tags of b: the image stays
    let r = store.remove("mine:1", &|_| false).unwrap();
    assert_eq!(r.untagged, vec!["docker.io/library/mine:1".to_string()]);
    assert!(r.deleted.is_empty());
    // last tag of a: deleted, its own blobs freed, the shared layer kept
    let r = store.remove("busybox", &|_| false).unwrap();
    assert_eq!(r.deleted, vec![ida.clone()]);
    assert!(r.freed_bytes > 0);
    assert_eq!(blob_count(&store), 3);
    // by id
    let r = store.remove(&idb[..20], &|_| false).unwrap();
    assert_eq!(r.deleted, vec![idb]);
    assert_eq!(blob_count(&store), 0);
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.remove("busybox", &|_| false),
        Err(ImageError::NoSuchImage { .. })
    ));
}

#[test]
fn hostile_layout_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "esc", "../../../..").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "esc/evil", b"x".as_slice()).unwrap();
    let dir = tmp.path().join("evil");
    layout(&dir, "evil", &[b.into_inner().unwrap()], "sh");
    let err = store.load(&dir).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeLayer { .. }), "{err}");
    assert!(err.to_string().contains("outside the root"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        blob_count(&store),
        0,
        "the refused image's blobs were collected"
    );
}

#[test]
fn corrupt_layout_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let dir = tmp.path().join("l");
    let layer = tar_of(&[("f", b"data")]);
    layout(&dir, "x", std::slice::from_ref(&layer), "sh");
    let p = dir.join("blobs/sha256").join(&sha(&layer)[7..]);
    let mut bad = layer.clone();
    bad[600] ^= 1;
    fs::write(&p, &bad).unwrap();
    assert!(matches!(
        store.load(&dir),
        Err(ImageError::DigestMismatch { .. })
    ));
    fs::write(&p, &layer[..layer.len() - 512]).unwrap();
    assert!(matches!(
        store.load(&dir),
        Err(ImageError::SizeMismatch { .. })
    ));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(blob_count(&store), 0);
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "no temp files left"
    );
}

#[test]
fn concurrent_loads_and_one_rootfs_build() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    let dir = tmp.path().join("l");
    let id = layout(
        &dir,
        "busybox",
        &[
            tar_of(&[("bin/sh", b"s")]),
            tar_of(&[("etc/passwd", b"root:x:0:0::/:/bin/sh\n")]),
        ],
        "sh",
    );
    // Two "processes" (separate store handles) load the same image at once.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (root, dir) = (root.clone(), dir.clone());
            std::thread::spawn(move || ImageStore::open(&root).unwrap().load(&dir).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap()[0].id, id);
    }
    let store = ImageStore::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.list().unwrap()[0].repo_tags.len(), 1);
    let image = store.find("busybox").unwrap().unwrap();
    let builds = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (s, img, builds) = (store.clone(), image.clone(), builds.clone());
            std::thread::spawn(move || {
                s.rootfs(&img, &|src: &Path, dest: &Path| {
                    builds.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    let passwd = fs::read(src.join("etc/passwd")).map_err(|e| e.to_string())?;
                    assert!(src.join("bin/sh").exists());
                    fs::write(dest, passwd).map_err(|e| e.to_string())
                })
                .unwrap()
            })
        })
        .collect();
    let paths: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(builds.load(Ordering::SeqCst), 1, "built once");
    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(fs::read(&paths[0]).unwrap(), b"root:x:0:0::/:/bin/sh\n");
    assert_eq!(
        fs::read_dir(store.tmp_dir()).unwrap().count(),
        0,
        "unpack dir removed"
    );
    // a failing build leaves nothing
    store.remove("busybox", &|_| false).unwrap();
    assert!(!paths[0].exists(), "rootfs removed with the image");
    store.load(&dir).unwrap();
    let err = store
        .rootfs(&image, &|_: &Path, _: &Path| {
            Err("mkfs.erofs: boom".to_string())
        })
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[test]
fn login_file_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d/config.json");
    save_login(&f, "127.0.0.1:5001", "alice", "pa:ss").unwrap();
    save_login(&f, "docker.io", "bob", "pw").unwrap();
    assert_eq!(
        read_login(&f, "127.0.0.1:5001").unwrap(),
        Some(("alice".into(), "pa:ss".into()))
    );
    assert_eq!(
        read_login(&f, "docker.io").unwrap(),
        Some(("bob".into(), "pw".into()))
    );
    assert_eq!(read_login(&f, "other:1").unwrap(), None);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::write(&f, "{not json").unwrap();
    let err = read_login(&f, "x").unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("hyper login"),
        "{err}"
    );
}

#[test]
fn docker_save_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let layer = tar_of(&[("hello", b"world")]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/hello"],"WorkingDir":"/w"}},"rootfs":{{"type":"layers","diff_ids":["{0}","{0}"]}}}}"#,
        sha(&layer)
    );
    let config = config.as_bytes();
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["hello:1","other/hello:2"],"Layers":["abc/layer.tar","dup/layer.tar"]}]"#;
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_slice()),
        ("cfg.json", config),
        ("abc/layer.tar", layer.as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "dup/layer.tar", "../abc/layer.tar")
        .unwrap();
    let path = tmp.path().join("save.tar");
    fs::write(&path, b.into_inner().unwrap()).unwrap();
    let images = store.load(&path).unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.id, sha(config));
    assert_eq!(
        img.repo_tags,
        vec![
            "docker.io/library/hello:1".to_string(),
            "docker.io/other/hello:2".to_string()
        ]
    );
    assert_eq!(img.layers, vec![sha(&layer), sha(&layer)]);
    assert_eq!(img.config.entrypoint, Some(vec!["/hello".to_string()]));
    assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
    let not_tar = tmp.path().join("x");
    fs::write(&not_tar, b"hello").unwrap();
    assert!(matches!(
        store.load(&not_tar),
        Err(ImageError::BadArchive { .. })
    ));
}
