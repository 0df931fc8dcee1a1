"""scripts/hostcpu.py on this host, no guests: make bench's report flags the figures measured while
the rest of the host took CPU, so what hostcpu.py counts as the lab and as the rest must be right.
Runs once per suite, before the kinds' scenarios (no `kind` fixture): busy loops of 2 s."""

import contextlib
import os
import subprocess
import sys
import time

import pytest

from kinds import HOST_TOOLS, ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import hostcpu  # noqa: E402

LOOP = "while :; do :; done"
SECS = 2.0
TOOL = os.path.join(HOST_TOOLS, "ivshmem-bench")


@pytest.fixture
def cpu(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    return hostcpu.HostCpu(str(run), TOOL)


def window(cpu, during=None):
    """(other, steal, the lab's CPU in cores, busiest others) over SECS, running `during` if given."""
    a = cpu.sample()
    if during:
        during()
    else:
        time.sleep(SECS)
    b = cpu.sample()
    other, steal = cpu.between(a, b)
    return other, steal, (b.lab - a.lab) / hostcpu.CLK_TCK / (b.t - a.t), cpu.busiest(a, b)


@contextlib.contextmanager
def foreign_loop(pid_file=None):
    """A busy loop that is not a descendant of this process (its shell exits: init adopts it),
    its pid written into pid_file if given; yields the pid, kills the loop at the end."""
    out = subprocess.run(["sh", "-c", f"setsid sh -c '{LOOP}' >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    pid = int(out.split()[0])
    try:
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(f"{pid}\n")
        time.sleep(0.2)
        yield pid
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def assert_the_lab(what, other, lab, busiest):
    assert lab >= 0.7, f"{what}: the lab {lab:.2f} cores"
    assert other < 0.3, f"{what} counted as other: {other:.2f} cores (busiest {busiest})"


def test_a_busy_process_outside_the_lab_is_other(cpu):
    with foreign_loop() as pid:
        other, _, lab, busiest = window(cpu)
    assert other >= 0.7, f"a busy loop outside the lab: other {other:.2f} cores (busiest {busiest})"
    assert lab < 0.3, f"the lab took {lab:.2f} cores while it slept"
    assert busiest and busiest[0].startswith(f"sh[{pid}] "), busiest


def test_a_busy_child_is_the_lab(cpu):
    child = subprocess.Popen(["sh", "-c", LOOP])
    try:
        time.sleep(0.2)
        other, _, lab, busiest = window(cpu)
    finally:
        child.kill()
        child.wait()
    assert_the_lab("a busy child", other, lab, busiest)


def test_a_daemon_named_by_a_pid_file_is_the_lab(cpu):
    with foreign_loop(os.path.join(cpu.run_dir, "guest1.pid")):
        other, _, lab, busiest = window(cpu)
    assert_the_lab("a daemon of the run directory", other, lab, busiest)


def test_a_grandchild_reaped_in_the_window_is_the_lab(cpu):
    # The loop's CPU time moves into its parent's reaped-children count when it exits.
    def run():
        subprocess.run(["sh", "-c", f"timeout {SECS} sh -c '{LOOP}'; true"], check=True)
    other, _, lab, busiest = window(cpu, run)
    assert_the_lab("a grandchild that ran and was reaped", other, lab, busiest)


@pytest.mark.skipif(os.cpu_count() != 2, reason="the placement probe runs on 2-CPU hosts only")
def test_placement_probe_measures_a_round_trip(cpu):
    if not os.path.exists(TOOL):
        subprocess.run(["make", "-C", ROOT, "tools"], check=True, capture_output=True)
    rtt = cpu.placement()
    # Two pinned processes, one cache line: well under a microsecond on hardware or a VM host,
    # a few µs at most on a loaded one.
    assert 0.01 <= rtt <= 20, f"CPU 0 <-> 1 round trip {rtt} µs"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ivshmem-rs-placement-{os.getpid()}")]
