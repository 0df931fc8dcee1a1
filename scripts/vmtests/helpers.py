"""What several scenarios use: sizes, the message encoding, PCI and PAT look-ups, placements,
and figures."""

import re

import conftest

MAIN_SIZE = 64 << 20
SMALL_SIZE = 4 << 20
BIG_SIZE = 4 << 30
MESSAGE = "Other VM says hello world!"


def measured(text):
    """A figure the running test measured: a property of its JUnit record, listed in the run's
    "figures" section."""
    conftest.FIGURES.append(text)


def full(s):
    """Whether the lab moves the full tier's volumes: the full tier (make test) on a kind that
    has them (kinds.py, full_volumes: the release kind); elsewhere the check tier's."""
    return s.tier == "full" and s.kind.full_volumes


def message_bytes(text):
    """userspace/src/message.rs's encoding, written independently."""
    data = text.encode()
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return b"IVMS" + len(data).to_bytes(4, "little") + h.to_bytes(4, "little") + bytes(4) + data


def bar2_range(s, g, bdf):
    _, out = s.sh(g, f"cat /sys/bus/pci/devices/{bdf}/resource")
    start, end, _flags = out.splitlines()[2].split()
    return int(start, 16), int(end, 16) + 1


def pat_type(s, g, start, end):
    _, out = s.sh(g, "cat /sys/kernel/debug/x86/pat_memtype_list")
    for line in out.splitlines():
        m = re.search(r"\[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\S+)", line)
        if m and int(m.group(1), 16) == start and int(m.group(2), 16) == end:
            return m.group(3)
    return None


def start_until_go(s, g, cmd, tag, ready, secs=60):
    """Starts `cmd GO` in the background in guest g, an `ivshmem-check` subcommand that runs
    until the file GO (/tmp/TAG.go) exists, with its output in /tmp/TAG.out, and waits for
    `ready` in that output."""
    s.sh(g, f"rm -f /tmp/{tag}.go")
    s.bg(g, f"{cmd} /tmp/{tag}.go", f"/tmp/{tag}.out")
    s.wait_line(g, f"/tmp/{tag}.out", ready, secs)


def stop_go(s, g, tag, secs=60):
    """Creates the GO file of `start_until_go`'s command; its output once it exited."""
    s.sh(g, f"touch /tmp/{tag}.go")
    return s.wait_line(g, f"/tmp/{tag}.out", "exit=", secs)


def hold_and_read_pat(s, g, dev, cache, bdf):
    """Maps /dev/ivshmem<dev> with `cache` in guest g and returns BAR2's PAT type meanwhile."""
    start, end = bar2_range(s, g, bdf)
    start_until_go(s, g, f"ivshmem-check hold /dev/ivshmem{dev} {cache}", "hold", "mapped", 10)
    try:
        return pat_type(s, g, start, end)
    finally:
        stop_go(s, g, "hold", 10)


def place(mo, ml, align=None, skew=None):
    """`ivshmem fill/verify/touch` options: map [mo, mo + ml) at an address congruent to
    mo + skew modulo align (without align: where the library maps)."""
    opts = f" --map-offset {mo} --map-len {ml}"
    if align is not None:
        opts += f" --align {align}"
    if skew is not None:
        opts += f" --skew {skew}"
    return opts
