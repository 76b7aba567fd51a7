#!/usr/bin/env python3
"""hyperstart's network setup in a real VM (needs root, QEMU, mkfs.erofs).

Boots KERNEL with INITRD (hyperstart as PID 1, see mkinitramfs.sh) in QEMU
with a virtio-net NIC on a tap device inside a throw-away network namespace
(the host end: 10.99.0.1/24, plus 192.0.2.1/32 standing for a host beyond
the gateway), speaks the guest protocol to it (smoke.py's Guest), and checks:

* a malformed network is refused before anything is configured;
* StartPod with a hand-written NetworkSpec: the NIC, found by its MAC, is
  renamed, gets MTU, address and the default route; `lo` is up;
* a container (busybox from the host) sees the pod's network (same
  namespace), /etc/resolv.conf, /etc/hosts and /etc/hostname as asked, and
  reaches the gateway;
* the host reaches the guest, also from an address off the guest's subnet
  (the guest answers through its default route);
* a second network for the pod is refused.

    sudo python3 hyperstart/tests/net_qemu.py KERNEL INITRD [tcg|kvm]
"""
import os, shutil, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # noqa: E402

NS = f"hs-net-{os.getpid()}"
TAP = "hstap0"
MAC = "02:42:0a:63:00:02"


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {r.stderr}")
    return r


def in_ns(*args, check=True):
    return sh("ip", "netns", "exec", NS, *args, check=check)


def network(**over):
    spec = {
        "interfaces": [{"mac": MAC, "name": "eth0", "mtu": 1400, "addresses": ["10.99.0.2/24"]}],
        "routes": [{"destination": "0.0.0.0/0", "gateway": "10.99.0.1", "interface": "eth0"}],
        "dns": {"nameservers": ["10.99.0.1"], "search": ["pod.test"], "options": ["ndots:2"]},
        "hosts": [{"address": "192.0.2.1", "names": ["beyond", "beyond.pod.test"]}],
    }
    spec.update(over)
    return spec


def main():
    kernel, initrd = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    accel = sys.argv[3] if len(sys.argv) > 3 else "tcg"
    work = tempfile.mkdtemp(prefix="hs-net-")
    rootdir = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(rootdir, "bin"))
    shutil.copy("/usr/bin/busybox", os.path.join(rootdir, "bin/busybox"))
    for tool in ["sh", "cat", "ip", "ping", "echo", "grep"]:
        os.symlink("busybox", os.path.join(rootdir, "bin", tool))
    # No /etc at all in the image: hyperstart makes it and the files.
    image = os.path.join(work, "rootfs.erofs")
    sh("mkfs.erofs", "--quiet", "--all-root", image, rootdir)

    sh("ip", "netns", "add", NS)
    proc = None
    try:
        in_ns("ip", "link", "set", "lo", "up")
        in_ns("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        in_ns("ip", "addr", "add", "10.99.0.1/24", "dev", TAP)
        in_ns("ip", "addr", "add", "192.0.2.1/32", "dev", TAP)
        in_ns("ip", "link", "set", TAP, "up")
        extra = ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                 "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]
        host, proc, disk_id, _ = smoke.boot_qemu(work, image, kernel, initrd, accel,
                                                 extra=extra, wrap=["ip", "netns", "exec", NS])
        g = smoke.Guest(host)
        g.wait(lambda: hasattr(g, "ready"), timeout=120)
        assert "network" in g.ready["capabilities"], g.ready
        r = g.request({"hello": {"version": 3, "capabilities": ["flow-control", "network"]}})
        assert r == {"Ok": "ok"}, r

        bad = network(interfaces=[{"mac": MAC, "name": "eth0", "mtu": 1400,
                                   "addresses": ["10.99.0.2/24\nnameserver 6.6.6.6"]}])
        r = g.request({"start_pod": {"hostname": "netpod", "network": bad}})
        assert r["Err"]["kind"] == "invalid_request" and "invalid address" in r["Err"]["message"], r

        r = g.request({"start_pod": {"hostname": "netpod", "network": network()}}, timeout=60)
        assert r == {"Ok": "ok"}, r
        r = g.request({"start_pod": {"hostname": "netpod", "network": network()}})
        assert r["Err"]["kind"] == "already_exists", r

        script = ("cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; cat /etc/hostname; echo ---; "
                  "ip -o link; ip -o addr; ip route; ping -c1 -W10 10.99.0.1 >/dev/null && echo GATEWAY-OK")
        init = smoke.process("init", ["sh", "-c", script], 10)
        spec = {"id": "c1", "rootfs": {"disk_id": disk_id, "fstype": "erofs"}, "hostname": "netpod",
                "process": init}
        r = g.request({"new_container": spec}, timeout=60)
        assert "started" in r["Ok"], r
        g.wait(lambda: "init" in g.exits, timeout=120)
        out = g.out.get(10, b"").decode()
        print(out)
        print(g.out.get(11, b"").decode())
        assert g.exits["init"] == 0, g.exits
        resolv, hosts, hostname, net = out.split("---\n")
        assert resolv == "nameserver 10.99.0.1\nsearch pod.test\noptions ndots:2\n", resolv
        assert hosts.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"), hosts
        assert "10.99.0.2\tnetpod\n" in hosts and hosts.endswith("192.0.2.1\tbeyond beyond.pod.test\n"), hosts
        assert hostname == "netpod\n", hostname
        assert "eth0" in net and MAC in net and "mtu 1400" in net, net
        assert "lo: <LOOPBACK,UP" in net, net
        assert "inet 10.99.0.2/24" in net and "default via 10.99.0.1 dev eth0" in net, net
        assert "GATEWAY-OK" in net, net

        # From the host: the guest's address, and from off its subnet (the
        # reply takes the guest's default route).
        in_ns("busybox", "ping", "-c1", "-W10", "10.99.0.2")
        in_ns("busybox", "ping", "-c1", "-W10", "-I", "192.0.2.1", "10.99.0.2")

        assert g.request("destroy_pod") == {"Ok": "ok"}
        assert proc.wait(60) == 0
        print("network test passed")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.exists(os.path.join(work, "console.log")):
            with open(os.path.join(work, "console.log"), errors="replace") as f:
                print("--- guest console ---")
                print(f.read()[-3000:])
        sh("ip", "netns", "del", NS, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
