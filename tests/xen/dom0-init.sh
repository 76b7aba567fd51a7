#!/bin/sh
# /init of the test dom0 (see build-dom0.sh). Starts the Xen toolstack the
# way Debian's xencommons does, mounts the host share (virtio-9p, tag host0)
# at /mnt/host and runs /mnt/host/run.sh. Markers on the console:
# DOM0-READY, HOSTSHARE-MOUNTED, RUN-EXIT=<rc>, ALL-DONE.
export PATH=/usr/local/bin:/usr/lib/xen-@XENV@/bin:/usr/sbin:/usr/bin:/sbin:/bin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
[ -c /dev/hvc0 ] && exec </dev/hvc0 >/dev/hvc0 2>&1
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
# What udev would add; the hotplug scripts' locking stats /dev/stdin.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /run
mount -t tmpfs -o size=400m tmpfs /tmp
mkdir -p /run/xen /run/xenstored /run/lock /var/lib/xen /var/lib/xenstored /var/log/xen/console
ln -s /run/lock /var/lock
say() { echo "@@ $(cut -d' ' -f1 /proc/uptime)s $*"; }

for m in $(cat /lib/modules/order); do modprobe "$m" || say "modprobe $m failed"; done
# What the pods' network needs: lo up, a place for named netns.
ip link set lo up
mkdir -p /run/netns
mount -t xenfs xenfs /proc/xen
export XENSTORED_ROOTDIR=/run/xenstored
xenstored --pid-file /run/xenstore.pid
i=0; while ! xenstore-read -s / >/dev/null 2>&1; do
  i=$((i+1)); [ $i -gt 300 ] && { say "xenstored did not come up"; break; }; sleep 0.1
done
xen-init-dom0
xenconsoled --pid-file /run/xenconsoled.pid --log=none
say "DOM0-READY"

mkdir -p /mnt/host
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host; then
  say "HOSTSHARE-MOUNTED"
  sh /mnt/host/run.sh; say "RUN-EXIT=$?"
else
  say "HOSTSHARE-MOUNT-FAILED"
fi
sync
say "ALL-DONE"
poweroff -f
