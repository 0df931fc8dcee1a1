"""The host's CPUs while something is measured (make bench): the time they gave to anything
outside the lab, and how far apart they are.

Under TCG every guest instruction is host CPU work, and the lab's guests share the host with
whatever else runs there. What needs both guests at once suffers: TCP needs both guests' vCPU
threads and both QEMU main loops in turn, a streaming channel both vCPUs, so every hand-over
waits for a core. On a 2-core host one busy process took the lab's TCP from 54 to 23 MB/s and
channel streaming from 3,639 to 1,305 MB/s (1 MiB messages, medians of 4 rounds in 2 boots),
while a guest's memcpy lost 2% (2026-12-07). So each measurement records what the rest of the
host took meanwhile:

- other: CPU time of processes outside the lab, in cores (1.0: one core busy throughout).
  The lab is this process and its descendants, and the processes named by the pid files of the
  run directory (the guests' QEMUs and ivshmem-server, which daemonize).
- steal: time the hypervisor gave to other virtual machines, where the host is one itself.

Kernel threads count as other: they are small beside a busy process.

Where the host is itself a VM, its hypervisor places the host's CPUs near each other (sharing a
cache) or far apart, and moves them while the lab runs. On a 2-core host a bare spin ping-pong
between its two CPUs took 0.11-0.14 µs near and 0.48-0.61 µs far, and the guests' figures
followed: their bare ping-pong 0.14-0.15 vs 0.53 µs, channel streaming of 1 MiB 3,560-4,600 vs
1,390-2,180 MB/s (30 rounds in 3 boots, 2026-12-07). So on a 2-CPU host each measurement also records that
round trip just before and after it (placement).
"""

import dataclasses
import os
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _procs():
    """pid -> (ppid, comm, start time, own CPU ticks, reaped children's CPU ticks) of every
    process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: the fields after it follow the last ')'.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()
        # rest[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, start 22.
        out[int(name)] = (int(rest[1]), comm, int(rest[19]), int(rest[11]) + int(rest[12]),
                          int(rest[13]) + int(rest[14]))
    return out


@dataclasses.dataclass
class Sample:
    """One look at the host (HostCpu.sample)."""

    t: float  # monotonic seconds
    busy: int  # the host's busy ticks, all CPUs
    steal: int  # ticks the hypervisor gave to other VMs
    lab: int  # the lab's ticks, its reaped children's included
    procs: dict  # _procs()
    lab_pids: set


class HostCpu:
    """The host's CPUs as seen from the lab of one run directory (the module's doc)."""

    def __init__(self, run_dir, bench_exe=None):
        """run_dir: the lab's pid files; bench_exe: ivshmem-bench for the placement probe."""
        self.run_dir = run_dir
        self.bench_exe = bench_exe

    def lab_roots(self):
        """This process and the daemons of the run directory's pid files."""
        roots = {os.getpid()}
        try:
            names = os.listdir(self.run_dir)
        except OSError:
            names = []
        for name in names:
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(self.run_dir, name)) as f:
                        roots.add(int(f.read().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
        return roots

    def sample(self):
        t = time.monotonic()
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user already).
        busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6]
        steal = cpu[7] if len(cpu) > 7 else 0
        procs = _procs()
        children = {}
        for pid, (ppid, *_) in procs.items():
            children.setdefault(ppid, []).append(pid)
        lab_pids, todo = set(), [p for p in self.lab_roots() if p in procs]
        while todo:
            pid = todo.pop()
            if pid not in lab_pids:
                lab_pids.add(pid)
                todo += children.get(pid, [])
        # A lab process's reaped children were lab processes too.
        lab = sum(procs[p][3] + procs[p][4] for p in lab_pids)
        return Sample(t, busy, steal, lab, procs, lab_pids)

    @staticmethod
    def between(a, b):
        """(other, steal) in cores from sample a to sample b."""
        secs = max(b.t - a.t, 1e-3)
        other = max(0, (b.busy - a.busy) - (b.lab - a.lab)) / CLK_TCK / secs
        return other, max(0, b.steal - a.steal) / CLK_TCK / secs

    @staticmethod
    def busiest(a, b, n=3):
        """The n processes outside the lab that took the most CPU from a to b: 'comm[pid] 0.95'."""
        secs = max(b.t - a.t, 1e-3)
        used = []
        for pid, (_, comm, start, ticks, _) in b.procs.items():
            if pid in b.lab_pids or pid in a.lab_pids:
                continue
            before = a.procs.get(pid)
            # A kernel worker's comm names its current work: the start time tells a reused pid.
            delta = ticks - (before[3] if before and before[2] == start else 0)
            if delta > 0:
                used.append((delta / CLK_TCK / secs, f"{comm}[{pid}]"))
        return [f"{name} {cores:.2f}" for cores, name in sorted(used, reverse=True)[:n]]

    def wait_quiet(self, limit, window=2.0, quiet=0.2):
        """Waits up to `limit` seconds for a `window` in which the rest of the host takes less
        than `quiet` cores (other + steal); returns (seconds waited, other, steal) of the last
        window."""
        start = time.monotonic()
        while True:
            a = self.sample()
            time.sleep(window)
            b = self.sample()
            other, steal = self.between(a, b)
            waited = time.monotonic() - start
            if other + steal < quiet or waited >= limit:
                return waited, other, steal
            print(f"    waiting for a quiet host ({waited:.0f} of {limit:.0f} s): other processes "
                  f"{other:.2f} cores ({', '.join(self.busiest(a, b)) or 'kernel'}), steal {steal:.2f}", flush=True)

    def placement(self):
        """The host's CPU 0 <-> CPU 1 round trip now, in µs: the median of 20,000 rounds of a bare
        spin ping-pong between two processes pinned to them (`ivshmem-bench rtt --bare` on a file
        in /dev/shm, a few milliseconds); None but on a 2-CPU host, where the guests' two vCPU
        threads are on those two."""
        if self.bench_exe is None or os.cpu_count() != 2:
            return None
        path = f"/dev/shm/ivshmem-rs-placement-{os.getpid()}"
        with open(path, "wb") as f:
            f.truncate(8 << 20)
        try:
            cmd = [self.bench_exe, "rtt", "-d", path, "--wait", "spin", "--bare", "--channel", "placement"]
            lis = subprocess.Popen(["taskset", "-c", "1"] + cmd[:2] + ["--listen"] + cmd[2:],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out = subprocess.run(["taskset", "-c", "0"] + cmd + ["--rounds", "20000"], capture_output=True,
                                     text=True, timeout=60).stdout
                lis.wait(timeout=60)
            finally:
                if lis.poll() is None:
                    lis.kill()
                    lis.wait()
        finally:
            os.unlink(path)
        for ln in out.splitlines():
            if " transport=bare " in ln:
                return float(ln.split("p50_us=", 1)[1].split()[0])
        raise RuntimeError(f"placement probe: no bare round trip in:\n{out}")
