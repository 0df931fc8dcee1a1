#!/usr/bin/env bash
# Builds the guest image: busybox, the module, the static userspace tools, the agent.
#   scripts/initramfs.sh OUTPUT MODULE.ko TOOLS_DIR [RACE-MODULE.ko]
# The optional fault-injection build (make module-race) lands as /ivshmem-race.ko.
# IVSHMEM_IMAGE_OVERLAY=DIR: DIR's tree is copied over the image last (the VM suite's test_install.py:
# a root made by make install DESTDIR=, and its /etc/init.d/rcS, which init then runs).
set -euo pipefail
source "$(dirname "$0")/config.sh"
[ $# -ge 3 ] || die "usage: scripts/initramfs.sh OUTPUT MODULE.ko TOOLS_DIR [RACE-MODULE.ko]"
out=$1 module=$2 tools=$3
[ -f "$module" ] || die "no module at $module: build it first (make)"
[ -z "${4:-}" ] || [ -f "$4" ] || die "no module at $4: build it first (make module-race)"
mkdir -p "$(dirname "$out")" || die "cannot create the directory of $out"
# IVSHMEM_BUSYBOX overrides; arm64 images take the one setup.sh fetched for arm64.
if [ -n "${IVSHMEM_BUSYBOX:-}" ]; then
	busybox=$IVSHMEM_BUSYBOX
	[ -x "$busybox" ] || die "IVSHMEM_BUSYBOX=$busybox is not an executable"
elif [ "$IVSHMEM_ARCH" = arm64 ]; then
	busybox=$IVSHMEM_CACHE/arm64/busybox
	[ -x "$busybox" ] || die "no arm64 busybox at $busybox: IVSHMEM_ARCH=arm64 scripts/setup.sh host"
else
	busybox=$(command -v busybox) || die "busybox-static is not installed (scripts/setup.sh host)"
fi
{ ldd "$busybox" 2>&1 || true; } | grep -qE "not a dynamic|statically linked" || die "$busybox is not static: install busybox-static"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,proc,sys,dev,tmp,root,etc}
cp "$busybox" "$tmp/bin/busybox"
install -m 755 "$IVSHMEM_ROOT/scripts/guest/init" "$tmp/init"
install -m 755 "$IVSHMEM_ROOT/scripts/guest/agent" "$tmp/bin/agent"
cp "$module" "$tmp/ivshmem.ko"
[ -z "${4:-}" ] || cp "$4" "$tmp/ivshmem-race.ko"
for t in read_write bandwidth ivshmem ivshmem-check pingpong ivshmem-fuzz ivshmem-pipe ivshmem-socket ivshmem-bench; do
	[ -x "$tools/$t" ] || die "missing tool $tools/$t (make tools)"
	cp "$tools/$t" "$tmp/bin/$t"
done
# The C example on the C API (make capi, part of make all): optional for images built after
# make tools alone.
[ ! -x "$tools/ivshmem-pipe-c" ] || cp "$tools/ivshmem-pipe-c" "$tmp/bin/ivshmem-pipe-c"
if [ -n "${IVSHMEM_IMAGE_OVERLAY:-}" ]; then
	[ -d "$IVSHMEM_IMAGE_OVERLAY" ] || die "IVSHMEM_IMAGE_OVERLAY=$IVSHMEM_IMAGE_OVERLAY is not a directory"
	cp -a "$IVSHMEM_IMAGE_OVERLAY"/. "$tmp"/
fi
(cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
