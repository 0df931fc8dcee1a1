"""Two guests in doorbell mode (our ivshmem-server), each with the server's 64 MiB doorbell device
(/dev/ivshmem0) and a 16 MiB plain one (/dev/ivshmem1), the module loaded and kmemleak tracking:
channels between the guests through ivshmem-pipe, on the doorbell device (sleeping in
IVSHMEM_WAIT) and on the plain one (spinning). The data is pattern N (`ivshmem pattern`), checked
byte by byte and by sha256 on both sides and against the host's. Also: two channels at once, a
sender killed (its process, its whole guest), a corrupt layout and the host scribbling over a
control block, the C API's example against ivshmem-pipe; connections: ivshmem-socket carrying
busybox httpd to wget in the other guest, and its server side killed; and no leaks."""

import os
import re
import signal
import subprocess
import time

import pytest

import kinds
from helpers import full, measured
from lab import check, host_read, host_write


@pytest.fixture(scope="module")
def s(vm):
    """Both guests booted in doorbell mode with a 16 MiB plain device beside, kmemleak tracking
    started and the module loaded."""
    vm.boot(2, "16M", mode="doorbell")
    for g in (1, 2):
        vm.leak_check_start(g)
        vm.sh(g, "insmod /ivshmem.ko")
    vm.plain = vm.shm + ".1"
    return vm


def arena_heads(path):
    """The published blocks of a region of layout version 2 (userspace/src/channel/
    conn_layout.rs and pagemap.rs, read independently): (kind, region offset) of each, or None
    for a region without the layout."""
    size = os.path.getsize(path)
    if host_read(path, 0, 4) != b"IVC2":
        return None
    length = size - 0x1000
    pages = length // (4096 + 8)
    while pages and -(-8 * pages // 4096) * 4096 + pages * 4096 > length:
        pages -= 1
    data = 0x1000 + -(-8 * pages // 4096) * 4096
    words = host_read(path, 0x1000, 8 * pages)
    out, i = [], 0
    while i < pages:
        w = int.from_bytes(words[8 * i:8 * i + 8], "little")
        state, kind, field = w & 0xf, (w >> 4) & 0xf, (w >> 8) & 0xffffffff
        if state == 1 and 1 <= field <= pages - i:
            out.append((kind, data + 4096 * i))
            i += field
        else:
            i += 1
    return out


def zero_layout(path):
    """Zeroes a region's header and page map: a fresh region for the next end."""
    host_write(path, 0, bytes(0x1000 + -(-8 * (os.path.getsize(path) // 4096) // 4096) * 4096))


def channel_layout(path):
    """The named channels of a region: {name: offset of the opener's block}, from the blocks of
    ends (kind 2) whose role is opener (3) and whose state word is one an end writes."""
    out = {}
    for kind, off in arena_heads(path) or []:
        if kind != 2:
            continue
        head = host_read(path, off, 0x128)
        role, state = int.from_bytes(head[0x10:0x14], "little"), head[0]
        n = int.from_bytes(head[0x100:0x104], "little")
        if role == 3 and state in (2, 3, 4) and 1 <= n <= 32:
            out[head[0x104:0x104 + n].decode(errors="replace")] = off
    return out


def big_size(s):
    """The volume of the four big transfers: 64 MiB with the full tier's volumes (64 trips round
    ivshmem-pipe's 1 MiB rings; the old 256 MiB cost the suite six minutes more), else 8 MiB (8
    trips: wrap-around and the full-ring sleeps all the same)."""
    return (64 if full(s) else 8) << 20


def hashed_pipeline(s, g, tag, head, tail):
    """Runs `head | tail` in the background in guest g, hashing what passes between them into
    /tmp/TAG.sha on the way (tee into a FIFO); the pipeline's status ends the log."""
    s.bg(g, f"(set -o pipefail; rm -f /tmp/{tag}.fifo; mkfifo /tmp/{tag}.fifo; "
            f"sha256sum < /tmp/{tag}.fifo > /tmp/{tag}.sha & "
            f"{head} | tee /tmp/{tag}.fifo | {tail}; r=$?; wait; exit $r)", f"/tmp/{tag}.out")


def start_recv(s, g, dev, ch, seed, tag, extra="", check_pattern=True):
    recv = f"ivshmem-pipe recv -d {dev} --channel {ch} {extra}"
    if not check_pattern:  # sha256 only: busybox's runs at about 10 MB/s under TCG
        s.bg(g, f"(set -o pipefail; {recv} | sha256sum > /tmp/{tag}.sha)", f"/tmp/{tag}.out")
        return
    hashed_pipeline(s, g, tag, recv, f"ivshmem pattern --seed {seed} --check")


def start_send(s, g, dev, ch, seed, size, tag, extra=""):
    hashed_pipeline(s, g, tag, f"ivshmem pattern --seed {seed} --len {size}",
                    f"ivshmem-pipe send -d {dev} --channel {ch} {extra}")


def finished(s, g, tag, secs):
    return s.wait_line(g, f"/tmp/{tag}.out", "exit=", secs)


def sha(s, g, tag):
    _, out = s.sh(g, f"cat /tmp/{tag}.sha")
    return out.split()[0] if out.split() else ""


def transfer(s, dev, receiver_first, size, ch="pipe", seed=11, pair=(1, 2), rx_dev=None, tx_extra="",
             rx_extra=""):
    """`size` bytes of pattern `seed` from guest pair[0] to guest pair[1] over channel `ch` of
    `dev` (the receiver's `rx_dev`, if another; `tx_extra` and `rx_extra` more options of each
    end): both ends exit 0 and the sha256 of what was sent and of what arrived are the host's.
    How long it took."""
    tx, rx = pair
    rx_dev = rx_dev or dev
    # What the sender must send, computed on the host by the same tool.
    want = subprocess.run(f"{os.path.join(kinds.HOST_TOOLS, 'ivshmem')} pattern --seed {seed} --len {size} "
                          "| sha256sum", shell=True, check=True, capture_output=True, text=True).stdout.split()[0]
    started = time.monotonic()
    if receiver_first:
        start_recv(s, rx, rx_dev, ch, seed, "rx", rx_extra, check_pattern=False)
        s.sh(rx, "sleep 1")
        start_send(s, tx, dev, ch, seed, size, "tx", tx_extra)
    else:
        start_send(s, tx, dev, ch, seed, size, "tx", tx_extra)
        s.sh(tx, "sleep 1")
        start_recv(s, rx, rx_dev, ch, seed, "rx", rx_extra, check_pattern=False)
    sent = finished(s, tx, "tx", 1800)
    got = finished(s, rx, "rx", 120)
    secs = time.monotonic() - started
    check("exit=0" in sent, f"sender:\n{sent}")
    check("exit=0" in got, f"receiver:\n{got}")
    a, b = sha(s, tx, "tx"), sha(s, rx, "rx")
    check(a == want and b == want, f"sha256 sender {a!r}, receiver {b!r}, host {want!r}")
    measured(f"{size >> 20} MiB through /dev/ivshmem{dev[-1]} in {secs:.1f} s "
             "(generation, tee and sha256 on one vCPU each)")
    return secs


def test_module_loaded_in_both_guests_with_a_doorbell_and_a_plain_device(s):
    for g in (1, 2):
        _, out = s.sh(g, "ivshmem info -d 0; ivshmem info -d 1")
        check("mode doorbell" in out and "mode plain" in out, out)


@pytest.mark.parametrize("receiver_first", [True, False], ids=["receiver-first", "sender-first"])
@pytest.mark.parametrize("dev", ["/dev/ivshmem0", "/dev/ivshmem1"], ids=["doorbell", "plain"])
def test_big_transfer_through_ivshmem_pipe_has_the_hosts_sha256_on_both_sides(s, dev, receiver_first):
    transfer(s, dev, receiver_first, big_size(s))


def test_two_channels_at_once_one_each_way_arrive_intact(s):
    # 32 MiB each with the full tier's volumes, else 8 MiB.
    size = (32 if full(s) else 8) << 20
    start_recv(s, 2, "/dev/ivshmem0", "a2b", 21, "rxa")
    start_recv(s, 1, "/dev/ivshmem0", "b2a", 22, "rxb")
    start_send(s, 1, "/dev/ivshmem0", "a2b", 21, size, "txa")
    start_send(s, 2, "/dev/ivshmem0", "b2a", 22, size, "txb")
    for g, tag, seed in ((1, "txa", 0), (2, "txb", 0), (2, "rxa", 21), (1, "rxb", 22)):
        out = finished(s, g, tag, 300)
        check("exit=0" in out and (not seed or f"{size} bytes match pattern {seed}" in out), f"{tag}:\n{out}")
    check(sha(s, 1, "txa") == sha(s, 2, "rxa") and sha(s, 2, "txb") == sha(s, 1, "rxb"), "sha256 differ")


def test_sixteen_channels_of_one_doorbell_device_in_one_poll_loop_miss_no_message(s):
    # The receiver's 16 ends share the device's one eventfd (the driver registers one per vector
    # and device); after each wake-up it drains it and retries all 16, and a poll that waits 60 s
    # with messages outstanding is a lost wake-up (ivshmem-check poll says FAIL).
    n = 200 if full(s) else 50
    s.bg(2, f"ivshmem-check poll /dev/ivshmem0 16 {n} recv", "/tmp/poll-rx.out")
    s.bg(1, f"ivshmem-check poll /dev/ivshmem0 16 {n} send", "/tmp/poll-tx.out")
    sent = s.wait_line(1, "/tmp/poll-tx.out", "exit=", 300)
    got = s.wait_line(2, "/tmp/poll-rx.out", "exit=", 120)
    check("exit=0" in sent and f"sent {n} messages on each of 16 channels" in sent, sent)
    check("exit=0" in got and f"received {n} messages on each of 16 channels sharing descriptor" in got, got)
    measured(got.splitlines()[0])


def restart_guest_1(s):
    """Boots guest 1 again (after its QEMU was killed) and loads the module, as the fixture did
    (kmemleak is not tracked there again: the leak check looks at guest 2)."""
    s.guests[0].close()
    s.start(guests=2, extra="16M", only="1")
    s.guests[0].wait_ready(240)
    s.sh(1, "insmod /ivshmem.ko")


def sender_killed(s, how):
    """A 4 GiB transfer from guest 1 to guest 2 on the doorbell device whose sender (its
    process, or guest 1's QEMU) is killed mid-stream: the receiver exits 1 within the 10 s
    liveness bound with a non-empty prefix of the data; then a new sender (from the restarted
    guest) works on the same channel."""
    ch = f"kill-{how}"
    start_recv(s, 2, "/dev/ivshmem0", ch, 31, "rxk")
    start_send(s, 1, "/dev/ivshmem0", ch, 31, 4 << 30, "txk")
    s.sh(2, "sleep 4")  # mid-stream: 4 GiB take minutes
    if how == "process":
        s.sh(1, "kill -9 $(pidof ivshmem-pipe)")
    else:
        os.kill(s.pid("guest1"), signal.SIGKILL)
    try:
        t0 = time.monotonic()
        out = finished(s, 2, "rxk", 60)
        secs = time.monotonic() - t0
        measured(f"receiver exited {secs:.1f} s after the sender's {how} was killed")
        check("exit=1" in out and "ivshmem-pipe: recv: peer gone" in out, out)
        m = re.search(r"^(\d+) bytes match pattern 31$", out, re.M)
        check(m and int(m.group(1)) > 0, f"what arrived is not a non-empty prefix of what was sent:\n{out}")
        # The bound is the default liveness timeout, 10 s; the rest is the host seeing it.
        check(secs < 10 + 4, f"took {secs:.1f} s: the bound is the 10 s liveness timeout")
    finally:
        if how == "guest":
            restart_guest_1(s)
    # A new sender on the same channel.
    start_recv(s, 2, "/dev/ivshmem0", ch, 32, "rx")
    start_send(s, 1, "/dev/ivshmem0", ch, 32, 8 << 20, "tx")
    check("exit=0" in finished(s, 1, "tx", 120), "new sender failed")
    got = finished(s, 2, "rx", 60)
    check(f"{8 << 20} bytes match pattern 32" in got and "exit=0" in got, got)


def test_sender_process_killed_receiver_exits_1_within_the_bound_with_a_prefix_and_a_new_sender_works(s):
    sender_killed(s, "process")


def test_sender_guest_killed_receiver_exits_1_within_the_bound_with_a_prefix_and_the_restarted_guest_sends(s):
    sender_killed(s, "guest")


def test_corrupt_layout_written_by_the_host_is_a_clear_error_and_a_cleared_one_works_again(s):
    # The cases rewrite a laid-out header of the plain device: run alone, this test makes one
    # first (in file order, the big transfers on the plain device left one).
    if host_read(s.plain, 0, 4) != b"IVC2":
        transfer(s, "/dev/ivshmem1", True, size=1 << 20, seed=42)
    header = host_read(s.plain, 0, 0x1000)
    try:
        for what, data, expect in (
                ("version 99", b"IVC2" + (99).to_bytes(4, "little") + header[8:], "version 99"),
                ("random header", os.urandom(0x1000), "layout|corrupt"),
                ("wild region size", header[:0x18] + (1 << 40).to_bytes(8, "little") + header[0x20:],
                 "laid out for 1099511627776 bytes"),
                ("layout version 1", b"IVCH" + (1).to_bytes(4, "little") + header[8:], "version 1")):
            host_write(s.plain, 0, bytes(data))
            t0 = time.monotonic()
            st, out = s.sh(1, "ivshmem-pipe send -d /dev/ivshmem1 < /dev/null", ok=False)
            check(st == 1 and "ivshmem-pipe: channel 'pipe':" in out and re.search(expect, out),
                  f"{what}: exit {st}:\n{out}")
            check(time.monotonic() - t0 < 20, f"{what}: took {time.monotonic() - t0:.0f} s")
            check(not re.search(r"panick|SIG", out), out)
    finally:
        zero_layout(s.plain)
    transfer(s, "/dev/ivshmem1", True, size=8 << 20, seed=41)


def test_host_scribbling_over_the_control_block_ends_the_transfer_with_an_error_no_crash_no_hang(s):
    # The host writes random words over the first 2 KiB of the opener's block (its state word,
    # header, side line, ring indices and wake-up words) during a transfer on the plain device.
    ch = "scribble"
    start_recv(s, 2, "/dev/ivshmem1", ch, 51, "rxs", "--liveness 3")
    start_send(s, 1, "/dev/ivshmem1", ch, 51, 1 << 30, "txs", "--liveness 3")
    deadline = time.monotonic() + 30
    while ch not in channel_layout(s.plain) and time.monotonic() < deadline:
        time.sleep(0.1)
    block = channel_layout(s.plain).get(ch)
    check(block is not None, "the channel never appeared in the table")
    s.sh(2, "sleep 2")
    outs = {}
    end = time.monotonic() + 90
    writes = 0
    with open(s.plain, "r+b") as f:
        while time.monotonic() < end and len(outs) < 2:
            f.seek(block + 8 * int.from_bytes(os.urandom(1), "little") % 0x200)
            f.write(os.urandom(8))
            f.flush()
            writes += 1
            time.sleep(0.02)
            if writes % 50 == 0:
                for g, tag in ((1, "txs"), (2, "rxs")):
                    _, o = s.sh(g, f"cat /tmp/{tag}.out")
                    if "exit=" in o:
                        outs[tag] = o
    measured(f"{writes} random words written by the host before both ends stopped")
    check(len(outs) == 2, f"a side still runs 90 s into the scribbling: {outs}")
    both = outs["txs"] + outs["rxs"]
    check("exit=1" in both and "ivshmem-pipe:" in both, both)
    check(not re.search(r"panick|Segmentation|SIGSEGV|SIGBUS", both), both)
    for g in (1, 2):
        s.sh(g, "true")


def test_c_api_example_and_ivshmem_pipe_exchange_8_mib_each_way_with_equal_sha256(s):
    # The static C example (the C API) against the Rust tool on the doorbell device, each way,
    # on channels of their own next to those of the tests above.
    for rx_tool, tx_tool, ch in (("ivshmem-pipe-c", "ivshmem-pipe", "c-recv"),
                                 ("ivshmem-pipe", "ivshmem-pipe-c", "c-send")):
        _, out = s.sh(2, "head -c 8388608 /dev/urandom > /tmp/capi.in && sha256sum /tmp/capi.in")
        sent = out.split()[0]
        s.bg(1, f"{{ {rx_tool} recv --channel {ch} > /tmp/capi.out; }}", "/tmp/capi.log")
        status, out = s.sh(2, f"{tx_tool} send --channel {ch} < /tmp/capi.in", timeout=600, ok=False)
        check(status == 0, f"guest 2: {tx_tool} send exited {status}:\n{out}")
        log = s.wait_line(1, "/tmp/capi.log", "exit=", 120)
        check("exit=0" in log, f"guest 1: {rx_tool} recv:\n{log}")
        _, out = s.sh(1, "sha256sum /tmp/capi.out; rm -f /tmp/capi.out")
        check(out.split()[0] == sent, f"{tx_tool} -> {rx_tool}: sha256 {out.split()[0]}, sent {sent}")
        s.sh(2, "rm -f /tmp/capi.in")


def arena_blocks(path):
    """The blocks of a region of layout version 2: {"listeners": n, "connections": n}, the
    second counting the blocks of ends (two per connection), or None without the layout."""
    heads = arena_heads(path)
    if heads is None:
        return None
    return {"listeners": sum(k == 1 for k, _ in heads), "connections": sum(k == 2 for k, _ in heads)}


def socket_pair(s, dev, service, target, local, extra="", serve_in=2):
    """ivshmem-socket carrying 127.0.0.1:LOCAL of one guest to 127.0.0.1:TARGET of the other
    (guest `serve_in`) over `dev`, both in the background, each waited for until it listens."""
    fwd_in = 3 - serve_in
    s.bg(serve_in, f"ivshmem-socket serve --service {service} --connect tcp:127.0.0.1:{target} -d {dev} -v {extra}",
         f"/tmp/sock-{service}.out")
    s.bg(fwd_in, f"ivshmem-socket forward --listen tcp:127.0.0.1:{local} --service {service} -d {dev} -v {extra}",
         f"/tmp/sock-{service}.out")
    s.wait_line(serve_in, f"/tmp/sock-{service}.out", "serving", 60)
    s.wait_line(fwd_in, f"/tmp/sock-{service}.out", "carried to", 60)


def stop_sockets(s):
    for g in (1, 2):
        s.sh(g, "kill $(pidof ivshmem-socket) $(pidof ivshmem-check) $(pidof httpd) 2>/dev/null; true")


def fresh_connections(s, dev):
    """The device's layout zeroed by the host, so that the blocks `freed` counts are this
    test's (the pipes' earlier tests share the region). Its backing file."""
    path = s.shm if dev.endswith("0") else s.plain
    zero_layout(path)
    return path


def freed(path):
    """Waits until only the listener's block is left in the region (the last connections may
    still be closing) and says what is left."""
    deadline = time.monotonic() + 10
    while (blocks := arena_blocks(path)) != {"listeners": 1, "connections": 0} and time.monotonic() < deadline:
        time.sleep(0.1)
    check(blocks == {"listeners": 1, "connections": 0}, f"blocks left in the region 10 s later: {blocks}")


@pytest.mark.parametrize("dev", ["/dev/ivshmem0", "/dev/ivshmem1"], ids=["doorbell", "plain"])
def test_ivshmem_socket_carries_busybox_httpd_to_wget_in_the_other_guest(s, dev):
    # An HTTP session between two guests without a network: busybox httpd in guest 2, busybox
    # wget in guest 1, both on 127.0.0.1.
    path = fresh_connections(s, dev)
    size = big_size(s)
    want = subprocess.run(f"{os.path.join(kinds.HOST_TOOLS, 'ivshmem')} pattern --seed 61 --len {size} "
                          "| sha256sum", shell=True, check=True, capture_output=True, text=True).stdout.split()[0]
    s.sh(2, f"mkdir -p /tmp/www && ivshmem pattern --seed 61 --len {size} > /tmp/www/blob && "
            "httpd -p 127.0.0.1:8080 -h /tmp/www")
    socket_pair(s, dev, "web", 8080, 9080)
    try:
        t0 = time.monotonic()
        _, out = s.sh(1, "wget -q -O - http://127.0.0.1:9080/blob | sha256sum", timeout=900)
        secs = time.monotonic() - t0
        check(out.split()[0] == want, f"sha256 {out.split()[0]}, host {want}")
        measured(f"{size >> 20} MiB from httpd to wget through ivshmem-socket on {dev} in {secs:.1f} s "
                 "(busybox sha256sum included)")
        freed(path)
    finally:
        stop_sockets(s)
        s.sh(2, "rm -rf /tmp/www")


@pytest.mark.parametrize("dev", ["/dev/ivshmem0", "/dev/ivshmem1"], ids=["doorbell", "plain"])
def test_ivshmem_socket_echoes_32_concurrent_connections_exact_and_many_short_ones_in_a_row(s, dev):
    # busybox nc in guest 1 to an echo server in guest 2: 32 connections at once, 1 MiB of
    # pattern i each way on connection i, checked as it comes back; then short connections one
    # after another, more than the region holds at once (the plain device's 16 MiB hold 62 with
    # 128 KiB rings per direction, 31 with the default 256 KiB): every one's memory comes back.
    path = fresh_connections(s, dev)
    s.bg(2, "ivshmem-check echo 7000", "/tmp/echo.out")
    s.wait_line(2, "/tmp/echo.out", "echoing", 30)
    socket_pair(s, dev, "echo", 7000, 8000, "--capacity 128K")
    try:
        t0 = time.monotonic()
        _, out = s.sh(1, "rm -f /tmp/e.*; for i in $(seq 32); do "
                         "(ivshmem pattern --seed $i --len 1048576 | nc 127.0.0.1 8000 | "
                         "ivshmem pattern --seed $i --check > /tmp/e.$i 2>&1) & done; wait; "
                         "for i in $(seq 32); do echo \"$i: $(cat /tmp/e.$i)\"; done", timeout=900)
        secs = time.monotonic() - t0
        bad = [line for line in out.splitlines()
               if not re.fullmatch(r"(\d+): 1048576 bytes match pattern \1", line.strip())]
        check(len(out.splitlines()) == 32 and not bad, f"connections not echoed exact:\n{out}")
        measured(f"32 concurrent connections echoed 1 MiB each through ivshmem-socket on {dev} in {secs:.1f} s")
        n = 1000 if full(s) else 100
        t0 = time.monotonic()
        _, out = s.sh(1, f"for i in $(seq {n}); do echo hi$i | nc 127.0.0.1 8000; done | grep -c '^hi'", timeout=900)
        secs = time.monotonic() - t0
        check(out.strip() == str(n), f"{out.strip()} of {n} short connections in a row echoed")
        measured(f"{n} short connections in a row on {dev} in {secs:.1f} s ({secs / n * 1000:.0f} ms each with nc)")
        freed(path)
    finally:
        stop_sockets(s)


def test_ivshmem_socket_serving_process_killed_mid_traffic_cuts_its_sockets_and_a_restarted_one_serves(s):
    dev = "/dev/ivshmem1"
    fresh_connections(s, dev)
    s.sh(2, "mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/zero bs=1M count=96 2>/dev/null && "
            "httpd -p 127.0.0.1:8090 -h /tmp/www")
    socket_pair(s, dev, "cut", 8090, 9090, "--liveness 3")
    url = "http://127.0.0.1:9090"
    try:
        # busybox sha256sum (about 10 MB/s under TCG) keeps the fetch going for seconds.
        s.bg(1, f"set -o pipefail; wget -q -O - {url}/zero | sha256sum", "/tmp/cut.out")
        s.wait_line(2, "/tmp/sock-cut.out", "connection 0 to", 60)
        s.sh(1, "sleep 1")
        t0 = time.monotonic()
        s.sh(2, "kill -9 $(pidof ivshmem-socket)")
        out = s.wait_line(1, "/tmp/cut.out", "exit=", 60)
        secs = time.monotonic() - t0
        check("exit=0" not in out, f"the fetch ended cleanly although its server side was killed:\n{out}")
        check(secs < 3 + 5, f"the cut reached wget after {secs:.1f} s (liveness bound 3 s)")
        measured(f"wget saw the killed serving process {secs:.1f} s later")
        # A new serving process takes the service over (the dead listener's name is free once
        # it is seen dead); the forwarding side, still running, carries new fetches.
        s.bg(2, f"ivshmem-socket serve --service cut --connect tcp:127.0.0.1:8090 -d {dev} -v --liveness 3",
             "/tmp/sock-cut2.out")
        s.wait_line(2, "/tmp/sock-cut2.out", "serving", 60)
        _, out = s.sh(1, f"wget -q -O - {url}/zero | wc -c", timeout=600)
        check(out.strip() == str(96 << 20), f"fetch through the restarted serving process: {out.strip()} bytes")
        _, log = s.sh(1, "cat /tmp/sock-cut.out")
        check(not re.search(r"panick|SIG", log), log)
    finally:
        stop_sockets(s)
        s.sh(2, "rm -rf /tmp/www")


def test_ivshmem_socket_serving_guest_killed_cuts_its_sockets_and_the_restarted_guest_serves(s):
    # The serving side in guest 1 this time (the lab restarts guest 1), on the doorbell device.
    dev = "/dev/ivshmem0"
    fresh_connections(s, dev)
    s.bg(1, "ivshmem-check echo 7010", "/tmp/echo.out")
    s.wait_line(1, "/tmp/echo.out", "echoing", 30)
    socket_pair(s, dev, "guest", 7010, 8010, "--liveness 3", serve_in=1)
    try:
        s.bg(2, "set -o pipefail; ivshmem pattern --seed 71 --len 1G | nc 127.0.0.1 8010 | "
                "ivshmem pattern --seed 71 --check", "/tmp/gk.out")
        s.sh(2, "sleep 3")
        os.kill(s.pid("guest1"), signal.SIGKILL)
        t0 = time.monotonic()
        out = s.wait_line(2, "/tmp/gk.out", "exit=", 60)
        secs = time.monotonic() - t0
        m = re.search(r"^(\d+) bytes match pattern 71$", out, re.M)
        check(m and 0 < int(m.group(1)) < 1 << 30, f"what came back is not a proper prefix:\n{out}")
        check(secs < 3 + 5, f"the cut reached nc after {secs:.1f} s (liveness bound 3 s)")
        measured(f"nc saw the serving guest killed {secs:.1f} s later, after {int(m.group(1)) >> 20} MiB echoed")
    finally:
        restart_guest_1(s)
    try:
        s.bg(1, "ivshmem-check echo 7010", "/tmp/echo.out")
        s.wait_line(1, "/tmp/echo.out", "echoing", 30)
        s.bg(1, f"ivshmem-socket serve --service guest --connect tcp:127.0.0.1:7010 -d {dev} -v --liveness 3",
             "/tmp/sock-guest.out")
        s.wait_line(1, "/tmp/sock-guest.out", "serving", 60)
        _, out = s.sh(2, "ivshmem pattern --seed 72 --len 4194304 | nc 127.0.0.1 8010 | "
                         "ivshmem pattern --seed 72 --check", timeout=600)
        check("4194304 bytes match pattern 72" in out, f"through the restarted guest: {out}")
    finally:
        stop_sockets(s)


def test_dmesg_clean_and_no_leaks(s):
    for g in (1, 2):
        s.dmesg_clean(g)
    s.no_leaks(2)
