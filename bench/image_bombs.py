#!/usr/bin/env python3
"""Image bombs (issue 13, M1): time and peak RSS of loading each one and
building its rootfs, outside hyperd (the same code hyperd runs for
`hyper load` and the first `hyper run`).

  entries  200,000 empty files under a 2,000-byte directory path (10 levels)
  opaque   20,000 files in one directory, each followed by an opaque marker
  zip      one gzip layer of 5 GiB of zeros (about 5 MB): past the 4 GiB default

    cargo build --release -p hyper-images --example load_bench
    bench/image_bombs.py [--bin target/release/examples/load_bench] [--work /var/tmp]

Each bomb is written once as an OCI layout (gzip layers, correct diff_ids)
and loaded into a fresh store; the line printed per bomb is the tool's own
report followed by `/usr/bin/time`'s wall time and peak RSS.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_of(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    return buf.getvalue()


def empty(t, name):
    ti = tarfile.TarInfo(name)
    ti.size = 0
    ti.mode = 0o644
    t.addfile(ti)


def layout(d, raw_layers):
    """Writes an OCI layout at d; layers given as (raw_tar_bytes or a path to
    a raw tar on disk)."""
    blobs = os.path.join(d, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        dg = sha(data)
        with open(os.path.join(blobs, dg[7:]), "wb") as f:
            f.write(data)
        return dg, len(data)

    descs, diff_ids = [], []
    for raw in raw_layers:
        diff_ids.append(sha(raw))
        dg, n = put(gzip.compress(raw, compresslevel=6, mtime=0))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg, "size": n})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cd, cs = put(cfg)
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                    "layers": descs}).encode()
    md, ms = put(m)
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]}, f)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


def zip_layout(d, size):
    """One gzip layer of `size` zero bytes, streamed (never in memory)."""
    blobs = os.path.join(d, "blobs", "sha256")
    os.makedirs(blobs)
    raw_hash = hashlib.sha256()
    tmp = os.path.join(blobs, "tmp")

    class Tee:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raw_hash.update(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    with open(tmp, "wb") as out:
        gz = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0)
        tee = Tee(gz)
        ti = tarfile.TarInfo("zeros")
        ti.size = size
        hdr = ti.tobuf(format=tarfile.GNU_FORMAT)
        tee.write(hdr)
        chunk = bytes(1 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            tee.write(chunk[:n])
            left -= n
        tee.write(bytes((512 - size % 512) % 512))
        tee.write(bytes(1024))
        gz.close()
    data = open(tmp, "rb").read()
    os.remove(tmp)
    dg = sha(data)
    with open(os.path.join(blobs, dg[7:]), "wb") as f:
        f.write(data)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + raw_hash.hexdigest()]}}).encode()
    cd = sha(cfg)
    open(os.path.join(blobs, cd[7:]), "wb").write(cfg)
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg,
                                "size": len(data)}]}).encode()
    md = sha(m)
    open(os.path.join(blobs, md[7:]), "wb").write(m)
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(m)}]}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/examples/load_bench")
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--only", default="entries,opaque,zip")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hyper-bombs.", dir=a.work)
    try:
        only = a.only.split(",")
        bombs = {}
        if "entries" in only:
            d = "/".join(["q" * 199] * 10)
            bombs["entries"] = [tar_of(lambda t: [empty(t, f"{d}/{i:07}") for i in range(200_000)])]
        if "opaque" in only:
            def opq(t):
                empty(t, "d/new")
                for i in range(20_000):
                    empty(t, f"d/f{i}")
                    empty(t, "d/.wh..wh..opq")
            bombs["opaque"] = [tar_of(lambda t: empty(t, "d/old")), tar_of(opq)]
        for name, layers in bombs.items():
            layout(os.path.join(work, name), layers)
        if "zip" in only:
            zip_layout(os.path.join(work, "zip"), 5 << 30)
        for name in only:
            lay = os.path.join(work, name)
            gz = sum(os.path.getsize(os.path.join(lay, "blobs/sha256", f))
                     for f in os.listdir(os.path.join(lay, "blobs/sha256")))
            r = subprocess.run(["/usr/bin/time", "-f", "%e s wall, peak RSS of it and mkfs.erofs %M KiB", a.bin,
                                os.path.join(work, "store-" + name), lay],
                               capture_output=True, text=True)
            print(f"{name} ({gz / 1e6:.1f} MB of blobs): {r.stdout.strip()} [{r.stderr.strip().splitlines()[-1]}]",
                  flush=True)
            shutil.rmtree(os.path.join(work, "store-" + name), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
