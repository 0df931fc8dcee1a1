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


def hold_and_read_pat(s, g, dev, cache, bdf):
    """Maps /dev/ivshmem<dev> with `cache` in guest g and returns BAR2's PAT type meanwhile."""
    start, end = bar2_range(s, g, bdf)
    s.sh(g, "rm -f /tmp/go")
    s.bg(g, f"ivshmem-check hold /dev/ivshmem{dev} {cache} /tmp/go", "/tmp/hold.out")
    s.wait_line(g, "/tmp/hold.out", "mapped", 10)
    try:
        return pat_type(s, g, start, end)
    finally:
        s.sh(g, "touch /tmp/go")
        s.wait_line(g, "/tmp/hold.out", "exit=", 10)


def place(mo, ml, align=None, skew=None):
    """`ivshmem fill/verify/touch` options: map [mo, mo + ml) at an address congruent to
    mo + skew modulo align (without align: where the library maps)."""
    opts = f" --map-offset {mo} --map-len {ml}"
    if align is not None:
        opts += f" --align {align}"
    if skew is not None:
        opts += f" --skew {skew}"
    return opts
