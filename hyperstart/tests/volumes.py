#!/usr/bin/env python3
"""hyperstart's pod volumes against a real kernel (needs root, mkfs.erofs, mkfs.ext4, debugfs).

    sudo python3 hyperstart/tests/volumes.py BINARY
        hyperstart on this host in a private mount namespace (like smoke.py): a tmpfs
        volume, a read-only tmpfs volume and an ext4 block volume on a loop device;
    sudo python3 hyperstart/tests/volumes.py --qemu KERNEL INITRD [tcg|kvm]
        the payload in QEMU (smoke.py's microvm) with the same volumes (the block volume a
        virtio-blk disk with serial hyper-vol1), plus a host directory as a virtio-fs share
        served by virtiofsd (--sandbox namespace) on memfd-backed guest memory.

Checks, through the guest protocol (smoke.py's Guest):

* READY advertises `host-volumes`; bad volumes (tag, fstype, disk id) are refused naming
  the volume, and nothing is mounted (the same names work right after);
* in a container every volume is `nosuid,nodev` (a nested mount lands inside its parent
  volume whatever the order asked); a read-only volume and a read-only mount
  refuse writes; the block volume and the share take writes; the share shows the host's file;
* a bind cannot be aimed outside the container: a mount path through a symlink in the image
  (`/evil -> /`), through a symlink a running container planted in a tmpfs volume, or
  through a file is refused, and nothing is created outside (host mode: on the host's `/`);
* after DestroyPod the block volume's file is on the disk image (read with debugfs) and the
  container's file is in the shared directory on the host.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smoke  # noqa: E402

TAG = "voltest"
ESCAPE = "hs-volumes-escape-check"


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def image(work):
    root = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy("/usr/bin/busybox", os.path.join(root, "bin/busybox"))
    for tool in ["sh", "cat", "echo", "grep", "ln", "touch", "sync", "mkdir"]:
        os.symlink("busybox", os.path.join(root, "bin", tool))
    os.symlink("/", os.path.join(root, "evil"))
    with open(os.path.join(root, "afile"), "w") as f:
        f.write("x")
    out = os.path.join(work, "rootfs.erofs")
    sh("mkfs.erofs", "--quiet", "--all-root", out, root)
    return out


def volume(name, source=None, readonly=False):
    v = {"name": name, "readonly": readonly}
    if source:
        v["source"] = source
    return v


def container(cid, disk_id, mounts, script, stdio):
    return {"id": cid, "rootfs": {"disk_id": disk_id, "fstype": "erofs"}, "hostname": "vol",
            "process": smoke.process("init", ["sh", "-c", script], stdio),
            "mounts": [{"volume": v, "path": p, "readonly": ro} for v, p, ro in mounts]}


def main():
    qemu = sys.argv[1] == "--qemu"
    work = tempfile.mkdtemp(prefix="hs-vol-")
    rootfs = image(work)
    blk = os.path.join(work, "blk.img")
    with open(blk, "wb") as f:
        f.truncate(64 << 20)
    sh("mkfs.ext4", "-q", "-F", blk)
    share = os.path.join(work, "share")
    os.makedirs(share)
    with open(os.path.join(share, "hello"), "w") as f:
        f.write("from the host\n")
    proc = virtiofsd = loop = blk_loop = None
    try:
        if qemu:
            kernel, initrd = os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
            accel = sys.argv[4] if len(sys.argv) > 4 else "tcg"
            vfs_sock = os.path.join(work, "vfs.sock")
            virtiofsd = subprocess.Popen(["virtiofsd", f"--socket-path={vfs_sock}", f"--shared-dir={share}",
                                          "--sandbox=namespace"], stderr=open(os.path.join(work, "vfs.log"), "w"))
            smoke_wait(lambda: os.path.exists(vfs_sock))
            extra = ["-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                     "-machine", "memory-backend=mem",
                     "-chardev", f"socket,id=vfs,path={vfs_sock}",
                     "-device", f"vhost-user-fs-device,chardev=vfs,tag={TAG}",
                     "-drive", f"file={blk},if=none,id=disk1,format=raw",
                     "-device", "virtio-blk-device,drive=disk1,serial=hyper-vol1"]
            host, proc, disk_id, _ = smoke.boot_qemu(work, rootfs, kernel, initrd, accel, extra=extra)
            blk_id = "hyper-vol1"
        else:
            binary = os.path.abspath(sys.argv[1])
            loop = sh("losetup", "-f", "--show", "-r", rootfs)
            blk_loop = sh("losetup", "-f", "--show", blk)
            disk_id, blk_id = loop, os.path.basename(blk_loop)
            import socket
            host, guest_end = socket.socketpair()
            proc = subprocess.Popen([binary, "--channel-fd", str(guest_end.fileno()), "--cmdline", "hyper.debug=1",
                                     "--run-dir", os.path.join(work, "run")],
                                    pass_fds=[guest_end.fileno()], preexec_fn=smoke.private_mounts)
            guest_end.close()
        g = smoke.Guest(host)
        g.wait(lambda: hasattr(g, "ready"), timeout=120)
        assert "host-volumes" in g.ready["capabilities"], g.ready
        assert g.request({"hello": {"version": 3, "capabilities": ["flow-control", "host-volumes"]}}) == {"Ok": "ok"}

        block = {"kind": "block", "disk_id": blk_id, "fstype": "ext4"}
        for bad, want in [
            (volume("s", {"kind": "share", "tag": "a/b", "transport": "virtio_fs"}), "volume s: invalid share tag"),
            (volume("b", dict(block, fstype="xfs")), "volume b: filesystem \"xfs\""),
            (volume("b", dict(block, disk_id="/dev/vda")), "volume b: invalid disk id"),
        ]:
            r = g.request({"start_pod": {"hostname": "vol", "volumes": [volume("tmp"), bad]}})
            assert r["Err"]["kind"] == "invalid_request" and want in r["Err"]["message"], r

        volumes = [volume("tmp"), volume("rotmp", readonly=True), volume("blk", block)]
        if qemu:
            volumes.append(volume("share", {"kind": "share", "tag": TAG, "transport": "virtio_fs"}))
        r = g.request({"start_pod": {"hostname": "vol", "volumes": volumes}}, timeout=60)
        assert r == {"Ok": "ok"}, r

        # A child listed before its parent is still bound inside it.
        mounts = [("blk", "/tv/nested", False), ("tmp", "/tv", False), ("rotmp", "/ro", False),
                  ("blk", "/blk", False), ("blk", "/blk-ro", True)]
        script = ("grep -E ' /(tv|tv/nested|ro|blk|blk-ro|data) ' /proc/mounts; "
                  "echo on-disk > /blk/file && echo BLK-OK; "
                  "touch /blk-ro/x 2>/dev/null || echo BLK-RO-REFUSED; "
                  "touch /ro/x 2>/dev/null || echo RO-VOLUME-REFUSED; "
                  f"ln -s / /tv/link; ln -s /{ESCAPE} /tv/abs; echo planted; ")
        if qemu:
            mounts.append(("share", "/data", False))
            script += "cat /data/hello; echo from the guest > /data/out && echo SHARE-OK; "
        script += "sync; exec sleep 1000"
        r = g.request({"new_container": container("c1", disk_id, mounts, script, 10)}, timeout=60)
        assert "started" in r["Ok"], r
        g.wait(lambda: b"planted" in g.out.get(10, b"") and (not qemu or b"SHARE-OK" in g.out.get(10, b"")),
               timeout=120)
        out = g.out[10].decode()
        print(out)
        lines = {l.split()[1]: l.split()[3].split(",") for l in out.splitlines() if l.count(" ") >= 5}
        want = {"/tv", "/tv/nested", "/ro", "/blk", "/blk-ro"} | ({"/data"} if qemu else set())
        assert set(lines) == want, lines
        for point, opts in lines.items():
            assert "nosuid" in opts and "nodev" in opts, (point, opts)
            assert ("ro" in opts) == (point in ("/ro", "/blk-ro")), (point, opts)
        for ok in ["BLK-OK", "BLK-RO-REFUSED", "RO-VOLUME-REFUSED"] + (["from the host", "SHARE-OK"] if qemu else []):
            assert ok in out, ok

        # Binds through symlinks or files are refused, wherever the symlink came from.
        for cid, path, why in [
            ("c2", "/evil/" + ESCAPE, "image symlink to /"),
            ("c3", "/tv/link/" + ESCAPE, "symlink planted in a tmpfs volume by c1"),
            ("c4", "/tv/abs/x", "absolute symlink planted in a tmpfs volume"),
            ("c5", "/afile/x", "a file on the path"),
        ]:
            spec = container(cid, disk_id, [("tmp", "/tv", False), ("blk", path, False)], "true", 20)
            r = g.request({"new_container": spec}, timeout=60)
            assert "Err" in r and r["Err"]["kind"] == "invalid_request", (why, r)
            assert "symlink" in r["Err"]["message"] or "directory" in r["Err"]["message"], (why, r)
        if not qemu:
            # The host's / is the guest's here: nothing may have appeared there.
            assert not os.path.exists("/" + ESCAPE), "a bind escaped onto the host's /"
            assert not os.path.exists(os.path.join(work, "run", "c2")), "a refused container left its dirs"

        assert g.request("destroy_pod") == {"Ok": "ok"}
        assert proc.wait(60) == 0
        proc = None
        if blk_loop:
            sh("losetup", "-d", blk_loop)
            blk_loop = None
        got = sh("debugfs", "-R", "cat /file", blk)
        assert got == "on-disk", got
        if qemu:
            with open(os.path.join(share, "out")) as f:
                assert f.read() == "from the guest\n"
        print("volumes test passed")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if virtiofsd is not None and virtiofsd.poll() is None:
            virtiofsd.kill()
            virtiofsd.wait()
        for dev in (loop, blk_loop):
            if dev:
                subprocess.run(["losetup", "-d", dev], check=False)
        console = os.path.join(work, "console.log")
        if os.path.exists(console):
            with open(console, errors="replace") as f:
                print("--- guest console ---\n" + f.read()[-3000:])
        shutil.rmtree(work, ignore_errors=True)


def smoke_wait(cond, timeout=10):
    import time
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
