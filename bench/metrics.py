#!/usr/bin/env python3
"""The cost of a `/metrics` scrape (issue 17), with 0 and N running pods.

A scrape reads each running pod's VMM figures from the backend (`Vm::stats`,
one plugin call per pod, side by side) and renders every family. This times
`GET /metrics` over hyperd's socket R times with no pod, then with N idle pods
running, next to `GET /v1/version` (the floor of any API round trip), and
prints median / min / max / p90 in ms and the size of the answer. It also
times `hyper events --since … --until …` over the events the N pods left.

    bench/metrics.py [--pods 10] [--runs 50] [--bin-dir target/release] [--payload build]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd  # noqa: E402
from lifecycle import must  # noqa: E402


def get(sock, path):
    """GET over the unix socket (HTTP/1.0: the body ends with the connection)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(sock)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: hyperd\r\n\r\n".encode())
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        sys.exit(f"GET {path}: {head!r}")
    return body


def timed(sock, path, runs):
    times, size = [], 0
    get(sock, path)  # warm
    for _ in range(runs):
        t0 = time.monotonic()
        size = len(get(sock, path))
        times.append(time.monotonic() - t0)
    return times, size


def line(label, xs, size=None):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    extra = f"  {size} bytes" if size is not None else ""
    return (f"{label:<34} median {statistics.median(xs) * 1000:7.2f} ms  min {xs[0] * 1000:7.2f}"
            f"  p90 {p90 * 1000:7.2f}  max {xs[-1] * 1000:7.2f}{extra}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hymx", dir="/tmp")
    proc, sock = start_hyperd(a.bin_dir, a.payload, work, a.backend)
    b = a.bin_dir
    try:
        print(f"backend {a.backend}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {a.runs} scrapes each")
        print(line("GET /v1/version (floor)", *timed(sock, "/v1/version", a.runs)[:1]))
        print(line("GET /metrics, 0 pods", *timed(sock, "/metrics", a.runs)))
        since = f"{time.time():.9f}"
        pods = []
        t0 = time.monotonic()
        for _ in range(a.pods):
            pods.append(must(hyper(b, sock, "run", "-d", "--memory", "128m", "--rootfs", a.rootfs, "--",
                                   "sleep", "3600")).strip())
        print(f"started {a.pods} pods in {time.monotonic() - t0:.0f} s")
        running = [p for p in json.loads(must(hyper(b, sock, "ps", "--json"))) if p["running"]]
        if len(running) != a.pods:
            sys.exit(f"{len(running)} of {a.pods} pods run")
        times, size = timed(sock, "/metrics", a.runs)
        print(line(f"GET /metrics, {a.pods} pods", times, size))
        body = get(sock, "/metrics").decode()
        series = sum(1 for l in body.splitlines() if l.startswith("hyper_pod_vmm_memory_rss_bytes{"))
        failures = next((l.split()[1] for l in body.splitlines() if l.startswith("hyper_scrape_stats_failures ")), "?")
        print(f"  per-pod RSS series: {series}, stats failures in the last scrape: {failures}")
        # The events the pods left, read back.
        until = f"{time.time():.9f}"
        ev = []
        for _ in range(10):
            t0 = time.monotonic()
            out = must(hyper(b, sock, "events", "--json", "--since", since, "--until", until))
            ev.append(time.monotonic() - t0)
        print(line(f"hyper events ({len(out.splitlines())} kept)", ev))
        for p in pods:
            hyper(b, sock, "rm", "-f", p)
    finally:
        proc.terminate()
        proc.wait(timeout=90)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
