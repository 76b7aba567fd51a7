#!/bin/sh
# Builds the guest's initramfs: hyperstart as /init plus the few directories
# and the console node the kernel needs before /init runs.
#
#   mkinitramfs.sh HYPERSTART_BINARY OUT.img
#
# Needs root (for mknod) and GNU cpio. The image is an uncompressed newc
# archive: unpacking it is faster than decompressing under emulation, and it
# is small anyway. OUT.img is replaced atomically.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 HYPERSTART_BINARY OUT.img" >&2
    exit 2
fi
binary=$1
out=$2

if [ ! -f "$binary" ]; then
    echo "$0: $binary: no such file" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: must run as root (to create dev/console)" >&2
    exit 1
fi

outdir=$(dirname -- "$out")
staging=$(mktemp -d)
tmp=$(mktemp "$outdir/.$(basename -- "$out").XXXXXX")
trap 'rm -rf "$staging"; rm -f "$tmp"' EXIT

root=$staging/root
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/tmp"
chmod 0755 "$root" "$root/dev" "$root/proc" "$root/sys" "$root/run"
chmod 1777 "$root/tmp"
install -m 0755 "$binary" "$root/init"
mknod -m 0600 "$root/dev/console" c 5 1
# Fixed timestamps and sorted entries: the same binary gives the same image.
find "$root" -exec touch -h -d @0 {} +

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$tmp"

# Check what the kernel will unpack.
listing=$(cpio -itv --quiet <"$tmp")
check() {
    if ! printf '%s\n' "$listing" | grep -Eq "$1"; then
        echo "$0: the image lacks $2:" >&2
        printf '%s\n' "$listing" >&2
        exit 1
    fi
}
check '^-rwxr-xr-x .* init$' "an executable /init"
check '^crw------- .* 5, +1 .* dev/console$' "dev/console (c 5 1)"
for dir in dev proc sys run tmp; do
    check "^d.* $dir\$" "$dir/"
done

chmod 0644 "$tmp"
mv -f "$tmp" "$out"
trap 'rm -rf "$staging"' EXIT
echo "$out: $(wc -c <"$out") bytes"
