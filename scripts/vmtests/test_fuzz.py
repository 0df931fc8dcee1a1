"""Two doorbell guests, each with a 4 MiB and a 1 GiB plain device too, run ivshmem-fuzz at once,
each rebinding its devices all along; before that, the same seed without rebinding must give
the same calls per thread; after it, the module must unload with kmemleak and dmesg clean.

The run lasts $IVSHMEM_FUZZ_SECONDS if set, else the kind's fuzz_seconds in the full tier and
10 s in the check tier."""

import os
import re

import pytest

from helpers import measured
from lab import check

SEEDS = {1: 1001, 2: 2002}


def fuzz_seconds(s):
    if os.environ.get("IVSHMEM_FUZZ_SECONDS"):
        return int(os.environ["IVSHMEM_FUZZ_SECONDS"])
    return s.kind.fuzz_seconds if s.tier == "full" else 10


@pytest.fixture(scope="module")
def s(vm):
    """Both guests booted in doorbell mode with the module loaded and kmemleak tracking."""
    # The 1 GiB device gives the fuzzer's huge-aligned mmaps room for 1 GiB-aligned mappings of
    # 2 MiB entries to make and break.
    vm.boot(2, "4M 1G", mode="doorbell")
    for g in (1, 2):
        vm.leak_check_start(g)
        vm.sh(g, "insmod /ivshmem.ko")
    vm.fuzz_seconds = fuzz_seconds(vm)
    return vm


class Fuzzing:
    """ivshmem-fuzz started in both guests at once; output(g) waits for guest g's run to end."""

    def __init__(self, s):
        self.s = s
        self.secs = s.fuzz_seconds
        self.limit = self.secs * 2 + 180  # TCG, two busy guests on a shared host; stopping takes a while
        self.outs = {}
        for g in (1, 2):
            s.bg(g, f"ivshmem-fuzz --seconds {self.secs} --seed {SEEDS[g]} --fresh", "/tmp/fuzz.out")

    def output(self, g):
        if g not in self.outs:
            _, self.outs[g] = self.s.sh(g, f"for i in $(seq {self.limit}); do grep -q exit= /tmp/fuzz.out && break; "
                                           "sleep 1; done; cat /tmp/fuzz.out", timeout=self.limit + 60)
        return self.outs[g]


@pytest.fixture(scope="module")
def fuzzing(s):
    """The fuzz run of both guests (started once, by the first test that needs it)."""
    return Fuzzing(s)


def test_module_loaded_in_both_guests_with_the_doorbell_4_mib_and_1_gib_devices(s):
    for g in (1, 2):
        _, out = s.sh(g, "ls /dev/ivshmem*")
        check(all(f"/dev/ivshmem{n}" in out for n in range(3)), out)


def test_same_seed_without_rebinding_gives_the_same_calls_per_thread(s):
    # Same seed, no rebinding: every thread issues the same calls in the same order; runs only
    # differ in how many they get through.
    for run in ("a", "b"):
        s.sh(1, f"ivshmem-fuzz --seconds 3 --seed 5 --no-rebind --trace /tmp/trace-{run}", timeout=120)
    _, out = s.sh(1, "for f in /tmp/trace-a/*.log; do b=/tmp/trace-b/${f##*/}; "
                     "na=$(wc -l < $f); nb=$(wc -l < $b); n=$((na < nb ? na : nb)); "
                     "head -n $n $f > /tmp/x; head -n $n $b > /tmp/y; "
                     "cmp -s /tmp/x /tmp/y && echo same $n || echo differ $f; done")
    counts = [int(n) for n in re.findall(r"^same (\d+)$", out, re.M)]
    check(len(counts) == 4 and "differ" not in out and min(counts) >= 20, out)


def test_fuzzer_starts_in_both_guests_at_once(s, fuzzing):
    # The fixture started both; each is running (or, in a run of a few seconds, done already).
    for g in (1, 2):
        s.sh(g, "pidof ivshmem-fuzz >/dev/null || grep -q exit= /tmp/fuzz.out")


@pytest.mark.parametrize("g", [1, 2], ids=["guest_1", "guest_2"])
def test_fuzzer_with_rebinding_exits_0_and_prints_its_counts(s, fuzzing, g):
    out = fuzzing.output(g)
    m = re.search(r"^fuzz: seed \d+, \d+ s, (\d+) calls, (\d+) rebinds, \d+ sigbus, \d+ forks, "
                  r"ERRORS by errno: .*$", out, re.M)
    if m:
        measured(f"guest {g}: " + m.group(0))
    d = re.search(r"^fuzz: details: .*?; (repaired faults: .*)$", out, re.M)
    if d:
        measured(f"guest {g}: " + d.group(1))
    check(m and "exit=0" in out, out[-4000:])
    check(int(m.group(1)) > 0 and int(m.group(2)) > 0, "no calls or no rebinds:\n" + m.group(0))


def test_rmmod_works_in_both_guests_after_fuzzing(s, fuzzing):
    for g in (1, 2):
        fuzzing.output(g)
    for g in (1, 2):
        s.sh(g, "rmmod ivshmem")
        s.sh(g, "! grep -q '^ivshmem ' /proc/modules && ! ls /dev/ivshmem* 2>/dev/null")


def test_no_leaks_and_dmesg_clean_in_both_guests_after_fuzzing(s, fuzzing):
    for g in (1, 2):
        fuzzing.output(g)
    for g in (1, 2):
        s.no_leaks(g)
        s.dmesg_clean(g)
