"""Two doorbell guests on q35, each device behind a PCIe root port of its own (the demo's
machine, IVSHMEM_MACHINE=q35): BAR2 above 4 GiB, where the MTRRs allow write-back, so PAT grants
it (`ivshmem info`, the PAT list) and probe does not warn; bytes exact between the guests and
the host through write-back mappings; MSI-X through the root ports (a ring, pingpong)."""

import re

import pytest

import lab
from helpers import bar2_range, hold_and_read_pat, measured
from lab import check, host_read, host_write

pytestmark = pytest.mark.x86

# Behind the first root port: bus 1 (the doorbell device); the plain 4 MiB one on bus 2.
DOORBELL_BDF = "0000:01:00.0"
PLAIN_BDF = "0000:02:00.0"


@pytest.fixture(scope="module")
def s(vm):
    """Two q35 guests, each with the doorbell device and a plain 4 MiB one, module loaded."""
    vm.boot(2, "4M", mode="doorbell", machine="q35")
    for g in (1, 2):
        vm.sh(g, "insmod /ivshmem.ko")
    return vm


def test_bar2_of_both_devices_lies_above_4_gib_behind_root_ports(s):
    for g in (1, 2):
        for bdf in (DOORBELL_BDF, PLAIN_BDF):
            start, _end = bar2_range(s, g, bdf)
            check(start >= 1 << 32, f"guest {g}: {bdf}'s BAR2 at {start:#x}, expected above 4 GiB")


def test_info_says_pat_granted_write_back_and_probe_did_not_warn(s):
    for g in (1, 2):
        for dev, bdf in ((0, DOORBELL_BDF), (1, PLAIN_BDF)):
            _, out = s.sh(g, f"ivshmem info -d {dev}")
            check(f"pci {bdf}\n" in out and "cache wb\npat wb\n" in out, out)
        _, out = s.sh(g, "dmesg | grep 'mappings get'; true")
        check(out.strip() == "", f"guest {g}: {out}")


def test_the_pat_list_shows_write_back_while_a_mapping_exists(s):
    got = hold_and_read_pat(s, 1, 0, "wb", DOORBELL_BDF)
    check(got == "write-back", f"BAR2's PAT type: {got}")


def test_bytes_written_by_guest_1_read_back_exactly_by_guest_2_and_the_host(s):
    s.sh(1, "ivshmem fill -d 0 --seed 81 --offset 4096 --len 1000000")
    s.sh(2, "ivshmem verify -d 0 --seed 81 --offset 4096 --len 1000000")
    check(host_read(s.shm, 4096, 1000000) == lab.pattern(81, 4096, 1000000), "host sees other bytes")
    host_write(s.shm + ".1", 0, lab.pattern(82, 0, 65536))
    for g in (1, 2):
        s.sh(g, "ivshmem verify -d 1 --seed 82 --len 65536")


def test_pingpong_over_msi_x_through_the_root_ports(s):
    ids = {}
    for g in (1, 2):
        _, out = s.sh(g, "ivshmem info -d 0")
        m = re.search(r"peer_id (\d+)", out)
        check(m and "vectors 2" in out, out)
        ids[g] = int(m.group(1))
    s.bg(2, f"pingpong --role pong --peer {ids[1]} --mode doorbell --rounds 200 --offset 2M", "/tmp/pp.out")
    s.sh(2, "sleep 0.5")
    _, out = s.sh(1, f"pingpong --role ping --peer {ids[2]} --mode doorbell --rounds 200 --offset 2M")
    measured(out.strip())
    check("200 round trips" in out, out)
    pong = s.wait_line(2, "/tmp/pp.out", "exit=", 60)
    check("answered 200 rounds" in pong and "exit=0" in pong, pong)


def test_dmesg_clean_on_q35(s):
    for g in (1, 2):
        s.dmesg_clean(g)
