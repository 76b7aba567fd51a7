#!/bin/sh
# Runs inside the L1 machine as /mnt/host/run.sh (run.sh copies it into the
# virtio-9p share): the e2e cases tests/cases.toml tags kvm with HYPER_E2E_BACKEND=kvm against
# the real kvm_amd of L1, then (with NK_BENCH) `hyper run --rm … true`
# through the kvm plugin. Results go to /mnt/host/results.
S=/mnt/host
R=$S/results
mkdir -p "$R"
up() { cut -d' ' -f1 /proc/uptime; }
# /usr/local/bin/sh is bash (busybox's sh runs its own `ip` applet);
# iproute2's ip and iptables are in /usr/sbin, before busybox's /bin.
export PATH=/usr/local/bin:$S/bin:/usr/sbin:/sbin:/bin:/usr/bin LD_LIBRARY_PATH=$S/lib
export HYPER_CNI_CONFLIST=/etc/hyper/cni/net.d/10-hyper.conflist
export HYPER_BIN_DIR=$S/bin HYPER_PAYLOAD_DIR=$S/payload HYPER_TEST_ROOTFS=$S/rootfs/busybox
export HYPER_E2E_BACKEND=kvm
cd /tmp

# Each test file's cases by exact name (run.sh writes them from tests/cases.toml).
# A hung case must not hold the machine: the whole run has a deadline
# (TERM, then KILL) inside the outer QEMU timeout, shared by the files.
# --report-time (libtest, unstable: hence RUSTC_BOOTSTRAP) prints each case's time.
end=$(( $(cut -d. -f1 /proc/uptime) + $(cat "$S/e2e-timeout") ))
for exe in "$S"/e2e/*; do
  [ -x "$exe" ] || continue; t=${exe##*/}
  left=$(( end - $(cut -d. -f1 /proc/uptime) ))
  [ "$left" -gt 0 ] || left=1
  echo "@@ $(up)s E2E-START $t"
  # shellcheck disable=SC2046
  RUSTC_BOOTSTRAP=1 timeout -s KILL "$left" "$exe" --exact --test-threads=1 \
    -Z unstable-options --report-time $(cat "$S/cases/$t") > "$R/e2e-$t.txt" 2>&1
  echo $? > "$R/e2e-$t.rc"
  echo "@@ $(up)s E2E-END $t rc=$(cat "$R/e2e-$t.rc")"
  grep -E '^test |^test result' "$R/e2e-$t.txt"
done

[ -f "$S/bench-runs" ] || exit 0
# `hyper run --rm … true` through the kvm plugin, timed on L1's clock.
B=/tmp/bench; mkdir -p "$B/plugins"
ln -sf "$S/bin/libhyper_backend_kvm.so" "$B/plugins/"
cat > "$B/kvm.toml" <<EOT
[runtime]
hypervisor = "kvm"
plugin_dir = "$B/plugins"
state_dir = "$B/state"
socket = "$B/kvm.sock"

[payload]
kernel = "$S/payload/hyperkernel"
initrd = "$S/payload/hyperstart.img"

[vm]
boot_timeout_secs = 120

[hypervisor.kvm]
vmm = "$S/bin/hyper-vmm"
EOT
HYPER_LOG=info "$S/bin/hyperd" --config "$B/kvm.toml" > "$R/bench-hyperd.log" 2>&1 &
hpid=$!
i=0; while [ ! -S "$B/kvm.sock" ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
: > "$R/bench.txt"
n=1
while [ $n -le "$(cat "$S/bench-runs")" ]; do
  t0=$(up)
  HYPER_HOST=$B/kvm.sock timeout 300 "$S/bin/hyper" run --rm --rootfs "$HYPER_TEST_ROOTFS" -- true \
    >> "$R/bench.out" 2>&1
  rc=$?; t1=$(up)
  echo "kvm $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  n=$((n+1))
done
kill $hpid; wait $hpid
cat "$R/bench.txt"
