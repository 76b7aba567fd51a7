#!/bin/bash
# Builds the dom0 initramfs ($XEN_CACHE/dom0.initrd) from the unpacked
# Debian packages (fetch-xen.sh) and a few host tools: busybox, bash (for
# Xen's hotplug scripts), losetup/flock/stat, mkfs.erofs (hyperd builds rootfs
# images), xl/xenstored/xenconsoled + their libraries, and the kernel modules
# for Xen, blkback + loop (guest disks) and virtio-9p (the host share).
# Uncompressed on purpose: gunzip under TCG costs more than the bigger read.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
C=${XEN_CACHE:-/var/cache/hyper/xen}
. "$C/versions.env"        # KVER, XENV
R=$C/root
XB=usr/lib/xen-$XENV/bin
OUT=$C/dom0.initrd

KEY=$( (cat "$C/root.key" "$HERE/dom0-init.sh" "$0"; ls -l /bin/busybox /bin/bash /usr/bin/mkfs.erofs) | sha256sum | cut -c1-16)
if [ -s "$OUT" ] && [ "$(cat "$C/dom0.key" 2>/dev/null)" = "$KEY" ]; then
  echo "build-dom0: cached ($OUT)"; exit 0
fi

Z=$C/dom0-root; rm -rf "$Z"
mkdir -p "$Z"/{bin,sbin,dev,proc,sys,run,tmp,mnt/host,etc/xen,lib/modules,lib64,lib/x86_64-linux-gnu} \
         "$Z"/usr/{bin,sbin,local/bin} "$Z/$XB" "$Z"/var/{lib,log}
ln -s ../run "$Z/var/run"
cp /bin/busybox "$Z/bin/busybox"; ln -s busybox "$Z/bin/sh"
# Hotplug scripts are bash; give them util-linux's tools, not busybox's.
cp /bin/bash "$Z/bin/bash"
HOSTBINS="/sbin/losetup /usr/bin/flock /usr/bin/stat /usr/bin/mkfs.erofs"
for b in $HOSTBINS; do cp -L "$b" "$Z/usr/local/bin/"; done

BINS="xl xenstored xenconsoled xen-init-dom0 xenconsole libxl-save-helper"
for b in $BINS; do cp "$R/$XB/$b" "$Z/$XB/"; done
cp -a "$R"/usr/bin/xenstore* "$Z/usr/bin/"
cp "$R/etc/xen/xl.conf" "$Z/etc/xen/"
cp -a "$R/etc/xen/scripts" "$Z/etc/xen/"

libs=$(for b in $BINS; do echo "$Z/$XB/$b"; done; echo "$R/usr/bin/xenstore /bin/bash $HOSTBINS")
LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu ldd $libs 2>/dev/null \
  | awk '/=> \//{print $3}' | sort -u | while read -r l; do cp -L "$l" "$Z/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$Z/lib64/"
# glibc dlopen()s libgcc_s for pthread_cancel: xl aborts without it.
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$Z/lib/x86_64-linux-gnu/"

K=$R/lib/modules/$KVER/kernel
: > "$Z/lib/modules/order"
for m in drivers/xen/xen-evtchn drivers/xen/xen-gntdev drivers/xen/xen-gntalloc drivers/xen/xen-privcmd \
         drivers/xen/xenfs/xenfs drivers/block/loop drivers/block/xen-blkback/xen-blkback \
         drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/9p/9pnet \
         net/9p/9pnet_virtio fs/netfs/netfs fs/fscache/fscache fs/9p/9p; do
  cp "$K/$m.ko" "$Z/lib/modules/"; echo "${m##*/}" >> "$Z/lib/modules/order"
done

sed "s/@XENV@/$XENV/g" "$HERE/dom0-init.sh" > "$Z/init"; chmod +x "$Z/init"
(cd "$Z" && find . | cpio -o -H newc --quiet -R 0:0) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$KEY" > "$C/dom0.key"
echo "build-dom0: $(du -h "$OUT" | cut -f1) $OUT"
