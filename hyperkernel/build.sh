#!/usr/bin/env bash
# Build the hyperkernel (the one guest kernel every backend boots) from Debian's
# linux-source-6.1, with hyperkernel.config merged over tinyconfig. Everything is
# built in; there are no modules.
#
# The result is cached outside the work tree, keyed by the hash of the fragment,
# this script and the linux-source tarball's version, so it is rebuilt only when
# one of those changes:
#   $HYPER_KERNEL_CACHE/<key>/vmlinux   ELF with the PVH note (QEMU -kernel, KVM VMM, Xen PVH/PV)
#   $HYPER_KERNEL_CACHE/<key>/bzImage   LZ4 bzImage
# The path of the cache entry is printed on the last line of stdout.
#
# Needs: linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev lz4
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
FRAG=$HERE/hyperkernel.config
CACHE=${HYPER_KERNEL_CACHE:-/var/cache/hyper/kernel}
JOBS=${JOBS:-$(nproc)}
TARBALL=${TARBALL:-/usr/src/linux-source-6.1.tar.xz}
[ -f "$TARBALL" ] || { echo "hyperkernel: $TARBALL missing: apt-get install linux-source-6.1" >&2; exit 1; }

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$TARBALL")
key=$( { cat "$FRAG" "$0"; echo "$src_version"; } | sha256sum | cut -c1-16)
dest=$CACHE/$key
if [ -f "$dest/vmlinux" ] && [ -f "$dest/bzImage" ]; then
  echo "hyperkernel: cached ($key)" >&2
  echo "$dest"
  exit 0
fi

work=$CACHE/build-$key
src=$work/src
out=$work/out
mkdir -p "$src" "$out"
if [ ! -f "$src/Makefile" ]; then
  echo "hyperkernel: unpacking $TARBALL" >&2
  tar -xf "$TARBALL" -C "$src" --strip-components=1
fi
cd "$src"
make O="$out" ARCH=x86_64 tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m -O "$out" "$out/.config" "$FRAG" >/dev/null
make O="$out" ARCH=x86_64 olddefconfig >/dev/null
# A symbol whose dependencies are unmet is dropped silently by olddefconfig:
# fail loudly instead, so the fragment always says what the kernel really has.
bad=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$out/.config" || { echo "hyperkernel: not applied: $line" >&2; bad=1; } ;;
    "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}
       if grep -q "^$sym=" "$out/.config"; then echo "hyperkernel: not unset: $sym" >&2; bad=1; fi ;;
  esac
done < "$FRAG"
[ "$bad" = 0 ] || { echo "hyperkernel: fragment not fully applied" >&2; exit 1; }
start=$(date +%s)
echo "hyperkernel: building with -j$JOBS (about 25 min on 2 cores)" >&2
make O="$out" ARCH=x86_64 -j"$JOBS" vmlinux bzImage >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2; exit 1; }
echo "hyperkernel: built in $(( $(date +%s) - start )) s" >&2
mkdir -p "$dest.tmp"
cp "$out/vmlinux" "$dest.tmp/vmlinux"
cp "$out/arch/x86/boot/bzImage" "$dest.tmp/bzImage"
cp "$out/.config" "$dest.tmp/config"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
rm -rf "$work"
echo "$dest"
