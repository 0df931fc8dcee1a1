#!/usr/bin/env bash
# The test tiers. Each installs and builds what is missing (cached in $IVSHMEM_CACHE).
#   scripts/test.sh check   make check: host unit tests, lints, module builds, and the VM suite's
#                           check tier on the release guest kernel (each driver and channel path
#                           once, small volumes, no figures): the command to run after a change
#   scripts/test.sh         make test (CI): the same with the tokio example (make tokio-example),
#                           then the whole VM suite on every kind of
#                           guest kernel: release, debug (KASAN, lockdep), Debian's 7.2 series,
#                           arm64. The kernels after the release one build in the background,
#                           niced, while the earlier kinds' suites run; each kind's tests wait for
#                           its kernel (setup.sh's per-kind lock), then build its modules.
# The last line is pytest's summary of the VM suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/config.sh

tier=full
case "${1:-}" in
"") ;;
check) tier=check ;;
*) die "usage: scripts/test.sh [check]" ;;
esac

t0=$SECONDS
phase() { echo; echo "===== $* ($((SECONDS - t0)) s)"; }

background=""
stop_background() {
	[ -z "$background" ] || kill -- "-$background" 2>/dev/null || true
}
trap stop_background EXIT

if [ $tier = check ]; then
	phase "setup: host packages, pytest and ruff, bindgen, release guest kernel"
	bash scripts/setup.sh >/dev/null
else
	phase "setup: host packages (x86-64 and arm64 guests), pytest and ruff, bindgen, release guest kernel"
	IVSHMEM_ARCH=arm64 bash scripts/setup.sh host >/dev/null
	bash scripts/setup.sh >/dev/null
	# In the order the suite takes the kinds (scripts/vmtests/kinds.py, ALL_KINDS).
	log=$IVSHMEM_CACHE/background-kernels.log
	phase "setup: debug, 7.2-series and arm64 guest kernels in the background (log: $log)"
	set -m
	{
		nice -n 10 bash scripts/setup.sh debug
		IVSHMEM_KERNEL_SERIES=7.2 nice -n 10 bash scripts/setup.sh
		IVSHMEM_ARCH=arm64 nice -n 10 bash scripts/setup.sh
	} >"$log" 2>&1 &
	background=$!
	set +m
fi

phase "userspace unit tests"
# make test installs every optional tool (the aarch64 cross compiler above): nothing is skipped.
[ $tier = check ] || export IVSHMEM_UNIT_TEST_ALL=1
make --no-print-directory unit-test

if [ $tier != check ]; then
	phase "channels in a tokio event loop (make tokio-example)"
	make --no-print-directory tokio-example
fi

phase "lints: kernel clippy, rustfmt, cargo clippy/fmt, ruff"
make --no-print-directory lint

if [ $tier = check ]; then
	phase "VM suite, check tier: release guest kernel (builds the module, its race build and the tools)"
	kinds=release
else
	phase "VM suite: release, debug, 7.2 series, arm64 (each kind builds its modules and tools first)"
	kinds=all
fi
status=0
bash scripts/vmtest.sh --kind "$kinds" --tier "$tier" --build || status=$?
# Every kind's kernel is built by now (each kind's tests waited for theirs), unless the suite
# stopped early: then the background builds are stopped (on exit).
exit $status
