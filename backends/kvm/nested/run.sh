#!/bin/bash
# Runs hyper-vmm on real (emulated) hardware virtualization: QEMU/TCG with an
# AMD SVM+NPT CPU boots Debian's kernel (L1), which loads kvm-amd and runs
# l1-init.sh: the test guest, then the real payload to hyperstart's READY.
# Needs: qemu-system-x86, busybox-static, cpio, gcc, apt access for the
# linux-image deb; the built hyper-vmm, test guest and payload.
# Usage: backends/kvm/nested/run.sh   (env: NK_WORK, VMM, PAYLOAD_DIR, TIMEOUT, L1_ARGS=nk_runs=N,
#        SMP=N L1 vCPUs (default 1: with 2, one L1 soft lockup in kvm-pit was seen), WITH_QEMU=1 to also time QEMU on the same payload)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
W=${NK_WORK:-/tmp/hyper-nested}
VMM=${VMM:-$ROOT/target/release/hyper-vmm}
PAYLOAD=${PAYLOAD_DIR:-$ROOT/build}
TIMEOUT=${TIMEOUT:-900}
mkdir -p "$W/debs"

# 1. L1 kernel: Debian's linux-image (kvm.ko, kvm-amd.ko), as an ELF vmlinux.
if [ ! -e "$W/vmlinux" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  (cd "$W/debs" && chmod 777 . && apt-get download -qq "$KPKG")
  rm -rf "$W/root"; mkdir -p "$W/root"
  dpkg-deb -x "$(ls "$W"/debs/linux-image-*.deb | head -1)" "$W/root"
  Z=$(ls "$W/root/boot"/vmlinuz-*)
  off=$(grep -abo $'\xfd7zXZ' "$Z" | head -1 | cut -d: -f1)
  tail -c +$((off+1)) "$Z" | xz -dc > "$W/vmlinux" 2>/dev/null || true
  file "$W/vmlinux" | grep -q 'ELF 64-bit' || { echo "vmlinux extraction failed" >&2; exit 1; }
fi
KVER=$(ls "$W/root/lib/modules")

# 2. L1 initramfs.
"$ROOT/backends/kvm/testguest/build.sh" "$W/tg"
gcc -O2 -static -o "$W/agentcat" "$HERE/agentcat.c"
Z=$W/l1-root; rm -rf "$Z"
mkdir -p "$Z"/{bin,dev,proc,sys,tmp,l2,lib/modules,lib64,lib/x86_64-linux-gnu,usr/bin,usr/share/qemu}
cp /bin/busybox "$Z/bin/busybox"; ln -s busybox "$Z/bin/sh"
K=$W/root/lib/modules/$KVER/kernel
for m in virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd; do
  cp "$K/$m.ko" "$Z/lib/modules/"
done
libs() { ldd "$1" | awk '/=> \//{print $3}' | while read -r l; do cp -L "$l" "$Z/lib/x86_64-linux-gnu/"; done; }
cp "$VMM" "$Z/bin/hyper-vmm"; libs "$VMM"
cp -L /lib64/ld-linux-x86-64.so.2 "$Z/lib64/"
cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$Z/lib/x86_64-linux-gnu/"
cp "$W/agentcat" "$Z/bin/"
cp "$W/tg/hyper-testguest" "$Z/l2/"
python3 - "$Z/l2/disk.img" <<'PY'
import sys
d = bytearray(64 * 512)
for s in range(64):
    t = f"HYPERTG-SECTOR-{s}\n".encode(); d[s*512:s*512+len(t)] = t
open(sys.argv[1], "wb").write(d)
PY
cp -L "$PAYLOAD/hyperkernel" "$Z/l2/hyperkernel"
[ -e "$PAYLOAD/hyperkernel.bzImage" ] && cp -L "$PAYLOAD/hyperkernel.bzImage" "$Z/l2/"
cp -L "$PAYLOAD/hyperstart.img" "$Z/l2/"
if [ "${WITH_QEMU:-0}" = 1 ]; then
  cp /usr/bin/qemu-system-x86_64 "$Z/usr/bin/"; libs /usr/bin/qemu-system-x86_64
  for f in bios-microvm.bin qboot.rom pvh.bin linuxboot_dma.bin; do
    [ -e "/usr/share/qemu/$f" ] && cp -L "/usr/share/qemu/$f" "$Z/usr/share/qemu/"
  done
fi
cp "$HERE/l1-init.sh" "$Z/init"; chmod +x "$Z/init"
mknod -m 600 "$Z/dev/console" c 5 1 2>/dev/null || true
(cd "$Z" && find . | sort | cpio -o -H newc --quiet -R 0:0) > "$W/l1.cpio"

# 3. Boot L1 under TCG with emulated SVM; stamp lines with host time.
start=$EPOCHREALTIME
timeout "$TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg -cpu qemu64,+svm,+npt -m 2048 -smp "${SMP:-1}" \
  -nographic -monitor none -serial stdio -no-reboot -nic none \
  -kernel "$W/vmlinux" -initrd "$W/l1.cpio" -append "console=ttyS0 panic=-1 quiet ${L1_ARGS:-nk_runs=3}" </dev/null 2>&1 |
while IFS= read -r line; do
  t=$(( ${EPOCHREALTIME/./} - ${start/./} ))
  printf '[%4d.%02d] %s\n' $((t/1000000)) $(((t/10000)%100)) "${line//$'\r'/}"
  case "$line" in *ALL-DONE*) break;; esac
done | tee "$W/l1.log"
# Success: the test guest passed and every payload boot reached READY.
grep -q "TESTGUEST-EXIT rc=0" "$W/l1.log" && grep -q "ALL-DONE" "$W/l1.log" &&
  ! grep -q "agentcat rc=[1-9]" "$W/l1.log"
