# ivshmem-rs: Rust driver for QEMU's ivshmem, its userspace tools and the VM lab.
#
#   make             module + userspace tools (KDIR defaults to the lab's guest kernel)
#   make demo        set up what is missing, boot two guests, exchange a message, measure bandwidth
#   make test        host unit tests, module build + lints, the VM test suite
#   make clean
#
# KDIR=/path/to/a/rust-enabled/kernel/build overrides the lab kernel.

SHELL := /bin/bash
ROOT := $(CURDIR)
# Empty KDIR: scripts/setup.sh builds (or finds in its cache) the lab kernel and prints its path.
KDIR ?=
KDIR_CMD := $(if $(KDIR),echo $(KDIR),bash $(ROOT)/scripts/setup.sh)
CARGO ?= cargo
TOOLS_TARGET := x86_64-unknown-linux-gnu
TOOLS_DIR := $(ROOT)/userspace/target/$(TOOLS_TARGET)/release
TOOLS := read_write bandwidth ivshmem ivshmem-check

export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: module-race all module tools setup demo test vm-test unit-test lint clean rustfmt rustfmt-check clippy

all: module tools

setup:
	bash scripts/setup.sh

module:
	kdir=$$($(KDIR_CMD)) && $(MAKE) -C $$kdir M=$(ROOT) modules

# Statically linked so they run in the busybox guest.
tools:
	cd userspace && RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --locked --target $(TOOLS_TARGET) --bins

# A fault-injection build for the VM suite, in its own directory: see rust/file.rs.
module-race:
	rm -rf $(ROOT)/.race-build && mkdir -p $(ROOT)/.race-build
	cp -r $(ROOT)/Kbuild $(ROOT)/rust $(ROOT)/.race-build/
	kdir=$$($(KDIR_CMD)) && $(MAKE) -C $$kdir M=$(ROOT)/.race-build IVSHMEM_RACE_DELAY=1 modules

clippy:
	kdir=$$($(KDIR_CMD)) && $(MAKE) -C $$kdir M=$(ROOT) CLIPPY=1 modules 2>&1 | tee $(ROOT)/.clippy.log
	@! grep -E "^(warning|error)" $(ROOT)/.clippy.log || { echo "clippy/rustc warnings above"; exit 1; }

# `make rustfmtcheck` does not work with M=: run rustfmt with the kernel's own settings.
rustfmt-check:
	kdir=$$($(KDIR_CMD)) && rustfmt --check --edition 2021 \
		--config-path $$(readlink -f $$kdir/source)/.rustfmt.toml rust/ivshmem.rs

rustfmt:
	kdir=$$($(KDIR_CMD)) && rustfmt --edition 2021 \
		--config-path $$(readlink -f $$kdir/source)/.rustfmt.toml rust/ivshmem.rs
	cd userspace && $(CARGO) fmt

lint: clippy rustfmt-check
	cd userspace && $(CARGO) fmt --check && $(CARGO) clippy --locked --all-targets -- -D warnings

# The second run is the loom model of the channel protocol (tests/channel_loom.rs): loom only
# builds with the loom cfg, which changes every crate's build, hence its own target directory.
unit-test:
	cd userspace && $(CARGO) test --locked
	cd userspace && RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
		$(CARGO) test --locked --release --test channel_loom

demo: all
	bash scripts/demo.sh

vm-test: all module-race
	python3 scripts/vmtest.py

test:
	bash scripts/test.sh

# Without a kernel tree: `make clean` must not build one first.
clean:
	rm -f *.o *.ko *.mod *.mod.c .*.cmd modules.order Module.symvers .module-common.o
	rm -rf rust/*.o rust/.*.cmd rust/*.long-type-*.txt .clippy.log .race-build
	cd userspace && $(CARGO) clean
