#!/usr/bin/env python3
"""Volume benchmark, side by side in one run (issue 15, "Measured, not asserted").

One pod (`--privileged`, so it may drop its own page cache) with four places to work in:

* share:   a host directory as a virtio-fs volume (`-v HOSTDIR:/share`);
* block:   an ext4 image file as a block volume (`--mount type=block,src=IMG,dst=/blk`);
* overlay: the container's own root (/ovl; its writable layer is a tmpfs in the guest);
* host:    the same host directory as `share`, used directly on the host.

The same script runs in all four, with the same static busybox (the rootfs's, run on the
host for `host`), timing itself from /proc/uptime so `hyper exec`'s own cost is left out:

* seq write: `dd` of --mib MiB of zeros with `conv=fsync`;
* seq read:  `dd` of that file to /dev/null, after the guest dropped its caches and the host
             dropped the file's pages (posix_fadvise DONTNEED on the shared file and on the
             block image), so the read comes from the backing store, not a page cache;
* metadata:  untar of --files small files (from a tarball in /tmp), `find | wc -l`, `rm -rf`.

Places alternate within each of --runs runs, so all see the same machine load; medians,
min/max and the ratio of each place's median to the host's are printed. Then pod start:
`hyper run --rm … true` with no volume, with one host-directory volume and with one block
volume, alternating.

    bench/volumes.py [--runs N] [--mib 256] [--files 10000] [--backend qemu]
                     [--skip share,block] [--start-runs N] [--no-io]
                     [--bin-dir target/release] [--payload build]
"""
import argparse
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd, vm_argv  # noqa: E402
from net import summary  # noqa: E402

POD = "volbench"
PLACES = ("share", "block", "overlay", "host")
IN_POD = {"share": "/share", "block": "/blk", "overlay": "/ovl"}

# Prints "<phase> <centiseconds>" per phase; /proc/uptime has two decimals.
TIMER = """set -e
now() { read up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
D="$1"
"""
WRITE = TIMER + """t0=$(now); dd if=/dev/zero of="$D/big" bs=1M count="$MIB" conv=fsync 2>/dev/null; t1=$(now)
echo write $((t1 - t0))
"""
READ = TIMER + """[ -z "$DROP" ] || echo 3 > /proc/sys/vm/drop_caches
t0=$(now); dd if="$D/big" of=/dev/null bs=1M 2>/dev/null; t1=$(now)
rm -f "$D/big"
echo read $((t1 - t0))
"""
META = TIMER + """rm -rf "$D/meta"; mkdir "$D/meta"
t0=$(now); tar -xf "$TARBALL" -C "$D/meta"; t1=$(now)
n=$(find "$D/meta" | wc -l); t2=$(now)
rm -rf "$D/meta"; t3=$(now)
echo untar $((t1 - t0))
echo find $((t2 - t1))
echo rm $((t3 - t2))
echo entries $n
"""


def make_tarball(path, files):
    """`files` small files of 100 to 400 bytes in directories of 100 files."""
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            data = (f"file {i}\n" * (10 + i % 30)).encode()
            info = tarfile.TarInfo(f"d{i // 100:03}/f{i:05}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def make_ext4(path, size_mib):
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", path], check=True)


def drop_host_pages(paths):
    """Writes back and drops the host's cached pages of these files (not the whole cache:
    other work on the machine keeps its own)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def parse(out, where):
    res = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            res[parts[0]] = int(parts[1])
    if not res:
        sys.exit(f"{where}: no figures in its output: {out!r}")
    return res


class Places:
    def __init__(self, a, bin_dir, sock, tmp, share_dir, image):
        self.a, self.bin_dir, self.sock, self.tmp = a, bin_dir, sock, tmp
        self.share_dir, self.image = share_dir, image
        self.busybox = os.path.join(a.rootfs, "bin/busybox")

    def run(self, place, script, env=None):
        env = dict(env or {})
        if place == "host":
            env.setdefault("TARBALL", os.path.join(self.tmp, "files.tar"))
            r = subprocess.run([self.busybox, "sh", "-c", script, "sh", self.share_dir],
                               env=dict(os.environ, **env), capture_output=True, text=True)
        else:
            env.setdefault("TARBALL", "/tmp/files.tar")
            args = ["exec", "--privileged"]
            for k, v in env.items():
                args += ["-e", f"{k}={v}"]
            r = hyper(self.bin_dir, self.sock, *args, POD, "sh", "-c", script, "sh", IN_POD[place], text=True)
        if r.returncode != 0:
            sys.exit(f"{place}: script failed ({r.returncode}): {r.stderr}")
        return parse(r.stdout, place)

    def one(self, place):
        """Seconds per phase for one round in `place`."""
        res = self.run(place, WRITE, {"MIB": str(self.a.mib)})
        # The read must come from the backing store: the host's copy of the shared file
        # and of the block image go too (the guest drops its own below).
        drop_host_pages([os.path.join(self.share_dir, "big")] + ([self.image] if self.image else []))
        res.update(self.run(place, READ, {"DROP": "" if place == "host" else "1"}))
        meta = self.run(place, META)
        if meta.pop("entries") < self.a.files:
            sys.exit(f"{place}: find saw fewer entries than the {self.a.files} files untarred")
        res.update(meta)
        return {k: v / 100 for k, v in res.items()}


def start_pod(bin_dir, sock, a, share_dir, image, places):
    args = ["run", "-d", "--name", POD, "--privileged", "-m", a.memory, "--rootfs", a.rootfs]
    if "share" in places:
        args += ["-v", f"{share_dir}:/share"]
    if "block" in places:
        args += ["--mount", f"type=block,src={image},dst=/blk"]
    r = hyper(bin_dir, sock, *args, "--", "sh", "-c", "mkdir -p /ovl; while :; do sleep 3600; done")
    if r.returncode != 0:
        sys.exit("the benchmark pod did not start: " + r.stderr.decode())
    # The tarball reaches the guest through the share when there is one, else piped in.
    if "share" in places:
        r = hyper(bin_dir, sock, "exec", POD, "cp", "/share/files.tar", "/tmp/files.tar")
    else:
        with open(os.path.join(share_dir, "files.tar"), "rb") as f:
            r = hyper(bin_dir, sock, "exec", "-i", POD, "sh", "-c", "cat > /tmp/files.tar", stdin=f)
    if r.returncode != 0:
        sys.exit("copying the tarball into the pod failed: " + r.stderr.decode())


def pod_start(bin_dir, sock, a, tmp, places):
    """`hyper run --rm … true` with no volume, one host dir, one block volume, alternating."""
    start_dir = os.path.join(tmp, "start-share")
    os.makedirs(start_dir)
    start_img = os.path.join(tmp, "start.img")
    make_ext4(start_img, 64)
    kinds = {"no volume": []}
    if "share" in places:
        kinds["-v HOSTDIR:/data"] = ["-v", f"{start_dir}:/data"]
    if "block" in places:
        kinds["--mount type=block"] = ["--mount", f"type=block,src={start_img},dst=/data"]
    times = {k: [] for k in kinds}
    for _ in range(a.start_runs or a.runs):
        for name, extra in kinds.items():
            t0 = time.monotonic()
            r = hyper(bin_dir, sock, "run", "--rm", *extra, "--rootfs", a.rootfs, "--", "true")
            times[name].append(time.monotonic() - t0)
            if r.returncode != 0:
                sys.exit(f"hyper run ({name}) failed: " + r.stderr.decode())
    base = statistics.median(times["no volume"])
    for name, xs in times.items():
        print(f"pod start, {name:20}: {summary(xs, 'ms', 1000)}  ratio {statistics.median(xs) / base:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--memory", default="1g", help="the pod's memory: the overlay's 256 MiB live in it")
    ap.add_argument("--block-mib", type=int, default=1024)
    ap.add_argument("--skip", default="", help="places to leave out, comma-separated (share,block)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    ap.add_argument("--tmp", default="/tmp", help="where the host dir and block image live")
    ap.add_argument("--start-runs", type=int, help="runs of the pod start comparison (default: --runs)")
    ap.add_argument("--no-io", action="store_true", help="only the pod start comparison")
    a = ap.parse_args()
    skip = {s for s in a.skip.split(",") if s}
    if skip - {"share", "block"}:
        sys.exit(f"--skip: only share and block can be left out, not {', '.join(skip - {'share', 'block'})}")
    places = [p for p in PLACES if p not in skip]
    bin_dir = os.path.abspath(a.bin_dir)
    a.rootfs = os.path.abspath(a.rootfs)
    tmp = tempfile.mkdtemp(prefix="hv", dir=a.tmp)
    share_dir = os.path.join(tmp, "share")
    os.makedirs(share_dir)
    os.chmod(share_dir, 0o777)
    make_tarball(os.path.join(tmp, "files.tar"), a.files)
    shutil.copy(os.path.join(tmp, "files.tar"), os.path.join(share_dir, "files.tar"))
    image = None
    if "block" in places:
        image = os.path.join(tmp, "block.img")
        make_ext4(image, a.block_mib)
    hyperd, sock = start_hyperd(bin_dir, os.path.abspath(a.payload), os.path.join(tmp, "hyperd"), a.backend)
    try:
        r = hyper(bin_dir, sock, "run", "--rm", "--rootfs", a.rootfs, "--", "true")
        if r.returncode != 0:
            sys.exit("warm-up failed: " + r.stderr.decode())
        if a.no_io:
            pod_start(bin_dir, sock, a, tmp, places)
            return
        start_pod(bin_dir, sock, a, share_dir, image, places)
        argv, _ = vm_argv(bin_dir, sock, POD)
        accel = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "-accel"), "?")
        machine = next((argv[i + 1] for i, x in enumerate(argv[:-1]) if x == "-machine"), "?")
        p = Places(a, bin_dir, sock, tmp, share_dir, image)
        results = {place: {} for place in places}
        for _ in range(a.runs):
            for place in places:
                for phase, secs in p.one(place).items():
                    results[place].setdefault(phase, []).append(secs)
        hyper(bin_dir, sock, "rm", "-f", POD)

        print(f"backend {a.backend} (-accel {accel}, -machine {machine}), {a.runs} runs, places alternating; "
              f"{a.mib} MiB sequential, {a.files} files for metadata")
        host = results["host"]
        for place, res in results.items():
            mib_s = {k: [a.mib / max(s, 0.01) for s in res[k]] for k in ("write", "read")}
            meta = [sum(x) for x in zip(res["untar"], res["find"], res["rm"])]
            res["metadata"] = meta
            print(f"{place:8} seq write {summary(mib_s['write'], 'MiB/s')}")
            print(f"{'':8} seq read  {summary(mib_s['read'], 'MiB/s')}")
            for phase in ("untar", "find", "rm"):
                print(f"{'':8} {phase:9} {summary(res[phase], 'ms', 1000)}")
            print(f"{'':8} metadata  {summary(meta, 'ms', 1000)} (untar + find + rm)")
        print("ratios to the host (throughput: place / host; metadata time: host / place; 1.0 = as fast)")
        for place in (p for p in places if p != "host"):
            res = results[place]
            ratio = {k: statistics.median(host[k]) / statistics.median(res[k])
                     for k in ("write", "read", "metadata")}
            print(f"{place:8} write {ratio['write']:.3f}  read {ratio['read']:.3f}  "
                  f"metadata {ratio['metadata']:.3f}")
        pod_start(bin_dir, sock, a, tmp, places)
    finally:
        hyper(bin_dir, sock, "rm", "-f", POD)
        hyperd.send_signal(signal.SIGTERM)
        hyperd.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
