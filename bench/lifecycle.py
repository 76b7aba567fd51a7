#!/usr/bin/env python3
"""Pod lifecycle benchmarks (issue 6), in one run:

1. exec:   `hyper exec POD true` round trips into one running pod, next to
           `hyper ps` (a plain API round trip, the floor of any hyper command).
2. logs:   a container writes N MiB of lines; then `hyper logs POD` reads them
           back: MiB/s of reading (and of writing, from run start to exit).
3. memory: hyperd's own RSS and PSS with 0, 10 and 50 idle pods (each pod is a
           VM process of its own: those are not hyperd's), and KiB per pod.

    bench/lifecycle.py [--runs N] [--pods 10,50] [--log-mib 32] [--bin-dir target/release] [--payload build]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd, summary  # noqa: E402


def mem_kib(pid):
    rss = pss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def must(r):
    if r.returncode != 0:
        sys.exit(r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--pods", default="10,50")
    ap.add_argument("--log-mib", type=int, default=32)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hylc", dir="/tmp")
    proc, sock = start_hyperd(a.bin_dir, a.payload, work, a.backend)
    b = a.bin_dir
    try:
        # 1. exec round trip
        pod = must(hyper(b, sock, "run", "-d", "--rootfs", a.rootfs, "--", "sleep", "3600")).strip()
        ex, ps = [], []
        for _ in range(a.runs):
            t = time.monotonic()
            must(hyper(b, sock, "exec", pod, "true"))
            ex.append(time.monotonic() - t)
            t = time.monotonic()
            must(hyper(b, sock, "ps"))
            ps.append(time.monotonic() - t)
        print(f"exec round trip (`hyper exec POD true`), {a.runs} runs:")
        print(f"  exec  {summary(ex)}")
        print(f"  ps    {summary(ps)}   (API round trip floor)")
        must(hyper(b, sock, "rm", "-f", pod))

        # 2. logs
        lines = a.log_mib * 1024 * 1024 // 100
        script = f"yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456 | head -n {lines}"
        t = time.monotonic()
        pod = must(hyper(b, sock, "run", "-d", "--rootfs", a.rootfs, "--", "sh", "-c", script)).strip()
        must(hyper(b, sock, "wait", pod))
        write_s = time.monotonic() - t
        reads = []
        for _ in range(3):
            t = time.monotonic()
            out = subprocess.run([os.path.join(b, "hyper"), "logs", pod], env=dict(os.environ, HYPER_HOST=sock),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            reads.append(time.monotonic() - t)
            got = len(out.stdout)
        mib = got / 1048576
        print(f"logs: {mib:.1f} MiB in {lines} lines; written (run start to exit, VM boot included) "
              f"{mib / write_s:.1f} MiB/s; `hyper logs` read {mib / statistics.median(reads):.1f} MiB/s "
              f"(median of 3, {statistics.median(reads) * 1000:.0f} ms)")
        must(hyper(b, sock, "rm", pod))

        # 3. hyperd's memory with idle pods
        time.sleep(1)
        base = mem_kib(proc.pid)
        print(f"hyperd memory, 0 pods: RSS {base[0]} KiB, PSS {base[1]} KiB")
        have = 0
        for n in [int(x) for x in a.pods.split(",")]:
            for _ in range(n - have):
                must(hyper(b, sock, "run", "-d", "--memory", "64", "--rootfs", a.rootfs, "--", "sleep", "3600"))
            have = n
            time.sleep(2)
            rss, pss = mem_kib(proc.pid)
            print(f"hyperd memory, {n} idle pods: RSS {rss} KiB, PSS {pss} KiB; "
                  f"growth {(rss - base[0]) / n:.0f} KiB/pod (RSS), {(pss - base[1]) / n:.0f} KiB/pod (PSS)")
        for p in json.loads(must(hyper(b, sock, "ps", "-a", "--json"))):
            hyper(b, sock, "rm", "-f", p["id"])
    finally:
        proc.terminate()
        proc.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
