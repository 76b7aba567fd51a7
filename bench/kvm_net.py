#!/usr/bin/env python3
"""hyper-vmm's virtio-net next to QEMU's, same guest, same tap, same run.

On this machine's /dev/kvm (kvm_pvm) a normal Linux guest does not boot, so the
guest is the freestanding test guest (backends/kvm/testguest): it drives the
virtio-net device through real split queues (16 entries, one 2 KiB buffer per
frame, polling, a notify per frame), under hyper-vmm (`--net fd=N`) and under
QEMU (`-M microvm -accel kvm`, `virtio-net-device` on virtio-mmio v2, the same tap
fd, vhost=off: there is no vhost-net here). The tap has IFF_VNET_HDR and lives in
a network namespace of its own.

Per VMM and round:
* TX: the guest sends --frames frames of 1514 bytes as fast as the device takes
  them (`tg.netflood`); timed between the guest's two console lines.
* RX: the host floods the tap (a packet socket on it) while the guest takes
  --frames frames (`tg.netsink`); timed from the guest's "sinking" line to its
  result line. The host's sender rate is printed too: if it is not well above
  the guest's, the sender was the limit.
Rounds alternate the two VMMs so both see the same load.

    sudo bench/kvm_net.py [--runs 5] [--frames 200000] [--vmm target/release/hyper-vmm]
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import fcntl
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = f"hvnetbench{os.getpid()}"
TAP = "hvbtap0"
MAC = "02:48:59:50:45:42"
FRAME = 1514


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def build_guest():
    out = os.path.join(tempfile.gettempdir(), "hyper-testguest-bench")
    subprocess.run([os.path.join(ROOT, "backends/kvm/testguest/build.sh"), out], check=True)
    return os.path.join(out, "hyper-testguest")


def open_tap():
    """The persistent tap, attached with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", TAP.encode(), 0x0002 | 0x1000 | 0x4000))
    return fd


def argv_for(which, args, guest, cmdline, fd):
    if which == "hyper-vmm":
        return [args.vmm, "--kernel", guest, "--memory-mib", "64", "--cmdline", cmdline,
                "--debug-exit", "--net", f"fd={fd},mac={MAC}"]
    # microvm's row of virtio-mmio transports; the guest skips empty ones.
    cmdline += "".join(f" virtio_mmio.device=512@{0xfeb00000 + 0x200 * i:#x}:{5 + i}"
                       for i in range(24))
    return [args.qemu, "-machine", "microvm", "-accel", "kvm", "-m", "64", "-nodefaults",
            "-no-user-config", "-nographic", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", guest, "-append", cmdline,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-global", "virtio-mmio.force-legacy=false",
            "-netdev", f"tap,id=n0,fd={fd},vhost=off",
            "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]


class Flooder:
    """Sends frames for the guest's MAC on the tap until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.sent = 0
        self.t0 = self.t1 = 0.0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((TAP, 0))
        frame = bytes.fromhex(MAC.replace(":", "")) + bytes.fromhex("024859504599") + b"\x88\xb5"
        frame += b"\x5a" * (FRAME - len(frame))
        self.t0 = time.perf_counter()
        while not self.stop.is_set():
            for _ in range(256):
                try:
                    s.send(frame)
                    self.sent += 1
                except OSError:
                    pass
        self.t1 = time.perf_counter()
        s.close()


def one(which, args, guest, mode):
    """Frames per second the guest moved, and the host sender's rate (RX)."""
    fd = open_tap()
    n = args.frames
    cmdline = "tg.hello " + (f"tg.netflood={n} tg.netflood_len={FRAME}" if mode == "tx" else f"tg.netsink={n}")
    p = subprocess.Popen(argv_for(which, args, guest, cmdline, fd), pass_fds=(fd,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    os.close(fd)
    start = end = None
    ok = False
    flood = None
    lines = []
    deadline = time.perf_counter() + 300
    for raw in p.stdout:
        now = time.perf_counter()
        line = raw.decode(errors="replace").strip()
        lines.append(line)
        if "tg: net flooding" in line or "tg: net sinking" in line:
            start = now
            if mode == "rx":
                flood = Flooder()
                flood.thread.start()
        if "net-flood" in line or "net-sink" in line:
            end = now
            ok = line.startswith("tg: ok")
        if "tg: done" in line or now > deadline:
            break
    if flood:
        flood.stop.set()
        flood.thread.join()
    p.kill()
    p.wait()
    if not ok or start is None or end is None:
        raise SystemExit(f"{which} {mode}: no result\n" + "\n".join(lines[-20:]))
    rate = n / (end - start)
    sender = flood.sent / (flood.t1 - flood.t0) if flood else None
    return rate, sender


def inside(args):
    guest = args.guest or build_guest()
    res = {(w, m): [] for w in ("hyper-vmm", "qemu") for m in ("tx", "rx")}
    senders = {w: [] for w in ("hyper-vmm", "qemu")}
    for r in range(args.runs):
        for which in ("hyper-vmm", "qemu"):
            for mode in ("tx", "rx"):
                rate, sender = one(which, args, guest, mode)
                res[(which, mode)].append(rate)
                extra = ""
                if sender:
                    senders[which].append(sender)
                    extra = f" (host sender {sender / 1e3:7.1f} kframes/s)"
                print(f"run {r + 1} {which:9} {mode}: {rate / 1e3:7.1f} kframes/s "
                      f"= {rate * FRAME * 8 / 1e9:5.2f} Gbit/s{extra}", flush=True)
    print()
    for (which, mode), xs in res.items():
        m = statistics.median(xs)
        print(f"{which:9} {mode}: median {m / 1e3:7.1f} kframes/s = "
              f"{m * FRAME * 8 / 1e9:5.2f} Gbit/s of {FRAME}-byte frames "
              f"(min {min(xs) / 1e3:.1f}, max {max(xs) / 1e3:.1f}; {len(xs)} runs of "
              f"{args.frames} frames)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--frames", type=int, default=200000)
    ap.add_argument("--vmm", default=os.path.join(ROOT, "target/release/hyper-vmm"))
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--guest")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.vmm = os.path.abspath(args.vmm)
    if args.inside:
        return inside(args)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr")
        sh("ip", "-n", NS, "link", "set", TAP, "up")
        argv = ["ip", "netns", "exec", NS, sys.executable, os.path.abspath(__file__), "--inside",
                "--runs", str(args.runs), "--frames", str(args.frames), "--vmm", args.vmm,
                "--qemu", args.qemu] + (["--guest", args.guest] if args.guest else [])
        return subprocess.run(argv).returncode
    finally:
        sh("ip", "netns", "del", NS, check=False)


if __name__ == "__main__":
    sys.exit(main())
