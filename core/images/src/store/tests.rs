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
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("\"{}\"", sha(l))).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["{cmd}"],"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    layout_with_config(dir, name, layers, config.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    sha(config.as_bytes())
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

/// Writes an OCI layout whose config is exactly `config` (bytes), with
/// `layers`; returns the manifest digest.
fn layout_with_config(dir: &Path, name: &str, layers: &[Vec<u8>], config: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        fs::write(blobs.join(&d[7..]), data).unwrap();
        (d, data.len())
    };
    let (cd, cs) = put(config);
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
    fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"io.containerd.image.name":"{name}"}}}}]}}"#),
    )
    .unwrap();
    md
}

fn tmp_count(store: &ImageStore) -> usize {
    fs::read_dir(store.tmp_dir()).unwrap().count()
}

/// A "builder" that returns the unpacked tree's file `f`.
fn cat_builder(file: &'static str) -> impl Fn(&Path, &Path) -> Result<(), String> + Sync {
    move |src: &Path, dest: &Path| {
        let data = fs::read(src.join(file)).map_err(|e| e.to_string())?;
        fs::write(dest, data).map_err(|e| e.to_string())
    }
}

/// H2: a lure carrying a trusted image's exact config bytes (so its id)
/// with other layers is refused, naming the layer; the real image then
/// loads and its rootfs holds the real layers.
#[test]
fn lure_with_a_trusted_config_is_refused_by_load() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let real_layer = tar_of(&[("who", b"real")]);
    let lure_layer = tar_of(&[("who", b"lure")]);
    let real = tmp.path().join("real");
    let id = layout(&real, "trusted:1", std::slice::from_ref(&real_layer), "sh");
    let config = fs::read(real.join("blobs/sha256").join(&id[7..])).unwrap();
    let lure = tmp.path().join("lure");
    layout_with_config(&lure, "lure:1", std::slice::from_ref(&lure_layer), &config);
    let err = store.load(&lure).unwrap_err();
    assert!(
        matches!(err, ImageError::DiffIdMismatch { index: 0, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&sha(&lure_layer)),
        "names the layer: {err}"
    );
    assert!(store.list().unwrap().is_empty(), "the lure was recorded");
    assert_eq!(blob_count(&store), 0, "the lure's blobs were kept");
    // A lure with an extra layer (same count check) is refused too.
    let lure2 = tmp.path().join("lure2");
    layout_with_config(
        &lure2,
        "lure:2",
        &[real_layer.clone(), lure_layer.clone()],
        &config,
    );
    let err = store.load(&lure2).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    // The real image runs the real layers.
    let img = store.load(&real).unwrap().remove(0);
    assert_eq!(img.id, id);
    let p = store.rootfs(&img, &cat_builder("who")).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"real");
    assert_eq!(
        p.file_name().unwrap().to_string_lossy(),
        format!("{}.img", chain_id(&[sha(&real_layer)])),
        "the rootfs is named by the verified layers, not the config digest"
    );
}

/// H2: a record captured before diff_ids were checked (the id with a lure's
/// layers) is neither used to build a rootfs nor kept: loading the real
/// image replaces its layers.
#[test]
fn a_poisoned_record_is_refused_and_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let real_layer = tar_of(&[("who", b"real")]);
    let lure_layer = tar_of(&[("who", b"lure")]);
    let real = tmp.path().join("real");
    let id = layout(&real, "trusted:1", std::slice::from_ref(&real_layer), "sh");
    let config = fs::read(real.join("blobs/sha256").join(&id[7..])).unwrap();
    // What the old code stored for the lure: the trusted id, the lure's layer.
    fs::write(store.blob_path(&id), &config).unwrap();
    fs::write(store.blob_path(&sha(&lure_layer)), &lure_layer).unwrap();
    let poisoned = crate::Image {
        id: id.clone(),
        repo_tags: vec!["docker.io/library/lure:1".into()],
        repo_digests: vec![],
        size: lure_layer.len() as u64,
        created: None,
        config: Default::default(),
        layers: vec![sha(&lure_layer)],
        diff_ids: vec![],
        unpacked_size: 0,
    };
    store.write_image(&poisoned).unwrap();
    let err = store.rootfs(&poisoned, &cat_builder("who")).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert_eq!(tmp_count(&store), 0, "the refused unpack left files");
    let img = store.load(&real).unwrap().remove(0);
    assert_eq!(img.layers, vec![sha(&real_layer)]);
    assert_eq!(img.diff_ids, vec![sha(&real_layer)]);
    let p = store.rootfs(&img, &cat_builder("who")).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"real");
}

/// M7: a layout's blob that is a symlink to another file is refused
/// without telling that file's size or digest; a non-archive's contents
/// never appear in the error.
#[test]
fn layouts_cannot_read_other_files_and_errors_hold_no_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let secret = tmp.path().join("shadow");
    fs::write(&secret, b"root:$6$SECRETHASH:19000:0:99999:7:::\n").unwrap();
    let dir = tmp.path().join("l");
    let layer = tar_of(&[("f", b"data")]);
    layout(&dir, "x", std::slice::from_ref(&layer), "sh");
    let blob = dir.join("blobs/sha256").join(&sha(&layer)[7..]);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&secret, &blob).unwrap();
    let err = store.load(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::BadArchive { .. }), "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
    let secret_len = fs::metadata(&secret).unwrap().len().to_string();
    let secret_sha = sha(&fs::read(&secret).unwrap());
    assert!(
        !msg.contains(&secret_sha[7..]) && !msg.contains(&format!("got {secret_len}")),
        "{msg}"
    );
    // The index itself as a symlink, and a symlinked blobs/ directory.
    let dir2 = tmp.path().join("l2");
    layout(&dir2, "x", std::slice::from_ref(&layer), "sh");
    fs::rename(dir2.join("blobs"), tmp.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir2.join("blobs")).unwrap();
    assert!(matches!(
        store.load(&dir2),
        Err(ImageError::BadArchive { .. })
    ));
    fs::remove_file(dir2.join("index.json")).unwrap();
    std::os::unix::fs::symlink(&secret, dir2.join("index.json")).unwrap();
    let msg = store.load(&dir2).unwrap_err().to_string();
    assert!(!msg.contains("SECRET"), "{msg}");
    // `hyper load -i /etc/shadow`: a file that is no tarball.
    let msg = store.load(&secret).unwrap_err().to_string();
    assert!(!msg.contains("SECRET") && !msg.contains("root:"), "{msg}");
    // A tarball whose manifest.json is that file.
    let mut b = tar::Builder::new(Vec::new());
    let data = fs::read(&secret).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", data.as_slice())
        .unwrap();
    let t = tmp.path().join("t.tar");
    fs::write(&t, b.into_inner().unwrap()).unwrap();
    let msg = store.load(&t).unwrap_err().to_string();
    assert!(
        msg.contains("manifest.json") && !msg.contains("SECRET"),
        "{msg}"
    );
    assert!(store.list().unwrap().is_empty());
    assert_eq!(blob_count(&store), 0);
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// H3: while a hostile image is unpacked, its setuid binary and device node
/// are out of other users' reach (0700 all the way down from the store, a
/// private nosuid,nodev,noexec mount), and xattrs outside the allow-list
/// are dropped.
#[test]
fn unpack_is_private_nosuid_nodev_and_xattrs_are_filtered() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "bin", std::io::empty()).unwrap();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.hyper", b"kept".as_slice()),
        ("SCHILY.xattr.trusted.hyper", b"dropped".as_slice()),
        ("SCHILY.xattr.security.hyper", b"dropped".as_slice()),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(9);
    b.append_data(&mut h, "bin/su", b"#!/bin/sh".as_slice())
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_mode(0o666);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_size(0);
    b.append_data(&mut h, "disk", std::io::empty()).unwrap();
    let layer = b.into_inner().unwrap();
    let dir = tmp.path().join("l");
    layout(&dir, "hostile", std::slice::from_ref(&layer), "sh");
    let img = store.load(&dir).unwrap().remove(0);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let store_root = store.root().to_path_buf();
    let checked = std::sync::atomic::AtomicBool::new(false);
    let check = |src: &Path, dest: &Path| -> Result<(), String> {
        let unpack_dir = src.parent().unwrap();
        for p in [store_root.as_path(), &store_root.join("tmp"), unpack_dir] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
        }
        let su = src.join("bin/su");
        assert_eq!(
            fs::metadata(&su).unwrap().permissions().mode() & 0o7777,
            0o4755
        );
        // xattrs: user.* kept (where the file system has them), the rest dropped.
        if let Some(v) = getxattr(&su, "user.hyper") {
            assert_eq!(v, b"kept");
        }
        assert_eq!(getxattr(&su, "trusted.hyper"), None, "trusted.* was set");
        assert_eq!(getxattr(&su, "security.hyper"), None, "security.* was set");
        if root {
            // The mount this thread (and mkfs) sees.
            let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            let line = info
                .lines()
                .find(|l| l.split(' ').nth(4) == Some(unpack_dir.to_str().unwrap()))
                .unwrap_or_else(|| panic!("no private mount at {}", unpack_dir.display()));
            let opts = line.split(' ').nth(5).unwrap();
            for o in ["nosuid", "nodev", "noexec"] {
                assert!(opts.split(',').any(|x| x == o), "{o} missing: {line}");
            }
            // ... and not the host's: the mount is in this thread's namespace only.
            let host = fs::read_to_string("/proc/1/mountinfo").unwrap();
            assert!(!host.contains(unpack_dir.to_str().unwrap()));
            // Even root cannot open the device node here (nodev).
            let err = fs::File::open(src.join("disk")).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
            // Another user cannot reach the setuid binary at all.
            let out = std::process::Command::new("/usr/bin/stat")
                .arg(&su)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "uid 65534 could stat {}",
                su.display()
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
        }
        checked.store(true, std::sync::atomic::Ordering::SeqCst);
        fs::write(dest, b"ok").map_err(|e| e.to_string())
    };
    use std::os::unix::process::CommandExt;
    store.rootfs(&img, &check).unwrap();
    assert!(checked.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(tmp_count(&store), 0);
    // The rootfs image itself is private too.
    let mode = fs::metadata(store.root()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

/// M1: bombs are refused with a clear message and leave nothing behind.
#[test]
fn bombs_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = unpack::Limits {
        max_bytes: 32 << 20,
        max_entries: 150_000,
    };
    let store = ImageStore::open(&tmp.path().join("images"))
        .unwrap()
        .with_limits(limits);
    let load = |name: &str, raw: Vec<u8>| {
        let dir = tmp.path().join(name);
        gz_layout(&dir, name, &raw);
        let err = store.load(&dir).unwrap_err();
        assert!(store.list().unwrap().is_empty(), "{name}: recorded");
        assert_eq!(blob_count(&store), 0, "{name}: blobs left");
        assert_eq!(tmp_count(&store), 0, "{name}: temp files left");
        err.to_string()
    };
    // 200,000 entries (their 512 bytes each are under this budget).
    let roomy = store.clone().with_limits(unpack::Limits {
        max_bytes: 256 << 20,
        ..limits
    });
    let dir = tmp.path().join("entries");
    gz_layout(
        &dir,
        "entries",
        &crate::unpack::tests_support::many_entries(200_000, 16),
    );
    let msg = roomy.load(&dir).unwrap_err().to_string();
    assert!(roomy.list().unwrap().is_empty());
    assert_eq!(blob_count(&roomy), 0);
    assert_eq!(tmp_count(&roomy), 0);
    assert!(
        msg.contains("more than 150000 entries") && msg.contains("max_unpack_entries"),
        "{msg}"
    );
    // 30,000 entries with long paths: their metadata alone is past the byte budget.
    let msg = load(
        "paths",
        crate::unpack::tests_support::many_entries(30_000, 1000),
    );
    assert!(
        msg.contains("more than 33554432 bytes") && msg.contains("max_unpack_bytes"),
        "{msg}"
    );
    // A small layer that expands past the limit.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(33 << 20);
    h.set_mode(0o644);
    b.append_data(
        &mut h,
        "zeros",
        std::io::Read::take(std::io::repeat(0), 33 << 20),
    )
    .unwrap();
    let msg = load("zip", b.into_inner().unwrap());
    assert!(msg.contains("more than 33554432 bytes"), "{msg}");
}

/// An OCI layout of one gzip layer made from the tar `raw` (diff_id = sha(raw)).
fn gz_layout(dir: &Path, name: &str, raw: &[u8]) {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(raw).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() * 8 < raw.len(), "a bomb is small");
    let cfg = format!(
        r#"{{"config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(raw)
    );
    layout_with_config(dir, name, &[gz], cfg.as_bytes());
}

/// M1: 20,000 opaque markers (one directory, repeated; and 20,000 nested
/// directories each with one) are accepted and give the right tree; the
/// bench (bench/image-bombs.sh) times them.
#[test]
fn many_opaque_markers_are_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let lower = tar_of(&[("d/old", b"old"), ("d/keep/x", b"x")]);
    let upper = crate::unpack::tests_support::opaque_markers(20_000);
    let dir = tmp.path().join("opq");
    layout(&dir, "opq", &[lower, upper], "sh");
    let img = store.load(&dir).unwrap().remove(0);
    let p = store
        .rootfs(&img, &|src: &Path, dest: &Path| {
            assert!(!src.join("d/old").exists(), "opaque dir kept a lower file");
            assert!(
                src.join("d/new").exists(),
                "the layer's own file was removed"
            );
            fs::write(dest, b"ok").map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(p.exists());
}
