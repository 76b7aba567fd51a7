#!/bin/sh
# Runs inside the test dom0 as /mnt/host/run.sh (run-suite.sh copies it into
# the share): the e2e cases tests/cases.toml tags xen with HYPER_E2E_BACKEND=xen, then the boot
# benchmark. Results go to /mnt/host/results.
S=/mnt/host
R=$S/results
mkdir -p "$R"
# run-suite.sh's settings (HYPER_XEN_TYPE, XEN_BENCH_RUNS, XEN_BENCH_ONLY, XEN_REAL).
[ -f "$S/env" ] && . "$S/env"
up() { cut -d' ' -f1 /proc/uptime; }
export LD_LIBRARY_PATH=$S/lib
export HYPER_BIN_DIR=$S/bin HYPER_PAYLOAD_DIR=$S/payload HYPER_TEST_ROOTFS=$S/rootfs/busybox
export HYPER_CNI_CONFLIST=/etc/hyper/cni/net.d/10-hyper.conflist
export HYPER_E2E_BACKEND=xen HYPER_XEN_XL=$(command -v xl) HYPER_XEN_TYPE=${HYPER_XEN_TYPE:-pv}
cd /tmp
xl info > "$R/xl-info.txt" 2>&1

if [ "${XEN_BENCH_ONLY:-0}" != 1 ]; then
if [ "${XEN_REAL:-1}" != 0 ]; then
echo "@@ $(up)s REAL-XEN-START"
"$S/bin/real-xen" --ignored --test-threads=1 > "$R/real-xen.txt" 2>&1
echo $? > "$R/real-xen.rc"
echo "@@ $(up)s REAL-XEN-END rc=$(cat "$R/real-xen.rc")"
grep -E '^test |^test result' "$R/real-xen.txt"
fi

# Each test file's cases by exact name (run-suite.sh writes them from tests/cases.toml).
for exe in "$S"/e2e/*; do
  [ -x "$exe" ] || continue; t=${exe##*/}
  echo "@@ $(up)s E2E-START $t"
  # --report-time (libtest, unstable: hence RUSTC_BOOTSTRAP) prints each case's time.
  # shellcheck disable=SC2046
  RUSTC_BOOTSTRAP=1 "$exe" --exact --test-threads=1 -Z unstable-options --report-time \
    $(cat "$S/cases/$t") > "$R/e2e-$t.txt" 2>&1
  echo $? > "$R/e2e-$t.rc"
  echo "@@ $(up)s E2E-END $t rc=$(cat "$R/e2e-$t.rc")"
  grep -E '^test |^test result' "$R/e2e-$t.txt"
done
fi

# XEN_BENCH_RUNS=0: no benchmark at all (a run of a few e2e cases).
[ "${XEN_BENCH_RUNS:-3}" != 0 ] || exit 0

# Benchmark: `hyper run --rm ... true` on Xen next to a plain `xl create -F`
# of the same kernel with an initramfs that only powers off, alternating.
B=/tmp/bench; mkdir -p "$B/plugins"
ln -sf "$S/bin/libhyper_backend_xen.so" "$B/plugins/"
cat > "$B/config.toml" <<EOT
[runtime]
hypervisor = "xen"
plugin_dir = "$B/plugins"
state_dir = "$B/state"
socket = "$B/hyperd.sock"

[payload]
kernel = "$S/payload/hyperkernel"
initrd = "$S/payload/hyperstart.img"

[vm]
boot_timeout_secs = 120

[hypervisor.xen]
xl = "$HYPER_XEN_XL"
type = "$HYPER_XEN_TYPE"
EOT
cat > "$B/plain.cfg" <<EOT
name = "bench-plain"
type = "$HYPER_XEN_TYPE"
kernel = "$S/payload/hyperkernel"
ramdisk = "$S/payload/poweroff.img"
extra = "quiet panic=-1 rdinit=/init loglevel=0"
memory = 128
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOT
# The same with one 9pfs share: what the device model (QEMU in dom0) adds.
mkdir -p /tmp/bench-share
sed 's/bench-plain/bench-p9/' "$B/plain.cfg" > "$B/p9.cfg"
echo 'p9 = [ "tag=bench,security_model=none,path=/tmp/bench-share" ]' >> "$B/p9.cfg"
# Where a disk's time goes: the same with the pods' rootfs image as xvda,
# through Xen's `block` hotplug script (losetup in bash), and through the
# backend's `block-hyper` on a loop device attached beforehand.
mkfs.erofs "$B/rootfs.erofs" "$HYPER_TEST_ROOTFS" >> "$R/bench-xl.out" 2>&1 || echo "bench: mkfs.erofs failed" >> "$R/bench-xl.out"
sed 's/bench-plain/bench-disk/' "$B/plain.cfg" > "$B/disk.cfg"
echo "disk = [ \"format=raw, vdev=xvda, access=ro, target=$B/rootfs.erofs\" ]" >> "$B/disk.cfg"
"$S/bin/hyperd" --config "$B/config.toml" > "$R/bench-hyperd.log" 2>&1 &
hpid=$!
# The same hyperd with no block_script: disks through Xen's `block` script,
# as before the backend attached them itself (an A/B in one run).
sed -e "s|$B/state|$B/state-xb|" -e "s|$B/hyperd.sock|$B/hyperd-xb.sock|" "$B/config.toml" > "$B/config-xb.toml"
echo 'block_script = "/nonexistent/block-hyper"' >> "$B/config-xb.toml"
"$S/bin/hyperd" --config "$B/config-xb.toml" > "$R/bench-hyperd-xb.log" 2>&1 &
xbpid=$!
i=0; while { [ ! -S "$B/hyperd.sock" ] || [ ! -S "$B/hyperd-xb.sock" ]; } && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
: > "$R/bench.txt"
# hyper-run: no network (the plain boot path); hyper-run-net: the default
# CNI network (dom0's /etc/hyper/cni/net.d) and the vif joined to it.
n=0
while [ $n -lt "${XEN_BENCH_RUNS:-3}" ]; do
  n=$((n+1))
  t0=$(up)
  HYPER_HOST=$B/hyperd.sock "$S/bin/hyper" run --rm --network none --rootfs "$HYPER_TEST_ROOTFS" -- true >> "$R/bench-hyper.out" 2>&1
  rc=$?; t1=$(up)
  echo "hyper-run $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  t0=$(up)
  HYPER_HOST=$B/hyperd-xb.sock "$S/bin/hyper" run --rm --network none --rootfs "$HYPER_TEST_ROOTFS" -- true >> "$R/bench-hyper.out" 2>&1
  rc=$?; t1=$(up)
  echo "hyper-run-xenblock $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  t0=$(up)
  HYPER_HOST=$B/hyperd.sock "$S/bin/hyper" run --rm --rootfs "$HYPER_TEST_ROOTFS" -- true >> "$R/bench-hyper.out" 2>&1
  rc=$?; t1=$(up)
  echo "hyper-run-net $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  t0=$(up)
  timeout 300 xl create -F "$B/plain.cfg" >> "$R/bench-xl.out" 2>&1
  rc=$?; t1=$(up)
  echo "xl-create $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  t0=$(up)
  timeout 300 xl create -F "$B/p9.cfg" >> "$R/bench-xl.out" 2>&1
  rc=$?; t1=$(up)
  echo "xl-create-p9 $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  t0=$(up)
  timeout 300 xl create -F "$B/disk.cfg" >> "$R/bench-xl.out" 2>&1
  rc=$?; t1=$(up)
  echo "xl-create-disk $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  if [ -x /etc/xen/scripts/block-hyper ]; then
    t0=$(up)
    loop=$(losetup -r -f --show "$B/rootfs.erofs") || { echo "xl-create-loop $n rc=losetup 0" >> "$R/bench.txt"; continue; }
    sed "s/bench-plain/bench-loop/" "$B/plain.cfg" > "$B/loop.cfg"
    echo "disk = [ \"format=raw, vdev=xvda, access=ro, script=/etc/xen/scripts/block-hyper, target=$loop\" ]" >> "$B/loop.cfg"
    timeout 300 xl create -F "$B/loop.cfg" >> "$R/bench-xl.out" 2>&1
    rc=$?; losetup -d "$loop"; t1=$(up)
    echo "xl-create-loop $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  fi
done
kill $hpid $xbpid; wait $hpid $xbpid
# Templates (issue 16): a hyperstart domain (the pods' kernel, initramfs
# and command line, no disk or NIC) saved once it idles at READY, then
# restored XEN_BENCH_RUNS times; `xl restore` returns once the domain runs,
# which for a domain saved at READY is READY. Xen copies the saved memory
# into each new domain (no sharing between restores).
cat > "$B/tmpl.cfg" <<EOT
name = "bench-tmpl"
type = "$HYPER_XEN_TYPE"
kernel = "$S/payload/hyperkernel"
ramdisk = "$S/payload/hyperstart.img"
extra = "quiet panic=-1 rdinit=/init loglevel=0 hyper.channel=/dev/hvc0"
memory = 128
maxmem = 128
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOT
t0=$(up)
timeout 300 xl create "$B/tmpl.cfg" >> "$R/bench-xl.out" 2>&1
rc=$?; t1=$(up)
echo "xl-create-hyperstart 1 rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
sleep 10
t0=$(up)
timeout 300 xl save bench-tmpl "$B/tmpl.save" >> "$R/bench-xl.out" 2>&1
rc=$?; t1=$(up)
echo "xl-save 1 rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
ls -l "$B/tmpl.save" >> "$R/bench-xl.out" 2>&1
n=0
while [ $n -lt "${XEN_BENCH_RUNS:-3}" ] && [ -s "$B/tmpl.save" ]; do
  n=$((n+1))
  t0=$(up)
  timeout 300 xl restore "$B/tmpl.save" >> "$R/bench-xl.out" 2>&1
  rc=$?; t1=$(up)
  echo "xl-restore $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
  xl list bench-tmpl >> "$R/bench-xl.out" 2>&1
  t0=$(up)
  xl destroy bench-tmpl >> "$R/bench-xl.out" 2>&1
  rc=$?; t1=$(up)
  echo "xl-destroy-restored $n rc=$rc $(awk "BEGIN{printf \"%.2f\", $t1-$t0}")" >> "$R/bench.txt"
done
rm -f "$B/tmpl.save"
cat "$R/bench.txt"
xl list
