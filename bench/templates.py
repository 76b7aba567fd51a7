#!/usr/bin/env python3
"""Template start benchmark (issue 16), side by side in one run.

* raw:      the QEMU argv of a cold pod, from process start to hyperstart's READY (bench/boot.py's raw leg)
* cold:     `hyper run --rm --start cold --rootfs ROOTFS -- true`, the whole client process
* template: the same with `--start template` (the template is built once, before the runs)

The three alternate, N times each. Then the summed PSS of 10 idle clones next to 10 idle cold pods.

    bench/templates.py [--runs N] [--idle 10] [--bin-dir target/release] [--payload build] [--rootfs build/rootfs/busybox]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, capture_pod, hyper, pss_kib, raw_boot, start_hyperd, summary  # noqa: E402


def run_true(a, sock, mode):
    t0 = time.monotonic()
    r = hyper(a.bin_dir, sock, "run", "--rm", "--start", mode, "--rootfs", a.rootfs, "--", "true")
    took = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"hyper run --start {mode} failed: " + r.stderr.decode())
    return took


def idle_pss(a, sock, mode, n):
    """Summed PSS (KiB) of n idle pods started with `mode`, measured once all run."""
    ids = []
    try:
        for _ in range(n):
            r = hyper(a.bin_dir, sock, "run", "-d", "--start", mode, "--rootfs", a.rootfs, "--", "sleep", "600")
            if r.returncode != 0:
                sys.exit(f"idle pod ({mode}) failed: " + r.stderr.decode())
            ids.append(r.stdout.decode().strip())
        time.sleep(3)
        pods = json.loads(hyper(a.bin_dir, sock, "ps", "--json").stdout)
        pids = [p["vm_pid"] for p in pods if p["id"] in ids and p.get("vm_pid")]
        return sum(pss_kib(pid) or 0 for pid in pids), len(pids)
    finally:
        if ids:
            hyper(a.bin_dir, sock, "rm", "-f", *ids)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ht", dir="/tmp")
    # No network: the raw leg cannot replay a tap passed as an fd.
    no_cni = os.path.join(tmp, "no-cni")
    os.makedirs(no_cni)
    hyperd, sock = start_hyperd(os.path.abspath(a.bin_dir), os.path.abspath(a.payload), tmp, a.backend,
                                f'[network]\ncni_conf_dir = "{no_cni}"\n')
    try:
        # Warm-up: the rootfs image, the payload's pages, and the template.
        run_true(a, sock, "cold")
        t_build = run_true(a, sock, "template")
        argv, _ = capture_pod(a.bin_dir, sock, a.rootfs)
        raw, cold, tmpl = [], [], []
        for _ in range(a.runs):
            raw.append(raw_boot(argv, tmp))
            cold.append(run_true(a, sock, "cold"))
            tmpl.append(run_true(a, sock, "template"))
        print(f"backend {a.backend}, {a.runs} runs each, alternating")
        print(f"first template run (build + restore): {t_build * 1000:.0f} ms")
        print(f"raw qemu to READY             : {summary(raw)}")
        print(f"hyper run --start cold true   : {summary(cold)}")
        print(f"hyper run --start template    : {summary(tmpl)}")
        print(f"template / raw (medians)      : {statistics.median(tmpl) / statistics.median(raw):.3f}")
        print(f"template / cold (medians)     : {statistics.median(tmpl) / statistics.median(cold):.3f}")
        if a.idle > 0:
            c, nc = idle_pss(a, sock, "cold", a.idle)
            t, nt = idle_pss(a, sock, "template", a.idle)
            print(f"summed PSS of {nc} idle cold pods : {c / 1024:.1f} MiB")
            print(f"summed PSS of {nt} idle clones    : {t / 1024:.1f} MiB")
            if c:
                print(f"clones / cold                 : {t / c:.3f}")
    finally:
        hyperd.send_signal(signal.SIGTERM)
        hyperd.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
