# ivshmem-rs: Rust driver for QEMU's ivshmem, its userspace tools and the VM lab.
#
#   make             module + userspace tools + C API (KDIR defaults to the lab's guest kernel)
#   make capi        C API of the channels: libivshmem.a/.so and the C example (README, C API)
#   make demo        set up what is missing, boot two guests, exchange a message, measure bandwidth
#   make check       after each change: unit tests, lints, module builds, the VM suite's check tier
#                    on the release guest kernel (each driver and channel path once; ~10 min warm)
#   make test        everything (CI): the same, then the whole VM suite on the release, debug,
#                    7.2-series and arm64 guest kernels
#   make module-debug the module for the debug guest kernel (KASAN, lockdep): .debug-build/ivshmem.ko
#   make module-7.2  the module for the lab's kernel of Debian's 7.2 series: .k72-build/ivshmem.ko
#   make arm64       the module and the static tools for the lab's arm64 guests (.arm64-build/,
#                    userspace/target/aarch64-unknown-linux-gnu/release/): module-arm64 tools-arm64
#   make bench       channels against TCP between two guests: report in userspace/bench/ (not in make test)
#   make install     module (updates/), depmod, udev rule, tools, C header and libraries (README, Installing)
#   make uninstall   removes what install put (same DESTDIR, PREFIX, KDIR)
#   make dkms-add    copies the module source to /usr/src/ivshmem-VERSION and registers it with DKMS
#   make clean
#
# KDIR=/path/to/a/rust-enabled/kernel/build overrides the lab kernel (KDIR_DEBUG the debug one).

SHELL := /bin/bash
ROOT := $(CURDIR)
# Empty KDIR: scripts/setup.sh builds (or finds in its cache) the lab kernel and prints its path.
KDIR ?=
KDIR_CMD := $(if $(KDIR),echo $(KDIR),bash $(ROOT)/scripts/setup.sh)
KDIR_DEBUG ?=
KDIR_DEBUG_CMD := $(if $(KDIR_DEBUG),echo $(KDIR_DEBUG),bash $(ROOT)/scripts/setup.sh debug)
# The debug kernel is built with clang; its modules must be too (scripts/config.sh).
DEBUG_FLAGS := LLVM=$(shell source $(ROOT)/scripts/config.sh && echo $$IVSHMEM_LLVM)
CARGO ?= cargo
TOOLS_TARGET := x86_64-unknown-linux-gnu
TOOLS_DIR := $(ROOT)/userspace/target/$(TOOLS_TARGET)/release
TOOLS := read_write bandwidth ivshmem ivshmem-check ivshmem-bench

export PATH := $(HOME)/.cargo/bin:$(PATH)

# One version for the crate, the module (modinfo, Kbuild) and DKMS: userspace/Cargo.toml's.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' $(ROOT)/userspace/Cargo.toml | head -n 1)
# make install: staging root, prefix of tools and libraries, udev rules directory, depmod
# (empty: skip it). scripts/install.sh has the list of files.
DESTDIR ?=
PREFIX ?= /usr/local
UDEVRULESDIR ?= /etc/udev/rules.d
DEPMOD ?= depmod
export DESTDIR PREFIX UDEVRULESDIR DEPMOD
DKMS_SRC := $(DESTDIR)/usr/src/ivshmem-$(VERSION)

.PHONY: tokio-example check ruff arm64 module-arm64 tools-arm64 module-7.2 install uninstall dkms-add dkms-remove bench capi module-race module-debug vm-test-release all module tools setup demo test vm-test unit-test lint clean rustfmt rustfmt-check clippy

all: module tools capi

setup:
	bash scripts/setup.sh

module:
	kdir=$$($(KDIR_CMD)) && $(MAKE) -C $$kdir M=$(ROOT) modules

# Statically linked so they run in the busybox guest.
tools:
	cd userspace && RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --locked --target $(TOOLS_TARGET) --bins

# The C API (userspace/src/capi.rs, include/ivshmem_channel.h): libivshmem.a and libivshmem.so
# in CAPI_DIR, built apart from the tools (a cdylib cannot be built with crt-static) and with
# panics unwinding, so that a bug gives EIO to the C caller instead of aborting it; and the C
# example twice: against the shared library for the host, and fully static (from the .a) into
# TOOLS_DIR for the busybox guests, which have no libc. The static link drops glibc's two
# warnings that getaddrinfo and getpwuid_r (linked by std, called by nothing here) would need
# its shared libraries at run time.
CAPI_DIR := $(ROOT)/userspace/target/release
CAPI_CFLAGS := -O2 -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -I$(ROOT)/userspace/include
CAPI_EXAMPLE := $(ROOT)/userspace/examples/c/ivshmem_pipe.c
capi:
	cd userspace && $(CARGO) rustc --release --locked --lib --crate-type staticlib --crate-type cdylib \
		--config 'profile.release.panic="unwind"'
	$(CC) $(CAPI_CFLAGS) -o $(CAPI_DIR)/ivshmem-pipe-c $(CAPI_EXAMPLE) \
		-L$(CAPI_DIR) -livshmem -Wl,-rpath,$(CAPI_DIR)
	mkdir -p $(TOOLS_DIR)
	set -o pipefail; $(CC) $(CAPI_CFLAGS) -static -s -Wl,--gc-sections \
		-o $(TOOLS_DIR)/ivshmem-pipe-c $(CAPI_EXAMPLE) $(CAPI_DIR)/libivshmem.a \
		-lpthread -ldl -lm -lrt -lutil 2>&1 | \
		sed -e '/libivshmem.a(std-.*in function/d' -e '/in statically linked applications requires/d' >&2

# Builds a copy of the module in directory $(1) with `make -C $$kdir`, kdir from command $(2),
# extra make arguments $(3): the top-level ivshmem.ko stays the release build.
define copy_build
	rm -rf $(1) && mkdir -p $(1)
	mkdir -p $(1)/userspace
	cp -r $(ROOT)/Kbuild $(ROOT)/rust $(1)/
	cp $(ROOT)/userspace/Cargo.toml $(1)/userspace/
	kdir=$$($(2)) && $(MAKE) -C $$kdir M=$(1) $(3) modules
endef

# A fault-injection build for the VM suite, in its own directory: see rust/file.rs.
module-race:
	$(call copy_build,$(ROOT)/.race-build,$(KDIR_CMD),IVSHMEM_RACE_DELAY=1)

# The module and its fault-injection build for the release guest kernel of Debian's 7.2 series.
KDIR_72_CMD := IVSHMEM_KERNEL_SERIES=7.2 bash $(ROOT)/scripts/setup.sh
module-7.2:
	$(call copy_build,$(ROOT)/.k72-build,$(KDIR_72_CMD),)
	$(call copy_build,$(ROOT)/.k72-race-build,$(KDIR_72_CMD),IVSHMEM_RACE_DELAY=1)

# arm64 guests (IVSHMEM_ARCH=arm64 in scripts/config.sh): the module and its fault-injection
# build for the lab's arm64 kernel, cross-compiled by clang like that kernel; the static tools
# with rustc's aarch64 target, linked by Debian's cross gcc against its arm64 glibc, and the C
# example on the C API (ivshmem-pipe-c), static.
ARM64_ENV := IVSHMEM_ARCH=arm64 IVSHMEM_FLAVOUR=release
KDIR_ARM64_CMD := $(ARM64_ENV) bash $(ROOT)/scripts/setup.sh
ARM64_FLAGS := $(shell $(ARM64_ENV) bash -c 'source $(ROOT)/scripts/config.sh && ivshmem_make_flags')
ARM64_TARGET := aarch64-unknown-linux-gnu
ARM64_TOOLS_DIR := $(ROOT)/userspace/target/$(ARM64_TARGET)/release
# The C API's static library for the C example (as capi does), in a target directory of its own:
# it is built with panics unwinding, the tools are not.
ARM64_CAPI_DIR := $(ROOT)/userspace/target/arm64-capi
arm64: module-arm64 tools-arm64

module-arm64:
	$(call copy_build,$(ROOT)/.arm64-build,$(KDIR_ARM64_CMD),$(ARM64_FLAGS))
	$(call copy_build,$(ROOT)/.arm64-race-build,$(KDIR_ARM64_CMD),$(ARM64_FLAGS) IVSHMEM_RACE_DELAY=1)

tools-arm64:
	@command -v aarch64-linux-gnu-gcc >/dev/null || { echo "no aarch64-linux-gnu-gcc: IVSHMEM_ARCH=arm64 bash scripts/setup.sh host"; exit 1; }
	cd userspace && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
		RUSTFLAGS="-C target-feature=+crt-static" \
		$(CARGO) build --release --locked --target $(ARM64_TARGET) --bins
	cd userspace && CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
		CARGO_TARGET_DIR=$(ARM64_CAPI_DIR) $(CARGO) rustc --release --locked --lib --target $(ARM64_TARGET) \
		--crate-type staticlib --config 'profile.release.panic="unwind"'
	set -o pipefail; aarch64-linux-gnu-gcc $(CAPI_CFLAGS) -static -s -Wl,--gc-sections \
		-o $(ARM64_TOOLS_DIR)/ivshmem-pipe-c $(CAPI_EXAMPLE) $(ARM64_CAPI_DIR)/$(ARM64_TARGET)/release/libivshmem.a \
		-lpthread -ldl -lm -lrt -lutil 2>&1 | \
		sed -e '/libivshmem.a(std-.*in function/d' -e '/in statically linked applications requires/d' >&2

# The module and its fault-injection build for the debug guest kernel.
module-debug:
	$(call copy_build,$(ROOT)/.debug-build,$(KDIR_DEBUG_CMD),$(DEBUG_FLAGS))
	$(call copy_build,$(ROOT)/.debug-race-build,$(KDIR_DEBUG_CMD),$(DEBUG_FLAGS) IVSHMEM_RACE_DELAY=1)

# The module goes to /lib/modules/<release>/updates/ for the release of KDIR (for the running
# kernel: KDIR=/lib/modules/$$(uname -r)/build).
install: all
	kdir=$$($(KDIR_CMD)) && bash $(ROOT)/scripts/install.sh install $$kdir

uninstall:
	kdir=$$($(KDIR_CMD)) && bash $(ROOT)/scripts/install.sh uninstall $$kdir

# DKMS rebuilds the module on kernel updates from a copy of its source (Kbuild, rust/, the
# version's Cargo.toml) in /usr/src/ivshmem-VERSION, with scripts/dkms.conf. It needs kernel
# headers with Rust support built by the same rustc (README, Building against your kernel).
dkms-add:
	@command -v dkms >/dev/null || { echo "dkms is not installed"; exit 1; }
	rm -rf $(DKMS_SRC) && mkdir -p $(DKMS_SRC)/userspace
	cp -r $(ROOT)/Kbuild $(ROOT)/rust $(DKMS_SRC)/
	rm -f $(DKMS_SRC)/rust/*.o $(DKMS_SRC)/rust/.*.cmd $(DKMS_SRC)/rust/*.long-type-*.txt
	cp $(ROOT)/userspace/Cargo.toml $(DKMS_SRC)/userspace/
	sed 's/@VERSION@/$(VERSION)/' $(ROOT)/scripts/dkms.conf > $(DKMS_SRC)/dkms.conf
	dkms add ivshmem/$(VERSION)

dkms-remove:
	@command -v dkms >/dev/null || { echo "dkms is not installed"; exit 1; }
	! dkms status ivshmem/$(VERSION) | grep -q . || dkms remove ivshmem/$(VERSION) --all
	rm -rf $(DKMS_SRC)

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

lint: clippy rustfmt-check ruff
	cd userspace && $(CARGO) fmt --check && $(CARGO) clippy --locked --all-targets -- -D warnings
	cd userspace/examples/tokio-async-fd && $(CARGO) fmt --check

# The lab's and the VM suite's Python (settings: scripts/ruff.toml), with the ruff that
# scripts/setup.sh installs into the cache's virtual environment.
VENV_CMD := bash -c 'source $(ROOT)/scripts/config.sh && ivshmem_venv'
ruff:
	venv=$$($(VENV_CMD)) && { [ -x $$venv/bin/ruff ] || bash scripts/setup.sh host >/dev/null; } && \
		$$venv/bin/ruff check --quiet scripts

# The second run is the loom model of the channel protocol (tests/channel_loom.rs): loom only
# builds with the loom cfg, which changes every crate's build, hence its own target directory.
# The one test that needs an optional tool, the aarch64 cross compiler (IVSHMEM_ARCH=arm64
# scripts/setup.sh host), is skipped with a line saying so where it is missing, except in make
# test (IVSHMEM_UNIT_TEST_ALL=1), which installs it.
AARCH64_CC := $(shell command -v aarch64-linux-gnu-gcc)
unit-test:
	@[ -n "$(AARCH64_CC)" ] || [ -n "$$IVSHMEM_UNIT_TEST_ALL" ] || echo "unit-test: skipping c_header_matches_rust_abi_on_aarch64:" \
		"no aarch64-linux-gnu-gcc (install it with: IVSHMEM_ARCH=arm64 scripts/setup.sh host)"
	cd userspace && $(CARGO) test --locked $(if $(AARCH64_CC),,$(if $(IVSHMEM_UNIT_TEST_ALL),,-- --skip c_header_matches_rust_abi_on_aarch64))
	cd userspace && RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
		$(CARGO) test --locked --release --test channel_loom

# Channels in a tokio event loop (userspace/examples/tokio-async-fd: a crate of its own, so
# that tokio is not a dependency of the ivshmem crate); make test runs it.
tokio-example:
	cd userspace/examples/tokio-async-fd && $(CARGO) run --locked --release --quiet \
		--target-dir $(ROOT)/userspace/target/tokio-example

demo: all
	IVSHMEM_FLAVOUR=release bash scripts/demo.sh

# Release kernel only: timings on the debug kernel mean nothing. The test environment's Python
# draws the plots (matplotlib, scripts/vmtests/requirements.txt).
bench: all
	venv=$$($(VENV_CMD)) && { [ -f $$venv/.ivshmem-complete ] || bash scripts/setup.sh host >/dev/null; } && \
		IVSHMEM_FLAVOUR=release $$venv/bin/python scripts/bench.py

# The VM suite alone (scripts/vmtest.sh, pytest) on every guest kernel, as make test runs it;
# vm-test-release on the release one only. Each kind's modules and tools are built first.
vm-test:
	bash scripts/vmtest.sh --kind all --build

vm-test-release:
	bash scripts/vmtest.sh --kind release --build

check:
	bash scripts/test.sh check

test:
	bash scripts/test.sh

# Without a kernel tree: `make clean` must not build one first.
clean:
	rm -f *.o *.ko *.mod *.mod.c .*.cmd modules.order Module.symvers .module-common.o
	rm -rf rust/*.o rust/.*.cmd rust/*.long-type-*.txt .clippy.log .race-build .debug-build .debug-race-build .k72-build .k72-race-build .arm64-build .arm64-race-build
	cd userspace && $(CARGO) clean
