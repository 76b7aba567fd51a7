#!/usr/bin/env python3
"""KVM boot benchmark: hyper-vmm vs qemu-system-x86_64 -accel kvm, same test guest.

Both boot backends/kvm/testguest (a freestanding PVH ELF) with `tg.quick`: the
guest's very first instruction after the 32-bit PVH entry writes 'P' to COM1,
then it prints one line and stops through the debug-exit port 0xf4.

Measured per run, alternating the two so both see the same machine load:
* start -> first port write: from just before fork/exec to the 'P' byte on the
  VMM's stdout (the serial console);
* start -> exit;
* RSS of the process (/proc/PID/status VmRSS) read when the marker arrives
  (the guest is running then). wait4's ru_maxrss is useless here: it counts the
  Python parent's pages from before exec.
For hyper-vmm also its own accounting (status JSON): RSS at exit minus guest
RAM pages resident (mincore) = the VMM's own memory overhead.

    bench/kvm_boot.py [--runs 15] [--vmm target/release/hyper-vmm] [--guest PATH]
                      [--qemu /usr/bin/qemu-system-x86_64] [--json OUT]
                      [--against-flags "--no-seccomp --no-jail"]

--against-flags: the second arm is the same hyper-vmm with these flags
instead of QEMU (the cost of the seccomp filters and the mount jail: the
default run counts as 'vmm', the other as 'qemu' in the JSON).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_guest():
    out = os.path.join(tempfile.gettempdir(), "hyper-testguest-bench")
    subprocess.run([os.path.join(ROOT, "backends/kvm/testguest/build.sh"), out], check=True)
    return os.path.join(out, "hyper-testguest")


def vmrss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def one(argv, marker=b"P", timeout=30.0):
    """(ms to marker byte on stdout, ms to exit, RSS KiB at marker, exit code)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, bufsize=0)
    first = None
    rss = None
    buf = b""
    deadline = t0 + timeout
    while True:
        chunk = p.stdout.read(1)
        if not chunk:
            break
        if first is None:
            buf += chunk
            if marker in buf:
                first = time.perf_counter()
                rss = vmrss(p.pid)
        if time.perf_counter() > deadline:
            p.kill()
            break
    _, status, _ = os.wait4(p.pid, 0)
    t_exit = time.perf_counter()
    p.returncode = os.waitstatus_to_exitcode(status)
    ms = lambda t: None if t is None else (t - t0) * 1000.0
    return ms(first), ms(t_exit), rss, p.returncode


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return (f"median {statistics.median(xs):8.2f}  min {min(xs):8.2f}  max {max(xs):8.2f}"
            f"  (n={len(xs)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/release/hyper-vmm"))
    ap.add_argument("--guest")
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--memory-mib", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("--against-flags")
    a = ap.parse_args()
    guest = a.guest or build_guest()
    status_file = os.path.join(tempfile.mkdtemp(), "status.json")
    mem = str(a.memory_mib)
    ours = [a.vmm, "--kernel", guest, "--memory-mib", mem, "--cmdline", "tg.quick",
            "--debug-exit", "--status-file", status_file]
    # -cpu host fails on kvm_pvm (MSR 0x10a); the default CPU model boots the guest.
    qemu = [a.qemu, "-machine", "microvm", "-accel", "kvm", "-m", mem, "-nodefaults",
            "-no-user-config", "-nographic", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", guest, "-append", "tg.quick",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    other = "qemu"
    if a.against_flags:
        other = "vmm " + a.against_flags
        qemu = ours + a.against_flags.split()
    res = {"vmm": [], "qemu": []}
    overhead = []
    for i in range(a.runs):
        r = one(ours)
        res["vmm"].append(r)
        with open(status_file) as f:
            st = json.load(f)
        if st.get("vmm_rss_kib") is not None and st.get("guest_resident_kib") is not None:
            overhead.append(st["vmm_rss_kib"] - st["guest_resident_kib"])
        if r[3] != 0:
            print(f"run {i}: hyper-vmm exit {r[3]}: {st}", file=sys.stderr)
        q = one(qemu)
        res["qemu"].append(q)
        if q[3] != (0 if a.against_flags else 1):  # isa-debug-exit: (0 << 1) | 1
            print(f"run {i}: {other} exit {q[3]}", file=sys.stderr)
    print(f"guest: {guest}  memory: {mem} MiB  runs: {a.runs} each, alternating")
    print(f"host: {os.uname().release}, kvm_pvm={os.path.exists('/sys/module/kvm_pvm')}")
    for name, label in (("vmm", "vmm"), ("qemu", other)):
        rows = res[name]
        print(f"{label:5} start->first port write ms: {summary([r[0] for r in rows])}")
        print(f"{label:5} start->exit ms:             {summary([r[1] for r in rows])}")
        print(f"{label:5} RSS at first write KiB:     {summary([r[2] for r in rows])}")
    print(f"vmm   RSS - guest pages resident KiB:  {summary(overhead)}")
    v = statistics.median([r[0] for r in res["vmm"] if r[0] is not None] or [0])
    q = statistics.median([r[0] for r in res["qemu"] if r[0] is not None] or [0])
    if v and q and a.against_flags:
        print(f"first port write: default / [{a.against_flags}] = {v / q:.3f} (medians)")
    elif v and q:
        print(f"first port write: hyper-vmm is {q / v:.1f}x faster than QEMU (medians)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"vmm": res["vmm"], "qemu": res["qemu"], "overhead_kib": overhead}, f)


if __name__ == "__main__":
    main()
