#!/usr/bin/env bash
# Stops every guest started by scripts/start.sh (SIGTERM, then SIGKILL after 5 s), then the
# ivshmem-server of doorbell mode.
set -uo pipefail
source "$(dirname "$0")/config.sh"
for pidfile in "$IVSHMEM_RUN"/guest*.pid "$IVSHMEM_RUN"/server.pid; do
	[ -e "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if alive "$pid" && grep -qE "qemu|ivshmem-server" "/proc/$pid/cmdline" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
		for _ in $(seq 20); do alive "$pid" || break; sleep 0.1; done
	fi
	rm -f "$pidfile"
done
rm -f "$IVSHMEM_RUN"/guest*.sock "$IVSHMEM_RUN"/net*.sock "$IVSHMEM_RUN"/ivshmem.sock
