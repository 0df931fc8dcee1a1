"""Issue 10: huge-page mappings in two guests that share a 4 GiB device (BAR2 above 4 GiB, aligned
to its size): which entries the driver uses (VmPTE), bytes across 2 MiB and 1 GiB boundaries
between huge and 4 KiB entries for the host and the other guest, the PAT type and the
one-cache-type rule, revocation of huge and never-touched entries. Then (fixture `twenty`, its
own boot, after every 4 GiB test in file order) one guest with 20 small devices: more nodes than
the old fixed table of 16, numbered in probe order, the lowest free number to a rebound device."""

import re
import time

import pytest

import lab
from helpers import BIG_SIZE, bar2_range, measured, pat_type, place, start_until_go, stop_go
from lab import check, host_read, host_write

BDF = "0000:00:03.0"
DRV = "/sys/bus/pci/drivers/ivshmem"
G, M2, M64 = 1 << 30, 2 << 20, 64 << 20
COUNT = 20


@pytest.fixture(scope="module")
def s(vm):
    """Both guests booted with the 4 GiB device (/dev/ivshmem1, backing file shm.1) and the
    module loaded; kmemleak watches guest 2 from before the insmod."""
    vm.boot(2, "4G")
    vm.leak_check_start(2)
    for g in (1, 2):
        vm.sh(g, "insmod /ivshmem.ko")
    vm.big = vm.shm + ".1"
    return vm


# --- the 4 GiB device in two guests ----------------------------------------------------------


def bar2_is_write_back_with_nothing_mapped(s, g):
    start, end = bar2_range(s, g, BDF)
    got = pat_type(s, g, start, end)
    check(got == "write-back", f"guest {g}: PAT type of BAR2 [{start:#x}, {end:#x}) with nothing mapped: {got}")


def touch(s, g, opts):
    """Maps and reads every page; returns the address and how much VmPTE grew (kB)."""
    _, out = s.sh(g, f"ivshmem touch -d 1{opts}", timeout=600)
    measured(out.strip())
    m = re.search(r"at (0x[0-9a-f]+): .*VmPTE (\d+) -> (\d+) kB", out)
    check(m, out)
    return int(m.group(1), 16), int(m.group(3)) - int(m.group(2))


def test_two_guests_share_a_4_gib_device_with_bar2_above_4_gib_aligned_to_its_size(s):
    for g in (1, 2):
        _, out = s.sh(g, "ivshmem info -d 1")
        check(f"size {BIG_SIZE}\n" in out and f"pci {BDF}\n" in out, out)
    start, _end = bar2_range(s, 1, BDF)
    check(start >= 1 << 32 and start % BIG_SIZE == 0, f"BAR2 at {start:#x}")


def test_pat_bar2_is_write_back_right_after_probe_with_nothing_mapped(s):
    # Before anything maps the device in guest 1 (file order: the first test that maps it comes
    # after this one): the reservation the driver makes at probe.
    bar2_is_write_back_with_nothing_mapped(s, 1)


def test_huge_entries_are_used_for_1_gib_and_64_mib_mappings_vmpte_grows_by_at_most_64_kb(s):
    # 1 GiB at a 1 GiB-aligned offset and address: 512 PMD entries, 4 kB of page tables (the
    # driver makes no PUD entries: README, mmap). With 4 KiB entries it takes 2 MiB of page
    # tables (2052 kB measured with the old driver).
    addr, grew = touch(s, 1, f" --offset {3 * G} --len {G} --align {G}")
    check(addr % G == 0, f"mapped at {addr:#x}")
    check(grew <= 64, f"VmPTE grew by {grew} kB for 1 GiB at a 1 GiB-aligned address")
    # 64 MiB at a 2 MiB-aligned (not 1 GiB-aligned) offset and address: 32 PMD entries.
    addr, grew = touch(s, 1, f" --offset {2 * G + 3 * M2} --len {M64} --align {M2}")
    check(addr % M2 == 0, f"mapped at {addr:#x}")
    check(grew <= 64, f"VmPTE grew by {grew} kB for 64 MiB at a 2 MiB-aligned address")


def test_mapping_4_kib_off_the_congruent_address_uses_4_kib_entries_and_is_byte_exact(s):
    # The address 4 KiB off the congruent one: only 4 KiB entries fit, 16384 of them (128 kB).
    off = 2 * G + 3 * M2
    addr, grew = touch(s, 1, f" --offset {off} --len {M64} --align {M2} --skew 4096")
    check(addr % M2 == 4096, f"mapped at {addr:#x}")
    check(grew >= 128, f"VmPTE grew by {grew} kB only: 16384 4 KiB entries need 128 kB")
    # And the bytes are where they belong: guest 1 writes through that mapping, the host
    # and guest 2 (through 2 MiB entries) read them, and guest 1 reads them back.
    lo, n = off + 5 * M2 + 12345, 3 * M2 + 777
    skewed = place(off, M64, M2, 4096)
    s.sh(1, f"ivshmem fill -d 1 --seed 201 --offset {lo} --len {n}{skewed}")
    check(host_read(s.big, lo, n) == lab.pattern(201, lo, n), "host sees other bytes")
    s.sh(2, f"ivshmem verify -d 1 --seed 201 --offset {lo} --len {n}{place(off, M64, M2)}")
    s.sh(1, f"ivshmem verify -d 1 --seed 201 --offset {lo} --len {n}{skewed}")


# (seed, offset, length, writer, writer's mapping, reader, reader's mapping): ranges far apart
# from each other and from what the other tests write, so that the 64 bytes on either side are
# still zero (the backing file is fresh) whichever of them ran before.
EXCHANGES = [
    # 1 GiB - 4 KiB .. 1 GiB + 4 KiB: written through a 2 GiB mapping's 2 MiB entries, read
    # through 4 KiB ones.
    pytest.param(211, G - 4096, 8192, 1, place(0, 2 * G, G), 2, place(G - M2, 2 * M2, M2, 4096),
                 id="1g-boundary-2m-entries-to-4k"),
    # 2 MiB - 8 .. 2 MiB + 8: written through two 2 MiB entries, read through 4 KiB ones.
    pytest.param(212, M2 - 8, 16, 2, place(0, M64, M2), 1, place(0, 4 * M2, M2, 4096),
                 id="2m-boundary-2m-entries-to-4k"),
    # 3 GiB + 6 MiB - 4 KiB, 8292 bytes: written through a 1 GiB-aligned mapping, read through a
    # 64 MiB one.
    pytest.param(213, 3 * G + 3 * M2 - 4096, 8192 + 100, 1, place(3 * G, G, G), 2, place(3 * G, M64, M2),
                 id="3g-plus-6m-1g-aligned-to-64m"),
    # 2 GiB - 5000, 10007 bytes: written through a mapping not huge-aligned at either end (4 KiB
    # entries, then a 2 MiB one), read through a 1 GiB-aligned 2 GiB mapping.
    pytest.param(214, 2 * G - 5000, 10007, 2, place(2 * G - M2 + 4096, 2 * M2, M2), 1, place(G, 2 * G, G),
                 id="2g-unaligned-ends-to-1g-aligned"),
    # 3 GiB + 2 MiB - 300, 600 bytes: written through [3 GiB + 4 KiB, 4 GiB - 4 KiB) (4 KiB
    # entries at its ends, 2 MiB ones inside), read through a 1 GiB-aligned mapping.
    pytest.param(215, 3 * G + M2 - 300, 600, 1, place(3 * G + 4096, G - 8192, G), 2, place(2 * G, 2 * G, G),
                 id="3g-plus-2m-inner-2m-entries"),
    # 4 GiB - 2 MiB - 8, 16 bytes: the same mapping's last 2 MiB entry into its 4 KiB tail.
    pytest.param(216, BIG_SIZE - M2 - 8, 16, 1, place(3 * G + 4096, G - 8192, G), 2, place(3 * G, G, G),
                 id="last-2m-entry-into-4k-tail"),
]


@pytest.mark.parametrize("seed, off, n, writer, wplace, reader, rplace", EXCHANGES)
def test_bytes_across_huge_and_4_kib_entries_are_exact_for_the_host_and_the_other_guest(
        s, seed, off, n, writer, wplace, reader, rplace):
    s.sh(writer, f"ivshmem fill -d 1 --seed {seed} --offset {off} --len {n}{wplace}")
    got = host_read(s.big, off - 64, n + 128)
    check(got[64:-64] == lab.pattern(seed, off, n), "the host sees other bytes")
    check(got[:64] == bytes(64) and got[-64:] == bytes(64), "bytes next to the range changed")
    s.sh(reader, f"ivshmem verify -d 1 --seed {seed} --offset {off} --len {n}{rplace}")


def test_bytes_the_host_writes_across_3_gib_and_near_the_end_read_exact_and_a_changed_byte_is_seen(s):
    for seed, off, n, readers in (
            (221, 3 * G - 3, 11, ((1, place(2 * G, 2 * G, G)), (2, place(3 * G - M2, 2 * M2, M2, 4096)))),
            (222, BIG_SIZE - 3 * M2 - 7, 4096 + 14, ((1, place(BIG_SIZE - M64, M64, M2)), (2, "")))):
        host_write(s.big, off, lab.pattern(seed, off, n))
        for g, opts in readers:
            s.sh(g, f"ivshmem verify -d 1 --seed {seed} --offset {off} --len {n}{opts}")
    # One byte changed by the host, at 3 GiB exactly, is seen through the huge entries.
    host_write(s.big, 3 * G, bytes([lab.pattern(221, 3 * G, 1)[0] ^ 0x40]))
    status, out = s.sh(1, f"ivshmem verify -d 1 --seed 221 --offset {3 * G - 3} --len 11"
                          f"{place(2 * G, 2 * G, G)}", ok=False)
    check(status == 1 and f"mismatch at offset {3 * G}:" in out, f"status {status}: {out}")


def hold(s, g, cache, tag):
    start_until_go(s, g, f"ivshmem-check hold /dev/ivshmem1 {cache}", tag, "mapped")


def release(s, g, tag):
    out = stop_go(s, g, tag)
    check("exit=0" in out, out)


def test_pat_one_cache_type_at_a_time_another_gets_ebusy_while_a_mapping_is_held(s):
    # While a mapping is held, an mmap of another type fails with EBUSY; after it goes, any type
    # maps and BAR2's PAT entry follows.
    start, end = bar2_range(s, 1, BDF)

    def pat(want, when):
        got = pat_type(s, 1, start, end)
        check(got == want, f"PAT type {when}: {got}, expected {want}")

    def map_page(cache, ok):
        status, out = s.sh(1, f"ivshmem touch -d 1 --len 4096 --cache {cache}", ok=False)
        if ok:
            check(status == 0, f"{cache} mmap: status {status}: {out}")
        else:
            check(status == 1 and "EBUSY: /dev/ivshmem1: mmap:" in out, f"{cache} mmap: status {status}: {out}")

    hold(s, 1, "wb", "h")
    try:
        pat("write-back", "while another process holds a wb mapping")
        map_page("wc", False)
        map_page("uc", False)
        map_page("wb", True)
    finally:
        release(s, 1, "h")
    pat("write-back", "after the wb mapping went")
    map_page("wc", True)
    hold(s, 1, "wc", "h")
    try:
        pat("write-combining", "while a wc mapping is held")
        map_page("wb", False)
        map_page("uc", False)
    finally:
        release(s, 1, "h")
    pat("write-combining", "after the wc mapping went (the type stays until an mmap asks for another)")
    map_page("uc", True)
    pat("uncached-minus", "after a uc mapping came and went")
    map_page("wb", True)
    pat("write-back", "after a wb mapping came and went")


def revoked(s, cmd):
    """Runs `cmd` (an ivshmem-check revoke*) in guest 2, unbinds the device once it has mapped,
    checks ENODEV and SIGBUS, and binds the device again."""
    s.sh(2, "rm -f /tmp/go")
    s.bg(2, f"{cmd}", "/tmp/rv.out")
    s.wait_line(2, "/tmp/rv.out", "mapped", 60)
    s.sh(2, f"echo {BDF} > {DRV}/unbind; test ! -e /dev/ivshmem1 && test -e /dev/ivshmem0")
    s.sh(2, "touch /tmp/go")
    out = s.wait_line(2, "/tmp/rv.out", "exit=", 60)
    check("ok ioctl-after-removal-enodev" in out and "ok mmap-after-removal-enodev" in out, out)
    check("exit=135" in out and "FAIL" not in out, "the revoked mapping did not raise SIGBUS:\n" + out)
    s.sh(2, f"echo {BDF} > {DRV}/bind; for i in $(seq 50); do test -e /dev/ivshmem1 && break; sleep 0.1; done; "
            "ivshmem info -d 1 | grep -q 'pci 0000:00:03.0'")


def test_revoke_of_the_whole_4_gib_gives_enodev_and_sigbus_and_rebinding_restores_data_and_pat(s):
    off = 3 * G + M64
    s.sh(2, f"ivshmem fill -d 1 --seed 231 --offset {off} --len 65536")
    revoked(s, "ivshmem-check revoke /dev/ivshmem1 /tmp/go")
    s.sh(2, f"ivshmem verify -d 1 --seed 231 --offset {off} --len 65536")
    bar2_is_write_back_with_nothing_mapped(s, 2)


@pytest.mark.parametrize("off, n, how", [
    # 1 GiB at a 1 GiB-aligned address, nothing touched: a never-touched page raises SIGBUS.
    pytest.param(G, G, "untouched", id="1g-untouched"),
    # 1 GiB at a 1 GiB-aligned address, touched: the touched page raises SIGBUS.
    pytest.param(2 * G, G, "touched", id="1g-touched"),
    # 64 MiB at a 2 MiB-aligned address, nothing touched.
    pytest.param(2 * G + 3 * M2, M64, "untouched", id="64m-untouched"),
    # 64 MiB at a 2 MiB-aligned address, touched.
    pytest.param(2 * G + 3 * M2, M64, "touched", id="64m-touched"),
])
def test_revoke_a_huge_mapping_after_unbind_its_page_raises_sigbus(s, off, n, how):
    revoked(s, f"ivshmem-check revoke-huge /dev/ivshmem1 /tmp/go {off} {n} {how}")


# The 1 GiB case is what oopsed 7.3.4 while the driver made 1 GiB entries (README, mmap).
@pytest.mark.parametrize("off, n", [pytest.param(2 * G + 3 * M2, M64, id="64m-2m-aligned"),
                                    pytest.param(G, G, id="1g-1g-aligned")])
def test_munmap_and_mprotect_of_single_pages_inside_a_huge_mapping_keep_the_rest_and_fault_the_hole(s, off, n):
    # (and MADV_DONTNEED: EINVAL): the rest keeps its bytes, the hole and the read-only page fault.
    # ivshmem-check's split_pages(): probe pages, the unmapped one, the read-only one.
    ro = n // 4 + 8192
    probes = [0, n // 8 + (1 << 20), ro, n // 2, n // 2 + 8192, n - 4096]
    # In the background: a kernel that fails here may leave the process hanging, and the guest
    # must still answer (dmesg shows why).
    s.bg(1, f"ivshmem-check split /dev/ivshmem1 {off} {n}", "/tmp/split.out")
    out = s.wait_line(1, "/tmp/split.out", "exit=", 120)
    check("exit=0" in out and "FAIL" not in out and out.count("ok ") >= 20, out)
    for p in probes:
        seed = 241 if p == ro else 242
        check(host_read(s.big, off + p, 4096) == lab.pattern(seed, off + p, 4096),
              f"host: page {p:#x} of the mapping does not hold pattern {seed}")


def test_dmesg_clean_in_both_guests_and_no_leaks_in_guest_2(s):
    for g in (1, 2):
        s.dmesg_clean(g)
    s.no_leaks(2)


# --- twenty devices in one guest (its own boot) ----------------------------------------------


IN_ORDER = {k: f"0000:00:{k + 2:02x}.0" for k in range(COUNT)}


@pytest.fixture(scope="module")
def twenty(vm):
    """The lab booted again (the 4 GiB guests stop): one guest with 20 ivshmem-plain devices of
    1 MiB, backing file k holding pattern 300 + k, the module loaded under kmemleak's watch."""
    vm.boot(1, " ".join(["1M"] * (COUNT - 1)), size="1M")
    vm.files = [vm.shm] + [f"{vm.shm}.{k}" for k in range(1, COUNT)]
    vm.leak_check_start(1)
    for k, f in enumerate(vm.files):
        host_write(f, 0, lab.pattern(300 + k, 0, 1 << 20))
    vm.sh(1, "insmod /ivshmem.ko")
    return vm


def slot(bdf):
    """QEMU's k-th ivshmem device (backing file k) sits in PCI slot 2 + k."""
    return int(bdf.split(":")[2].split(".")[0], 16) - 2


def nodes(s):
    """Node number -> PCI address, from GET_INFO of every /dev/ivshmem*."""
    _, out = s.sh(1, "for d in /dev/ivshmem*; do test -e $d && "
                     "echo $d $(ivshmem info -d $d | sed -n 's/^pci //p'); done")
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^/dev/ivshmem(\d+) (\S+)$", out, re.M)}


def expect(s, want):
    """Waits until the nodes are `want` (number -> PCI address); returns them."""
    deadline = time.monotonic() + 10
    while True:
        got = nodes(s)
        if got == want:
            return got
        check(time.monotonic() < deadline, f"nodes {sorted(got.items())}, expected {sorted(want.items())}")
        time.sleep(0.2)


def own_files(s, n):
    cmd = " && ".join(f"ivshmem verify -d {node} --seed {300 + slot(b)}" for node, b in sorted(n.items()))
    _, out = s.sh(1, cmd, timeout=600)
    check(out.count("verified 1048576 bytes at offset 0 with pattern") == COUNT, out)


def test_twenty_devices_are_ivshmem0_to_ivshmem19_in_probe_order_each_mapping_its_own_file(twenty):
    expect(twenty, IN_ORDER)
    own_files(twenty, IN_ORDER)
    # The check can fail: node 0 does not hold file 1's pattern.
    status, out = twenty.sh(1, "ivshmem verify -d 0 --seed 301", ok=False)
    check(status == 1 and "mismatch at offset 0:" in out, f"status {status}: {out}")


def test_twenty_devices_rebound_device_gets_its_number_back_and_lowest_free_goes_first(twenty):
    # Unbind/rebind a device in the middle: it gets its number back.
    twenty.sh(1, f"echo {IN_ORDER[10]} > {DRV}/unbind")
    expect(twenty, {k: b for k, b in IN_ORDER.items() if k != 10})
    twenty.sh(1, f"echo {IN_ORDER[10]} > {DRV}/bind")
    expect(twenty, IN_ORDER)
    # Two gone; the first rebound takes the lower number, whichever device it is.
    twenty.sh(1, f"echo {IN_ORDER[5]} > {DRV}/unbind; echo {IN_ORDER[12]} > {DRV}/unbind")
    twenty.sh(1, f"echo {IN_ORDER[12]} > {DRV}/bind")
    swapped = {k: b for k, b in IN_ORDER.items() if k != 12}
    swapped[5] = IN_ORDER[12]
    expect(twenty, swapped)
    twenty.sh(1, f"echo {IN_ORDER[5]} > {DRV}/bind")
    swapped[12] = IN_ORDER[5]
    # Each node still maps its own file.
    own_files(twenty, expect(twenty, swapped))
    # Put the numbering back in probe order for what follows: both unbound, rebound in order.
    twenty.sh(1, f"echo {IN_ORDER[12]} > {DRV}/unbind; echo {IN_ORDER[5]} > {DRV}/unbind")
    twenty.sh(1, f"echo {IN_ORDER[5]} > {DRV}/bind")
    expect(twenty, {k: b for k, b in IN_ORDER.items() if k != 12})
    twenty.sh(1, f"echo {IN_ORDER[12]} > {DRV}/bind")
    expect(twenty, IN_ORDER)


def test_twenty_devices_rmmod_insmod_brings_all_back_in_probe_order_leak_free_dmesg_clean(twenty):
    twenty.sh(1, "rmmod ivshmem && ! ls /dev/ivshmem* 2>/dev/null && insmod /ivshmem.ko")
    own_files(twenty, expect(twenty, IN_ORDER))
    twenty.no_leaks(1)
    twenty.dmesg_clean(1)
