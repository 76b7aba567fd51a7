#!/bin/bash
# Builds the dom0 initramfs ($XEN_CACHE/dom0.initrd) from the unpacked
# Debian packages (fetch-xen.sh) and a few host tools: busybox, bash (for
# Xen's hotplug scripts), losetup/flock/stat, mkfs.erofs (hyperd builds rootfs
# images), xl/xenstored/xenconsoled + their libraries, and the kernel modules
# for Xen, blkback + loop (guest disks) and virtio-9p (the host share).
# Networking (hyperd's CNI + the pods' vifs): netback, veth, bridge, tc
# (ingress, u32, mirred) and netfilter modules with kmod's modprobe so the
# kernel loads them on demand, iproute2, iptables (nft), the CNI plugins of
# containernetworking-plugins in /usr/lib/cni, the default conflist and the
# backend's vif hotplug script.
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
# The default conflist make install puts in place.
CONFLIST=$ROOT/config/cni/10-hyper.conflist
CNI_PLUGINS="bridge host-local loopback portmap firewall tuning bandwidth"
NETBINS="/usr/sbin/ip /usr/sbin/tc /usr/sbin/xtables-nft-multi /usr/bin/kmod /usr/bin/curl"
for b in $NETBINS; do [ -x "$b" ] || { echo "build-dom0: $b missing (apt-get install iproute2 iptables kmod curl)" >&2; exit 1; }; done
for p in $CNI_PLUGINS; do [ -x "/usr/lib/cni/$p" ] || { echo "build-dom0: /usr/lib/cni/$p missing (apt-get install containernetworking-plugins)" >&2; exit 1; }; done

KEY=$( (cat "$C/root.key" "$HERE/dom0-init.sh" "$0" "$VIF_SCRIPT" "$CONFLIST"
        ls -lL /bin/busybox /bin/bash /usr/bin/mkfs.erofs $NETBINS; for p in $CNI_PLUGINS; do ls -l "/usr/lib/cni/$p"; done) | sha256sum | cut -c1-16)
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
HOSTBINS="/sbin/losetup /usr/bin/flock /usr/bin/stat /usr/bin/mkfs.erofs"
for b in $HOSTBINS; do cp -L "$b" "$Z/usr/local/bin/"; done

BINS="xl xenstored xenconsoled xen-init-dom0 xenconsole libxl-save-helper"
for b in $BINS; do cp "$R/$XB/$b" "$Z/$XB/"; done
cp -a "$R"/usr/bin/xenstore* "$Z/usr/bin/"
cp "$R/etc/xen/xl.conf" "$Z/etc/xen/"
cp -a "$R/etc/xen/scripts" "$Z/etc/xen/"

# Networking tools: iproute2, iptables-nft (+ its extensions, dlopen()ed),
# kmod as modprobe (the kernel's request_module runs /sbin/modprobe).
cp /usr/sbin/ip /usr/sbin/tc /usr/sbin/xtables-nft-multi "$Z/usr/sbin/"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -s xtables-nft-multi "$Z/usr/sbin/$n"
done
cp -a /usr/lib/x86_64-linux-gnu/xtables "$Z/usr/lib/x86_64-linux-gnu/"
cp /usr/bin/curl "$Z/usr/bin/"   # the network e2e cases fetch pages with it
cp /usr/bin/kmod "$Z/sbin/kmod"
for n in modprobe insmod rmmod lsmod depmod modinfo; do ln -s kmod "$Z/sbin/$n"; done
for p in $CNI_PLUGINS; do cp "/usr/lib/cni/$p" "$Z/usr/lib/cni/"; done
cp "$CONFLIST" "$Z/etc/hyper/cni/net.d/10-hyper.conflist"
install -m 0755 "$VIF_SCRIPT" "$Z/etc/xen/scripts/vif-hyper"
NETLIBS="$NETBINS /usr/lib/x86_64-linux-gnu/xtables/*.so"

libs=$(for b in $BINS; do echo "$Z/$XB/$b"; done; echo "$R/usr/bin/xenstore /bin/bash $HOSTBINS $NETLIBS")
LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu ldd $libs 2>/dev/null \
  | awk '/=> \//{print $3}' | sort -u | while read -r l; do cp -L "$l" "$Z/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$Z/lib64/"
# glibc dlopen()s libgcc_s for pthread_cancel: xl aborts without it.
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$Z/lib/x86_64-linux-gnu/"

# Modules in their tree with modules.dep (depmod -b), so that modprobe and
# the kernel's on-demand loading (tc actions, netfilter) work. BOOT: loaded
# by /init; NET: directories shipped whole; each with its dependencies.
K=$R/lib/modules/$KVER/kernel
MD=$Z/lib/modules/$KVER
BOOT="xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs loop xen-blkback xen-netback
      virtio_pci 9pnet_virtio 9p veth bridge tun dummy"
NETDIRS="net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/sched net/bridge"
# Loaded on demand by name: libcrc32c (nf_tables, nf_nat) asks the crypto API for crc32c.
ONDEMAND="crc32c_generic"
declare -A seen=()
add_mod() { # add_mod FILE: the module and what it depends on
  local f=$1 d
  [ -n "$f" ] || exit 1
  [ -n "${seen[$f]:-}" ] && return 0
  seen[$f]=1
  mkdir -p "$MD/kernel/$(dirname "${f#"$K"/}")"; cp "$f" "$MD/kernel/${f#"$K"/}"
  for d in $(modinfo -F depends "$f" | tr ',' ' '); do add_mod "$(mod_file "$d")"; done
}
mod_file() { # the .ko of a module name (- and _ are the same to kmod)
  local n=${1//_/[-_]}
  local f; f=$(find "$K" -name "$n.ko" | head -1)
  [ -n "$f" ] || { echo "build-dom0: no module $1 in $K" >&2; exit 1; }
  echo "$f"
}
for m in $BOOT $ONDEMAND; do add_mod "$(mod_file "$m")"; done
for d in $NETDIRS; do for f in "$K/$d"/*.ko; do add_mod "$f"; done; done
cp "$R/lib/modules/$KVER"/modules.{builtin,builtin.modinfo,order} "$MD/"
depmod -b "$Z" "$KVER"
echo "$BOOT" | tr -s ' \n' '\n\n' | grep . > "$Z/lib/modules/order"

sed "s/@XENV@/$XENV/g" "$HERE/dom0-init.sh" > "$Z/init"; chmod +x "$Z/init"
(cd "$Z" && find . | cpio -o -H newc --quiet -R 0:0) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$KEY" > "$C/dom0.key"
echo "build-dom0: $(du -h "$OUT" | cut -f1) $OUT"
