#!/bin/bash
# The Xen leg of the e2e suite, on real Xen 4.17 running inside QEMU (TCG):
#   1. fetch Debian's Xen + dom0 kernel (cached in $XEN_CACHE), build dom0's initramfs;
#   2. build hyperd, hyper, the xen plugin, hyperstart and the e2e test binary;
#   3. boot Xen once with a virtio-9p share of those, run the e2e cases and the
#      benchmark inside dom0 (in-dom0.sh), bring the results back.
# Prints cargo's own "test result:" lines; exits non-zero on failure or timeout.
#
# Each listed case must pass: tests/matrix.py verify fails the leg on a listed
# case that did not run, and records the results in build/matrix/xen.txt.
#
#   tests/xen/run-suite.sh            (env: XEN_CACHE, XEN_SHARE (default build/xen-share), CARGO_TARGET_DIR, XEN_TIMEOUT,
#                                      XEN_CASES="exact names", HYPER_XEN_TYPE=pv|pvh,
#                                      XEN_BENCH_RUNS=N (the benchmark's rounds, 3),
#                                      XEN_BENCH_ONLY=1 (the benchmark alone, for measuring: the leg
#                                      then fails for want of test results),
#                                      XEN_BENCH_RUNS=0 XEN_REAL=0 (neither the benchmark nor the
#                                      backend's real_xen tests: only the e2e cases, to try a few))
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export XEN_CACHE=${XEN_CACHE:-/var/cache/hyper/xen}
C=$XEN_CACHE
T=${CARGO_TARGET_DIR:-$ROOT/target}
# A bound for a hung machine, not a budget: the whole leg took 872 s on
# 2026-12-08 (then +6 cases, ≈120 s); a slower CI host needs the headroom.
TIMEOUT=${XEN_TIMEOUT:-1800}
MUSL=x86_64-unknown-linux-musl
# The e2e cases: those tests/cases.toml tags `xen` (XEN_CASES: exact names instead).
M="python3 $ROOT/tests/matrix.py"
$M reset xen
cd "$ROOT"

"$HERE/fetch-xen.sh"
"$HERE/build-dom0.sh"
. "$C/versions.env"

echo "xen-suite: building (target dir $T)"
cargo build --release -p hyper-cli -p hyper-daemon -p hyper-hypervisor -p hyper-backend-xen
cargo build --release -p hyperstart --target $MUSL
REAL=$($M exe hyper-backend-xen real_xen)
[ -x "$REAL" ] || { echo "xen-suite: test binary real_xen missing ($REAL)" >&2; exit 1; }
[ -e build/hyperkernel ] || make kernel
[ -d build/rootfs/busybox ] || make rootfs

# Per work tree: two worktrees running this leg at once must not share it.
S=${XEN_SHARE:-$ROOT/build/xen-share}
rm -rf "$S"; mkdir -p "$S"/{bin,lib,payload,rootfs,results}
cp "$T/release/hyperd" "$T/release/hyper" "$T/release/hyper-plugin-host" "$T/release/libhyper_backend_xen.so" "$T/release/hyper-xen-console" "$S/bin/"
# The test plugins (wrong ABI, panicking, …) of the errors.rs cases (built by make build).
cp "$T"/release/libhyper_test_plugin_*.so "$S/bin/" 2>/dev/null || true
cp "$REAL" "$S/bin/real-xen"
$M stage xen "$S"
ldd "$S"/bin/* "$S"/e2e/* | awk '/=> \//{print $3}' | sort -u | xargs -r cp -L -t "$S/lib/"
hyperstart/mkinitramfs.sh "$T/$MUSL/release/hyperstart" "$S/payload/hyperstart.img"
cp -L build/hyperkernel "$S/payload/hyperkernel"
cp -a build/rootfs/busybox "$S/rootfs/"
# For the benchmark: the same kernel with an initramfs that only powers off.
P=$(mktemp -d); mkdir -p "$P/bin" "$P/dev"; cp /bin/busybox "$P/bin/"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$P/init"; chmod +x "$P/init"
(cd "$P" && find . | cpio -o -H newc --quiet -R 0:0) > "$S/payload/poweroff.img"; rm -rf "$P"
# For real_xen's NIC tests: a guest that pings through its netfront.
P=$(mktemp -d); mkdir -p "$P/bin" "$P/dev" "$P/proc" "$P/sys"; cp /bin/busybox "$P/bin/"
cp "$HERE/netprobe-init.sh" "$P/init"; chmod +x "$P/init"
(cd "$P" && find . | cpio -o -H newc --quiet -R 0:0) > "$S/payload/netprobe.img"; rm -rf "$P"
# For real_xen's volume test: a guest that uses its 9pfs shares and disks.
P=$(mktemp -d); mkdir -p "$P/bin" "$P/dev" "$P/proc" "$P/sys"; cp /bin/busybox "$P/bin/"
cp "$HERE/volprobe-init.sh" "$P/init"; chmod +x "$P/init"
(cd "$P" && find . | cpio -o -H newc --quiet -R 0:0) > "$S/payload/volprobe.img"; rm -rf "$P"
cp "$HERE/in-dom0.sh" "$S/run.sh"
printf 'HYPER_XEN_TYPE=%s\nXEN_BENCH_RUNS=%s\nXEN_BENCH_ONLY=%s\nXEN_REAL=%s\n' "${HYPER_XEN_TYPE:-pv}" "${XEN_BENCH_RUNS:-3}" "${XEN_BENCH_ONLY:-0}" "${XEN_REAL:-1}" > "$S/env"

LOG=$S.serial.log
echo "xen-suite: booting Xen under QEMU (TCG), serial log $LOG, timeout ${TIMEOUT}s"
start=$(date +%s)
set +e
timeout --foreground -k 10 "$TIMEOUT" qemu-system-x86_64 \
  -machine q35 -accel tcg -cpu qemu64,+svm,+npt -m 2048 -smp 2 \
  -nographic -monitor none -serial stdio -no-reboot -nic none \
  -kernel "$C/xen" \
  -append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=768M,max:768M dom0_max_vcpus=1 noreboot" \
  -virtfs "local,path=$S,mount_tag=host0,security_model=none,id=host0" \
  -initrd "$C/vmlinux console=hvc0 quiet,$C/dom0.initrd" \
  </dev/null > "$LOG" 2>&1
qrc=$?
set -e
echo "xen-suite: QEMU ended (rc $qrc) after $(( $(date +%s) - start )) s"
grep -a '^@@' "$LOG" || true

fail=0
if ! grep -aq 'ALL-DONE' "$LOG"; then
  echo "xen-suite: FAILED: dom0 did not finish (timeout or crash); serial log tail:" >&2
  tail -n 40 "$LOG" >&2
  fail=1
fi
out=$S/results/real-xen.txt
if [ "${XEN_REAL:-1}" = 0 ]; then
  echo "xen-suite: real-xen not run (XEN_REAL=0)"
elif [ -f "$out" ]; then
  echo "xen-suite: real-xen"
  grep -aE '^test |^failures:|^---- |panicked' "$out" || true
  grep -aq '^test result:' "$out" || { echo "xen-suite: FAILED: no test result line from real-xen" >&2; fail=1; }
  [ "$(cat "$S/results/real-xen.rc" 2>/dev/null)" = 0 ] || { echo "xen-suite: FAILED: real-xen exit $(cat "$S/results/real-xen.rc" 2>/dev/null)" >&2; fail=1; }
else
  echo "xen-suite: FAILED: no real-xen results" >&2; fail=1
fi
$M collect xen "$S" || fail=1
if [ -f "$S/results/bench.txt" ]; then
  echo "xen-suite: bench (seconds, dom0 uptime clock; TCG):"
  cat "$S/results/bench.txt"
  python3 "$HERE/bench-summary.py" "$S/results/bench.txt"
fi
exit $fail
