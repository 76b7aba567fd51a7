#!/bin/bash
# Downloads (does not install) Debian's Xen 4.17 + a dom0 kernel + the Xen
# device model (qemu-system-xen, for the pods' 9pfs shares) and unpacks
# them under $XEN_CACHE/root. Cached: a rerun with the same package versions
# downloads nothing. Needs: apt-get (after apt-get update), dpkg-deb, xz.
#
#   XEN_CACHE=/var/cache/hyper/xen tests/xen/fetch-xen.sh
set -euo pipefail
C=${XEN_CACHE:-/var/cache/hyper/xen}
XENV=4.17
mkdir -p "$C/debs"

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# linux-image-amd64 (not -cloud-: that one has no CONFIG_XEN_DOM0).
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || { echo "fetch-xen: cannot resolve linux-image-amd64 (run apt-get update)" >&2; exit 1; }
PKGS=("xen-hypervisor-$XENV-amd64" "xen-utils-$XENV" xen-utils-common xenstore-utils
      "libxenmisc$XENV" libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
      libxenstore4 libxentoollog1 libxendevicemodel1 libxenhypfs1 libxentoolcore1
      libyajl2 "$KPKG"
      # The device model libxl starts for a PV/PVH domain with p9 entries
      # (Xen 9pfs backend): /usr/libexec/xen-qemu-system-i386. Its other
      # libraries are qemu-system-x86's, installed on the host above.
      qemu-system-xen)
# The exact versions apt would fetch now: the cache key.
KEY=$(for p in "${PKGS[@]}"; do apt-cache policy "$p" | awk -v p="$p" '/Candidate:/{print p"="$2}'; done)
if [ -f "$C/root.key" ] && [ "$(cat "$C/root.key")" = "$KEY" ] && [ -s "$C/xen" ] && [ -s "$C/vmlinux" ]; then
  echo "fetch-xen: cached ($C)"; exit 0
fi

rm -rf "$C/debs"; mkdir -p "$C/debs"; chmod 777 "$C/debs"
(cd "$C/debs" && apt-get download -qq "${PKGS[@]}")
rm -rf "$C/root"; mkdir -p "$C/root"
for d in "$C"/debs/*.deb; do dpkg-deb -x "$d" "$C/root"; done
# QEMU's multiboot loader takes the plain ELF32 only.
zcat "$C/root/boot/xen-$XENV-amd64.gz" > "$C/xen"
KVER=$(ls "$C/root/lib/modules")
# dom0 kernel as a plain ELF: Xen's xz decompression costs ~13 s under TCG.
Z=$C/root/boot/vmlinuz-$KVER
off=$(grep -abo $'\xfd7zXZ' "$Z" | head -1 | cut -d: -f1)
tail -c +$((off+1)) "$Z" | xz -dc > "$C/vmlinux" 2>/dev/null || true
file "$C/vmlinux" | grep -q 'ELF 64-bit' || { echo "fetch-xen: cannot extract vmlinux from $Z" >&2; exit 1; }
printf 'KVER=%s\nXENV=%s\n' "$KVER" "$XENV" > "$C/versions.env"
echo "$KEY" > "$C/root.key"
cat "$C/versions.env"
