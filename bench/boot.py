#!/usr/bin/env python3
"""Boot benchmark, side by side in one run.

* raw:   qemu-system-x86_64 with exactly the argv the backend used for a pod (read
         from /proc/<pid>/cmdline of a live pod), from process start to hyperstart's
         READY frame on the agent socket.
* hyper: `hyper run --rm --rootfs ROOTFS -- true`, the whole client process.

The two alternate, N times each, so both see the same machine load. Prints medians,
min/max, their ratio, and the PSS of an idle pod's VM process.

    bench/boot.py [--runs N] [--bin-dir target/release] [--payload build] [--rootfs build/rootfs/busybox]
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

# Per-VM files in the captured argv, moved to a private directory for each raw boot.
PRIVATE_FILE = re.compile(r"(/[^,\s]*/)(agent\.sock|qmp\.sock|console\.log)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_hyperd(bin_dir, payload, workdir, backend, extra_toml=""):
    plugins = os.path.join(workdir, "plugins")
    os.makedirs(plugins)
    so = f"libhyper_backend_{backend}.so"
    os.symlink(os.path.join(bin_dir, so), os.path.join(plugins, so))
    sock = os.path.join(workdir, "hyperd.sock")
    config = os.path.join(workdir, "config.toml")
    with open(config, "w") as f:
        f.write(f"""[runtime]
hypervisor = "{backend}"
plugin_dir = "{plugins}"
state_dir = "{workdir}/state"
socket = "{sock}"
# A benchmark's hyperd takes its pods with it.
stop_pods_on_exit = true
[payload]
kernel = "{payload}/hyperkernel"
initrd = "{payload}/hyperstart.img"
[vm]
boot_timeout_secs = 120
{extra_toml}""")
    log = open(os.path.join(workdir, "hyperd.log"), "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "hyperd"), "--config", config], stdout=log, stderr=log)
    for _ in range(300):
        if os.path.exists(sock):
            break
        time.sleep(0.02)
    else:
        sys.exit("hyperd did not start; see " + log.name)
    return proc, sock


def hyper(bin_dir, sock, *args, **kw):
    env = dict(os.environ, HYPER_HOST=sock)
    return subprocess.run([os.path.join(bin_dir, "hyper"), *args], env=env, capture_output=True, **kw)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_argv(bin_dir, sock, name=None):
    """The argv and pid of the VM process of pod `name` (or of the first running pod)."""
    pods = json.loads(hyper(bin_dir, sock, "ps", "--json").stdout)
    pid = next(p["vm_pid"] for p in pods
               if p["state"] == "running" and name in (None, p.get("name"), p.get("id")))
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a], pid


def capture_pod(bin_dir, sock, rootfs):
    """Runs an idle pod; returns the VM's argv and its PSS once idle."""
    env = dict(os.environ, HYPER_HOST=sock)
    client = subprocess.Popen([os.path.join(bin_dir, "hyper"), "run", "--rm", "--rootfs", rootfs, "--",
                               "sh", "-c", "echo up; sleep 8"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    # "up" on stdout means the container runs: the guest is booted and idle from here on.
    line = client.stdout.readline()
    if line.strip() != b"up":
        sys.exit("idle pod did not start: " + client.stderr.read().decode())
    argv, pid = vm_argv(bin_dir, sock)
    time.sleep(2)
    pss = pss_kib(pid)
    client.wait(timeout=120)
    return argv, pss


def raw_boot(argv, tmp):
    """Same argv, private sockets and console: time from spawn to READY."""
    run = tempfile.mkdtemp(dir=tmp, prefix="raw")
    out = [PRIVATE_FILE.sub(lambda m: f"{run}/{m.group(2)}", a) for a in argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(out, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = os.path.join(run, "agent.sock")
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(agent)
            break
        except OSError:
            if proc.poll() is not None:
                sys.exit("raw qemu exited early")
            time.sleep(0.005)
    s.settimeout(120)
    buf = b""
    while len(buf) < 9:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("raw guest closed the channel")
        buf += chunk
    ready = time.monotonic() - t0
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s.close()
    shutil.rmtree(run, ignore_errors=True)
    return ready


def summary(xs):
    return f"median {statistics.median(xs) * 1000:7.0f} ms  min {min(xs) * 1000:7.0f}  max {max(xs) * 1000:7.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hb", dir="/tmp")
    hyperd, sock = start_hyperd(os.path.abspath(a.bin_dir), os.path.abspath(a.payload), tmp, a.backend)
    try:
        # Warm-up: builds the cached rootfs image and pages the payload in.
        r = hyper(a.bin_dir, sock, "run", "--rm", "--rootfs", a.rootfs, "--", "true")
        if r.returncode != 0:
            sys.exit("warm-up failed: " + r.stderr.decode())
        argv, pss = capture_pod(a.bin_dir, sock, a.rootfs)
        raw, full = [], []
        for _ in range(a.runs):
            raw.append(raw_boot(argv, tmp))
            t0 = time.monotonic()
            r = hyper(a.bin_dir, sock, "run", "--rm", "--rootfs", a.rootfs, "--", "true")
            full.append(time.monotonic() - t0)
            if r.returncode != 0:
                sys.exit("hyper run failed: " + r.stderr.decode())
        print(f"backend {a.backend}, {a.runs} runs each, alternating")
        print(f"raw qemu to READY        : {summary(raw)}")
        print(f"hyper run --rm ... true  : {summary(full)}")
        print(f"ratio of medians         : {statistics.median(full) / statistics.median(raw):.3f}")
        print(f"idle pod VM process PSS  : {pss / 1024:.1f} MiB" if pss else "idle pod PSS: n/a")
        print("qemu argv: " + " ".join(argv))
    finally:
        hyperd.send_signal(signal.SIGTERM)
        hyperd.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
