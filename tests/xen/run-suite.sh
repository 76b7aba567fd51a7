#!/bin/bash
# The Xen leg of the e2e suite, on real Xen 4.17 running inside QEMU (TCG):
#   1. fetch Debian's Xen + dom0 kernel (cached in $XEN_CACHE), build dom0's initramfs;
#   2. build hyperd, hyper, the xen plugin, hyperstart and the e2e test binary;
#   3. boot Xen once with a virtio-9p share of those, run the e2e cases and the
#      benchmark inside dom0 (in-dom0.sh), bring the results back.
# Prints cargo's own "test result:" lines; exits non-zero on failure or timeout.
#
#   tests/xen/run-suite.sh            (env: XEN_CACHE, CARGO_TARGET_DIR, XEN_TIMEOUT,
#                                      XEN_CASES, HYPER_XEN_TYPE=pv|pvh)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export XEN_CACHE=${XEN_CACHE:-/var/cache/hyper/xen}
C=$XEN_CACHE
T=${CARGO_TARGET_DIR:-$ROOT/target}
TIMEOUT=${XEN_TIMEOUT:-1380}
MUSL=x86_64-unknown-linux-musl
# The cases that fit the budget (≈15 s per PV domU under TCG).
CASES=${XEN_CASES:-"output_and_exit_codes stderr_is_kept_apart_from_stdout stdin_is_piped_with_dash_i \
env_workdir_hostname_and_user command_not_found_exits_127_with_a_message \
hyper_info_reports_plugins_probe_and_payload writes_land_in_the_overlay_and_the_image_stays_unchanged \
stopping_hyperd_with_stop_pods_on_exit_takes_its_running_vms_down a_new_hyperd_cleans_up_after_a_killed_one \
a_new_hyperd_takes_over_running_pods_after_a_crash_and_a_stop four_pods_at_once"}
cd "$ROOT"

"$HERE/fetch-xen.sh"
"$HERE/build-dom0.sh"
. "$C/versions.env"

echo "xen-suite: building (target dir $T)"
cargo build --release -p hyper-cli -p hyper-hypervisor -p hyper-backend-xen
cargo build --release -p hyperstart --target $MUSL
# test_exe PACKAGE TARGET: the path of a built test binary.
test_exe() {
  cargo test --release -p "$1" --no-run --message-format=json 2>/dev/null | python3 -c 'import sys,json
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")==sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$2"
}
E2E=$(test_exe hyper-tests run)
REAL=$(test_exe hyper-backend-xen real_xen)
[ -x "$E2E" ] && [ -x "$REAL" ] || { echo "xen-suite: test binaries missing (e2e: $E2E, real_xen: $REAL)" >&2; exit 1; }
[ -e build/hyperkernel ] || make kernel
[ -d build/rootfs/busybox ] || make rootfs

S=$C/share
rm -rf "$S"; mkdir -p "$S"/{bin,lib,payload,rootfs,results}
cp "$T/release/hyperd" "$T/release/hyper" "$T/release/hyper-plugin-host" "$T/release/libhyper_backend_xen.so" "$S/bin/"
cp "$E2E" "$S/bin/e2e-run"
cp "$REAL" "$S/bin/real-xen"
ldd "$S"/bin/* | awk '/=> \//{print $3}' | sort -u | xargs -r cp -L -t "$S/lib/"
hyperstart/mkinitramfs.sh "$T/$MUSL/release/hyperstart" "$S/payload/hyperstart.img"
cp -L build/hyperkernel "$S/payload/hyperkernel"
cp -a build/rootfs/busybox "$S/rootfs/"
# For the benchmark: the same kernel with an initramfs that only powers off.
P=$(mktemp -d); mkdir -p "$P/bin" "$P/dev"; cp /bin/busybox "$P/bin/"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$P/init"; chmod +x "$P/init"
(cd "$P" && find . | cpio -o -H newc --quiet -R 0:0) > "$S/payload/poweroff.img"; rm -rf "$P"
cp "$HERE/in-dom0.sh" "$S/run.sh"
echo "$CASES" > "$S/cases"
echo "HYPER_XEN_TYPE=${HYPER_XEN_TYPE:-pv}" > "$S/env"

LOG=$C/serial.log
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
for suite in real-xen e2e; do
  out=$S/results/$suite.txt
  if [ -f "$out" ]; then
    echo "xen-suite: $suite"
    grep -aE '^test |^failures:|^---- |panicked' "$out" || true
    grep -aE '^test result:' "$out" || { echo "xen-suite: FAILED: no test result line from $suite" >&2; fail=1; }
    [ "$(cat "$S/results/$suite.rc" 2>/dev/null)" = 0 ] || { echo "xen-suite: FAILED: $suite exit $(cat "$S/results/$suite.rc" 2>/dev/null)" >&2; fail=1; }
  else
    echo "xen-suite: FAILED: no $suite results" >&2; fail=1
  fi
done
if [ -f "$S/results/bench.txt" ]; then
  echo "xen-suite: bench (seconds, dom0 uptime clock; TCG):"
  cat "$S/results/bench.txt"
  awk '/^hyper-run/ && / rc=0 /{h+=$4;nh++} /^xl-create/ && / rc=0 /{x+=$4;nx++}
       END{if(nh&&nx) printf "xen-suite: bench mean hyper run %.2f s, plain xl create %.2f s, ratio %.2f\n", h/nh, x/nx, (h/nh)/(x/nx)}' "$S/results/bench.txt"
fi
exit $fail
