#!/usr/bin/env bash
# `make test`: everything, from a fresh machine. Installs and builds what is missing (cached in
# $IVSHMEM_CACHE), then: host unit tests, module + tools builds, lints, the VM suite on the
# release guest kernel, on the release kernel of Debian's 7.2 series (core phases), on arm64
# guests (core phases) and then on the debug one (KASAN, lockdep, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/config.sh

t0=$SECONDS
phase() { echo; echo "===== $* ($((SECONDS - t0)) s)"; }

phase "setup: host packages, bindgen, release guest kernel"
bash scripts/setup.sh >/dev/null
phase "setup: release guest kernel of Debian's 7.2 series"
IVSHMEM_KERNEL_SERIES=7.2 bash scripts/setup.sh >/dev/null
phase "setup: arm64 guest kernel, cross compilers, arm64 busybox"
IVSHMEM_ARCH=arm64 bash scripts/setup.sh >/dev/null
phase "setup: debug guest kernel"
bash scripts/setup.sh debug >/dev/null
phase "userspace unit tests"
make --no-print-directory unit-test
phase "module and tools build: release, fault-injection, 7.2 series, debug, arm64"
make --no-print-directory all module-race module-7.2 module-debug arm64
phase "lints: kernel clippy, rustfmt, cargo clippy/fmt"
make --no-print-directory lint
phase "VM test suite: release guest kernel, 7.2 series, arm64, then debug"
# One run for every kind: its closing line, "N passed, N failed" over all, is the last line of
# make test.
exec python3 scripts/vmtest.py --flavour all
