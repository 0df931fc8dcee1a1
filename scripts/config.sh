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
: "${IVSHMEM_NET:=0}"                        # 1: guests 1 and 2 get a virtio-net link to each other (10.0.7.N/24, no host network; make bench)
: "${IVSHMEM_ONLY:=}"                        # start.sh: start only these guest numbers (e.g. "2")
: "${IVSHMEM_ACCEL:=auto}"                   # tcg | kvm | auto (kvm only if a probe boot proves it)
: "${IVSHMEM_GUEST_MEM:=512M}"               # guest RAM
: "${IVSHMEM_GUEST_CPUS:=1}"                 # guest vCPUs
: "${IVSHMEM_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/ivshmem-rs}" # kernel, bindgen: outside the repo
: "${IVSHMEM_RUN:=${TMPDIR:-/tmp}/ivshmem-rs-run}" # pid files, sockets, serial logs of running guests
: "${IVSHMEM_JOBS:=$(( $(nproc) + 1 ))}"     # make -j
: "${IVSHMEM_FLAVOUR:=release}"              # guest kernel: release | debug (KASAN, lockdep, kmemleak, ...)
: "${IVSHMEM_KERNEL:=}"                      # start.sh boots this bzImage instead of the flavour's
: "${IVSHMEM_APT_MIRROR:=}"                  # Debian archive URL for the kernel source (default: the host's apt sources)

IVSHMEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IVSHMEM_FRAGMENT="$IVSHMEM_ROOT/scripts/guest-kernel.config"
# The debug flavour is the release fragment plus this one.
IVSHMEM_DEBUG_FRAGMENT="$IVSHMEM_ROOT/scripts/guest-kernel-debug.config"
# Rust with KASAN needs a clang-built kernel (`config RUST` depends on !KASAN || CC_IS_CLANG), so
# the debug kernel, and every module built for it, is built with `make LLVM=$IVSHMEM_LLVM`.
IVSHMEM_LLVM=-19
export LIBCLANG_PATH="${LIBCLANG_PATH:-/usr/lib/llvm-19/lib}"
export PATH="$HOME/.cargo/bin:$PATH"

# The kernel build directory is keyed on everything that changes its output: kernel version,
# config fragments and the exact rustc (out-of-tree Rust modules must use the same compiler),
# plus clang for the debug flavour. Release builds are build/linux-*, debug ones build/debug-*.
ivshmem_kernel_key() {
	local src_ver frag_hash rustc_hash
	src_ver=$(cat "$IVSHMEM_CACHE/src/version" 2>/dev/null || echo none)
	frag_hash=$(sha256sum "$IVSHMEM_FRAGMENT" | cut -c1-12)
	rustc_hash=$(rustc --version 2>/dev/null | sha256sum | cut -c1-8)
	if [ "$IVSHMEM_FLAVOUR" = debug ]; then
		echo "debug-linux-$src_ver-$frag_hash-$(sha256sum "$IVSHMEM_DEBUG_FRAGMENT" | cut -c1-12)-$rustc_hash-$(
			"clang$IVSHMEM_LLVM" --version 2>/dev/null | head -n1 | sha256sum | cut -c1-8)"
	else
		echo "linux-$src_ver-$frag_hash-$rustc_hash"
	fi
}

# The config fragments of the flavour, in the order they apply.
ivshmem_fragments() {
	echo "$IVSHMEM_FRAGMENT"
	[ "$IVSHMEM_FLAVOUR" = release ] || echo "$IVSHMEM_DEBUG_FRAGMENT"
}

# Extra make arguments for the flavour's kernel and its modules.
ivshmem_make_flags() {
	[ "$IVSHMEM_FLAVOUR" = release ] || echo "LLVM=$IVSHMEM_LLVM"
}

ivshmem_kdir() { echo "$IVSHMEM_CACHE/build/$(ivshmem_kernel_key)"; }

# Whether process $1 runs (a zombie does not: daemonized QEMUs may be reaped late).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }
case "$IVSHMEM_FLAVOUR" in
release | debug) ;;
*) die "IVSHMEM_FLAVOUR must be release or debug, not '$IVSHMEM_FLAVOUR'" ;;
esac
export PATH="$IVSHMEM_CACHE/tools/bin:$PATH"
