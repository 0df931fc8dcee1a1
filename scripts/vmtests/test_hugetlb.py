"""The seeds' setup: two guests whose 64 MiB shared memory is a file on hugetlbfs (2 MiB pages),
shared byte for byte by the guests and the host. Needs root (it reserves huge pages and mounts
hugetlbfs on the host; both are undone at the end)."""

import mmap
import os
import subprocess

import pytest

import lab
from helpers import MAIN_SIZE, MESSAGE
from lab import check

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def read_nr():
    with open(NR_HUGEPAGES) as f:
        return int(f.read())


def write_nr(n):
    with open(NR_HUGEPAGES, "w") as f:
        f.write(str(n))


@pytest.fixture(scope="module")
def s(vm):
    """40 more huge pages reserved, hugetlbfs mounted in the run directory, both guests booted
    on a file there with the module loaded. At the end: the guests stop, the file goes,
    hugetlbfs is unmounted and the reservation is what it was."""
    if os.geteuid() != 0:
        pytest.skip("hugetlbfs backing: needs root to reserve huge pages and mount hugetlbfs")
    mnt = os.path.join(vm.run_dir, "huge")
    path = os.path.join(mnt, "ivshmem")
    old = read_nr()
    mounted = False
    try:
        write_nr(old + 40)
        check(read_nr() >= old + 32, "could not reserve 32 huge pages")
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", mnt], check=True)
        mounted = True
        vm.boot(2, "", shm=path)
        for g in (1, 2):
            vm.sh(g, "insmod /ivshmem.ko")
        vm.huge = path
        yield vm
    finally:
        vm.stop()
        if os.path.exists(path):
            os.unlink(path)
        if mounted:
            subprocess.run(["umount", mnt], check=False)
        write_nr(old)


def test_hugetlbfs_backing_is_shared_byte_for_byte_by_the_guests_and_the_host(s):
    s.sh(1, "ivshmem fill -d 0 --seed 77 --len 8M")
    s.sh(2, "ivshmem verify -d 0 --seed 77 --len 8M")
    with open(s.huge, "r+b") as f:
        m = mmap.mmap(f.fileno(), MAIN_SIZE)
        check(m[:1 << 20] == lab.pattern(77, 0, 1 << 20), "host sees other bytes on hugetlbfs")
        m[8 << 20:9 << 20] = lab.pattern(78, 8 << 20, 1 << 20)
        m.close()
    s.sh(1, "ivshmem verify -d 0 --seed 78 --offset 8M --len 1M")
    _, out = s.sh(1, "read_write")
    check("Written to shmem" in out, out)
    _, out = s.sh(2, "read_write")
    check(f"Read from shmem: '{MESSAGE}'" in out, out)
    for g in (1, 2):
        s.dmesg_clean(g)
