//! `hyper load` + rootfs build of one image layout, outside hyperd, for
//! bench/image_bombs.py: prints what happened and how long each step took;
//! run it under `/usr/bin/time -f %M` for the peak RSS.
//!
//!     load_bench STORE_DIR LAYOUT_DIR

use std::path::Path;
use std::time::Instant;

/// This process's peak RSS in KiB (mkfs.erofs, a child, not included).
fn peak_kib() -> i64 {
    // SAFETY: rusage is plain data, filled in by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an owned rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(store), Some(layout)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: load_bench STORE_DIR LAYOUT_DIR");
        std::process::exit(2);
    };
    let s = match hyper_images::ImageStore::open(Path::new(store)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("open: {e}");
            std::process::exit(1);
        }
    };
    let t = Instant::now();
    let loaded = s.load(Path::new(layout));
    let load_s = t.elapsed().as_secs_f64();
    let img = match loaded {
        Ok(mut v) => v.remove(0),
        Err(e) => {
            let m = e.to_string();
            println!(
                "load refused after {load_s:.2} s (peak RSS {} KiB): {}",
                peak_kib(),
                &m[..m.len().min(160)]
            );
            return;
        }
    };
    let load_kib = peak_kib();
    let t = Instant::now();
    let mkfs = |src: &Path, dest: &Path| -> Result<(), String> {
        let out = std::process::Command::new("mkfs.erofs")
            .arg("-T0")
            .arg(dest)
            .arg(src)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    match s.rootfs(&img, &mkfs) {
        Ok(p) => println!(
            "loaded in {load_s:.2} s (peak RSS {load_kib} KiB); rootfs (unpack + mkfs.erofs) in {:.2} s (peak RSS {} KiB), {} bytes",
            t.elapsed().as_secs_f64(),
            peak_kib(),
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        ),
        Err(e) => {
            let m = e.to_string();
            println!(
                "loaded in {load_s:.2} s (peak RSS {load_kib} KiB); rootfs refused after {:.2} s (peak RSS {} KiB): {}",
                t.elapsed().as_secs_f64(),
                peak_kib(),
                &m[..m.len().min(160)]
            )
        }
    }
}
