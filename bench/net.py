#!/usr/bin/env python3
"""Network benchmark, side by side in one run (docs/PERFORMANCE.md, "Networking").

The same guest kernel, the same busybox, the same virtio-net model, three ways:

* raw:     qemu-system-x86_64 with the backend's own argv (captured from a live pod),
           but a busybox /init instead of hyperstart and a plain host tap on
           10.199.0.0/24 instead of the pod's netns: no CNI, no bridge, no redirect.
* bridge:  a hyper pod on the default CNI network, reached at its address
           (host → hyper0 bridge → veth → tc redirect → tap → guest).
* port:    the same pod through its published ports on 127.0.0.1 (adds portmap's DNAT).

For each: TCP bulk host→guest and guest→host (`--mib` MiB through busybox `nc`), and the
HTTP round trip (busybox `httpd`, a new connection per GET). Runs alternate, so all see the
same load. Then `hyper run --rm … true` with the default network next to `--network none`.

    bench/net.py [--runs N] [--mib 256] [--backend qemu] [--bin-dir target/release]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd, vm_argv  # noqa: E402

RAW_TAP = "hbtap0"
RAW_HOST = "10.199.0.1"
RAW_GUEST = "10.199.0.2"
SINK, SOURCE, HTTP = 5001, 5002, 80

# The guest's side of every measurement: a sink, a source of `count` MiB and a web server.
SERVE = """mkdir -p /www && echo hello > /www/index.html && httpd -p {http} -h /www
(while :; do nc -l -p {sink} > /dev/null; done) &
(while :; do dd if=/dev/zero bs=1M count={count} 2>/dev/null | nc -l -p {source}; done) &
echo serving"""

RAW_INIT = """#!/bin/sh
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
ip link set lo up
ip link set eth0 up
ip addr add {guest}/24 dev eth0
{serve}
while :; do sleep 3600; done
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def raw_initramfs(rootfs, script, tmp):
    """The busybox rootfs plus a plain /init, as a newc cpio."""
    tree = os.path.join(tmp, "raw-root")
    shutil.copytree(rootfs, tree, symlinks=True)
    init = os.path.join(tree, "init")
    with open(init, "w") as f:
        f.write(script)
    os.chmod(init, 0o755)
    out = os.path.join(tmp, "raw.cpio")
    with open(out, "wb") as f:
        files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files, stdout=f, check=True)
    return out


def raw_argv(argv, initrd, run):
    """The pod's argv with our initrd and cmdline, a plain tap, no disks, private files."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a == "-initrd":
            out += [a, initrd]
            skip = True
        elif a == "-append":
            out += [a, "console=ttyS0 rdinit=/init quiet"]
            skip = True
        elif a == "-netdev" and "tap" in nxt:
            ident = re.search(r"id=([^,]+)", nxt).group(1)
            out += [a, f"tap,id={ident},ifname={RAW_TAP},script=no,downscript=no"]
            skip = True
        elif a in ("-drive", "-blockdev") or (a == "-device" and "blk" in nxt):
            skip = True
        else:
            out.append(re.sub(r"(/[^,\s]*/)(agent\.sock|qmp\.sock|console\.log)", lambda m: f"{run}/{m.group(2)}", a))
    return out


def wait_tcp(addr, port, timeout=180, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    for path in logs:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                print(f"--- {path}:\n" + f.read()[-3000:], file=sys.stderr)
    sys.exit(f"{addr}:{port} did not answer within {timeout} s")


def connect(addr, port):
    """A connection to a guest listener; busybox `nc -l` serves one client and is
    started again by its loop, so a refusal right after the previous run is retried."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection((addr, port), timeout=120)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def send_bulk(addr, port, nbytes):
    """Seconds to push `nbytes` into the guest's sink; done when the guest closes."""
    chunk = bytes(1 << 20)
    t0 = time.monotonic()
    with connect(addr, port) as s:
        left = nbytes
        while left > 0:
            s.sendall(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    return time.monotonic() - t0


def recv_bulk(addr, port, nbytes):
    """Seconds to read `nbytes` from the guest's source."""
    t0 = time.monotonic()
    got = 0
    with connect(addr, port) as s:
        while got < nbytes:
            data = s.recv(1 << 20)
            if not data:
                break
            got += len(data)
    if got < nbytes:
        sys.exit(f"{addr}:{port} sent {got} of {nbytes} bytes")
    return time.monotonic() - t0


def http_rtt(addr, port, n=50):
    """Median seconds of one GET on a new connection."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        with connect(addr, port) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            while s.recv(4096):
                pass
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def summary(xs, unit, scale=1.0):
    return f"median {statistics.median(xs) * scale:8.1f} {unit}  min {min(xs) * scale:8.1f}  max {max(xs) * scale:8.1f}"


def start_raw(argv, initrd, tmp):
    run = tempfile.mkdtemp(dir=tmp, prefix="raw")
    sh("ip", "tuntap", "add", RAW_TAP, "mode", "tap")
    sh("ip", "addr", "add", f"{RAW_HOST}/24", "dev", RAW_TAP)
    sh("ip", "link", "set", RAW_TAP, "up")
    proc = subprocess.Popen(raw_argv(argv, initrd, run), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, "qemu.err"), "w"))
    return proc, run


def stop_raw(proc):
    if proc is not None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sh("ip", "link", "del", RAW_TAP, check=False)


def pod_address(bin_dir, sock, name):
    """The pod's first IPv4 address, from `hyper inspect`."""
    info = json.loads(hyper(bin_dir, sock, "inspect", name).stdout)
    if isinstance(info, list):
        info = info[0]
    network = info.get("network") or {}
    for iface in (network.get("guest") or network).get("interfaces", []):
        for cidr in iface.get("addresses", []):
            if ":" not in cidr:
                return cidr.split("/")[0]
    sys.exit("no address in `hyper inspect` of the pod: " + json.dumps(info)[:400])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    bin_dir = os.path.abspath(a.bin_dir)
    nbytes = a.mib << 20
    serve = SERVE.format(http=HTTP, sink=SINK, source=SOURCE, count=a.mib)
    tmp = tempfile.mkdtemp(prefix="hn", dir="/tmp")
    # The default network as `make install` puts it in place, in a private conf dir.
    conf_dir = os.path.join(tmp, "net.d")
    os.makedirs(conf_dir)
    shutil.copy(os.path.join(ROOT, "config/cni/10-hyper.conflist"), conf_dir)
    hyperd, sock = start_hyperd(bin_dir, os.path.abspath(a.payload), tmp, a.backend,
                                f'[network]\ncni_conf_dir = "{conf_dir}"\n')
    raw = None
    try:
        r = hyper(bin_dir, sock, "run", "--rm", "--rootfs", a.rootfs, "--", "true")
        if r.returncode != 0:
            sys.exit("warm-up failed: " + r.stderr.decode())
        ports = [f"127.0.0.1:{18000 + p}:{p}" for p in (SINK, SOURCE)] + ["127.0.0.1:18080:80"]
        args = ["run", "-d", "--name", "netbench", "--rootfs", a.rootfs]
        for p in ports:
            args += ["-p", p]
        r = hyper(bin_dir, sock, *args, "--", "sh", "-c", serve + "; while :; do sleep 3600; done")
        if r.returncode != 0:
            sys.exit("networked pod did not start: " + r.stderr.decode())
        argv, _ = vm_argv(bin_dir, sock, "netbench")
        address = pod_address(bin_dir, sock, "netbench")
        wait_tcp("127.0.0.1", 18080)

        raw, run = start_raw(argv, raw_initramfs(a.rootfs, RAW_INIT.format(guest=RAW_GUEST, serve=serve), tmp), tmp)
        wait_tcp(RAW_GUEST, HTTP, logs=[os.path.join(run, "qemu.err"), os.path.join(run, "console.log")])

        paths = {
            "pod at its address": (address, SINK, SOURCE, HTTP),
            "raw qemu, plain tap": (RAW_GUEST, SINK, SOURCE, HTTP),
            "pod, published port": ("127.0.0.1", 18000 + SINK, 18000 + SOURCE, 18080),
        }
        results = {k: {"in": [], "out": [], "rtt": []} for k in paths}
        for _ in range(a.runs):
            for name, (addr, sink, source, http) in paths.items():
                results[name]["in"].append(a.mib / send_bulk(addr, sink, nbytes))
                results[name]["out"].append(a.mib / recv_bulk(addr, source, nbytes))
                results[name]["rtt"].append(http_rtt(addr, http))
        print(f"backend {a.backend}, {a.runs} runs of {a.mib} MiB each way, alternating")
        for name, res in results.items():
            print(f"{name:22} host→guest {summary(res['in'], 'MiB/s')}")
            print(f"{'':22} guest→host {summary(res['out'], 'MiB/s')}")
            print(f"{'':22} HTTP GET   {summary(res['rtt'], 'ms', 1000)}")
        base = results["raw qemu, plain tap"]
        for name in (n for n in paths if n != "raw qemu, plain tap"):
            res = results[name]
            print(f"{name} / raw: host→guest {statistics.median(res['in']) / statistics.median(base['in']):.3f}, "
                  f"guest→host {statistics.median(res['out']) / statistics.median(base['out']):.3f}, "
                  f"GET {statistics.median(res['rtt']) / statistics.median(base['rtt']):.3f}")
        stop_raw(raw)
        raw = None
        hyper(bin_dir, sock, "rm", "-f", "netbench")

        with_net, without = [], []
        for _ in range(a.runs):
            for extra, into in (([], with_net), (["--network", "none"], without)):
                t0 = time.monotonic()
                r = hyper(bin_dir, sock, "run", "--rm", *extra, "--rootfs", a.rootfs, "--", "true")
                into.append(time.monotonic() - t0)
                if r.returncode != 0:
                    sys.exit("hyper run failed: " + r.stderr.decode())
        print(f"hyper run --rm … true, default network : {summary(with_net, 'ms', 1000)}")
        print(f"hyper run --rm … true, --network none  : {summary(without, 'ms', 1000)}")
        print(f"ratio of medians                       : {statistics.median(with_net) / statistics.median(without):.3f}")
    finally:
        stop_raw(raw)
        hyperd.send_signal(signal.SIGTERM)
        hyperd.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
