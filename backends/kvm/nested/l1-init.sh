#!/bin/sh
# /init of the L1 guest (Debian kernel under QEMU/TCG with an emulated AMD
# SVM CPU): load kvm-amd, then run hyper-vmm on the real /dev/kvm:
#  1. the freestanding test guest (all device checks; then on a virtio-fs
#     share served by virtiofsd in L1), 2. the real payload
#  (hyperkernel + hyperstart.img) until hyperstart's READY on the agent socket,
#  3. (when present) QEMU microvm on the same payload, for the ratio;
#  4. the real payload on 2 vCPUs, told to DestroyPod: hyperstart powers the
#     guest off (Linux without ACPI halts every CPU) and hyper-vmm must exit
#     by itself (reason guest_halt, not a signal);
#  5. (when the host shares it over virtio-9p, tag host0) /mnt/host/run.sh:
#     the e2e cases through hyperd with the kvm plugin (in-l1.sh).
export PATH=/bin:/usr/bin:/sbin:/usr/sbin
bb=/bin/busybox
# virtiofsd's namespace sandbox pivot_roots into the shared directory, and
# pivot_root refuses while the root is the initramfs (rootfs): run from a
# tmpfs copy of it (switch_root frees the initramfs).
if [ ! -e /.tmpfs-root ]; then
  $bb mkdir -p /newroot
  $bb mount -t tmpfs -o mode=0755 root /newroot
  for d in /*; do [ "$d" = /newroot ] || $bb cp -a "$d" /newroot/; done
  $bb touch /newroot/.tmpfs-root
  exec $bb switch_root /newroot /init
fi
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb mount -t tmpfs tmp /tmp
$bb mount -t tmpfs run /run
cd /lib/modules && for m in irqbypass kvm ccp kvm-amd $(cat order 2>/dev/null); do $bb insmod $m.ko || echo "INSMOD-FAIL $m"; done; cd /
# The pods' network: its boot modules (the rest load on demand through
# /sbin/modprobe), lo up (published ports answer on 127.0.0.1), /run/netns.
for m in $(cat /lib/modules/net-boot 2>/dev/null); do /sbin/modprobe "$m" || echo "MODPROBE-FAIL $m"; done
/usr/sbin/ip link set lo up
$bb mkdir -p /run/netns
[ -c /dev/kvm ] && echo "L1-KVM-READY" || { echo "L1-NO-KVM"; echo ALL-DONE; $bb poweroff -f; }
T=${nk_timeout:-180}

echo "== test guest"
$bb timeout 120 /bin/hyper-vmm --kernel /l2/hyper-testguest --memory-mib 64 --vcpus 2 \
  --cmdline "tg.hello tg.mem_mib=64 tg.cpus=2 tg.disk_serial=hyper-rootfs0 tg.sector=5" \
  --disk path=/l2/disk.img,id=hyper-rootfs0 --debug-exit --status-file /tmp/tg.json </dev/null
echo "TESTGUEST-EXIT rc=$? $(cat /tmp/tg.json)"

# The test guest on a virtio-fs share of /tmp/share, served by a fresh
# virtiofsd (namespace sandbox) per run: through hyper-vmm, or (fs_guest
# qemu) through QEMU microvm's vhost-user-fs-device on the same virtiofsd
# build, for the frontends' ratio (tg.fs_bench: LOOKUPs and 64 KiB READs,
# one at a time, TSC cycles).
fs_guest() { # hyper-vmm|qemu CMDLINE
  local n dev
  rm -f /tmp/vfs.sock /tmp/tgfs.log
  echo "HYPERTG-FS-HOST" > /tmp/share/hello
  /usr/local/bin/virtiofsd --socket-path /tmp/vfs.sock --shared-dir /tmp/share --sandbox namespace \
    --cache never </dev/null >>/tmp/vfs.log 2>&1 &
  vfs=$!
  n=0; while [ ! -S /tmp/vfs.sock ] && [ $n -lt 300 ]; do $bb usleep 100000; n=$((n+1)); done
  if [ "$1" = qemu ]; then
    # microvm lists no transports for a PVH ELF: name its 24 on the command line.
    dev=""; for n in $($bb seq 0 23); do dev="$dev $(printf 'virtio_mmio.device=512@0x%x:%d' $((0xfeb00000 + n*512)) $((5+n)))"; done
    $bb timeout 120 qemu-system-x86_64 -machine microvm,memory-backend=mem -accel kvm -cpu host -m 64 \
      -object memory-backend-memfd,id=mem,size=64M,share=on -global virtio-mmio.force-legacy=false \
      -chardev socket,id=vfs,path=/tmp/vfs.sock -device vhost-user-fs-device,chardev=vfs,tag=vol-a \
      -kernel /l2/hyper-testguest -append "$2$dev" -device isa-debug-exit,iobase=0xf4,iosize=4 \
      -nodefaults -no-user-config -nographic -serial file:/tmp/tgfs.log -monitor none -no-reboot </dev/null >/tmp/qemu.out 2>&1
    fsrc=$?; [ $fsrc = 1 ] && fsrc=0 # isa-debug-exit: (status << 1) | 1
  else
    $bb timeout 120 /bin/hyper-vmm --kernel /l2/hyper-testguest --memory-mib 64 --cmdline "$2" \
      --share tag=vol-a,socket=/tmp/vfs.sock --debug-exit --status-file /tmp/tgfs.json \
      --console-log /tmp/tgfs.log </dev/null
    fsrc=$?
  fi
  kill $vfs 2>/dev/null; wait $vfs
  $bb grep "tg: FAIL" /tmp/tgfs.log
}
echo "== test guest on a virtio-fs share (virtiofsd in L1, namespace sandbox)"
$bb mkdir -p /tmp/share
$bb dd if=/dev/zero of=/tmp/share/big bs=1024 count=1024 2>/dev/null
fs_guest hyper-vmm "tg.hello tg.fs_tag=vol-a"
echo "TESTGUEST-FS-EXIT rc=$fsrc host=$($bb head -c 16 /tmp/share/hello) $(cat /tmp/tgfs.json)"
$bb tail -n 5 /tmp/vfs.log | $bb sed "s/^/VIRTIOFSD: /"
if [ -x /usr/bin/qemu-system-x86_64 ]; then
  r=1
  while [ $r -le "${nk_fs_rounds:-3}" ]; do
    for vmm in hyper-vmm qemu; do
      fs_guest $vmm "tg.hello tg.fs_tag=vol-a tg.fs_bench=${nk_fs_bench:-300}"
      echo "FS-BENCH $vmm round $r rc=$fsrc $($bb grep 'fs-bench lookups' /tmp/tgfs.log)"
    done
    r=$((r+1))
  done
fi

run_payload() { # name kernel
  rm -f /tmp/agent.sock /tmp/vmm.json
  /bin/agentcat /tmp/agent.sock $T &
  cat_pid=$!
  $bb timeout $T /bin/hyper-vmm --kernel "$2" --initrd /l2/hyperstart.img --memory-mib 256 \
    --cmdline "quiet panic=-1 rdinit=/init console=ttyS0 reboot=k pci=off hyper.channel=/dev/hvc0" \
    --agent-socket /tmp/agent.sock --console-log /tmp/console.log --status-file /tmp/vmm.json </dev/null &
  vmm_pid=$!
  wait $cat_pid; rc=$?
  kill -TERM $vmm_pid 2>/dev/null; wait $vmm_pid
  echo "PAYLOAD-$1 agentcat rc=$rc vmm: $(cat /tmp/vmm.json 2>/dev/null)"
  $bb tail -n 15 /tmp/console.log | $bb sed "s/^/PAYLOAD-$1 console: /"
}
if [ -e /l2/hyperkernel.bzImage ]; then
  echo "== payload (bzImage)"
  run_payload bzimage /l2/hyperkernel.bzImage
fi
run_qemu() {
  rm -f /tmp/q.sock
  /bin/agentcat /tmp/q.sock $T &
  cat_pid=$!
  $bb timeout $T qemu-system-x86_64 -machine microvm -accel kvm -cpu host -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -serial file:/tmp/qconsole.log -monitor none -no-reboot \
    -kernel /l2/hyperkernel -initrd /l2/hyperstart.img \
    -append "quiet panic=-1 rdinit=/init console=ttyS0 hyper.channel=sh.hyper.channel.0" \
    -device virtio-serial-device -chardev socket,id=agent,path=/tmp/q.sock,server=on,wait=off \
    -device virtserialport,chardev=agent,name=sh.hyper.channel.0 </dev/null >/tmp/qemu.out 2>&1 &
  q=$!
  wait $cat_pid; echo "QEMU agentcat rc=$?"; kill $q 2>/dev/null; wait $q
}
# Alternating, so both see the same load: hyper-vmm (PVH vmlinux) vs QEMU microvm.
i=1
while [ $i -le "${nk_runs:-1}" ]; do
  echo "== round $i: hyper-vmm, payload (ELF vmlinux, PVH)"
  run_payload pvh /l2/hyperkernel
  if [ -x /usr/bin/qemu-system-x86_64 ]; then
    echo "== round $i: QEMU microvm -accel kvm, same payload"
    run_qemu
  fi
  i=$((i+1))
done
# nk_snap=N: the payload to READY, saved (SIGUSR1), then restored N times;
# each restore is timed to hyperstart's answer to Hello (a restored guest
# said READY before the save), next to the cold boots' READY above.
if [ "${nk_snap:-0}" -gt 0 ]; then
  PCMD="quiet panic=-1 rdinit=/init console=ttyS0 reboot=k pci=off hyper.channel=/dev/hvc0"
  VARGS="--kernel /l2/hyperkernel --initrd /l2/hyperstart.img --memory-mib 256 --agent-socket /tmp/agent.sock --status-file /tmp/vmm.json"
  echo "== snapshot: payload to READY, save, restore $nk_snap times"
  rm -rf /tmp/snap /tmp/agent.sock /tmp/vmm.json; mkdir -p /tmp/snap; echo /tmp/snap > /tmp/sreq
  /bin/agentcat /tmp/agent.sock $T &
  cat_pid=$!
  $bb timeout $T /bin/hyper-vmm $VARGS --cmdline "$PCMD" --console-log /tmp/console.log --save-request /tmp/sreq </dev/null &
  vmm_pid=$!
  wait $cat_pid; rc=$?
  $bb sleep 1
  kill -USR1 $vmm_pid; wait $vmm_pid; vrc=$?
  echo "SNAP-SAVE agentcat rc=$rc vmm rc=$vrc vmm: $(cat /tmp/vmm.json 2>/dev/null)"
  j=1
  while [ $j -le "$nk_snap" ]; do
    rm -f /tmp/agent.sock /tmp/vmm.json
    /bin/agentcat /tmp/agent.sock $T hello &
    cat_pid=$!
    $bb timeout $T /bin/hyper-vmm $VARGS --restore-from /tmp/snap --console-log /tmp/rconsole.log </dev/null &
    vmm_pid=$!
    wait $cat_pid; rc=$?
    kill -TERM $vmm_pid 2>/dev/null; wait $vmm_pid
    echo "SNAP-RESTORE $j agentcat rc=$rc vmm: $(cat /tmp/vmm.json 2>/dev/null)"
    j=$((j+1))
  done
  $bb tail -n 5 /tmp/rconsole.log | $bb sed "s/^/SNAP-RESTORE console: /"
fi
echo "== payload on 2 vCPUs, DestroyPod: the guest powers off"
rm -f /tmp/agent.sock /tmp/vmm.json
$bb timeout $T /bin/hyper-vmm --kernel /l2/hyperkernel --initrd /l2/hyperstart.img --memory-mib 256 --vcpus 2 \
  --cmdline "panic=-1 rdinit=/init console=ttyS0 reboot=k pci=off hyper.channel=/dev/hvc0" \
  --agent-socket /tmp/agent.sock --console-log /tmp/console.log --status-file /tmp/vmm.json </dev/null &
vmm_pid=$!
/bin/agentcat /tmp/agent.sock $T destroy; rc=$?
# hyper-vmm has to end by itself; only a hang gets the TERM (reason "signal").
i=0; while [ -d /proc/$vmm_pid ] && [ $i -lt 600 ]; do $bb usleep 100000; i=$((i+1)); done
kill -TERM $vmm_pid 2>/dev/null; wait $vmm_pid; vrc=$?
cpus=$($bb grep -o 'Brought up [0-9]* node[s]*, [0-9]* CPUs' /tmp/console.log)
echo "POWEROFF agentcat rc=$rc vmm rc=$vrc after $((i/10)).$((i%10))s, guest: ${cpus:-no SMP line}, vmm: $(cat /tmp/vmm.json 2>/dev/null)"
if [ $rc = 0 ] && [ $vrc = 0 ] && $bb grep -q '"reason":"guest_halt"' /tmp/vmm.json && [ "${cpus##*, }" = "2 CPUs" ]; then
  echo "POWEROFF-SMP-OK"
else
  $bb tail -n 20 /tmp/console.log | $bb sed "s/^/POWEROFF console: /"
fi

$bb mkdir -p /mnt/host
if $bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host 2>/dev/null; then
  echo "== e2e suite (/mnt/host/run.sh)"
  # The suite's tools (grep, timeout, …) come from busybox.
  $bb --install -s /bin 2>/dev/null
  mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
  ln -sf /proc/self/fd /dev/fd
  sh /mnt/host/run.sh; echo "E2E-RUN-EXIT=$?"
  sync
fi
echo ALL-DONE
$bb poweroff -f
