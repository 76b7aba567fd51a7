#!/usr/bin/env python3
"""Threads and file descriptors hyperd holds, with idle pods and after execs (issue 12).

For each pod count of --pods (default 0, 10 and 50) it starts a fresh hyperd
(bench/boot.py's setup) and reports the threads and open fds of hyperd and of its
plugin host process (`hyper-plugin-host`):

* before any pod;
* with N idle pods (`hyper run -d --memory M ... sleep 3600`, at most
  --concurrency starting at once);
* every 50 and after E `hyper exec POD true`, round robin over the pods, every
  fifth one a `hyper exec POD sleep S` cut short by the client (killed while the
  exec runs). With 0 pods the execs name a pod that does not exist: the error
  path;
* 10 s after the last exec, and once the cut-short execs' processes have ended in
  the guests (S s after the last one);
* after `hyper rm -f` of every pod.

Then it stops hyperd and lists what is left of its pods: VM processes (any
process whose argv names the run's state directory), network namespaces
(/run/netns/hyper-<id>), host links (tap/veth) that appeared during the run and
are still there (another session's pods may show up here: the list is printed
for a person to judge), and pod cgroups (pod-<id>). Target: flat, no growth per
exec, nothing left.

    bench/threads.py [--pods 0,10,50] [--execs 200] [--memory 64] [--concurrency 4]
                     [--network NAME|none] [--cut-sleep 30] [--settle 10]
                     [--bin-dir target/release] [--payload build] [--rootfs build/rootfs/busybox]
                     [--backend qemu]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import add_build_args, hyper, load_average, remove_pods, start_hyperd, start_pods  # noqa: E402


def threads(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def proc_argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def hosts_of(pid):
    """hyperd's plugin host processes (its children running hyper-plugin-host)."""
    return [c for c in children(pid) if proc_argv(c)[:1] and proc_argv(c)[0].endswith(b"hyper-plugin-host")]


class Recorder:
    def __init__(self, pid):
        self.pid = pid
        self.rows = []

    def snap(self, label):
        hosts = hosts_of(self.pid)
        row = (label, threads(self.pid), fds(self.pid),
               sum(threads(h) for h in hosts) if hosts else None, sum(fds(h) for h in hosts) if hosts else None)
        self.rows.append(row)
        host = f"  host: {row[3]:3d} threads {row[4]:3d} fds" if hosts else "  (no plugin host process)"
        print(f"  {label:<40} hyperd: {row[1]:3d} threads {row[2]:3d} fds{host}  load {load_average()}",
              flush=True)


def links():
    r = subprocess.run(["ip", "-o", "link", "show"], capture_output=True)
    out = set()
    for line in r.stdout.decode(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(("tap", "veth", "hyper-tap")):
                out.add(name)
    return out


def cgroups_left(ids):
    names = {f"pod-{i}" for i in ids}
    left = []
    for top in os.listdir("/sys/fs/cgroup"):
        base = os.path.join("/sys/fs/cgroup", top)
        for root, dirs, _ in os.walk(base):
            if root[len(base):].count("/") >= 6:
                dirs[:] = []
                continue
            left += [os.path.join(root, d) for d in dirs if d in names]
    return left


def leftovers(work, ids, links_before):
    """What is left of the run's pods once hyperd has stopped."""
    vms = [int(p) for p in os.listdir("/proc") if p.isdigit()
           and any(work.encode() in arg for arg in proc_argv(int(p)))]
    netns = [f"/run/netns/hyper-{i}" for i in ids if os.path.exists(f"/run/netns/hyper-{i}")]
    new_links = sorted(links() - links_before)
    return vms, netns, new_links, cgroups_left(ids)


def scenario(a, b, n):
    work = tempfile.mkdtemp(prefix="hyper-bench-threads-", dir="/tmp")
    links_before = links()
    try:
        proc, sock = start_hyperd(b, os.path.abspath(a.payload), work, a.backend)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    env = dict(os.environ, HYPER_HOST=sock)
    rec = Recorder(proc.pid)
    ids, result = [], {"pods": n}
    print(f"\n== {n} idle pods, {a.execs} execs (memory {a.memory}, network {a.network or 'default'}, "
          f"concurrency {a.concurrency}) ==", flush=True)
    try:
        time.sleep(1)
        rec.snap("before pods")
        if n:
            t = time.monotonic()
            ids, errors = start_pods(b, sock, n, a.rootfs, a.memory, a.network, a.concurrency)
            result["start_s"] = time.monotonic() - t
            print(f"  started {len(ids)} of {n} pods in {result['start_s']:.0f} s", flush=True)
            for e in sorted(set(errors))[:5]:
                print(f"  pod start failed ({errors.count(e)}x): {e}")
            if not ids:
                sys.exit("no pod started")
            time.sleep(2)
        rec.snap(f"{len(ids)} idle pods")
        if ids:
            vms, netns, _, _ = leftovers(work, ids, set())
            print(f"  live: {len(vms)} processes naming the state dir, {len(netns)} pod netns", flush=True)
        result["started"] = len(ids)
        cut, failed = 0, 0
        t = time.monotonic()
        for i in range(a.execs):
            if not ids:
                # The error path: no such pod.
                failed += hyper(b, sock, "exec", "no-such-pod", "true").returncode != 0
            elif i % 5 == 4:
                # Cut short by the client: the exec's process in the guest
                # outlives the client, hyperd's side must not.
                c = subprocess.Popen([os.path.join(b, "hyper"), "exec", ids[i % len(ids)], "sleep",
                                      str(a.cut_sleep)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                c.kill()
                c.wait()
                cut += 1
            else:
                r = hyper(b, sock, "exec", ids[i % len(ids)], "true")
                if r.returncode != 0:
                    failed += 1
                    print(f"  exec {i} failed: {r.stderr.decode(errors='replace').strip()}")
            if (i + 1) % 50 == 0 and i + 1 < a.execs:
                rec.snap(f"after {i + 1} execs ({cut} cut short)")
        last = time.monotonic()
        result["exec_s"] = last - t
        rec.snap(f"after {a.execs} execs ({cut} cut short)")
        time.sleep(a.settle)
        rec.snap(f"{a.settle} s later")
        if cut and a.cut_sleep + 3 > a.settle:
            time.sleep(max(0.0, last + a.cut_sleep + 3 - time.monotonic()))
            rec.snap(f"{a.cut_sleep + 3} s later (cut-short ended)")
        if not ids:
            print(f"  {failed} of {a.execs} execs failed, as they should (no such pod)")
        elif failed:
            print(f"  {failed} execs failed")
        bad = remove_pods(b, sock, ids, a.concurrency)
        time.sleep(2)
        rec.snap(f"pods removed ({bad} rm failed)")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(1)
        vms, netns, new_links, cgs = leftovers(work, ids, links_before)
        print(f"  after hyperd stopped: {len(vms)} VM processes {vms}, {len(netns)} netns {netns}, "
              f"{len(cgs)} pod cgroups {cgs[:5]}, new host links still up: {new_links or 'none'}", flush=True)
        result.update(rows=rec.rows, vms=vms, netns=netns, links=new_links, cgroups=cgs)
        if not (vms or netns or cgs):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"  kept {work} for a look")
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pods", default="0,10,50", help="pod counts, one fresh hyperd each")
    p.add_argument("--execs", type=int, default=200)
    p.add_argument("--memory", default="64",
                   help="each idle pod's --memory (hyperd takes 32 MiB, but the guest does not come up in 32 and "
                        "4 of 10 panicked in 48: 'System is deadlocked on memory')")
    p.add_argument("--concurrency", type=int, default=4, help="pods starting (and removed) at once")
    p.add_argument("--network", default=None, help="the pods' network (default: the host's default one)")
    p.add_argument("--cut-sleep", type=int, default=30, help="what a cut-short exec runs: sleep S")
    p.add_argument("--settle", type=int, default=10, help="seconds after the last exec for the next look")
    add_build_args(p, against=False)
    a = p.parse_args()
    b = os.path.abspath(a.bin_dir)
    print(f"bin dir {b}, backend {a.backend}, load average {load_average()}")
    results = [scenario(a, b, int(n)) for n in a.pods.split(",")]
    print("\nsummary (threads / fds): hyperd before pods, idle, after execs, settled; plugin host idle, settled")
    for r in results:
        rows = r["rows"]
        before, idle, after = rows[0], rows[1], [x for x in rows if x[0].startswith(f"after {a.execs}")][0]
        settled = [x for x in rows if "later" in x[0]][-1]
        host = f"host {idle[3]}/{idle[4]} -> {settled[3]}/{settled[4]}" if idle[3] is not None else "no host"
        print(f"  {r['started']:3d} of {r['pods']:3d} pods: hyperd {before[1]}/{before[2]}, {idle[1]}/{idle[2]}, "
              f"{after[1]}/{after[2]}, {settled[1]}/{settled[2]}; {host}; left: {len(r['vms'])} VMs, "
              f"{len(r['netns'])} netns, {len(r['cgroups'])} cgroups, links {r['links'] or 'none'}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
