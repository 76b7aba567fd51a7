#!/bin/busybox sh
# /init of netprobe.img, the guest of real_xen's NIC tests (run-suite.sh
# builds it): prints its eth0 MAC, pings 10.99.0.1 from 10.99.0.2 and says
# NETPROBE-PING-OK or NETPROBE-PING-FAIL on the console, then idles.
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys; $B mount -t devtmpfs dev /dev
exec >/dev/hvc0 2>&1
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do $B sleep 0.1; i=$((i+1)); done
echo "NETPROBE-MAC=$($B cat /sys/class/net/eth0/address)"
$B ip link set eth0 up
$B ip addr add 10.99.0.2/24 dev eth0
if $B ping -c 3 -W 10 10.99.0.1; then echo NETPROBE-PING-OK; else echo NETPROBE-PING-FAIL; fi
$B sleep 3600
$B poweroff -f
