#!/bin/bash
# Builds the dom0 initramfs ($XEN_CACHE/dom0.initrd) from the unpacked
# Debian packages (fetch-xen.sh) and a few host tools: busybox, bash (for
# Xen's hotplug scripts), losetup/flock/stat, mkfs.erofs (hyperd builds rootfs
# images), mkfs.ext4 (named block volumes), xl/xenstored/xenconsoled + their libraries, and the kernel modules
# for Xen, blkback + loop (guest disks) and virtio-9p (the host share).
# Networking (hyperd's CNI + the pods' vifs): netback, veth, bridge, tc
# (ingress, u32, mirred) and netfilter modules with kmod's modprobe so the
# kernel loads them on demand, iproute2, iptables (nft), the CNI plugins of
# containernetworking-plugins in /usr/lib/cni, the default conflist and the
# backend's vif hotplug script.
# Shares (Xen 9pfs): Debian's qemu-system-xen as libxl's device model
# (/usr/libexec/xen-qemu-system-i386, which serves a domain's p9 entries).
# Uncompressed on purpose: gunzip under TCG costs more than the bigger read.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
C=${XEN_CACHE:-/var/cache/hyper/xen}
. "$C/versions.env"        # KVER, XENV
R=$C/root
XB=usr/lib/xen-$XENV/bin
OUT=$C/dom0.initrd

ROOT=$(cd "$HERE/../.." && pwd)
VIF_SCRIPT=$ROOT/backends/xen/scripts/vif-hyper
BLOCK_SCRIPT=$ROOT/backends/xen/scripts/block-hyper
# The pods' network: tools, CNI plugins, default conflist, modules (shared
# with the KVM leg's L1).
. "$ROOT/tests/net-image.sh"
net_check || { echo "build-dom0: cannot build the dom0 image" >&2; exit 1; }

KEY=$( (cat "$C/root.key" /usr/share/qemu/keymaps/en-us "$HERE/dom0-init.sh" "$0" "$VIF_SCRIPT" "$BLOCK_SCRIPT" "$NET_CONFLIST" "$ROOT/tests/net-image.sh"
        ls -lL /bin/busybox /bin/bash /usr/bin/mkfs.erofs /sbin/mkfs.ext4 $NET_BINS; for p in $NET_CNI_PLUGINS; do ls -l "/usr/lib/cni/$p"; done) | sha256sum | cut -c1-16)
if [ -s "$OUT" ] && [ "$(cat "$C/dom0.key" 2>/dev/null)" = "$KEY" ]; then
  echo "build-dom0: cached ($OUT)"; exit 0
fi

Z=$C/dom0-root; rm -rf "$Z"
mkdir -p "$Z"/{bin,sbin,dev,proc,sys,run,tmp,mnt/host,etc/xen,lib/modules,lib64,lib/x86_64-linux-gnu} \
         "$Z"/usr/{bin,sbin,local/bin,lib/cni,lib/x86_64-linux-gnu} "$Z/$XB" "$Z"/var/{lib,log} \
         "$Z"/etc/hyper/cni/net.d
ln -s ../run "$Z/var/run"
cp /bin/busybox "$Z/bin/busybox"
# sh is bash: Debian's static busybox sh runs its own applets before PATH,
# and its `ip` lacks what the tests ask of iproute2 (`ip link show master`).
ln -s bash "$Z/bin/sh"
# Hotplug scripts are bash; give them util-linux's tools, not busybox's.
cp /bin/bash "$Z/bin/bash"
# mkfs.ext4: hyperd makes named block volumes with it (e2fsprogs).
HOSTBINS="/sbin/losetup /usr/bin/flock /usr/bin/stat /usr/bin/mkfs.erofs /sbin/mkfs.ext4"
for b in $HOSTBINS; do [ -x "$b" ] || { echo "build-dom0: $b missing (apt-get install util-linux erofs-utils e2fsprogs)" >&2; exit 1; }; done
for b in $HOSTBINS; do cp -L "$b" "$Z/usr/local/bin/"; done

BINS="xl xenstored xenconsoled xen-init-dom0 xenconsole libxl-save-helper"
for b in $BINS; do cp "$R/$XB/$b" "$Z/$XB/"; done
cp -a "$R"/usr/bin/xenstore* "$Z/usr/bin/"
cp "$R/etc/xen/xl.conf" "$Z/etc/xen/"
cp -a "$R/etc/xen/scripts" "$Z/etc/xen/"
# The device model libxl starts for a domain with p9 entries (its default
# path, so no device_model_override is needed).
QEMU_XEN=usr/libexec/xen-qemu-system-i386
mkdir -p "$Z/usr/libexec" "$Z/usr/share/qemu/keymaps"; cp "$R/$QEMU_XEN" "$Z/$QEMU_XEN"
# libxl passes it `-vnc none`, which still loads the default keymap
# (qemu-system-data, installed with qemu-system-x86).
cp /usr/share/qemu/keymaps/en-us "$Z/usr/share/qemu/keymaps/"

# Networking tools (iproute2, iptables-nft, curl, kmod as modprobe, CNI).
net_tools "$Z"
install -m 0755 "$VIF_SCRIPT" "$Z/etc/xen/scripts/vif-hyper"
install -m 0755 "$BLOCK_SCRIPT" "$Z/etc/xen/scripts/block-hyper"

libs=$(for b in $BINS; do echo "$Z/$XB/$b"; done; echo "$R/usr/bin/xenstore $R/$QEMU_XEN /bin/bash $HOSTBINS $NET_LIBS")
LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu ldd $libs 2>/dev/null \
  | awk '/=> \//{print $3}' | sort -u | while read -r l; do cp -L "$l" "$Z/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$Z/lib64/"
# glibc dlopen()s libgcc_s for pthread_cancel: xl aborts without it.
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$Z/lib/x86_64-linux-gnu/"

# Modules in their tree with modules.dep (net_modules): BOOT loaded by
# /init, the network's directories whole, each with its dependencies.
BOOT="xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback xen-netback
      virtio_pci 9pnet_virtio 9p veth bridge tun dummy"
# shellcheck disable=SC2086
net_modules "$Z" "$R/lib/modules/$KVER/kernel" "$KVER" $BOOT
echo "$BOOT" | tr -s ' \n' '\n\n' | grep . > "$Z/lib/modules/order"

sed "s/@XENV@/$XENV/g" "$HERE/dom0-init.sh" > "$Z/init"; chmod +x "$Z/init"
(cd "$Z" && find . | cpio -o -H newc --quiet -R 0:0) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$KEY" > "$C/dom0.key"
echo "build-dom0: $(du -h "$OUT" | cut -f1) $OUT"
