"""One guest with a 4 GiB device beside the 64 MiB one, which moves every BAR above 4 GiB (where
x86 MTRRs allow write-back): GET_SIZE beyond 4 GiB, bytes at offsets past 3 GiB, BAR2's PAT type
per cache type, and the time to map and first touch 1 GiB (a figure)."""

import pytest

import lab
from helpers import BIG_SIZE, bar2_range, hold_and_read_pat, measured
from lab import check, host_read, host_write


@pytest.fixture(scope="module")
def s(vm):
    """The guest booted with the 4 GiB device (/dev/ivshmem1, backing file shm.1) and the module
    loaded."""
    vm.boot(1, "4G")
    vm.sh(1, "insmod /ivshmem.ko")
    vm.big = vm.shm + ".1"
    return vm


def test_4_gib_device_get_size_beyond_4_gib_and_bar2_above_4_gib(s):
    _, out = s.sh(1, "ivshmem info -d 1")
    check(f"size {BIG_SIZE}\n" in out, out)
    start, _end = bar2_range(s, 1, "0000:00:03.0")
    check(start >= 1 << 32, f"BAR2 at {start:#x}, expected above 4 GiB")


def test_offsets_past_3_gib_of_a_4_gib_region_map_to_the_right_bytes(s):
    off = BIG_SIZE - 8192
    s.sh(1, f"ivshmem fill -d 1 --seed 55 --offset {off} --len 8192")
    check(host_read(s.big, off, 8192) == lab.pattern(55, off, 8192), "host sees other bytes at 4 GiB - 8 KiB")
    off = (3 << 30) + 4096
    host_write(s.big, off, lab.pattern(56, off, 4096))
    s.sh(1, f"ivshmem verify -d 1 --seed 56 --offset {off} --len 4096")
    # The same bytes checked against another seed must fail: the check above can fail.
    status, out = s.sh(1, f"ivshmem verify -d 1 --seed 57 --offset {off} --len 4096", ok=False)
    check(status != 0 and "mismatch" in out, f"verify with a wrong seed: status {status}: {out}")


def test_info_says_write_back_is_granted_above_4_gib_and_probe_did_not_warn(s):
    for dev in (0, 1):
        _, out = s.sh(1, f"ivshmem info -d {dev}")
        check("cache wb\npat wb\n" in out, out)
    _, out = s.sh(1, "dmesg | grep 'mappings get'; true")
    check(out.strip() == "", out)


def test_pat_memtype_of_bar2_is_write_back_by_default_above_4_gib(s):
    got = {c: hold_and_read_pat(s, 1, 0, c, "0000:00:02.0") for c in ("wb", "wc", "uc")}
    check(got == {"wb": "write-back", "wc": "write-combining", "uc": "uncached-minus"}, str(got))


@pytest.mark.figure
def test_1_gib_mmap_and_first_touch_of_every_page(s):
    _, out = s.sh(1, "ivshmem touch -d 1 --len 1G", timeout=600)
    measured(out.strip())
    check("first read of 262144 pages" in out, out)


def test_dmesg_clean_with_a_4_gib_device(s):
    s.dmesg_clean(1)
