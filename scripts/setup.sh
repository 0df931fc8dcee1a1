#!/usr/bin/env bash
# Installs what the lab needs and builds the guest kernel. Idempotent: a warm cache is reused.
#   scripts/setup.sh            everything
#   scripts/setup.sh host       host packages and tools only
set -euo pipefail
source "$(dirname "$0")/config.sh"

APT_PACKAGES=(qemu-system-x86 busybox-static libclang-19-dev clang-19 bc flex bison libelf-dev
	libssl-dev cpio xz-utils kmod python3 gcc make)
BINDGEN_MIN=0.71.1

need_root() {
	[ "$(id -u)" = 0 ] || die "$1 needs root (run as root, or install it yourself: $2)"
}

host_packages() {
	local missing=()
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	step "installing host packages: ${missing[*]}"
	need_root "installing packages" "apt-get install ${missing[*]}"
	apt-get update -q >/dev/null || die "apt-get update failed (network? apt sources?)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
		>"$IVSHMEM_CACHE/apt-install.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed; see $IVSHMEM_CACHE/apt-install.log"
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

rust_tools() {
	command -v rustc >/dev/null || die "no rustc: install Rust with rustup (https://rustup.rs)"
	if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
		step "adding rustup component rust-src"
		rustup component add rust-src || die "rustup component add rust-src failed"
	fi
	local have
	have=$(bindgen --version 2>/dev/null | awk '{print $2}' || true)
	if [ -z "$have" ] || ! version_ge "$have" "$BINDGEN_MIN"; then
		step "installing bindgen-cli >= $BINDGEN_MIN into $IVSHMEM_CACHE/tools (about 90 s)"
		cargo install bindgen-cli --locked --root "$IVSHMEM_CACHE/tools" \
			>"$IVSHMEM_CACHE/bindgen-install.log" 2>&1 ||
			die "cargo install bindgen-cli failed; see $IVSHMEM_CACHE/bindgen-install.log"
	fi
}

# Fetches Debian's linux-source-<series> through a private apt configuration, so the host's
# sources stay untouched. Result: $IVSHMEM_CACHE/src/linux (a symlink) and src/version.
kernel_source() {
	local src=$IVSHMEM_CACHE/src
	[ -f "$src/version" ] && [ -f "$src/linux-$(cat "$src/version")/Makefile" ] && return 0
	step "fetching linux-source-$IVSHMEM_KERNEL_SERIES from $IVSHMEM_KERNEL_SUITE"
	local apt=$IVSHMEM_CACHE/apt
	mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$src"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $IVSHMEM_KERNEL_SUITE main" \
		>"$apt/sources.list"
	cat >"$apt/apt.conf" <<-CONF
	Dir::Etc::SourceList "$apt/sources.list";
	Dir::Etc::SourceParts "/nonexistent";
	Dir::State::Lists "$apt/lists";
	Dir::Cache "$apt";
	Dir::Cache::archives "$apt/archives";
	APT::Sandbox::User "root";
	CONF
	export APT_CONFIG=$apt/apt.conf
	apt-get update -q >/dev/null || die "apt-get update for $IVSHMEM_KERNEL_SUITE failed"
	rm -f "$src"/*.deb
	(cd "$src" && apt-get download -q "linux-source-$IVSHMEM_KERNEL_SERIES" >/dev/null) ||
		die "apt-get download linux-source-$IVSHMEM_KERNEL_SERIES failed"
	unset APT_CONFIG
	local deb ver
	deb=$(ls "$src"/linux-source-"$IVSHMEM_KERNEL_SERIES"_*.deb)
	rm -rf "$src/x" && dpkg-deb -x "$deb" "$src/x"
	step "unpacking $(basename "$deb")"
	tar -C "$src" -xf "$src/x/usr/src/linux-source-$IVSHMEM_KERNEL_SERIES.tar.xz"
	ver=$(make -s -C "$src/linux-source-$IVSHMEM_KERNEL_SERIES" kernelversion)
	rm -rf "$src/linux-$ver" && mv "$src/linux-source-$IVSHMEM_KERNEL_SERIES" "$src/linux-$ver"
	rm -rf "$src/x" "$deb"
	echo "$ver" >"$src/version"
}

kernel_build() {
	local ksrc kdir
	ksrc=$IVSHMEM_CACHE/src/linux-$(cat "$IVSHMEM_CACHE/src/version")
	kdir=$(ivshmem_kdir)
	[ -f "$kdir/.ivshmem-built" ] && return 0
	step "building guest kernel in $kdir (about 6 minutes on 2 cores)"
	rm -rf "$kdir" && mkdir -p "$kdir"
	make -s -C "$ksrc" O="$kdir" tinyconfig >/dev/null
	"$ksrc/scripts/kconfig/merge_config.sh" -m -O "$kdir" "$kdir/.config" "$IVSHMEM_FRAGMENT" >/dev/null
	make -s -C "$ksrc" O="$kdir" olddefconfig >/dev/null
	make -s -C "$ksrc" O="$kdir" rustavailable >/dev/null 2>&1 ||
		die "kernel says Rust is not available: $(make -C "$ksrc" O="$kdir" rustavailable 2>&1 | tail -n3)"
	local line missing=0
	while read -r line; do
		case "$line" in CONFIG_*=y) grep -qx "$line" "$kdir/.config" || { echo "config: $line did not stick" >&2; missing=1; } ;; esac
	done <"$IVSHMEM_FRAGMENT"
	[ $missing = 0 ] || die "guest kernel config is incomplete (see above)"
	make -C "$ksrc" O="$kdir" -j"$IVSHMEM_JOBS" bzImage modules_prepare modules >"$kdir/build.log" 2>&1 ||
		die "kernel build failed; last lines of $kdir/build.log:
$(tail -n 20 "$kdir/build.log")"
	touch "$kdir/.ivshmem-built"
	ln -sfn "$kdir" "$IVSHMEM_CACHE/kernel"
	# Builds for older fragments or compilers are not used again: free their space.
	local old
	for old in "$IVSHMEM_CACHE"/build/*; do
		[ "$old" = "$kdir" ] || rm -rf "$old"
	done
}

mkdir -p "$IVSHMEM_CACHE"
[ -w "$IVSHMEM_CACHE" ] || die "cache directory $IVSHMEM_CACHE is not writable"
# One setup at a time (a second waits): two builds in one directory would wreck each other.
# The lock is released when this process exits, however it exits.
exec 9>"$IVSHMEM_CACHE/.setup.lock"
flock 9
avail=$(df -Pk "$IVSHMEM_CACHE" | awk 'NR==2 {print $4}')
[ "$avail" -gt 4000000 ] || [ -f "$(ivshmem_kdir)/.ivshmem-built" ] ||
	die "less than 4 GB free in $IVSHMEM_CACHE: no space for the kernel build"
export PATH="$IVSHMEM_CACHE/tools/bin:$PATH"

host_packages
rust_tools
[ "${1:-}" = host ] && exit 0
kernel_source
kernel_build
echo "$(ivshmem_kdir)"
