#!/usr/bin/env bash
# The VM suite (scripts/vmtests/, pytest from the cache's virtual environment; scripts/setup.sh
# installs it). Arguments go to pytest:
#   scripts/vmtest.sh                              the release kernel (or $IVSHMEM_FLAVOUR), full tier
#   scripts/vmtest.sh --kind debug test_main.py    one scenario on one kind
#   scripts/vmtest.sh -k revoke                    the checks whose names match
#   scripts/vmtest.sh --kind all --build           every kind, building each one's modules first
# A JUnit XML report goes to $IVSHMEM_VMTEST_RUN/junit.xml (default /tmp/ivshmem-rs-vmtest).
set -euo pipefail
source "$(dirname "$0")/config.sh"
venv=$(ivshmem_venv)
[ -x "$venv/bin/pytest" ] || bash "$IVSHMEM_ROOT/scripts/setup.sh" host >/dev/null
run=${IVSHMEM_VMTEST_RUN:-${TMPDIR:-/tmp}/ivshmem-rs-vmtest}
mkdir -p "$run"
cd "$IVSHMEM_ROOT/scripts/vmtests"
exec "$venv/bin/python" -m pytest --junitxml="$run/junit.xml" "$@"
