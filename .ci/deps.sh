#!/usr/bin/env bash
# Installs everything the build, the demo and the tests need on a fresh
# Debian 12 machine (as root): the kernel build tools and linux-source,
# QEMU, busybox-static for the test rootfs, erofs-utils for rootfs images,
# the musl target hyperstart is built for, and the bare-metal target of
# the KVM backend's freestanding test guest; the CNI plugins, iptables and
# iproute2 for pods' networks (python3 serves a page in the NAT test); kmod,
# whose modprobe the Xen leg's dom0 image copies; virtiofsd, which serves
# directory volumes on QEMU and KVM (not a Debian package: built from its
# crate, which needs libseccomp-dev and libcap-ng-dev).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev lz4 cpio
      qemu-system-x86 busybox-static erofs-utils file xz-utils
      docker-registry skopeo apache2-utils zstd curl
      containernetworking-plugins iptables iproute2 python3 kmod
      libseccomp-dev libcap-ng-dev)
# mkfs.ext4 and debugfs: block volumes (hyperstart/tests/volumes.py, bench/volumes.py)
pkgs+=(e2fsprogs)
# containerd and its ctr: the containerd shim's e2e tests (tests/tests/containerd.rs)
pkgs+=(containerd)
# protoc: the CRI test client's k8s-cri crate compiles the CRI protobufs with tonic-prost-build
pkgs+=(protobuf-compiler)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for t in x86_64-unknown-linux-musl x86_64-unknown-none; do
  rustup target add "$t" >/dev/null 2>&1 || rustup target add "$t"
done
if [ ! -x /usr/local/bin/virtiofsd ]; then
  cargo install virtiofsd --locked --root /usr/local
fi
