#!/usr/bin/env bash
# `make install` and `make uninstall`: one list of what goes where, so that uninstall removes
# exactly what install put.
#   scripts/install.sh install|uninstall KDIR
# KDIR is the kernel build directory the module was built against; its kernel release names
# /lib/modules/<release>. The Makefile passes the rest in the environment:
#   DESTDIR        staging root for packagers (default: empty, the live system)
#   PREFIX         tools, C header and libraries (default /usr/local)
#   UDEVRULESDIR   udev rule (default /etc/udev/rules.d, the administrator's; packages use
#                  /usr/lib/udev/rules.d)
#   DEPMOD         depmod command (default depmod; empty: skip it, as packagers whose
#                  post-install script runs depmod for the target kernel do)
set -euo pipefail
source "$(dirname "$0")/config.sh"
[ $# -eq 2 ] && { [ "$1" = install ] || [ "$1" = uninstall ]; } ||
	die "usage: scripts/install.sh install|uninstall KDIR"
action=$1 kdir=$2
root=$IVSHMEM_ROOT
destdir=${DESTDIR:-}
prefix=${PREFIX:-/usr/local}
udevdir=${UDEVRULESDIR:-/etc/udev/rules.d}
depmod=${DEPMOD-depmod}
[ "$depmod" = depmod ] && ! command -v depmod >/dev/null && [ -x /sbin/depmod ] && depmod=/sbin/depmod
case $destdir in "" | /*) ;; *) die "DESTDIR must be an absolute path, not '$destdir'" ;; esac
case $prefix in /*) ;; *) die "PREFIX must be an absolute path, not '$prefix'" ;; esac

# The release the module was built for, as the kernel build directory knows it.
if [ -f "$kdir/include/config/kernel.release" ]; then
	release=$(cat "$kdir/include/config/kernel.release")
else
	release=$(make -s -C "$kdir" kernelrelease 2>/dev/null) || true
fi
[ -n "$release" ] || die "cannot read the kernel release of $kdir (include/config/kernel.release): is it a configured kernel build directory?"
moddir=/lib/modules/$release

tools_dir=$root/userspace/target/x86_64-unknown-linux-gnu/release
capi_dir=$root/userspace/target/release
# What is installed: "mode source destination" (destination relative to DESTDIR).
files=("644 $root/ivshmem.ko $moddir/updates/ivshmem.ko"
	"644 $root/userspace/udev/70-ivshmem.rules $udevdir/70-ivshmem.rules"
	"644 $root/userspace/include/ivshmem.h $prefix/include/ivshmem.h"
	"644 $root/userspace/include/ivshmem_channel.h $prefix/include/ivshmem_channel.h"
	"644 $capi_dir/libivshmem.a $prefix/lib/libivshmem.a"
	"755 $capi_dir/libivshmem.so $prefix/lib/libivshmem.so")
for t in read_write bandwidth pingpong ivshmem ivshmem-check ivshmem-server ivshmem-pipe ivshmem-socket ivshmem-bench; do
	files+=("755 $tools_dir/$t $prefix/bin/$t")
done

# depmod's index files: written by install into a staging root that had no other module, so
# removed again by uninstall when no module is left there.
depmod_files="modules.dep modules.dep.bin modules.alias modules.alias.bin modules.softdep
modules.weakdep modules.symbols modules.symbols.bin modules.builtin.bin modules.builtin.alias.bin
modules.builtin.modinfo.bin modules.devname"

run_depmod() {
	[ -n "$depmod" ] || { echo "install: DEPMOD empty, depmod skipped: run depmod $release on the target"; return; }
	echo "$depmod -b ${destdir:-/} $release"
	$depmod -b "${destdir:-/}" "$release" || die "$depmod -b ${destdir:-/} $release failed"
}

if [ "$action" = install ]; then
	for f in "${files[@]}"; do
		read -r mode src dst <<<"$f"
		[ -f "$src" ] || die "missing $src: build it first (make all)"
	done
	for f in "${files[@]}"; do
		read -r mode src dst <<<"$f"
		echo "install -m $mode $src $destdir$dst"
		install -D -m "$mode" "$src" "$destdir$dst"
	done
	run_depmod
	if [ -z "$destdir" ] && ! getent group ivshmem >/dev/null; then
		echo "install: no group 'ivshmem' yet: create it (groupadd --system ivshmem) for the udev rule to apply"
	fi
	exit 0
fi

dirs=()
for f in "${files[@]}"; do
	read -r mode src dst <<<"$f"
	if [ -e "$destdir$dst" ] || [ -L "$destdir$dst" ]; then
		echo "rm -f $destdir$dst"
		rm -f "$destdir$dst"
	fi
	dirs+=("$(dirname "$destdir$dst")")
done
if [ -d "$destdir$moddir" ]; then
	if find "$destdir$moddir" -name '*.ko*' | grep -q .; then
		run_depmod
	else
		# A staging root holding no other module: depmod's files were ours too.
		for f in $depmod_files; do rm -f "$destdir$moddir/$f"; done
		dirs+=("$destdir$moddir")
	fi
fi
# Empty directories go too, but only inside a staging root: on the live system /usr/local/bin
# and its like were there before.
if [ -n "$destdir" ]; then
	for d in "${dirs[@]}"; do
		while [ "$d" != "$destdir" ] && [ "$d" != / ] && rmdir "$d" 2>/dev/null; do
			d=$(dirname "$d")
		done
	done
elif [ -d "$moddir/updates" ]; then
	rmdir "$moddir/updates" 2>/dev/null || true
fi
