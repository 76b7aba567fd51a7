#!/usr/bin/env python3
"""What a network costs a pod's start, step by step (docs/PERFORMANCE.md, "Start-up cost of a network").

Three legs alternate inside one invocation, the order rotating every round, so all see the
same machine load:

* raw:     qemu-system-x86_64 with the backend's own argv for a `--network none` pod (read
           from /proc/<pid>/cmdline), from process start to hyperstart's READY frame;
* none:    `hyper run --rm --network none --rootfs ROOTFS -- true`, the whole client process;
* default: the same on the default CNI network (the repository's config/cni/10-hyper.conflist:
           bridge + host-local, portmap, firewall; tc redirect to the VM's tap).

hyperd runs with `HYPER_LOG=info,hyper::timing=debug`: every step of a pod's start and end
logs its milliseconds (netns, each CNI plugin's ADD and DEL, the taps, the QMP handshake,
the guest's READY, StartPod with the first container, the kill, the network's teardown, ...).
The script reads the lines each run added to hyperd's log and prints each step's median and
spread per leg, next to the whole-process medians and their ratios.

    bench/netstart.py [--runs N] [--bin-dir target/release] [--payload build]
                      [--rootfs build/rootfs/busybox] [--backend qemu] [--conflist FILE]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import (ROOT, add_build_args, capture_pod, git_rev, hyper, load_average,  # noqa: E402
                  raw_boot, start_hyperd, without_nics)

# `... DEBUG hyper::timing: step done pod="ID" step="cni ADD bridge" ms=72.3` (the core's
# and the network's; the backend's carry `vm=` instead of `pod=`).
TIMING = re.compile(r'hyper::timing: step done (?:pod|vm)=(?:"[^"]*"|\S+) step=(?:"([^"]*)"|(\S+)) ms=([0-9.]+)')


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def steps_in(text):
    """{step: total ms} of the timing lines in `text` (a step seen twice is summed)."""
    out = {}
    for m in TIMING.finditer(ANSI.sub("", text)):
        step = m.group(1) or m.group(2)
        out[step] = out.get(step, 0.0) + float(m.group(3))
    return out


def spread(xs):
    return f"{statistics.median(xs):7.0f} ({min(xs):.0f}–{max(xs):.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    add_build_args(ap, against=False)
    ap.add_argument("--conflist", default=os.path.join(ROOT, "config/cni/10-hyper.conflist"),
                    help="the default network's conflist (copied into a private cni_conf_dir)")
    a = ap.parse_args()
    bin_dir, payload = os.path.abspath(a.bin_dir), os.path.abspath(a.payload)
    tmp = tempfile.mkdtemp(prefix="hns", dir="/tmp")
    conf_dir = os.path.join(tmp, "cni")
    os.makedirs(conf_dir)
    shutil.copy(a.conflist, conf_dir)
    work = os.path.join(tmp, "hyperd")
    os.makedirs(work)
    os.environ["HYPER_LOG"] = "info,hyper::timing=debug"
    hyperd, sock = start_hyperd(bin_dir, payload, work, a.backend,
                                f'[network]\ncni_conf_dir = "{conf_dir}"\n')
    log_path = os.path.join(work, "hyperd.log")
    legs = {"raw": [], "none": [], "default": []}
    steps = {"none": [], "default": []}
    try:
        # Warm-up of both pod legs (the cached rootfs image, the payload, the plugins' binaries).
        for net in (["--network", "none"], []):
            r = hyper(bin_dir, sock, "run", "--rm", *net, "--rootfs", a.rootfs, "--", "true")
            if r.returncode != 0:
                sys.exit("warm-up failed: " + r.stderr.decode())
        argv, _ = capture_pod(bin_dir, sock, a.rootfs, "none")
        argv, _ = without_nics(argv)
        print(f"load average before: {load_average()}  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
        order = ["raw", "none", "default"]
        for i in range(a.runs):
            for leg in order[i % 3:] + order[:i % 3]:
                if leg == "raw":
                    legs["raw"].append(raw_boot(argv, tmp) * 1000)
                    continue
                net = ["--network", "none"] if leg == "none" else []
                # hyperd logs a pod's last steps after the client has its exit code: wait
                # for them before the next run starts.
                time.sleep(0.3)
                offset = os.path.getsize(log_path)
                t0 = time.monotonic()
                r = hyper(bin_dir, sock, "run", "--rm", *net, "--rootfs", a.rootfs, "--", "true")
                legs[leg].append((time.monotonic() - t0) * 1000)
                if r.returncode != 0:
                    sys.exit(f"{leg}: hyper run failed: " + r.stderr.decode())
                time.sleep(0.5)
                with open(log_path) as f:
                    f.seek(offset)
                    steps[leg].append(steps_in(f.read()))
        print(f"load average after: {load_average()}")
        print(f"backend {a.backend}, {a.runs} runs of each leg, alternating; {bin_dir} ({git_rev(bin_dir)})")
        raw = statistics.median(legs["raw"])
        print("whole process, median (min–max) in ms:")
        print(f"  raw qemu to READY (no NIC)           : {spread(legs['raw'])}")
        for leg in ("none", "default"):
            label = f"hyper run --rm --network {leg} true" if leg == "none" else "hyper run --rm true (default net)"
            print(f"  {label:37}: {spread(legs[leg])}  {statistics.median(legs[leg]) / raw:.2f}× raw")
        print(f"  default / none                       : "
              f"{statistics.median(legs['default']) / statistics.median(legs['none']):.2f}×, "
              f"+{statistics.median(legs['default']) - statistics.median(legs['none']):.0f} ms")
        names = []
        for leg in ("none", "default"):
            for run in steps[leg]:
                names += [s for s in run if s not in names]
        print("hyperd's steps, median (min–max) in ms (a step absent from a run counts 0):")
        print(f"  {'step':28} {'none':>20} {'default':>20}")
        for name in names:
            cells = []
            for leg in ("none", "default"):
                xs = [run.get(name, 0.0) for run in steps[leg]]
                cells.append(spread(xs) if any(xs) else "—")
            print(f"  {name:28} {cells[0]:>20} {cells[1]:>20}")
        for leg in ("none", "default"):
            for what, prefix in (("CNI ADD, all plugins", "cni ADD"), ("CNI DEL, all plugins", "cni DEL")):
                xs = [sum(v for k, v in run.items() if k.startswith(prefix)) for run in steps[leg]]
                if any(xs):
                    print(f"  {leg}: {what:24} {spread(xs)}")
    finally:
        hyperd.send_signal(signal.SIGTERM)
        try:
            hyperd.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hyperd.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
