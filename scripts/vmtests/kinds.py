"""The kinds of guest kernel the VM suite runs on, and what each needs.

A kind is one cache entry of scripts/setup.sh (flavour, series, architecture): the environment
that selects its kernel (scripts/config.sh), the module and its fault-injection build (Makefile),
the make targets that build them and the guests' tools (after `make all`, which every kind
needs: the host's tools and the server), and the scenarios (test files) it runs.
"""

import os
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The host's tools (x86-64); the guests' are the kind's.
HOST_TOOLS = os.path.join(ROOT, "userspace/target/x86_64-unknown-linux-gnu/release")

# Every scenario, in the order a kind runs them (test_<name>.py).
SCENARIOS = ["main", "high", "q35", "scale", "doorbell", "hugetlb", "channel", "isolated", "fuzz", "install"]
# The check tier (make check): the scenarios that exercise every path of the driver and the
# channels (memory, errno contract, revocation, huge entries, many devices, doorbells, channels,
# channels in the isolated topology, the fuzzer). The others add a BAR above 4 GiB with a figure
# (scale has one too), the q35 machine (root ports), another backing store and installing, none
# of which a driver change is likely to break unseen.
CHECK_SCENARIOS = ["main", "scale", "doorbell", "channel", "isolated", "fuzz"]


@dataclass
class Kind:
    name: str
    env: dict
    module: str
    race: str
    make: list
    tools: str = HOST_TOOLS
    scenarios: list = field(default_factory=lambda: list(SCENARIOS))
    # Whether the full tier moves its volumes (64 MiB transfers, 10,000 doorbell rounds, 20
    # removal cycles: helpers.full) on this kind. Only the release kind does: the other kinds
    # take the same paths through another kernel (KASAN and lockdep, another series or
    # architecture), which the check tier's volumes reach as well.
    full_volumes: bool = False
    # How long ivshmem-fuzz runs in the full tier (10 s in the check tier): longest where KASAN
    # and lockdep watch the kernel's side.
    fuzz_seconds: int = 10

    @property
    def flavour(self):
        return self.env.get("IVSHMEM_FLAVOUR", "release")

    @property
    def arch(self):
        return self.env.get("IVSHMEM_ARCH", "x86_64")

    def selecting_env(self):
        """The complete kernel selection for scripts/config.sh (unset knobs at their defaults)."""
        return {"IVSHMEM_FLAVOUR": "release", "IVSHMEM_KERNEL_SERIES": "7.3", "IVSHMEM_ARCH": "x86_64", **self.env}


def _build(path):
    return os.path.join(ROOT, path)


KINDS = {
    k.name: k for k in [
        Kind("release", {"IVSHMEM_FLAVOUR": "release"}, _build("ivshmem.ko"), _build(".race-build/ivshmem.ko"),
             ["module-race"], full_volumes=True, fuzz_seconds=20),
        # KASAN, lockdep, atomic-sleep and list checks, kmemleak: the scenarios that take every
        # path of the driver and the channels (the check tier's), fuzzing longest; figures are
        # skipped. Left out: high (its kernel paths, a BAR above 4 GiB mapped with huge entries,
        # are scale's 4 GiB device), hugetlb (another backing store on the host: the guest's
        # paths are main's) and install (the flavour adds nothing to installing).
        Kind("debug", {"IVSHMEM_FLAVOUR": "debug"}, _build(".debug-build/ivshmem.ko"),
             _build(".debug-race-build/ivshmem.ko"), ["module-debug"],
             scenarios=list(CHECK_SCENARIOS), fuzz_seconds=30),
        # Debian's other Rust-capable series: the scenarios that exercise every part of the
        # driver (memory, errno contract, revocation, doorbells, channels, fuzzer); the rest tests
        # what the 7.3 runs already cover and the kernel series does not change.
        Kind("release-7.2", {"IVSHMEM_FLAVOUR": "release", "IVSHMEM_KERNEL_SERIES": "7.2"},
             _build(".k72-build/ivshmem.ko"), _build(".k72-race-build/ivshmem.ko"), ["module-7.2"],
             scenarios=list(CHECK_SCENARIOS)),
        # arm64 guests (qemu-system-aarch64 -M virt, TCG): the core (two guests and the host
        # byte-exact, the errno contract, revocation, doorbells across guests, channels), with
        # the module, its race build and the tools cross-built.
        Kind("arm64", {"IVSHMEM_FLAVOUR": "release", "IVSHMEM_ARCH": "arm64"}, _build(".arm64-build/ivshmem.ko"),
             _build(".arm64-race-build/ivshmem.ko"), ["arm64"],
             tools=os.path.join(ROOT, "userspace/target/aarch64-unknown-linux-gnu/release"),
             scenarios=["main", "doorbell", "channel"]),
    ]
}
# What --kind all runs, in order (make test): the debug kind second, so that the kernels of the
# last two, which a cold make test builds in the background meanwhile, are ready when they come.
ALL_KINDS = ["release", "debug", "release-7.2", "arm64"]
