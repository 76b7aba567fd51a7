#!/bin/bash
# usage: bench/logs-tail-rss.sh HYPERD_BIN TAG (after `make build payload rootfs`) — peak RSS of hyperd serving 8 concurrent `logs --tail 10` of a 400 MB rotated log
set -e
HYPERD=$1; TAG=$2; W=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d /tmp/$TAG.XXXX); mkdir $D/plugins
ln -s $W/target/release/libhyper_backend_qemu.so $D/plugins/
cat > $D/config.toml <<T
[runtime]
hypervisor = "qemu"
plugin_dir = "$D/plugins"
state_dir = "$D/state"
socket = "$D/s.sock"
[payload]
kernel = "$W/build/hyperkernel"
initrd = "$W/build/hyperstart.img"
T
$HYPERD --config $D/config.toml > $D/log 2>&1 & P=$!
for i in $(seq 100); do [ -S $D/s.sock ] && break; sleep 0.1; done
export HYPER_HOST=$D/s.sock; H=$W/target/release/hyper
$H run --name big --rootfs $W/build/rootfs/busybox -- true >/dev/null
ID=$($H ps -a --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
PD=$D/state/pods/$ID
python3 - "$PD" <<'PY'
import sys
line=b'{"log":"' + b'x'*200 + b'\\n","stream":"stdout","time":"2026-12-07T00:00:00.000000000Z"}\n'
n=(100<<20)//len(line)
for f in ["container.log.3","container.log.2","container.log.1","container.log"]:
    with open(sys.argv[1]+"/"+f,"wb") as o: o.write(line*n)
PY
before=$(awk '/VmRSS/{print $2}' /proc/$P/status)
for i in $(seq 8); do $H logs --tail 10 big > /dev/null & done; wait $(jobs -p | grep -v "^$P$") 2>/dev/null || true
sleep 1
hwm=$(awk '/VmHWM/{print $2}' /proc/$P/status)
echo "$TAG: RSS before ${before} KiB, peak after 8x logs --tail 10 of 400 MB: ${hwm} KiB (+$(( (hwm-before)/1024 )) MiB)"
kill $P; wait $P 2>/dev/null || true
rm -rf $D
