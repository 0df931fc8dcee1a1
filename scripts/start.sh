#!/usr/bin/env bash
# Starts IVSHMEM_GUESTS guests in the background, all sharing one backing file through
# ivshmem-plain, or in IVSHMEM_MODE=doorbell through ivshmem-doorbell and our ivshmem-server
# (pid file server.pid, log server.log, socket ivshmem.sock). Each guest N has: console log
# $IVSHMEM_RUN/guestN.console, command socket guestN.sock (see scripts/lab.py), pid file
# guestN.pid. IVSHMEM_ONLY="N ..." starts just those guests (e.g. to rejoin a killed one).
# Stop everything with scripts/stop.sh.
# IVSHMEM_NET=1 links guests 1 and 2 by virtio-net: each QEMU sends datagrams from UNIX socket
# netN.sock to the other's, so no host network is involved (the guests take 10.0.7.N/24).
# IVSHMEM_FLAVOUR=debug boots the debug kernel (scripts/setup.sh debug), IVSHMEM_KERNEL any bzImage,
# IVSHMEM_ARCH=arm64 the arm64 one on qemu-system-aarch64 -M virt.
# IVSHMEM_TOPOLOGY=isolated gives each guest N a data device of its own, $IVSHMEM_SHM_PATH.ownN
# (IVSHMEM_SHM_SIZE), read-write, and every other guest's device with readonly=on (QEMU drops the
# guest's writes to it), in guest order: in guest N, guest M's device comes M-th (after the
# doorbell device in doorbell mode, whose memory, the server's, is then 1 MiB: it carries the
# interrupts only). There is no shared data device then.
#   scripts/start.sh [INITRAMFS]
set -euo pipefail
source "$(dirname "$0")/config.sh"

initrd=${1:-$IVSHMEM_RUN/initramfs.cpio.gz}
kernel=${IVSHMEM_KERNEL:-$(ivshmem_kdir)/$(ivshmem_kernel_image)}
if [ ! -f "$kernel" ]; then
	[ -z "$IVSHMEM_KERNEL" ] || die "no guest kernel at IVSHMEM_KERNEL=$kernel"
	if [ "$IVSHMEM_FLAVOUR" = debug ]; then die "no debug guest kernel at $kernel: run scripts/setup.sh debug"; fi
	die "no guest kernel at $kernel: run scripts/setup.sh (or make)"
fi
# The debug kernel runs on 4-level paging: with 5-level (-cpu max has LA57), an interrupt that
# lands while identify_cpu() has cleared the CPU feature bits makes KASAN compute its shadow
# bounds for 4-level and report a "wild-memory-access" in handle_edge_irq (7.3.4, not the driver).
kargs=""
[ "$IVSHMEM_FLAVOUR" = release ] || kargs=" no5lvl"
[ -f "$initrd" ] || die "no guest image at $initrd: build it with scripts/initramfs.sh (README, Manual use)"
# arm64 (IVSHMEM_ARCH=arm64): -M virt with GICv3 (its ITS takes the MSI-X vectors), always
# TCG. The console is virt's PL011 (ttyAMA0); the agent's line a PCI 16550 (ttyS0 in the guest)
# in slot 1, so that the ivshmem devices sit in slots 2, 3, ... as on x86 (the VM suite's BDFs).
# pauth-impdef: QEMU's own pointer-authentication algorithm instead of emulating QARMA.
if [ "$IVSHMEM_ARCH" = arm64 ]; then
	qemu=qemu-system-aarch64
	machine=(-M virt,gic-version=3)
	kargs="console=ttyAMA0 ivshmem_lab.agent=ttyS0$kargs"
else
	qemu=qemu-system-x86_64
	machine=()
	[ "$IVSHMEM_MACHINE" = pc ] || machine=(-M "$IVSHMEM_MACHINE")
	kargs="console=ttyS0 tsc=reliable$kargs"
fi
command -v $qemu >/dev/null || die "$qemu missing: IVSHMEM_ARCH=$IVSHMEM_ARCH scripts/setup.sh host"
mkdir -p "$IVSHMEM_RUN"

guests=${IVSHMEM_ONLY:-$(seq 1 "$IVSHMEM_GUESTS")}
for i in $guests; do
	pidfile=$IVSHMEM_RUN/guest$i.pid
	[ -e "$pidfile" ] || continue
	if alive "$(cat "$pidfile")"; then
		die "guest $i is already running ($pidfile): scripts/stop.sh first"
	fi
	rm -f "$pidfile"
done

# A probe boot tells whether KVM really works here (on some hosts /dev/kvm exists but guests
# hang). The answer is cached per QEMU and kernel build.
accel_probe() {
	local key cache
	key=$(printf '%s %s' "$(qemu-system-x86_64 --version | head -n1)" "$kernel" | sha256sum | cut -c1-12)
	cache=$IVSHMEM_CACHE/kvm-probe-$key
	if [ ! -f "$cache" ]; then
		local out=$IVSHMEM_RUN/kvm-probe.log
		timeout 30 qemu-system-x86_64 -accel kvm -cpu host -m 256M -nodefaults -no-reboot \
			-display none -kernel "$kernel" -initrd "$initrd" -serial "file:$out" \
			-append "console=ttyS0 ivshmem_lab.probe=1 panic=-1" >/dev/null 2>&1 || true
		if grep -q "lab probe ok" "$out" 2>/dev/null; then echo kvm >"$cache"; else echo tcg >"$cache"; fi
	fi
	cat "$cache"
}

case "$IVSHMEM_TOPOLOGY" in
shared | isolated) ;;
*) die "IVSHMEM_TOPOLOGY must be shared or isolated, not '$IVSHMEM_TOPOLOGY'" ;;
esac

case "$IVSHMEM_NET" in
0 | 1) ;;
*) die "IVSHMEM_NET must be 0 or 1, not '$IVSHMEM_NET'" ;;
esac

case "$IVSHMEM_ACCEL" in
tcg | kvm) accel=$IVSHMEM_ACCEL ;;
auto) if [ "$IVSHMEM_ARCH" = x86_64 ] && [ -w /dev/kvm ]; then accel=$(accel_probe); else accel=tcg; fi ;;
*) die "IVSHMEM_ACCEL must be tcg, kvm or auto, not '$IVSHMEM_ACCEL'" ;;
esac
if [ "$accel" = kvm ]; then
	cpu=(-accel kvm -cpu host)
elif [ "$IVSHMEM_ARCH" = arm64 ]; then
	cpu=(-accel tcg -cpu max,pauth-impdef=on)
else
	# Without ERMS: TCG runs `rep movsb` an iteration at a time, and with the flag both glibc's
	# memcpy (16 KiB to 256 KiB) and the guest kernel's user copies take that path: memcpy of
	# 64 KiB 700 MB/s with it, 4,200-4,900 without; TCP over the lab's link 46 MB/s with it, 53
	# without (1 MiB messages, medians of 9 rounds in 4 boots each, issue 21).
	cpu=(-accel tcg -cpu max,-erms)
fi

# Backing files: created (and sized) by QEMU if missing; the host reads and writes them too.
backing=("$IVSHMEM_SHM_SIZE:$IVSHMEM_SHM_PATH")
k=1
for size in $IVSHMEM_EXTRA_SHM; do
	backing+=("$size:$IVSHMEM_SHM_PATH.$k")
	k=$((k + 1))
done
dev_args=()
k=0
server_size=$IVSHMEM_SHM_SIZE
if [ "$IVSHMEM_TOPOLOGY" = isolated ]; then
	# No shared data device: the guests' own devices take its place (per guest, below).
	backing=("${backing[@]:1}")
	server_size=1M
fi
if [ "$IVSHMEM_MODE" = doorbell ]; then
	# The server owns the first region: /dev/shm/NAME, which the host can read and write too.
	case "$IVSHMEM_SHM_PATH" in
	/dev/shm/*) ;;
	*) die "doorbell mode keeps the memory in /dev/shm: set IVSHMEM_SHM_PATH=/dev/shm/NAME" ;;
	esac
	server=$IVSHMEM_ROOT/userspace/target/x86_64-unknown-linux-gnu/release/ivshmem-server
	[ -x "$server" ] || die "no $server: run make tools"
	if ! { [ -e "$IVSHMEM_RUN/server.pid" ] && alive "$(cat "$IVSHMEM_RUN/server.pid")"; }; then
		"$server" -F -v -S "$IVSHMEM_RUN/ivshmem.sock" -l "$server_size" -n "$IVSHMEM_VECTORS" \
			-M "${IVSHMEM_SHM_PATH#/dev/shm/}" -p "$IVSHMEM_RUN/server.pid" >"$IVSHMEM_RUN/server.log" 2>&1 &
		for _ in $(seq 100); do [ -S "$IVSHMEM_RUN/ivshmem.sock" ] && break; sleep 0.05; done
		[ -S "$IVSHMEM_RUN/ivshmem.sock" ] || die "ivshmem-server did not start: $(cat "$IVSHMEM_RUN/server.log")"
	fi
	dev_args+=(-chardev "socket,path=$IVSHMEM_RUN/ivshmem.sock,id=ivs"
		-device "ivshmem-doorbell,chardev=ivs,vectors=$IVSHMEM_VECTORS")
	[ "$IVSHMEM_TOPOLOGY" = isolated ] || backing=("${backing[@]:1}")
	k=1
fi
# Isolated: every guest's own device, created here (QEMU opens the read-only ones read-only,
# so it cannot create them).
own_size=$(numfmt --from=iec "$IVSHMEM_SHM_SIZE")
if [ "$IVSHMEM_TOPOLOGY" = isolated ]; then
	for j in $(seq 1 "$IVSHMEM_GUESTS"); do
		path=$IVSHMEM_SHM_PATH.own$j
		mkdir -p "$(dirname "$path")"
		if [ -e "$path" ]; then
			[ "$(stat -c %s "$path")" = "$own_size" ] || die "$path is not $IVSHMEM_SHM_SIZE: remove it"
		else
			truncate -s "$own_size" "$path"
		fi
	done
fi
# The devices of guest $1: the isolated topology's own devices, read-only but its own.
own_devices() {
	[ "$IVSHMEM_TOPOLOGY" = isolated ] || return 0
	local j ro
	for j in $(seq 1 "$IVSHMEM_GUESTS"); do
		ro=""
		[ "$j" = "$1" ] || ro=",readonly=on"
		printf '%s\n' -object "memory-backend-file,id=own$j,size=$IVSHMEM_SHM_SIZE,mem-path=$IVSHMEM_SHM_PATH.own$j,share=on$ro" \
			-device "ivshmem-plain,memdev=own$j"
	done
}
# Where the plain devices start in dev_args (after the doorbell's): the own devices go there.
first_plain=${#dev_args[@]}
for b in "${backing[@]}"; do
	size=${b%%:*} path=${b#*:}
	mkdir -p "$(dirname "$path")"
	if [ -e "$path" ]; then
		want=$(numfmt --from=iec "$size")
		have=$(stat -c %s "$path")
		[ "$have" = "$want" ] || die "$path is $have bytes, not $size: remove it or choose another IVSHMEM_SHM_PATH"
	fi
	dev_args+=(-object "memory-backend-file,id=shm$k,size=$size,mem-path=$path,share=on"
		-device "ivshmem-plain,memdev=shm$k")
	k=$((k + 1))
done

# q35: the room each root port reserves for 64-bit prefetchable BARs, which SeaBIOS places above
# 4 GiB: the largest device's BAR2 (a power of two), at least 1 GiB.
pref64=$((1 << 30))
for size in "$IVSHMEM_SHM_SIZE" $IVSHMEM_EXTRA_SHM; do
	bytes=$(numfmt --from=iec "$size")
	while [ "$pref64" -lt "$bytes" ]; do pref64=$((pref64 * 2)); done
done
# Prints the device arguments $@ one per line; on x86 q35 each ivshmem device goes behind a PCIe
# root port of its own, whose 64-bit window puts BAR2 above 4 GiB (in the 32-bit hole, which
# SeaBIOS's MTRRs make uncachable, PAT grants write-back only as UC-).
devices() {
	local n=0 prev=""
	for a in "$@"; do
		if [ "$IVSHMEM_ARCH" = x86_64 ] && [ "$IVSHMEM_MACHINE" = q35 ] && [ "$prev" = -device ] && [[ "$a" == ivshmem-* ]]; then
			n=$((n + 1))
			printf '%s\n' "pcie-root-port,id=rp$n,chassis=$n,pref64-reserve=$pref64" -device "$a,bus=rp$n"
		else
			printf '%s\n' "$a"
		fi
		prev=$a
	done
}

for i in $guests; do
	rm -f "$IVSHMEM_RUN/guest$i.sock" "$IVSHMEM_RUN/guest$i.console"
	mapfile -t own_args < <(own_devices "$i")
	mapfile -t guest_devs < <(devices "${dev_args[@]:0:$first_plain}" "${own_args[@]}" "${dev_args[@]:$first_plain}")
	net_args=()
	if [ "$IVSHMEM_NET" = 1 ] && { [ "$i" = 1 ] || [ "$i" = 2 ]; }; then
		peer=$((3 - i))
		rm -f "$IVSHMEM_RUN/net$i.sock"
		net_args=(-netdev "dgram,id=n0,local.type=unix,local.path=$IVSHMEM_RUN/net$i.sock,remote.type=unix,remote.path=$IVSHMEM_RUN/net$peer.sock"
			-device "virtio-net-pci,netdev=n0,mac=52:54:00:00:07:0$i")
	fi
	if [ "$IVSHMEM_ARCH" = arm64 ]; then
		agent=(-chardev "socket,id=agent,path=$IVSHMEM_RUN/guest$i.sock,server=on,wait=off"
			-device pci-serial,chardev=agent,addr=1)
	else
		agent=(-serial "unix:$IVSHMEM_RUN/guest$i.sock,server=on,wait=off")
	fi
	$qemu -name "guest$i" "${machine[@]}" "${cpu[@]}" -m "$IVSHMEM_GUEST_MEM" -smp "$IVSHMEM_GUEST_CPUS" \
		-nodefaults -no-reboot -display none \
		-kernel "$kernel" -initrd "$initrd" \
		-append "ivshmem_lab.guest=$i panic=-1 $kargs" \
		-serial "file:$IVSHMEM_RUN/guest$i.console" \
		"${agent[@]}" \
		"${guest_devs[@]}" "${net_args[@]}" \
		-daemonize -pidfile "$IVSHMEM_RUN/guest$i.pid" ||
		{ "$IVSHMEM_ROOT/scripts/stop.sh"; die "QEMU failed to start guest $i"; }
done
echo "started guest(s) $(echo $guests) ($accel, ${machine[1]:-pc}, $IVSHMEM_MODE, $IVSHMEM_TOPOLOGY, $IVSHMEM_SHM_SIZE:$IVSHMEM_SHM_PATH ${backing[*]}) in $IVSHMEM_RUN" >&2
