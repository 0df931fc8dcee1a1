#!/usr/bin/env bash
# Installs what the lab needs and builds the guest kernel. Idempotent: a warm cache is reused.
# Prints the kernel build directory.
#   scripts/setup.sh            everything, release guest kernel
#   scripts/setup.sh debug      everything, debug guest kernel (KASAN, lockdep, ...; about 10 min)
#   scripts/setup.sh host       host packages and tools only
# IVSHMEM_KERNEL_SERIES=7.2 builds Debian's 7.2 series instead of 7.3, IVSHMEM_ARCH=arm64 an arm64
# guest kernel (release flavour): each kind has its own cache entry, and none evicts another.
set -euo pipefail
case "${1:-}" in
"" | release | host) IVSHMEM_FLAVOUR=release ;;
debug) IVSHMEM_FLAVOUR=debug ;;
*) echo "usage: scripts/setup.sh [release | debug | host]" >&2; exit 2 ;;
esac
source "$(dirname "$0")/config.sh"

APT_PACKAGES=(qemu-system-x86 busybox-static libclang-19-dev clang-19 lld-19 llvm-19 bc flex bison
	libelf-dev libssl-dev cpio xz-utils kmod python3 gcc libc6-dev make)
# arm64 guests: QEMU for them (the same release as qemu-system-x86), the cross linker and libc
# for the static tools.
[ "$IVSHMEM_ARCH" = x86_64 ] || APT_PACKAGES+=(qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
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
	command -v rustc >/dev/null || die "no rustc: install Rust with rustup"
	if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
		step "adding rustup component rust-src"
		rustup component add rust-src || die "rustup component add rust-src failed"
	fi
	if [ "$IVSHMEM_ARCH" = arm64 ] && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
		step "adding rustup target aarch64-unknown-linux-gnu"
		rustup target add aarch64-unknown-linux-gnu || die "rustup target add aarch64-unknown-linux-gnu failed"
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

# The VM suite's pytest, the Python linter and make bench's plots (matplotlib), from PyPI into a
# virtual environment in the cache (ivshmem_venv): test-only, so the tools' runtime stays std
# alone. Older environments of other requirements are removed.
python_venv() {
	local venv log=$IVSHMEM_CACHE/venv-install.log
	venv=$(ivshmem_venv)
	[ -f "$venv/.ivshmem-complete" ] && return 0
	step "installing pytest, ruff and matplotlib (scripts/vmtests/requirements.txt) into $venv"
	rm -rf "$venv"
	python3 -m venv "$venv" >"$log" 2>&1 ||
		die "python3 -m venv failed (Debian's python3: apt-get install python3-venv); see $log"
	"$venv/bin/pip" install -q --disable-pip-version-check -r "$IVSHMEM_ROOT/scripts/vmtests/requirements.txt" \
		>>"$log" 2>&1 || die "pip install -r scripts/vmtests/requirements.txt failed; see $log"
	touch "$venv/.ivshmem-complete"
	local old
	for old in "$IVSHMEM_CACHE"/venv-*/; do
		[ "${old%/}" = "$venv" ] || rm -rf "$old"
	done
}

# The Debian archive the host's apt uses, as "URI KEYRING" (KEYRING may be empty): the entry
# whose suite is the host's release codename (not -updates, not -security). Reads one-line
# (*.list) and deb822 (*.sources) files. IVSHMEM_APT_MIRROR overrides it.
host_mirror() {
	if [ -n "$IVSHMEM_APT_MIRROR" ]; then
		local key=/usr/share/keyrings/debian-archive-keyring.gpg
		[ -f "$key" ] || key=
		echo "$IVSHMEM_APT_MIRROR $key"
		return 0
	fi
	local codename found=""
	codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
	if [ -n "$codename" ]; then
		local lists=() sources=() f
		for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
		for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && sources+=("$f"); done
		# deb [opt=v ...] URI SUITE COMPONENT...
		[ ${#lists[@]} -eq 0 ] || found=$(awk -v want="$codename" '
			/^[[:space:]]*deb[[:space:]]/ {
				sub(/#.*/, ""); key = ""; line = $0
				if (match(line, /\[[^]]*\]/)) {
					opts = substr(line, RSTART + 1, RLENGTH - 2)
					line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
					n = split(opts, o, /[[:space:]]+/)
					for (i = 1; i <= n; i++) if (o[i] ~ /^signed-by=/) key = substr(o[i], 11)
				}
				split(line, w, /[[:space:]]+/); j = (w[1] == "") ? 2 : 1
				if (w[j + 2] == want) { print w[j + 1], key; exit }
			}' "${lists[@]}")
		# Stanzas of "Field: value" lines; a continuation line starts with a space.
		[ -n "$found" ] || [ ${#sources[@]} -eq 0 ] || found=$(awk -v want="$codename" '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && (" " suites " ") ~ (" " want " ") && uris != "") {
					split(uris, u, " "); print u[1], key; found = 1; exit
				}
				types = uris = suites = key = enabled = ""
			}
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*$/ { flush(); next }
			/^[^[:space:]]/ {
				field = tolower($0); sub(/:.*/, "", field); value = $0; sub(/^[^:]*:[[:space:]]*/, "", value)
				gsub(/[[:space:]]+/, " ", value)
				if (field == "types") types = value
				else if (field == "uris") uris = value
				else if (field == "suites") suites = value
				else if (field == "enabled") enabled = value
				else if (field == "signed-by") key = (value == "") ? "(inline)" : value
			}
			END { if (!found) flush() }' "${sources[@]}")
	fi
	[ -n "$found" ] || die "no Debian archive in the host's apt sources; set IVSHMEM_APT_MIRROR=URL"
	# An inline (armored) Signed-By cannot be passed on: fall back to apt's trusted keys.
	case "$found" in *" (inline)") found="${found% (inline)} " ;; esac
	echo "$found"
}

# A private apt configuration in directory $1 (its own sources, lists and archives, so the
# host's stay untouched) with the one sources line $2 and any further apt.conf lines after it.
# Use: APT_CONFIG=$1/apt.conf apt-get ...
private_apt() {
	local apt=$1 line=$2
	shift 2
	mkdir -p "$apt/lists/partial" "$apt/archives/partial"
	echo "$line" >"$apt/sources.list"
	{
		cat <<-CONF
		Dir::Etc::SourceList "$apt/sources.list";
		Dir::Etc::SourceParts "/nonexistent";
		Dir::State::Lists "$apt/lists";
		Dir::Cache "$apt";
		Dir::Cache::archives "$apt/archives";
		APT::Sandbox::User "root";
		CONF
		[ $# -eq 0 ] || printf '%s\n' "$@"
	} >"$apt/apt.conf"
}

# Fetches Debian's linux-source-<series> through a private apt configuration, so the host's
# sources stay untouched; the archive is the host's (host_mirror). Result: src/linux-VERSION
# and src/version under $IVSHMEM_CACHE.
kernel_source() {
	local src=$IVSHMEM_CACHE/src vfile=$IVSHMEM_CACHE/src/version-$IVSHMEM_KERNEL_SERIES
	# Caches from before the second series had one src/version: it names its series' version.
	case "$(cat "$src/version" 2>/dev/null)" in
	"$IVSHMEM_KERNEL_SERIES".*) mv "$src/version" "$vfile" ;;
	esac
	[ -f "$vfile" ] && [ -f "$src/linux-$(cat "$vfile")/Makefile" ] && return 0
	local mirror uri key opts=""
	mirror=$(host_mirror) || exit 1
	uri=${mirror%% *} key=${mirror#* }
	[ -z "$key" ] || opts="[signed-by=$key] "
	step "fetching linux-source-$IVSHMEM_KERNEL_SERIES from $IVSHMEM_KERNEL_SUITE at $uri"
	local apt=$IVSHMEM_CACHE/apt
	mkdir -p "$src"
	private_apt "$apt" "deb $opts$uri $IVSHMEM_KERNEL_SUITE main"
	export APT_CONFIG=$apt/apt.conf
	apt-get update -q --error-on=any >"$apt/update.log" 2>&1 ||
		die "apt-get update for $IVSHMEM_KERNEL_SUITE at $uri failed (see $apt/update.log; another archive: IVSHMEM_APT_MIRROR=URL)"
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
	echo "$ver" >"$vfile"
}

# The arm64 guests' static busybox: Debian's busybox-static for arm64, from the host's archive
# and release (host_mirror, VERSION_CODENAME) through a private apt configuration, so the host's
# sources and architectures stay untouched. Result: $IVSHMEM_CACHE/arm64/busybox.
arm64_busybox() {
	local dir=$IVSHMEM_CACHE/arm64
	[ -x "$dir/busybox" ] && return 0
	local mirror uri key codename opts="[arch=arm64"
	mirror=$(host_mirror) || exit 1
	uri=${mirror%% *} key=${mirror#* }
	[ -z "$key" ] || opts+=" signed-by=$key"
	opts+="] "
	codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
	[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release: cannot choose the arm64 busybox's release"
	step "fetching busybox-static for arm64 from $codename at $uri"
	local apt=$dir/apt
	private_apt "$apt" "deb $opts$uri $codename main" 'APT::Architecture "arm64";' \
		'APT::Architectures { "arm64"; };'
	APT_CONFIG=$apt/apt.conf apt-get update -q --error-on=any >"$apt/update.log" 2>&1 ||
		die "apt-get update for arm64 $codename at $uri failed (see $apt/update.log)"
	rm -rf "$apt/deb" && mkdir -p "$apt/deb"
	(cd "$apt/deb" && APT_CONFIG=$apt/apt.conf apt-get download -q busybox-static:arm64 >/dev/null) ||
		die "apt-get download busybox-static:arm64 failed"
	rm -rf "$apt/x" && dpkg-deb -x "$apt"/deb/busybox-static_*.deb "$apt/x"
	# ELF e_machine (offset 18, little-endian) 0xb7: EM_AARCH64.
	[ "$(od -An -tx1 -j18 -N2 "$apt/x/bin/busybox" | tr -d ' ')" = b700 ] ||
		die "busybox-static:arm64 did not unpack an aarch64 binary"
	install -m 755 "$apt/x/bin/busybox" "$dir/busybox.tmp" && mv "$dir/busybox.tmp" "$dir/busybox"
	rm -rf "$apt"
}

kernel_build() {
	local ksrc kdir flags frags=()
	ksrc=$IVSHMEM_CACHE/src/linux-$(ivshmem_src_version)
	kdir=$(ivshmem_kdir)
	[ -f "$kdir/.ivshmem-built" ] && return 0
	read -r -a flags <<<"$(ivshmem_make_flags)"
	mapfile -t frags < <(ivshmem_fragments)
	if [ "$IVSHMEM_FLAVOUR" = debug ]; then
		step "building debug guest kernel in $kdir (about 10 minutes on 2 cores)"
	elif [ "$IVSHMEM_ARCH" = arm64 ]; then
		step "building arm64 guest kernel in $kdir (about 13 minutes on 2 idle cores)"
	else
		step "building guest kernel $(ivshmem_src_version) in $kdir (6 to 10 minutes on 2 cores)"
	fi
	rm -rf "$kdir" && mkdir -p "$kdir"
	make -s -C "$ksrc" O="$kdir" "${flags[@]}" tinyconfig >/dev/null
	"$ksrc/scripts/kconfig/merge_config.sh" -m -O "$kdir" "$kdir/.config" "${frags[@]}" >/dev/null
	make -s -C "$ksrc" O="$kdir" "${flags[@]}" olddefconfig >/dev/null
	make -s -C "$ksrc" O="$kdir" "${flags[@]}" rustavailable >/dev/null 2>&1 ||
		die "kernel says Rust is not available: $(make -C "$ksrc" O="$kdir" "${flags[@]}" rustavailable 2>&1 | tail -n3)"
	# The last setting of each option wins (the debug fragment comes after the release one).
	local line missing=0
	while read -r line; do
		grep -qx "$line" "$kdir/.config" || { echo "config: $line did not stick" >&2; missing=1; }
	done < <(awk -F= '/^CONFIG_[A-Za-z0-9_]+=/ { v[$1] = $0; if (!($1 in seen)) { seen[$1] = 1; k[++n] = $1 } }
		END { for (i = 1; i <= n; i++) if (v[k[i]] ~ /=y$/) print v[k[i]] }' "${frags[@]}")
	[ $missing = 0 ] || die "guest kernel config is incomplete (see above)"
	make -C "$ksrc" O="$kdir" "${flags[@]}" -j"$IVSHMEM_JOBS" "$(basename "$(ivshmem_kernel_image)")" modules_prepare modules >"$kdir/build.log" 2>&1 ||
		die "kernel build failed; last lines of $kdir/build.log:
$(tail -n 20 "$kdir/build.log")"
	touch "$kdir/.ivshmem-built"
	# Builds of this kind (flavour, architecture, series) for older fragments or compilers are
	# not used again: free their space. Builds of the other kinds stay.
	local old
	for old in "$IVSHMEM_CACHE"/build/$(ivshmem_kernel_glob); do
		[ "$old" = "$kdir" ] || rm -rf "$old"
	done
}

mkdir -p "$IVSHMEM_CACHE"
[ -w "$IVSHMEM_CACHE" ] || die "cache directory $IVSHMEM_CACHE is not writable"
# Locks (a second run waits; each is released when this process exits, however it exits):
# .setup.lock for packages, tools and the kernel sources, which all kinds share; then one per
# kind of kernel for its build, so a debug build does not hold up a release one, nor the reverse.
exec 9>"$IVSHMEM_CACHE/.setup.lock"
flock 9
export PATH="$IVSHMEM_CACHE/tools/bin:$PATH"

host_packages
rust_tools
python_venv
[ "$IVSHMEM_ARCH" = x86_64 ] || arm64_busybox
[ "${1:-}" = host ] && exit 0
kernel_source
exec 9>&-

exec 8>"$IVSHMEM_CACHE/.setup-$IVSHMEM_FLAVOUR-$IVSHMEM_ARCH-$IVSHMEM_KERNEL_SERIES.lock"
flock 8
avail=$(df -Pk "$IVSHMEM_CACHE" | awk 'NR==2 {print $4}')
[ "$avail" -gt 4000000 ] || [ -f "$(ivshmem_kdir)/.ivshmem-built" ] ||
	die "less than 4 GB free in $IVSHMEM_CACHE: no space for the kernel build"
kernel_build
echo "$(ivshmem_kdir)"
