# shellcheck shell=bash
# Every knob of the lab in one place. Each can be overridden from the environment.
# Sourced by the other scripts; prints nothing.

: "${IVSHMEM_KERNEL_SERIES:=7.3}"          # Debian linux-source-<series> package
: "${IVSHMEM_KERNEL_SUITE:=trixie-backports}" # Debian suite that ships it
: "${IVSHMEM_GUESTS:=2}"                     # number of guests started by start.sh
: "${IVSHMEM_SHM_SIZE:=64M}"                 # size of the shared memory (QEMU syntax: 64M, 1G)
: "${IVSHMEM_SHM_PATH:=/dev/shm/ivshmem-rs}" # backing file; a path on hugetlbfs works too
: "${IVSHMEM_EXTRA_SHM:=}"                   # extra "size" list: one more ivshmem-plain each, e.g. "4M 16M"
: "${IVSHMEM_MODE:=plain}"                   # plain | doorbell (ivshmem-doorbell + scripts' ivshmem-server)
: "${IVSHMEM_VECTORS:=2}"                    # doorbell mode: MSI-X vectors per guest
: "${IVSHMEM_ONLY:=}"                        # start.sh: start only these guest numbers (e.g. "2")
: "${IVSHMEM_ACCEL:=auto}"                   # tcg | kvm | auto (kvm only if a probe boot proves it)
: "${IVSHMEM_GUEST_MEM:=512M}"               # guest RAM
: "${IVSHMEM_GUEST_CPUS:=1}"                 # guest vCPUs
: "${IVSHMEM_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/ivshmem-rs}" # kernel, bindgen: outside the repo
: "${IVSHMEM_RUN:=${TMPDIR:-/tmp}/ivshmem-rs-run}" # pid files, sockets, serial logs of running guests
: "${IVSHMEM_JOBS:=$(( $(nproc) + 1 ))}"     # make -j
: "${IVSHMEM_APT_MIRROR:=}"                  # Debian archive URL for the kernel source (default: the host's apt sources)

IVSHMEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IVSHMEM_FRAGMENT="$IVSHMEM_ROOT/scripts/guest-kernel.config"
export LIBCLANG_PATH="${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}"
export PATH="$HOME/.cargo/bin:$PATH"

# The kernel build directory is keyed on everything that changes its output: kernel version,
# config fragment and the exact rustc (out-of-tree Rust modules must use the same compiler).
ivshmem_kernel_key() {
	local src_ver frag_hash rustc_hash
	src_ver=$(cat "$IVSHMEM_CACHE/src/version" 2>/dev/null || echo none)
	frag_hash=$(sha256sum "$IVSHMEM_FRAGMENT" | cut -c1-12)
	rustc_hash=$(rustc --version 2>/dev/null | sha256sum | cut -c1-8)
	echo "linux-$src_ver-$frag_hash-$rustc_hash"
}

ivshmem_kdir() { echo "$IVSHMEM_CACHE/build/$(ivshmem_kernel_key)"; }

# Whether process $1 runs (a zombie does not: daemonized QEMUs may be reaped late).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }
export PATH="$IVSHMEM_CACHE/tools/bin:$PATH"
