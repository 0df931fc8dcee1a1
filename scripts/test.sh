#!/usr/bin/env bash
# `make test`: everything, from a fresh machine. Installs and builds what is missing (cached in
# $IVSHMEM_CACHE), then: host unit tests, lints, module + tools build, the VM suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/config.sh

t0=$SECONDS
phase() { echo; echo "===== $* ($((SECONDS - t0)) s)"; }

phase "setup: host packages, bindgen, guest kernel"
bash scripts/setup.sh >/dev/null
phase "userspace unit tests"
make --no-print-directory unit-test
phase "module and tools build"
make --no-print-directory all module-race
phase "lints: kernel clippy, rustfmt, cargo clippy/fmt"
make --no-print-directory lint
phase "VM test suite"
# The suite's closing line, "N passed, N failed", is the last line of make test.
exec python3 scripts/vmtest.py
