#!/usr/bin/env python3
"""Image benchmarks, side by side in one run (issue 4).

1. pull:   `hyper pull` of a many-layer image from the local registry (store
           emptied with `hyper rmi` before each run) next to `skopeo copy` of
           the same image to a fresh OCI layout, alternating.
2. rootfs: the first `hyper run` of a pulled image (unpack + mkfs.erofs) minus a
           cached run of it, per MiB of uncompressed layers, and the image size.
3. run:    `hyper run --rm IMAGE true` of a cached image next to
           `hyper run --rm --rootfs DIR -- true` of the same tree, alternating.

Needs the seeded registry (`make registry`; reads /tmp/hyper-test-registry/env).

    bench/images.py [--runs N] [--bin-dir target/release] [--payload build]
"""
import argparse
import gzip
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd, summary  # noqa: E402


def registry_env():
    env = {}
    with open("/tmp/hyper-test-registry/env") as f:
        for line in f:
            k, _, v = line.strip().removeprefix("export ").partition("=")
            env[k] = v
    return env


def timed(argv, **kw):
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {r.stderr.decode(errors='replace')}")
    return time.monotonic() - t


def blob_tree(reg, repo, dest):
    """Unpacks the layers of REG/repo:latest into dest (a plain --rootfs tree)."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{reg}/{repo}:latest", f"dir:{d}"], check=True)
        manifest = json.load(open(os.path.join(d, "manifest.json")))
        for layer in manifest["layers"]:
            blob = open(os.path.join(d, layer["digest"].split(":")[1]), "rb").read()
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
                t.extractall(dest, filter="fully_trusted")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    reg = registry_env()["HYPER_TEST_REGISTRY"]
    many = f"{reg}/hyper/many"
    busybox = f"{reg}/hyper/busybox"
    work = tempfile.mkdtemp(prefix="hyimg", dir="/tmp")
    proc, sock = start_hyperd(a.bin_dir, a.payload, work, a.backend,
                              f'[images]\ninsecure_registries = ["{reg}"]\n')
    try:
        # 1. pull
        h, s = [], []
        for _ in range(a.runs):
            hyper(a.bin_dir, sock, "rmi", many)
            t = time.monotonic()
            r = hyper(a.bin_dir, sock, "pull", many)
            if r.returncode != 0:
                sys.exit("pull failed: " + r.stderr.decode(errors="replace"))
            h.append(time.monotonic() - t)
            with tempfile.TemporaryDirectory() as d:
                s.append(timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                f"docker://{many}:latest", f"oci:{d}/layout"]))
        image = json.loads(hyper(a.bin_dir, sock, "images", "--json").stdout)
        layer_bytes = sum(i["size"] for i in image if any("hyper/many" in t for t in i["repo_tags"]))
        print(f"pull {many} ({layer_bytes / 1048576:.1f} MiB compressed, 20 layers), {a.runs} runs each:")
        print(f"  hyper pull   {summary(h)}")
        print(f"  skopeo copy  {summary(s)}")
        print(f"  ratio (median hyper / skopeo): {statistics.median(h) / statistics.median(s):.2f}")

        # 2. rootfs build of the pulled many-layer image
        first = timed([os.path.join(a.bin_dir, "hyper"), "run", "--rm", many, "true"],
                      env=dict(os.environ, HYPER_HOST=sock))
        cached = [timed([os.path.join(a.bin_dir, "hyper"), "run", "--rm", many, "true"],
                        env=dict(os.environ, HYPER_HOST=sock)) for _ in range(3)]
        imgs = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(work, "state/images/rootfs"))
                for f in fs if f.endswith(".img")]
        tree = os.path.join(work, "tree-many")
        os.makedirs(tree)
        blob_tree(reg, "hyper/many", tree)
        tree_bytes = sum(os.lstat(os.path.join(dp, f)).st_size for dp, _, fs in os.walk(tree) for f in fs)
        build = first - statistics.median(cached)
        print(f"rootfs build of {many}: {build * 1000:.0f} ms for {tree_bytes / 1048576:.1f} MiB of files "
              f"= {build * 1000 / (tree_bytes / 1048576):.1f} ms/MiB; image "
              f"{sum(os.path.getsize(i) for i in imgs) / 1048576:.1f} MiB")

        # 3. cached image vs --rootfs of the same tree
        hyper(a.bin_dir, sock, "pull", busybox)
        tree = os.path.join(work, "tree-busybox")
        os.makedirs(tree)
        blob_tree(reg, "hyper/busybox", tree)
        env = dict(os.environ, HYPER_HOST=sock)
        hy = os.path.join(a.bin_dir, "hyper")
        timed([hy, "run", "--rm", busybox, "true"], env=env)  # builds both caches
        timed([hy, "run", "--rm", "--rootfs", tree, "--", "true"], env=env)
        i, r = [], []
        for _ in range(a.runs):
            i.append(timed([hy, "run", "--rm", busybox, "true"], env=env))
            r.append(timed([hy, "run", "--rm", "--rootfs", tree, "--", "true"], env=env))
        print(f"run of a cached image vs --rootfs of the same tree, {a.runs} runs each:")
        print(f"  image        {summary(i)}")
        print(f"  --rootfs     {summary(r)}")
        print(f"  ratio (median image / rootfs): {statistics.median(i) / statistics.median(r):.2f}")
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
