#!/usr/bin/env bash
# `make test`: everything, from a fresh machine. Installs and builds what is missing (cached in
# $IVSHMEM_CACHE), then: host unit tests, module + tools builds, lints, the VM suite on the
# release guest kernel and then on the debug one (KASAN, lockdep, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/config.sh

t0=$SECONDS
phase() { echo; echo "===== $* ($((SECONDS - t0)) s)"; }

phase "setup: host packages, bindgen, release guest kernel"
bash scripts/setup.sh >/dev/null
phase "setup: debug guest kernel"
bash scripts/setup.sh debug >/dev/null
phase "userspace unit tests"
make --no-print-directory unit-test
phase "module and tools build: release, fault-injection, debug"
make --no-print-directory all module-race module-debug
phase "lints: kernel clippy, rustfmt, cargo clippy/fmt"
make --no-print-directory lint
phase "VM test suite: release guest kernel, then debug"
# One run for both flavours: its closing line, "N passed, N failed" over both, is the last
# line of make test.
exec python3 scripts/vmtest.py --flavour all
