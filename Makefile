# One-command builds. See README.md.
PREFIX      ?= /usr/local
CARGO       ?= cargo
MUSL        := x86_64-unknown-linux-musl
BUILD       := build
HYPERSTART  := target/$(MUSL)/release/hyperstart
PLUGINS     := libhyper_backend_qemu.so

.PHONY: all build kernel hyperstart payload rootfs install demo test unit e2e clean-build bench

all: build payload rootfs

build:
	$(CARGO) build --release --workspace --exclude hyperstart

hyperstart:
	$(CARGO) build --release -p hyperstart --target $(MUSL)

# The kernel is cached outside the work tree by the hash of its fragment.
kernel:
	@mkdir -p $(BUILD)
	dir=$$(hyperkernel/build.sh) && ln -sfn "$$dir/vmlinux" $(BUILD)/hyperkernel && ln -sfn "$$dir/bzImage" $(BUILD)/hyperkernel.bzImage

payload: kernel hyperstart
	hyperstart/mkinitramfs.sh $(HYPERSTART) $(BUILD)/hyperstart.img

rootfs:
	tests/rootfs/busybox-rootfs.sh $(BUILD)/rootfs/busybox >/dev/null

install: build payload
	install -D -m 0755 target/release/hyper  $(PREFIX)/bin/hyper
	install -D -m 0755 target/release/hyperd $(PREFIX)/bin/hyperd
	install -d $(PREFIX)/lib/hyper/backends $(PREFIX)/share/hyper
	for p in $(PLUGINS); do install -m 0644 target/release/$$p $(PREFIX)/lib/hyper/backends/$$p; done
	install -m 0644 $$(readlink -f $(BUILD)/hyperkernel) $(PREFIX)/share/hyper/hyperkernel
	install -m 0644 $(BUILD)/hyperstart.img $(PREFIX)/share/hyper/hyperstart.img
	@if [ ! -e /etc/hyper/config.toml ]; then install -D -m 0644 config/qemu.toml /etc/hyper/config.toml; \
	  else echo "keeping the existing /etc/hyper/config.toml"; fi

# Main job: install, start hyperd, run a command in a VM.
demo: install rootfs
	cli/demo.sh $(BUILD)/rootfs/busybox

unit:
	$(CARGO) test --workspace --exclude hyper-tests

e2e: build payload rootfs
	$(CARGO) test --release -p hyper-tests -- --test-threads=2

test: build payload rootfs
	$(CARGO) test --release --workspace -- --test-threads=2
	python3 hyperstart/tests/smoke.py $(HYPERSTART)

bench: build payload rootfs
	bench/boot.py

clean-build:
	rm -rf $(BUILD)
