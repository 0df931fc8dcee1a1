#!/usr/bin/env bash
# `make demo`: boots two guests sharing memory, loads the driver in both, passes a message from
# guest 1 to guest 2 with read_write, and measures bandwidth in each. Stops the guests on exit.
# The guests are the lab's default q35 machines with the device behind a PCIe root port, which
# puts BAR2 above 4 GiB: there the MTRRs let PAT grant write-back (`ivshmem info` prints what it
# granted).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/config.sh
export IVSHMEM_RUN="$IVSHMEM_RUN-demo"
# The demo shows one device both guests write (the host reads it too): not the isolated topology.
export IVSHMEM_TOPOLOGY=shared
mkdir -p "$IVSHMEM_RUN"
trap 'bash scripts/stop.sh' EXIT
trap 'exit 130' INT TERM

bash scripts/initramfs.sh "$IVSHMEM_RUN/initramfs.cpio.gz" ivshmem.ko \
	userspace/target/x86_64-unknown-linux-gnu/release
rm -f "$IVSHMEM_SHM_PATH"
IVSHMEM_GUESTS=2 bash scripts/start.sh
for g in 1 2; do python3 scripts/lab.py wait "$g" 240; done

in_guest() {
	local g=$1
	shift
	echo "root@guest$g:~# $*"
	python3 scripts/lab.py run "$g" --timeout 300 "$@"
}
for g in 1 2; do in_guest "$g" insmod /ivshmem.ko; done
in_guest 1 "dmesg | grep 'ivshmem 0000'; ls -l /dev/ivshmem0"
in_guest 1 "ivshmem info | grep -E '^(cache|pat) '"
echo
in_guest 1 read_write
echo "host: the backing file holds '$(dd if="$IVSHMEM_SHM_PATH" bs=1 skip=16 count=26 status=none)' after a 16-byte header"
in_guest 2 read_write
echo
in_guest 1 bandwidth
in_guest 2 bandwidth --direction read
echo
echo "The host sees the same memory in $IVSHMEM_SHM_PATH ($IVSHMEM_SHM_SIZE)."
