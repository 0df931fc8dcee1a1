# shellcheck shell=bash
# Every knob of the lab in one place. Each can be overridden from the environment.
# Sourced by the other scripts; prints nothing.

: "${IVSHMEM_KERNEL_SERIES:=7.3}"          # Debian linux-source-<series> package: 7.3 or 7.2
: "${IVSHMEM_ARCH:=x86_64}"                  # guest architecture: x86_64, or arm64 (qemu-system-aarch64 -M virt)
: "${IVSHMEM_MACHINE:=q35}"                  # x86: q35 (each ivshmem device behind a PCIe root port: BAR2 above 4 GiB, write-back for real) | pc (i440fx: BAR2 in the 32-bit hole, which the MTRRs make uncachable; the VM suite's default)
: "${IVSHMEM_KERNEL_SUITE:=trixie-backports}" # Debian suite that ships it
: "${IVSHMEM_GUESTS:=2}"                     # number of guests started by start.sh
: "${IVSHMEM_SHM_SIZE:=64M}"                 # size of the shared memory (QEMU syntax: 64M, 1G)
: "${IVSHMEM_SHM_PATH:=/dev/shm/ivshmem-rs}" # backing file; a path on hugetlbfs works too
: "${IVSHMEM_EXTRA_SHM:=}"                   # extra "size" list: one more ivshmem-plain each, e.g. "4M 16M"
: "${IVSHMEM_MODE:=plain}"                   # plain | doorbell (ivshmem-doorbell + scripts' ivshmem-server)
: "${IVSHMEM_VECTORS:=2}"                    # doorbell mode: MSI-X vectors per guest
: "${IVSHMEM_TOPOLOGY:=shared}"              # shared: one data device all guests write; isolated: guest N writes its own ($IVSHMEM_SHM_PATH.ownN) and gets the others' readonly=on (README, Isolation)
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

# The arm64 kernel is the release fragment plus this one (which also turns off the base
# fragment's x86-only options). It is built with clang, which cross-compiles without a cross gcc.
IVSHMEM_ARM64_FRAGMENT="$IVSHMEM_ROOT/scripts/guest-kernel-arm64.config"

# The version of Debian's linux-source-$IVSHMEM_KERNEL_SERIES in the cache ("none" before setup).
ivshmem_src_version() { cat "$IVSHMEM_CACHE/src/version-$IVSHMEM_KERNEL_SERIES" 2>/dev/null || echo none; }

# The kernel build directory is keyed on everything that changes its output: kernel version,
# config fragments and the exact rustc (out-of-tree Rust modules must use the same compiler),
# plus clang for the clang-built kernels. Build directories: build/linux-* (release x86-64),
# build/debug-linux-*, build/arm64-linux-*; the version in the name tells the series apart.
ivshmem_kernel_key() {
	local src_ver frag_hash rustc_hash clang_hash
	src_ver=$(ivshmem_src_version)
	frag_hash=$(sha256sum "$IVSHMEM_FRAGMENT" | cut -c1-12)
	rustc_hash=$(rustc --version 2>/dev/null | sha256sum | cut -c1-8)
	clang_hash=$("clang$IVSHMEM_LLVM" --version 2>/dev/null | head -n1 | sha256sum | cut -c1-8)
	if [ "$IVSHMEM_ARCH" = arm64 ]; then
		echo "arm64-linux-$src_ver-$frag_hash-$(sha256sum "$IVSHMEM_ARM64_FRAGMENT" | cut -c1-12)-$rustc_hash-$clang_hash"
	elif [ "$IVSHMEM_FLAVOUR" = debug ]; then
		echo "debug-linux-$src_ver-$frag_hash-$(sha256sum "$IVSHMEM_DEBUG_FRAGMENT" | cut -c1-12)-$rustc_hash-$clang_hash"
	else
		echo "linux-$src_ver-$frag_hash-$rustc_hash"
	fi
}

# The glob of the builds a new build of this kind replaces (same prefix, same series).
ivshmem_kernel_glob() {
	local prefix=""
	[ "$IVSHMEM_ARCH" = x86_64 ] || prefix=$IVSHMEM_ARCH-
	[ "$IVSHMEM_FLAVOUR" = release ] || prefix=debug-
	echo "${prefix}linux-$IVSHMEM_KERNEL_SERIES.*"
}

# The config fragments of the flavour, in the order they apply.
ivshmem_fragments() {
	echo "$IVSHMEM_FRAGMENT"
	[ "$IVSHMEM_FLAVOUR" = release ] || echo "$IVSHMEM_DEBUG_FRAGMENT"
	[ "$IVSHMEM_ARCH" = x86_64 ] || echo "$IVSHMEM_ARM64_FRAGMENT"
}

# Extra make arguments for the flavour's kernel and its modules.
ivshmem_make_flags() {
	if [ "$IVSHMEM_ARCH" = arm64 ]; then
		echo "ARCH=arm64 LLVM=$IVSHMEM_LLVM"
	elif [ "$IVSHMEM_FLAVOUR" = debug ]; then
		echo "LLVM=$IVSHMEM_LLVM"
	fi
}

# The kernel image start.sh boots, relative to the build directory (make target: its name).
ivshmem_kernel_image() {
	if [ "$IVSHMEM_ARCH" = arm64 ]; then echo arch/arm64/boot/Image; else echo arch/x86/boot/bzImage; fi
}

ivshmem_kdir() { echo "$IVSHMEM_CACHE/build/$(ivshmem_kernel_key)"; }

# The virtual environment with the VM suite's runner and the Python linter
# (scripts/vmtests/requirements.txt), keyed by that file and the Python that runs it.
ivshmem_venv() {
	local key
	key=$({ cat "$IVSHMEM_ROOT/scripts/vmtests/requirements.txt"; python3 --version 2>&1; } | sha256sum | cut -c1-12)
	echo "$IVSHMEM_CACHE/venv-$key"
}

# Whether process $1 runs (a zombie does not: daemonized QEMUs may be reaped late).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

die() { echo "error: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }
case "$IVSHMEM_FLAVOUR" in
release | debug) ;;
*) die "IVSHMEM_FLAVOUR must be release or debug, not '$IVSHMEM_FLAVOUR'" ;;
esac
case "$IVSHMEM_KERNEL_SERIES" in
7.3 | 7.2) ;;
*) die "IVSHMEM_KERNEL_SERIES must be 7.3 or 7.2, not '$IVSHMEM_KERNEL_SERIES'" ;;
esac
case "$IVSHMEM_MACHINE" in
pc | q35) ;;
*) die "IVSHMEM_MACHINE must be pc or q35, not '$IVSHMEM_MACHINE'" ;;
esac
case "$IVSHMEM_ARCH" in
x86_64) ;;
arm64) [ "$IVSHMEM_FLAVOUR" = release ] || die "the arm64 guest kernel has the release flavour only" ;;
*) die "IVSHMEM_ARCH must be x86_64 or arm64, not '$IVSHMEM_ARCH'" ;;
esac
export PATH="$IVSHMEM_CACHE/tools/bin:$PATH"
