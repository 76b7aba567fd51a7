use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// One tar entry for the test archives; names are written raw so hostile
/// paths (`..`, absolute) can be built.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str, u32, u32),
}

fn header(name: &str, et: EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(et);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_000_000_000);
    let raw = &mut h.as_old_mut().name;
    raw.fill(0);
    raw[..name.len()].copy_from_slice(name.as_bytes());
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let raw = &mut h.as_old_mut().linkname;
    raw.fill(0);
    raw[..target.len()].copy_from_slice(target.as_bytes());
}

fn layer(dir: &Path, n: usize, entries: &[E<'_>]) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(p, EntryType::Directory, 0, 0o750);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::File(p, data) => {
                let mut h = header(p, EntryType::Regular, data.len() as u64, 0o4755);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Sym(p, t) | E::Hard(p, t) => {
                let et = if matches!(e, E::Sym(..)) {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                };
                let mut h = header(p, et, 0, 0o777);
                set_link(&mut h, t);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(p, EntryType::Fifo, 0, 0o640);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Char(p, ma, mi) => {
                let mut h = header(p, EntryType::Char, 0, 0o666);
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
        }
    }
    let data = b.into_inner().unwrap();
    let path = dir.join(format!("layer{n}.tar"));
    fs::write(&path, data).unwrap();
    path
}

fn gzip(path: &Path) -> PathBuf {
    let data = fs::read(path).unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut enc, &data).unwrap();
    let out = path.with_extension("tar.gz");
    fs::write(&out, enc.finish().unwrap()).unwrap();
    out
}

/// Both the model and the real unpack must refuse it as unsafe, and the
/// outside must be untouched.
fn assert_refused(layers: &[Vec<E<'_>>], outside_probe: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| layer(tmp.path(), i, l))
        .collect();
    match validate(&paths, Limits::default()) {
        Err((_, UnpackError::Unsafe(_))) => {}
        other => panic!("validate accepted a hostile layer: {other:?}"),
    }
    let root = tmp.path().join("a/b/root");
    fs::create_dir_all(&root).unwrap();
    match unpack(&root, &paths, Limits::default()) {
        Err((_, UnpackError::Unsafe(_))) => {}
        other => panic!("unpack accepted a hostile layer: {other:?}"),
    }
    assert!(
        !tmp.path().join("a/b").join(outside_probe).exists(),
        "wrote outside the root"
    );
    assert!(
        !tmp.path().join(outside_probe).exists(),
        "wrote outside the root"
    );
}

#[test]
fn refuses_dotdot_paths() {
    assert_refused(&[vec![E::File("../evil", b"x")]], "evil");
    assert_refused(&[vec![E::File("ok/../../evil", b"x")]], "evil");
}

#[test]
fn refuses_absolute_paths() {
    assert_refused(&[vec![E::File("/evil", b"x")]], "evil");
}

#[test]
fn refuses_write_through_escaping_symlink() {
    // same layer
    assert_refused(
        &[vec![E::Sym("link", "../.."), E::File("link/evil", b"x")]],
        "evil",
    );
    // symlink from a lower layer, write in an upper one
    assert_refused(
        &[
            vec![E::Dir("d"), E::Sym("d/up", "../../..")],
            vec![E::File("d/up/evil", b"x")],
        ],
        "evil",
    );
    // chain of symlinks
    assert_refused(
        &[vec![
            E::Sym("a", "b"),
            E::Sym("b", "../"),
            E::File("a/evil", b"x"),
        ]],
        "evil",
    );
    // whiteout through a symlink
    assert_refused(
        &[vec![E::Sym("l", ".."), E::File("l/.wh.root", b"")]],
        "evil",
    );
}

#[test]
fn refuses_hard_links_outside() {
    assert_refused(&[vec![E::Hard("passwd", "../../../etc/passwd")]], "passwd");
    assert_refused(&[vec![E::Hard("passwd", "/etc/passwd")]], "passwd");
    assert_refused(
        &[vec![E::Sym("l", "../.."), E::Hard("x", "l/etc/passwd")]],
        "x",
    );
}

#[test]
fn symlink_loop_is_refused_not_hung() {
    assert_refused(
        &[vec![
            E::Sym("a", "b"),
            E::Sym("b", "a"),
            E::File("a/x", b"x"),
        ]],
        "x",
    );
}

#[test]
fn in_scope_symlinks_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(
        tmp.path(),
        0,
        &[
            E::Dir("usr"),
            E::Dir("usr/lib"),
            E::Sym("lib", "usr/lib"),
            E::Sym("abs", "/usr"),
            E::File("lib/a", b"1"),
            E::File("abs/b", b"2"),
        ],
    );
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    validate(std::slice::from_ref(&l), Limits::default()).unwrap();
    unpack(&root, &[l], Limits::default()).unwrap();
    assert_eq!(fs::read(root.join("usr/lib/a")).unwrap(), b"1");
    assert_eq!(fs::read(root.join("usr/b")).unwrap(), b"2");
    assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new("/usr"));
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let l0 = layer(
        tmp.path(),
        0,
        &[
            E::Dir("etc"),
            E::File("etc/gone", b"x"),
            E::File("etc/kept", b"k"),
            E::Dir("opq"),
            E::File("opq/old", b"o"),
            E::Dir("opq/olddir"),
            E::File("opq/olddir/f", b"f"),
        ],
    );
    let l1 = layer(
        tmp.path(),
        1,
        &[
            E::File("etc/.wh.gone", b""),
            E::Dir("opq"),
            E::File("opq/new", b"n"),
            E::File("opq/.wh..wh..opq", b""),
            E::File(".wh.nothing", b""),
        ],
    );
    let l2 = gzip(&layer(tmp.path(), 2, &[E::File("etc/gone", b"back")]));
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let layers = vec![l0, l1];
    validate(&layers, Limits::default()).unwrap();
    unpack(&root, &layers, Limits::default()).unwrap();
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("etc/.wh.gone").exists());
    assert!(root.join("etc/kept").exists());
    assert!(!root.join("opq/old").exists() && !root.join("opq/olddir").exists());
    assert_eq!(
        fs::read(root.join("opq/new")).unwrap(),
        b"n",
        "the opaque layer's own files stay"
    );
    assert!(!root.join("opq/.wh..wh..opq").exists());
    // a file re-created by an upper (gzip) layer
    let root2 = tmp.path().join("root2");
    fs::create_dir(&root2).unwrap();
    let mut layers = layers;
    layers.push(l2);
    unpack(&root2, &layers, Limits::default()).unwrap();
    assert_eq!(fs::read(root2.join("etc/gone")).unwrap(), b"back");
}

#[test]
fn links_devices_modes_owners_times() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer(
        tmp.path(),
        0,
        &[
            E::Dir("bin"),
            E::File("bin/busybox", b"BB"),
            E::Hard("bin/sh", "bin/busybox"),
            E::Sym("bin/ls", "busybox"),
            E::Fifo("fifo"),
            E::Char("null", 1, 3),
        ],
    );
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    unpack(&root, &[l], Limits::default()).unwrap();
    let bb = fs::metadata(root.join("bin/busybox")).unwrap();
    let sh = fs::metadata(root.join("bin/sh")).unwrap();
    assert_eq!(bb.ino(), sh.ino(), "hard link");
    assert_eq!(bb.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(bb.mtime(), 1_000_000_000);
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mtime(),
        1_000_000_000,
        "dir mtime set after its children"
    );
    assert_eq!(
        fs::read_link(root.join("bin/ls")).unwrap(),
        Path::new("busybox")
    );
    let ff = fs::symlink_metadata(root.join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&ff.file_type()));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((bb.uid(), bb.gid()), (1234, 4321));
        let null = fs::symlink_metadata(root.join("null")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &null.file_type()
        ));
        assert_eq!(null.rdev(), libc::makedev(1, 3));
    } else {
        eprintln!("not root: ownership and device nodes not checked");
    }
}

#[test]
fn xattrs_from_pax_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.hyper", b"yes".as_slice())])
        .unwrap();
    let mut h = header("f", EntryType::Regular, 1, 0o644);
    h.set_cksum();
    b.append(&h, b"x".as_slice()).unwrap();
    let l = tmp.path().join("x.tar");
    fs::write(&l, b.into_inner().unwrap()).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    unpack(&root, &[l], Limits::default()).unwrap();
    let c = cpath(&root.join("f")).unwrap();
    let name = CString::new("user.hyper").unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        eprintln!(
            "file system without user xattrs: {}",
            io::Error::last_os_error()
        );
        return;
    }
    assert_eq!(&buf[..n as usize], b"yes");
}

#[test]
fn limits_bound_a_decompression_bomb() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![0u8; 1 << 20];
    let l = gzip(&layer(
        tmp.path(),
        0,
        &[E::File("a", &big), E::File("b", &big)],
    ));
    let limits = Limits {
        max_bytes: (1 << 20) + 10,
        max_entries: 100,
    };
    assert!(matches!(
        validate(std::slice::from_ref(&l), limits),
        Err((0, UnpackError::Unsafe(_)))
    ));
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    assert!(matches!(
        unpack(&root, &[l], limits),
        Err((0, UnpackError::Unsafe(_)))
    ));
}

#[test]
fn garbage_is_a_bad_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("junk");
    fs::write(&p, [0x1f, 0x8b, 1, 2, 3, 4, 5]).unwrap();
    assert!(matches!(
        validate(&[p], Limits::default()),
        Err((0, UnpackError::Bad(_)))
    ));
}
