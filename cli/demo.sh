#!/usr/bin/env bash
# The main job on a fresh machine, after `make install`: start hyperd with the
# installed config (unless one is already serving) and run a command in a VM.
#   cli/demo.sh ROOTFS_DIR [CMD...]
set -euo pipefail
rootfs=$(readlink -f "${1:?usage: demo.sh ROOTFS_DIR [CMD...]}"); shift
[ $# -gt 0 ] || set -- sh -c 'echo "Hello from $(hostname), a container in its own VM: $(uname -sr)"'
if ! hyper version >/dev/null 2>&1; then
  mkdir -p /var/log/hyper
  nohup hyperd --config /etc/hyper/config.toml >>/var/log/hyper/hyperd.log 2>&1 &
  # Wait for an answer, not for the socket file: a killed hyperd leaves its
  # socket behind until the new one replaces it.
  for _ in $(seq 100); do hyper version >/dev/null 2>&1 && break; sleep 0.1; done
  hyper version >/dev/null 2>&1 || { echo "hyperd did not start; see /var/log/hyper/hyperd.log" >&2; tail -20 /var/log/hyper/hyperd.log >&2; exit 1; }
  echo "hyperd started (log: /var/log/hyper/hyperd.log)"
fi
hyper info
echo "+ hyper run --rm --rootfs $rootfs -- $*"
time hyper run --rm --rootfs "$rootfs" -- "$@"
