#!/bin/busybox sh
# /init of volprobe.img, the guest of real_xen's volume test (run-suite.sh
# builds it): mounts the 9pfs shares tagged hx-rw and hx-ro (trans=xen),
# reads and writes through them, tries to write the read-only one and to
# follow a symlink out of the share, and writes "VOLPROBE-<id>" into sector 1
# of the disk each hyper.disk.<id>=xvdX on its command line names. Prints
# VOLPROBE-* lines on the console, then VOLPROBE-DONE, then idles.
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys; $B mount -t devtmpfs dev /dev
exec >/dev/hvc0 2>&1
say() { echo "VOLPROBE-$*"; }
O=trans=xen,version=9p2000.L
$B mkdir -p /rw /ro
$B mount -t 9p -o $O hx-rw /rw && say MOUNT-RW-OK
$B mount -t 9p -o $O hx-ro /ro && say MOUNT-RO-OK
say "HOST-FILE=$($B cat /rw/from-host)"
echo from-guest > /rw/from-guest && $B chmod 640 /rw/from-guest && say WROTE
echo u1000 > /rw/by-1000 && $B chown 1000:1000 /rw/by-1000 && say CHOWNED
say "RO-FILE=$($B cat /ro/from-host)"
if echo x > /ro/new 2>/dev/null; then say RO-CREATE=allowed; else say RO-CREATE=refused; fi
if echo x >> /ro/from-host 2>/dev/null; then say RO-APPEND=allowed; else say RO-APPEND=refused; fi
if $B rm /ro/from-host 2>/dev/null; then say RO-RM=allowed; else say RO-RM=refused; fi
say "SYMLINK=$($B cat /rw/escape 2>/dev/null || echo unreadable)"
say "DOTDOT=$($B ls /rw/../../.. | $B tr '\n' ' ')"
for arg in $($B cat /proc/cmdline); do
  case $arg in
    hyper.disk.*=*)
      id=${arg#hyper.disk.}; dev=${id#*=}; id=${id%%=*}
      if echo -n "VOLPROBE-$id" | $B dd of=/dev/$dev bs=512 seek=1 conv=sync,notrunc 2>/dev/null; then
        say "DISK-$id=$dev"
      else
        say "DISK-$id-FAILED=$dev"
      fi ;;
  esac
done
$B sync
say DONE
$B sleep 3600
$B poweroff -f
