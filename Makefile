# One-command builds. See README.md.
PREFIX      ?= /usr/local
SYSTEMD_DIR ?= $(PREFIX)/lib/systemd/system
CARGO       ?= cargo
MUSL        := x86_64-unknown-linux-musl
BUILD       := build
HYPERSTART  := target/$(MUSL)/release/hyperstart
PLUGINS     := libhyper_backend_qemu.so libhyper_backend_kvm.so libhyper_backend_xen.so

.PHONY: hostile-init test-xen test-qemu test-kvm matrix-check matrix-table registry all build kernel hyperstart payload rootfs install demo test unit e2e clean-build bench bench-kvm nested-kvm

all: build payload rootfs

build:
	$(CARGO) build --release --workspace --exclude hyperstart

hyperstart:
	$(CARGO) build --release -p hyperstart --target $(MUSL)

# The kernel is cached outside the work tree by the hash of its fragment.
kernel:
	@mkdir -p $(BUILD)
	dir=$$(hyperkernel/build.sh) && ln -sfn "$$dir/vmlinux" $(BUILD)/hyperkernel && ln -sfn "$$dir/bzImage" $(BUILD)/hyperkernel.bzImage

payload: kernel hyperstart hostile-init
	hyperstart/mkinitramfs.sh $(HYPERSTART) $(BUILD)/hyperstart.img

# The hostile guest init of tests/tests/hostile_guest.rs (static, like
# hyperstart); the tests pack it into an initramfs themselves.
hostile-init:
	$(CARGO) build --release -p hyper-test-hostile-init --target $(MUSL)

rootfs:
	tests/rootfs/busybox-rootfs.sh $(BUILD)/rootfs/busybox >/dev/null

install: build payload
	install -D -m 0755 target/release/hyper  $(PREFIX)/bin/hyper
	install -D -m 0755 target/release/hyperd $(PREFIX)/bin/hyperd
	install -D -m 0755 target/release/hyper-plugin-host $(PREFIX)/bin/hyper-plugin-host
	install -D -m 0755 target/release/containerd-shim-hyper-v2 $(PREFIX)/bin/containerd-shim-hyper-v2
	install -d $(PREFIX)/lib/hyper/backends $(PREFIX)/share/hyper
	for p in $(PLUGINS); do install -m 0644 target/release/$$p $(PREFIX)/lib/hyper/backends/$$p; done
	install -m 0755 target/release/hyper-vmm $(PREFIX)/lib/hyper/hyper-vmm
	install -m 0755 target/release/hyper-xen-console $(PREFIX)/lib/hyper/hyper-xen-console
	install -m 0644 $$(readlink -f $(BUILD)/hyperkernel) $(PREFIX)/share/hyper/hyperkernel
	install -m 0644 $(BUILD)/hyperstart.img $(PREFIX)/share/hyper/hyperstart.img
	install -D -m 0755 backends/xen/scripts/vif-hyper /etc/xen/scripts/vif-hyper
	install -D -m 0755 backends/xen/scripts/block-hyper /etc/xen/scripts/block-hyper
	@if [ ! -e /etc/hyper/config.toml ]; then install -D -m 0644 config/qemu.toml /etc/hyper/config.toml; \
	  else echo "keeping the existing /etc/hyper/config.toml"; fi
	install -d $(PREFIX)/share/man/man1 $(PREFIX)/share/bash-completion/completions $(PREFIX)/share/zsh/site-functions $(PREFIX)/share/fish/vendor_completions.d
	target/release/hyper man --dir $(PREFIX)/share/man/man1
	target/release/hyper completion bash > $(PREFIX)/share/bash-completion/completions/hyper
	target/release/hyper completion zsh > $(PREFIX)/share/zsh/site-functions/_hyper
	target/release/hyper completion fish > $(PREFIX)/share/fish/vendor_completions.d/hyper.fish
	install -d $(SYSTEMD_DIR)
	sed 's|@PREFIX@|$(PREFIX)|g' config/hyperd.service > $(SYSTEMD_DIR)/hyperd.service
	chmod 0644 $(SYSTEMD_DIR)/hyperd.service
	@echo "installed $(SYSTEMD_DIR)/hyperd.service: systemctl daemon-reload && systemctl enable --now hyperd"
	@if [ -z "$$(ls /etc/hyper/cni/net.d 2>/dev/null)" ]; then \
	  install -D -m 0644 config/cni/10-hyper.conflist /etc/hyper/cni/net.d/10-hyper.conflist; \
	  else echo "keeping the existing CNI networks in /etc/hyper/cni/net.d"; fi

# Main job: install, start hyperd, run a command in a VM.
demo: install rootfs
	cli/demo.sh $(BUILD)/rootfs/busybox

unit:
	$(CARGO) test --workspace --exclude hyper-tests

# The QEMU leg: the list check, then the e2e cases tests/cases.toml tags qemu,
# run by exact name (tests/matrix.py); QEMU_CASES="exact names" runs those instead.
test-qemu: build payload rootfs registry matrix-check
	. $(REGISTRY_ENV) && python3 tests/matrix.py run-qemu

e2e: test-qemu

# The shared suites with every pod started from a template (issue 16):
# HYPER_TEST_START sets [vm] start in each test's config.
TEMPLATE_SUITES ?= run
e2e-template: build payload rootfs registry
	. $(REGISTRY_ENV) && HYPER_TEST_START=template cargo test --release -p hyper-tests $(addprefix --test ,$(TEMPLATE_SUITES)) -- --test-threads=1

# Every #[test] of tests/tests/*.rs is in tests/cases.toml and every listed case exists.
matrix-check:
	python3 tests/matrix.py check

# The cases x backends table of the last run of each leg (build/matrix/*.txt).
matrix-table:
	python3 tests/matrix.py table

# The test registries (Debian's docker-registry on loopback), seeded with
# images the project builds itself; the tests read their addresses from env.
REGISTRY_ENV := /tmp/hyper-test-registry/env
registry:
	tests/registry/start.sh >/dev/null
	. $(REGISTRY_ENV) && python3 tests/registry/seed.py

# Unit tests, hyperstart's smoke and volumes tests and its network in a real VM
# (net_qemu.py), then the three legs of
# the e2e matrix; each leg runs even when one before it failed, and the run
# ends with the cases x backends table.
test: build payload rootfs registry
	rm -rf $(BUILD)/matrix
	. $(REGISTRY_ENV) && $(CARGO) test --release --workspace --exclude hyper-tests -- --test-threads=2
	$(CARGO) test --release -p hyper-tests --lib
	python3 hyperstart/tests/smoke.py $(HYPERSTART)
	python3 hyperstart/tests/volumes.py $(HYPERSTART)
	python3 hyperstart/tests/net_qemu.py $(BUILD)/hyperkernel $(BUILD)/hyperstart.img tcg
	python3 hyperstart/tests/volumes.py --qemu $(BUILD)/hyperkernel $(BUILD)/hyperstart.img tcg
	rc=0; \
	$(MAKE) test-qemu || rc=1; \
	$(MAKE) e2e-template || rc=1; \
	$(MAKE) test-xen || rc=1; \
	$(MAKE) test-kvm || rc=1; \
	$(MAKE) --no-print-directory matrix-table || rc=1; \
	exit $$rc

# The Xen leg: real Xen 4.17 + a Debian dom0 inside QEMU/TCG, running the
# e2e cases tests/cases.toml tags xen with config like config/xen.toml
# (tests/xen/run-suite.sh); XEN_CASES="exact names" runs those instead.
test-xen: build payload rootfs
	tests/xen/run-suite.sh

bench: build payload rootfs
	bench/boot.py

bench-kvm: build
	bench/kvm_boot.py --runs 20 --vmm target/release/hyper-vmm

# The KVM leg: inside QEMU/TCG with an emulated AMD SVM CPU, hyper-vmm runs
# the test guest, the real payload to hyperstart's READY and to its own
# poweroff on 2 vCPUs, then hyperd with the kvm plugin runs the e2e cases
# tests/cases.toml tags kvm (NK_CASES="exact names" runs those instead).
# One retry, only when the emulated machine hung or a boot check failed (exit
# 75: the emulated SVM hung once in 25 boots when measured); failed e2e cases
# fail at once. Each attempt is bounded by TIMEOUT (run.sh).
nested-kvm: build payload rootfs
	backends/kvm/nested/run.sh; rc=$$?; \
	if [ $$rc = 75 ]; then echo "nested-kvm: retrying once"; backends/kvm/nested/run.sh; else exit $$rc; fi

test-kvm: nested-kvm

clean-build:
	rm -rf $(BUILD)
