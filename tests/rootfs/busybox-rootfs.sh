#!/usr/bin/env bash
# Makes a minimal container root filesystem from Debian's busybox-static:
#   tests/rootfs/busybox-rootfs.sh OUT_DIR
# The tree is rebuilt from scratch so its content (and so its cached image) is
# the same on every machine with the same busybox-static.
set -euo pipefail
out=${1:?usage: busybox-rootfs.sh OUT_DIR}
bb=/bin/busybox
[ -x "$bb" ] && "$bb" --list >/dev/null 2>&1 || { echo "busybox-rootfs: $bb missing: apt-get install busybox-static" >&2; exit 1; }
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' || {
  echo "busybox-rootfs: $bb is not static: apt-get install busybox-static" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "${out%/}.XXXX")
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,home/user}
chmod 1777 "$tmp/tmp"
cp "$bb" "$tmp/bin/busybox"
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$tmp/bin/$applet"
done
cat > "$tmp/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$tmp/etc/group" <<'GR'
root:x:0:
user:x:1000:
nogroup:x:65534:
GR
chown 1000:1000 "$tmp/home/user"
# A program that dies of a real signal: the container's first process is PID 1
# of its namespace, which signals sent from inside (`kill -9 $$`) cannot kill,
# but a fault can.
printf 'int main(void) { *(volatile int *)0 = 1; return 0; }\n' > "$tmp/segv.c"
cc -static -O0 -o "$tmp/bin/segv" "$tmp/segv.c"
rm "$tmp/segv.c"
echo "hypercontainer test image" > "$tmp/etc/motd"
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
