#!/usr/bin/env python3
"""Threads and file descriptors hyperd holds, with idle pods and after execs.

Starts its own hyperd (bench/boot.py's setup), then reports hyperd's threads and
open fds (and those of its plugin host process, `hyper-plugin-host`, where there
is one):

* with 0 pods;
* with N idle pods (`hyper run -d ... sleep 3600`);
* after E `hyper exec POD true`, round robin over the pods, every fifth one cut
  short by the client (killed while the exec runs);
* again a few seconds later, when everything in flight has settled.

Target: flat, no growth per exec.

    bench/threads.py [--pods 10] [--execs 200] [--bin-dir target/release] [--payload build]
                     [--rootfs build/rootfs/busybox] [--backend qemu]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import ROOT, hyper, start_hyperd  # noqa: E402


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def hosts_of(pid):
    """hyperd's plugin host processes (its children running hyper-plugin-host)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and argv0.endswith(b"hyper-plugin-host"):
            out.append(int(entry))
    return out


def snapshot(label, pid):
    hosts = hosts_of(pid)
    ht = sum(threads(h) or 0 for h in hosts)
    hf = sum(fds(h) for h in hosts)
    host = f"  host: {ht:3d} threads {hf:3d} fds" if hosts else "  (no plugin host process)"
    print(f"{label:<34} hyperd: {threads(pid):3d} threads {fds(pid):3d} fds{host}", flush=True)


def must(r):
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout.decode()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=10)
    p.add_argument("--execs", type=int, default=200)
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    p.add_argument("--payload", default=os.path.join(ROOT, "build"))
    p.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    p.add_argument("--backend", default="qemu")
    a = p.parse_args()
    b = os.path.abspath(a.bin_dir)
    work = tempfile.mkdtemp(prefix="hyper-bench-threads-")
    proc, sock = start_hyperd(b, os.path.abspath(a.payload), work, a.backend)
    env = dict(os.environ, HYPER_HOST=sock)
    try:
        time.sleep(1)
        print(f"bin dir {b}, backend {a.backend}")
        snapshot("0 pods", proc.pid)
        pods = []
        for i in range(a.pods):
            pods.append(must(hyper(b, sock, "run", "-d", "--memory", "64", "--rootfs", a.rootfs,
                                   "--", "sleep", "3600")).strip())
        time.sleep(2)
        snapshot(f"{a.pods} idle pods", proc.pid)
        cut = 0
        for i in range(a.execs):
            pod = pods[i % len(pods)]
            if i % 5 == 4:
                # Cut short by the client: the exec's process in the guest
                # outlives the client, hyperd's side must not.
                c = subprocess.Popen([os.path.join(b, "hyper"), "exec", pod, "sleep", "30"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                c.kill()
                c.wait()
                cut += 1
            else:
                must(hyper(b, sock, "exec", pod, "true"))
            if (i + 1) % 50 == 0:
                snapshot(f"after {i + 1} execs ({cut} cut short)", proc.pid)
        time.sleep(5)
        snapshot(f"{a.execs} execs, 5 s later", proc.pid)
        # The cut-short execs end in the guest after 30 s; what is left then:
        time.sleep(30)
        snapshot(f"{a.execs} execs, 35 s later", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
