#!/bin/sh
# Builds the test guest: an ELF with a PVH note (hyper-testguest) and a
# flat image of the same code for the bzImage wrapper (hyper-testguest.bin).
# Usage: build.sh OUT_DIR   (needs `rustup target add x86_64-unknown-none`)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR}
mkdir -p "$out"
cd "$here"
CARGO_TARGET_DIR="$out/target" cargo build --release --quiet
cp "$out/target/x86_64-unknown-none/release/hyper-testguest" "$out/hyper-testguest"
objcopy -O binary "$out/hyper-testguest" "$out/hyper-testguest.bin"
