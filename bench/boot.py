#!/usr/bin/env python3
"""Boot benchmark, side by side in one run.

* raw:   qemu-system-x86_64 with exactly the argv the backend used for a pod (read
         from /proc/<pid>/cmdline of a live pod), from process start to hyperstart's
         READY frame on the agent socket.
* hyper: `hyper run --rm --network none --rootfs ROOTFS -- true`, the whole client process.

The two alternate, N times each, so both see the same machine load. Prints medians,
min/max, their ratio, and the PSS of an idle pod's VM process.

The pods run with `--network none` by default: a pod on a CNI network gets a tap
that hyperd opens and hands to QEMU as an fd, which a raw QEMU started by this
script cannot replay. With `--network NAME` the raw leg drops the pod's NICs
(`-netdev tap,fd=...` and its virtio-net device) and says so.

With `--against BIN_DIR` (another build's target/release, its payload in
BIN_DIR/../../build unless `--against-payload` says otherwise) a second hyperd
runs that build, and every round times both builds' raw and hyper legs, the
order flipping each round, so the two builds see the same machine load.

    bench/boot.py [--runs N] [--bin-dir target/release] [--payload build] [--rootfs build/rootfs/busybox]
                  [--network none] [--against OTHER/target/release [--against-payload OTHER/build]]
                  [--extra-toml FILE]
"""
import argparse
import concurrent.futures
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


def network_args(network):
    """`hyper run` flags for --network (None: the host's default network)."""
    return ["--network", network] if network else []


def start_pods(bin_dir, sock, n, rootfs, memory="64", network=None, concurrency=4):
    """Starts n idle pods (`sleep 3600`), at most `concurrency` at a time. Returns (ids, errors)."""
    def one(_):
        r = hyper(bin_dir, sock, "run", "-d", "--memory", str(memory), *network_args(network), "--rootfs", rootfs,
                  "--", "sleep", "3600")
        return (r.stdout.decode().strip(), None) if r.returncode == 0 else (None, r.stderr.decode(errors="replace"))

    ids, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for pod, err in pool.map(one, range(n)):
            if pod:
                ids.append(pod)
            else:
                errors.append(err.strip())
    return ids, errors


def remove_pods(bin_dir, sock, ids, concurrency=4):
    """`hyper rm -f` of each pod, `concurrency` at a time. Returns how many failed."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        return sum(1 for r in pool.map(lambda pod: hyper(bin_dir, sock, "rm", "-f", pod), ids) if r.returncode)


def capture_pod(bin_dir, sock, rootfs, network=None):
    """Runs an idle pod; returns the VM's argv and its PSS once idle."""
    env = dict(os.environ, HYPER_HOST=sock)
    client = subprocess.Popen([os.path.join(bin_dir, "hyper"), "run", "--rm", *network_args(network),
                               "--rootfs", rootfs, "--", "sh", "-c", "echo up; sleep 8"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # "up" on stdout means the container runs: the guest is booted and idle from here on.
    line = client.stdout.readline()
    if line.strip() != b"up":
        sys.exit("idle pod did not start: " + client.stderr.read().decode())
    argv, pid = vm_argv(bin_dir, sock)
    time.sleep(2)
    pss = pss_kib(pid)
    client.wait(timeout=120)
    return argv, pss


def without_nics(argv):
    """argv minus its `-netdev tap,...,fd=N` pairs and the virtio-net devices using them:
    the fd was hyperd's and means nothing to a QEMU started here. Returns (argv, dropped)."""
    out, dropped, i = [], [], 0
    while i < len(argv):
        if argv[i] in ("-netdev", "-device") and i + 1 < len(argv) and (
                (argv[i] == "-netdev" and argv[i + 1].startswith("tap,"))
                or (argv[i] == "-device" and argv[i + 1].startswith("virtio-net"))):
            dropped += argv[i:i + 2]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out, dropped


def raw_boot(argv, tmp):
    """Same argv, private sockets and console: time from spawn to READY."""
    run = tempfile.mkdtemp(dir=tmp, prefix="raw")
    out = [PRIVATE_FILE.sub(lambda m: f"{run}/{m.group(2)}", a) for a in argv]
    t0 = time.monotonic()
    err = open(os.path.join(run, "stderr"), "w+b")
    proc = subprocess.Popen(out, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    agent = os.path.join(run, "agent.sock")
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(agent)
            break
        except OSError:
            if proc.poll() is not None:
                err.seek(0)
                sys.exit("raw qemu exited early: " + err.read().decode(errors="replace")[-2000:])
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
    err.close()
    shutil.rmtree(run, ignore_errors=True)
    return ready


def summary(xs):
    return f"median {statistics.median(xs) * 1000:7.0f} ms  min {min(xs) * 1000:7.0f}  max {max(xs) * 1000:7.0f}"


def add_build_args(ap, against=True):
    """--bin-dir/--payload (the build measured), --rootfs, --backend and, with `against`,
    --against/--against-payload (the build it is compared with, in the same run)."""
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--payload", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rootfs", default=os.path.join(ROOT, "build/rootfs/busybox"))
    ap.add_argument("--backend", default="qemu")
    if against:
        ap.add_argument("--against", metavar="BIN_DIR",
                        help="another build's target/release, run alternately with --bin-dir's")
        ap.add_argument("--against-payload", metavar="DIR",
                        help="that build's payload (default: BIN_DIR/../../build)")


def builds(a):
    """[(label, bin_dir, payload)]: the build measured, then the one it is compared with."""
    out = [("this", os.path.abspath(a.bin_dir), os.path.abspath(a.payload))]
    if a.against:
        b = os.path.abspath(a.against)
        payload = a.against_payload or os.path.join(b, "..", "..", "build")
        out.append(("against", b, os.path.abspath(payload)))
    for label, b, payload in out:
        for f in (os.path.join(b, "hyperd"), os.path.join(b, "hyper"), os.path.join(payload, "hyperstart.img")):
            if not os.path.exists(f):
                sys.exit(f"{label} build: {f} is missing (make build payload in that tree)")
    return out


def git_rev(bin_dir):
    """The commit of the tree a target/release directory belongs to (best effort)."""
    tree = os.path.dirname(os.path.dirname(bin_dir))
    r = subprocess.run(["git", "-C", tree, "log", "-1", "--format=%h %s"], capture_output=True)
    return r.stdout.decode(errors="replace").strip()[:72] if r.returncode == 0 else "?"


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    add_build_args(ap)
    ap.add_argument("--network", default="none",
                    help="the pods' network; not `none`: the raw leg runs without the pod's NICs")
    ap.add_argument("--extra-toml", metavar="FILE",
                    help="TOML appended to the config of --bin-dir's hyperd (not --against's)")
    a = ap.parse_args()
    extra = open(a.extra_toml).read() if a.extra_toml else ""
    tmp = tempfile.mkdtemp(prefix="hb", dir="/tmp")
    legs = []  # per build: label, bin_dir, sock, argv, pss, raw times, hyper times
    daemons = []
    net = network_args(a.network)
    try:
        for label, b, payload in builds(a):
            work = os.path.join(tmp, label)
            os.makedirs(work)
            hyperd, sock = start_hyperd(b, payload, work, a.backend, extra if label == "this" else "")
            daemons.append(hyperd)
            # Warm-up: builds the cached rootfs image and pages the payload in.
            r = hyper(b, sock, "run", "--rm", *net, "--rootfs", a.rootfs, "--", "true")
            if r.returncode != 0:
                sys.exit(f"{label}: warm-up failed: " + r.stderr.decode())
            argv, pss = capture_pod(b, sock, a.rootfs, a.network)
            argv, dropped = without_nics(argv)
            if dropped:
                print(f"{label}: the raw leg runs without the pod's NICs: {' '.join(dropped)}")
            legs.append({"label": label, "bin": b, "sock": sock, "argv": argv, "pss": pss, "raw": [], "full": []})
        print(f"load average before: {load_average()}")
        for i in range(a.runs):
            # Flip the order of the builds every round.
            for leg in legs if i % 2 == 0 else legs[::-1]:
                leg["raw"].append(raw_boot(leg["argv"], tmp))
                t0 = time.monotonic()
                r = hyper(leg["bin"], leg["sock"], "run", "--rm", *net, "--rootfs", a.rootfs, "--", "true")
                leg["full"].append(time.monotonic() - t0)
                if r.returncode != 0:
                    sys.exit(f"{leg['label']}: hyper run failed: " + r.stderr.decode())
        print(f"load average after: {load_average()}")
        print(f"backend {a.backend}, network {a.network or 'default'}, {a.runs} runs each, alternating")
        for leg in legs:
            print(f"[{leg['label']}] {leg['bin']} ({git_rev(leg['bin'])})")
            print(f"  raw qemu to READY        : {summary(leg['raw'])}")
            print(f"  hyper run --rm ... true  : {summary(leg['full'])}")
            print(f"  ratio of medians         : {statistics.median(leg['full']) / statistics.median(leg['raw']):.3f}")
            print(f"  idle pod VM process PSS  : {leg['pss'] / 1024:.1f} MiB" if leg["pss"] else "  idle pod PSS: n/a")
            print("  qemu argv: " + " ".join(leg["argv"]))
        if len(legs) == 2:
            this, other = legs
            print("this / against, ratio of medians: raw "
                  f"{statistics.median(this['raw']) / statistics.median(other['raw']):.3f}, hyper run "
                  f"{statistics.median(this['full']) / statistics.median(other['full']):.3f}")
            # Each round's pair ran back to back: the median of the paired ratios follows load drift less.
            for key, what in (("raw", "raw"), ("full", "hyper run")):
                pairs = [x / y for x, y in zip(this[key], other[key])]
                print(f"this / against, per-round pairs, {what}: median {statistics.median(pairs):.3f} "
                      f"(min {min(pairs):.3f}, max {max(pairs):.3f})")
            print("hyper run, ms per round (this, against): "
                  + ", ".join(f"{x * 1000:.0f}/{y * 1000:.0f}" for x, y in zip(this["full"], other["full"])))
    finally:
        for d in daemons:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=60)
            except subprocess.TimeoutExpired:
                d.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
