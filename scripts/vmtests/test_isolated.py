"""Two guests in the isolated topology (scripts/start.sh, IVSHMEM_TOPOLOGY=isolated) in doorbell
mode, the one-device topology beside it: /dev/ivshmem0 is the server's 1 MiB doorbell device (it
carries the wake-ups only), /dev/ivshmem1 guest 1's own 64 MiB device, which QEMU maps read-only
(readonly=on) into guest 2, /dev/ivshmem2 guest 2's, read-only in guest 1, and /dev/ivshmem3 a
64 MiB plain device both guests write. Each channel end writes only its own device and maps its
peer's read-only (`-d OWN --peer-device PEER --doorbell /dev/ivshmem0`).

Checked: stores into the other guest's device do not stick (and the host's file keeps its
bytes); pipes byte-exact either start order (sha256 of both sides against the host's); a hostile
process in the sending guest scribbling over all of the receiver's device for the whole transfer
changes nothing, while the same scribbling on the shared device ends a transfer with an error;
ivshmem-socket connections; a killed sender; a wrong topology; clean dmesg, no leaks."""

import hashlib
import re
import time

import pytest
from test_channel import finished, start_recv, start_send, transfer

from helpers import full, measured, start_until_go, stop_go
from lab import check

DOORBELL = "/dev/ivshmem0"
OWN = {1: "/dev/ivshmem1", 2: "/dev/ivshmem2"}
SHARED = "/dev/ivshmem3"


@pytest.fixture(scope="module")
def s(vm):
    """Both guests booted in the isolated topology with a shared plain device beside, kmemleak
    tracking started and the module loaded."""
    vm.boot(2, "64M", mode="doorbell", topology="isolated")
    for g in (1, 2):
        vm.leak_check_start(g)
        vm.sh(g, "insmod /ivshmem.ko")
    vm.own = {g: f"{vm.shm}.own{g}" for g in (1, 2)}
    return vm


def peer(g):
    """What an end in guest g adds to `-d OWN[g]`: the other guest's device, the doorbell."""
    return f"--peer-device {OWN[3 - g]} --doorbell {DOORBELL}"


def devices(g):
    """The device options of an end in guest g."""
    return f"-d {OWN[g]} {peer(g)}"


def file_sha(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def scribble(s, g, dev, tag):
    """Starts `ivshmem-check scribble` on `dev` in guest g (until `scribbled`)."""
    start_until_go(s, g, f"ivshmem-check scribble {dev}", tag, "scribbling", 30)


def scribbled(s, g, tag):
    """Stops the scribbler: (stores, stores that stuck)."""
    out = stop_go(s, g, tag)
    m = re.search(r"^(\d+) stores, (\d+) stuck$", out, re.M)
    check(m and "exit=0" in out, f"scribbler:\n{out}")
    return int(m.group(1)), int(m.group(2))


def isolated_transfer(s, size, seed, ch, receiver_first=True, tx=1):
    """`size` bytes of pattern `seed` from guest tx to the other over channel `ch` in the isolated
    topology: both ends exit 0, and both sides' sha256 are the host's (test_channel.transfer)."""
    rx = 3 - tx
    return transfer(s, OWN[tx], receiver_first, size, ch, seed, (tx, rx), OWN[rx], peer(tx), peer(rx))


def test_stores_into_the_other_guests_device_do_not_stick_and_the_host_file_keeps_its_bytes(s):
    for g in (1, 2):
        _, out = s.sh(g, "for d in 0 1 2 3; do ivshmem info -d $d; done")
        check(out.count("mode plain") == 3 and "mode doorbell" in out, out)
    before = file_sha(s.own[2])
    scribble(s, 1, OWN[2], "ro")
    s.sh(1, "sleep 1")
    stores, stuck = scribbled(s, 1, "ro")
    check(stores > 0 and stuck == 0, f"{stuck} of {stores} stores into guest 2's device stuck in guest 1")
    check(file_sha(s.own[2]) == before, "the host's file of guest 2's device changed")
    measured(f"{stores} stores into the read-only device in 1 s, none stuck")


@pytest.mark.parametrize("receiver_first", [True, False], ids=["receiver-first", "sender-first"])
def test_a_pipe_in_the_isolated_topology_has_the_hosts_sha256_on_both_sides(s, receiver_first):
    size = (64 if full(s) else 8) << 20
    secs = isolated_transfer(s, size, 81 + receiver_first, f"iso-{receiver_first}", receiver_first)
    measured(f"{size >> 20} MiB in the isolated topology in {secs:.1f} s")


def test_a_hostile_process_scribbling_over_the_receivers_device_changes_nothing(s):
    # It runs in the sending guest, where the receiver's device is mapped read-only by QEMU:
    # the transfer arrives exact, and not one of its stores stuck.
    size = (256 if full(s) else 16) << 20
    scribble(s, 1, OWN[2], "hostile")
    try:
        secs = isolated_transfer(s, size, 91, "hostile")
    finally:
        stores, stuck = scribbled(s, 1, "hostile")
    check(stores > 0 and stuck == 0, f"{stuck} of {stores} stores into the receiver's device stuck")
    measured(f"{size >> 20} MiB exact in {secs:.1f} s while {stores} random stores went to the receiver's device")


def test_ivshmem_socket_connections_in_the_isolated_topology(s):
    # The echo server and the serving side in guest 2, the forwarding side in guest 1.
    s.bg(2, "ivshmem-check echo 7100", "/tmp/echo.out")
    s.wait_line(2, "/tmp/echo.out", "echoing", 30)
    s.bg(2, f"ivshmem-socket serve --service echo --connect tcp:127.0.0.1:7100 {devices(2)} -v "
            "--liveness 3", "/tmp/sock.out")
    s.bg(1, f"ivshmem-socket forward --listen tcp:127.0.0.1:8100 --service echo {devices(1)} -v "
            "--liveness 3 --capacity 128K", "/tmp/sock.out")
    s.wait_line(2, "/tmp/sock.out", "serving", 60)
    s.wait_line(1, "/tmp/sock.out", "carried to", 60)
    try:
        n = 32 if full(s) else 8
        t0 = time.monotonic()
        _, out = s.sh(1, f"rm -f /tmp/e.*; for i in $(seq {n}); do "
                         "(ivshmem pattern --seed $i --len 1048576 | nc 127.0.0.1 8100 | "
                         "ivshmem pattern --seed $i --check > /tmp/e.$i 2>&1) & done; wait; "
                         f"for i in $(seq {n}); do echo \"$i: $(cat /tmp/e.$i)\"; done", timeout=900)
        secs = time.monotonic() - t0
        bad = [line for line in out.splitlines()
               if not re.fullmatch(r"(\d+): 1048576 bytes match pattern \1", line.strip())]
        check(len(out.splitlines()) == n and not bad, f"connections not echoed exact:\n{out}")
        measured(f"{n} concurrent connections echoed 1 MiB each in the isolated topology in {secs:.1f} s")
        m = 300 if full(s) else 50
        _, out = s.sh(1, f"for i in $(seq {m}); do echo hi$i | nc 127.0.0.1 8100; done | grep -c '^hi'",
                      timeout=900)
        check(out.strip() == str(m), f"{out.strip()} of {m} short connections in a row echoed")
    finally:
        for g in (1, 2):
            s.sh(g, "kill $(pidof ivshmem-socket) $(pidof ivshmem-check) 2>/dev/null; true")


def test_a_killed_sender_is_detected_within_the_bound_and_a_new_one_works(s):
    ch = "iso-kill"
    start_recv(s, 2, OWN[2], ch, 95, "rxk", peer(2) + " --liveness 3")
    start_send(s, 1, OWN[1], ch, 95, 4 << 30, "txk", peer(1) + " --liveness 3")
    s.sh(2, "sleep 4")
    s.sh(1, "kill -9 $(pidof ivshmem-pipe)")
    t0 = time.monotonic()
    out = finished(s, 2, "rxk", 60)
    secs = time.monotonic() - t0
    check("exit=1" in out and "peer gone" in out, out)
    m = re.search(r"^(\d+) bytes match pattern 95$", out, re.M)
    check(m and int(m.group(1)) > 0, f"what arrived is not a non-empty prefix of what was sent:\n{out}")
    check(secs < 3 + 4, f"took {secs:.1f} s: the bound is the 3 s liveness timeout")
    measured(f"receiver exited {secs:.1f} s after the sender was killed (isolated topology)")
    isolated_transfer(s, 4 << 20, 96, ch)


def test_a_wrong_topology_is_a_clear_error(s):
    # Guest 2 told guest 1's device as its own: its stores do not stick, and it says so.
    st, out = s.sh(2, f"ivshmem-pipe send -d {OWN[1]} --peer-device {OWN[2]} --wait spin < /dev/null", ok=False)
    check(st == 1 and "do not stick" in out and "read-only" in out, f"exit {st}:\n{out}")
    st, out = s.sh(2, f"ivshmem-pipe send -d {OWN[2]} --peer-device {OWN[2]} < /dev/null", ok=False)
    check(st == 2 and "own device" in out, f"exit {st}:\n{out}")


def test_the_same_scribbling_on_the_shared_device_ends_a_transfer_with_an_error(s):
    ch = "shared"
    start_recv(s, 2, SHARED, ch, 97, "rxs", "--liveness 3")
    start_send(s, 1, SHARED, ch, 97, 1 << 30, "txs", "--liveness 3")
    s.sh(2, "sleep 3")
    scribble(s, 1, SHARED, "shared")
    try:
        t0 = time.monotonic()
        got = finished(s, 2, "rxs", 120)
        sent = finished(s, 1, "txs", 60)
        secs = time.monotonic() - t0
    finally:
        stores, stuck = scribbled(s, 1, "shared")
    check("exit=1" in got, f"the receiver did not fail:\n{got}")
    check(not re.search(r"panick|Segmentation|SIGSEGV|SIGBUS", got + sent), got + sent)
    check(stuck > 0, f"none of {stores} stores into the shared device stuck")
    measured(f"the transfer on the shared device ended {secs:.1f} s into the scribbling ({stuck} of {stores} "
             "stores stuck)")


def test_dmesg_clean_and_no_leaks(s):
    for g in (1, 2):
        s.dmesg_clean(g)
    s.no_leaks(2)
