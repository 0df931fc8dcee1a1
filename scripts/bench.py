#!/usr/bin/env python3
"""`make bench`: channels against TCP between the same two lab guests, and a report.

Boots two guests on the release kernel with ivshmem-doorbell (our ivshmem-server) and a
virtio-net link (IVSHMEM_NET=1), then measures with ivshmem-bench, guest 1 driving and guest 2
listening: each guest's memcpy bandwidth; streaming throughput per message size over a channel
(copying and zero-copy) and over TCP; 64-byte round trips over a channel (spin, doorbell) and
over TCP; and pingpong's bare spin round trip with and without the CPU pause hint. Then the
cost of mapping (issue 10): one guest with an extra ivshmem-plain of 4 GiB, `ivshmem-bench map`
through the driver (/dev/ivshmem1) and through sysfs resource2 with the driver unbound (the old,
populated-at-mmap path). Writes userspace/bench/README.md (tables), throughput.svg, rtt.svg,
map.svg and results.txt (the raw lines). Then the isolated topology (issue 19): two guests in
IVSHMEM_TOPOLOGY=isolated with a shared 64 MiB plain device beside, streaming and 64-byte round
trips between them through a pair (each guest's own device and its peer's, read-only) and through
the shared device, alternately in one boot. Last the host part (issue 21), the stand-in for KVM
guests: two processes on this host on one file in /dev/shm with the same tools, channel and bare
round trips and streaming, TCP over loopback, a UNIX socket and named pipes, and callgrind's count
of instructions per 64-byte send + recv and per KiB streamed. Needs the module and tools built
(make all) and matplotlib (the test environment's Python: make bench). Run dir: $IVSHMEM_RUN-bench.

Each part first waits (up to $IVSHMEM_BENCH_QUIET_WAIT seconds, 120 by default) for the rest of
the host to go quiet, and every result line carries what the rest of the host took while it was
measured (other_cpu, steal_cpu: scripts/hostcpu.py) and, on a 2-CPU host, the round trip
between its two CPUs before and after (xcpu0_us, xcpu1_us: near or far apart); the report flags
figures taken on a busy host or far apart, and checks the guests' clocks against the host's over
the main part (guest_clock).

    scripts/bench.py [--seconds S] [--out DIR]
    scripts/bench.py map [--big SIZE] [--rounds N] [--out DIR]   only the mapping cost: its lines
                                      in DIR/results.txt are replaced, the report rewritten
    scripts/bench.py isolated [--seconds S] [--out DIR]   only the isolated topology: its lines
                                      in DIR/results.txt are replaced, the report rewritten
    scripts/bench.py host [--seconds S] [--out DIR]   only the host part (two processes on one
                                      file): its lines replaced likewise
    scripts/bench.py --report-only RESULTS.txt [--out DIR]   rewrite the report from raw lines
"""

import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostcpu  # noqa: E402
import lab  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "userspace/target/x86_64-unknown-linux-gnu/release")
BENCH_EXE = os.path.join(TOOLS, "ivshmem-bench")
RUN = os.environ.get("IVSHMEM_RUN", "/tmp/ivshmem-rs-run") + "-bench"
SHM = os.environ.get("IVSHMEM_SHM_PATH", "/dev/shm/ivshmem-rs") + "-bench"
TCP = "10.0.7.2"
# How long a section waits for the rest of the host to go quiet before measuring anyway.
QUIET_WAIT = float(os.environ.get("IVSHMEM_BENCH_QUIET_WAIT", "120"))
# Beyond this share of a core taken by the rest of the host, the report flags a measurement, if
# that makes more than BUSY_SECS of CPU: the kernel counts CPU time in ticks (10 ms), so in a
# window of 0.1 s a tick or two of difference between the host's count and the lab's is noise.
BUSY = 0.1
BUSY_SECS = 0.05
SIZES = [64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]


def env(**kw):
    return dict(os.environ, IVSHMEM_RUN=RUN, IVSHMEM_SHM_PATH=SHM, IVSHMEM_SHM_SIZE="64M", IVSHMEM_GUESTS="2",
                IVSHMEM_MODE="doorbell", IVSHMEM_NET="1", IVSHMEM_FLAVOUR="release", IVSHMEM_ONLY="",
                IVSHMEM_EXTRA_SHM="", **kw)


def fields(line):
    """{"key": value} of a `word key=value ...` line; numbers as floats."""
    out = {}
    for k, v in re.findall(r"(\w+)=(\S+)", line):
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def watch(cpu):
    """The host as a measurement starts: a look at its CPU use and its CPUs' placement."""
    return cpu.sample(), cpu.placement()


def cpu_tag(cpu, before):
    """The fields that say what the rest of the host took since `before` (watch), over how many
    seconds, and the host's CPU 0 <-> 1 round trip before and after (hostcpu.py)."""
    sample, near = before
    after = cpu.sample()
    other, steal = cpu.between(sample, after)
    tag = f" other_cpu={other:.2f} steal_cpu={steal:.2f} cpu_secs={after.t - sample.t:.2f}"
    if near is not None:
        tag += f" xcpu0_us={near:.3f} xcpu1_us={cpu.placement():.3f}"
    return tag


def settle(cpu):
    """Waits for a quiet host (hostcpu.HostCpu.wait_quiet); returns how it went, for a meta line."""
    waited, other, steal = cpu.wait_quiet(QUIET_WAIT)
    return f"waited {waited:.0f} s, then other {other:.2f} steal {steal:.2f}"


class Bench:
    def __init__(self, seconds):
        self.seconds = seconds
        self.guests = []
        self.raw = []
        self.cpu = hostcpu.HostCpu(RUN, BENCH_EXE)

    def sh(self, g, cmd, timeout=600):
        status, out = self.guests[g - 1].run(cmd, timeout)
        if status != 0:
            raise RuntimeError(f"guest {g}: '{cmd}' exited {status}:\n{out}")
        return out

    def pair(self, listen, drive, timeout=900, tag=""):
        """Runs `listen` in guest 2 in the background and `drive` in guest 1; keeps the driver's
        result lines (with `tag` appended) and returns them (the listener's must end with
        exit=0), with the host's CPUs meanwhile (cpu_tag)."""
        before = watch(self.cpu)
        self.sh(2, f"rm -f /tmp/l.out; ({listen} > /tmp/l.out 2>&1; echo exit=$? >> /tmp/l.out) &")
        out = self.sh(1, drive, timeout)
        for _ in range(600):
            lout = self.sh(2, "cat /tmp/l.out")
            if "exit=" in lout:
                break
            self.sh(2, "sleep 0.1")
        if "exit=0" not in lout:
            raise RuntimeError(f"guest 2: '{listen}' failed:\n{lout}")
        tag += cpu_tag(self.cpu, before)
        lines = [ln + tag for ln in out.splitlines() if re.match(r"^(stream|rtt|memcpy) ", ln)]
        self.raw += lines
        for ln in lines:
            print("   ", ln, flush=True)
        return lines

    def boot(self):
        self.stop()
        os.makedirs(RUN, exist_ok=True)
        if os.path.exists(SHM):
            os.unlink(SHM)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/initramfs.sh"), os.path.join(RUN, "initramfs.cpio.gz"),
                        os.path.join(ROOT, "ivshmem.ko"), TOOLS], check=True)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/start.sh"), os.path.join(RUN, "initramfs.cpio.gz")],
                       env=env(), check=True)
        self.guests = [lab.Guest(i, RUN) for i in (1, 2)]
        for g in self.guests:
            g.wait_ready(300)
        for g in (1, 2):
            self.sh(g, "insmod /ivshmem.ko")
            info = self.sh(g, "ivshmem info -d 0")
            if "mode doorbell" not in info:
                raise RuntimeError(f"guest {g}: no doorbell device:\n{info}")
        # The link: one ping proves both addresses and the path.
        self.sh(1, f"ping -c 3 -W 5 {TCP}", timeout=60)

    def stop(self):
        for g in self.guests:
            g.close()
        subprocess.run(["bash", os.path.join(ROOT, "scripts/stop.sh")], env=env(), check=False)

    def clocks(self):
        """lab.guest_clock of guests 1 and 2: over a run, each guest's seconds per host second.
        Every figure is timed by a guest's clock: one that ran fast would make all of them slow."""
        return [lab.guest_clock(lambda cmd, g=g: self.sh(g, cmd)) for g in (1, 2)]

    def run(self):
        secs = self.seconds
        print("==> memcpy in each guest", flush=True)
        for g in (1, 2):
            before = watch(self.cpu)
            out = self.sh(g, f"ivshmem-bench memcpy --seconds {secs / 2}")
            tag = cpu_tag(self.cpu, before)
            self.raw += [f"{ln} guest={g}{tag}" for ln in out.splitlines() if ln.startswith("memcpy ")]
        print("==> the cost of the CPU pause hint", flush=True)
        before = watch(self.cpu)
        out = self.sh(1, "ivshmem-bench pause --rounds 2000000")
        tag = cpu_tag(self.cpu, before)
        self.raw += [ln + tag for ln in out.splitlines() if ln.startswith("pause ")]
        print("==> streaming: channel (copy, zero-copy), then TCP, a size at a time", flush=True)
        # A size at a time, so that the host's placement is probed around every few seconds.
        for i, size in enumerate(SIZES):
            self.pair(f"ivshmem-bench stream --listen --tcp {TCP}:{5010 + i}",
                      f"ivshmem-bench stream --seconds {secs} --tcp {TCP}:{5010 + i} --sizes {size}")
        print("==> 64-byte round trips", flush=True)
        self.pair("ivshmem-bench rtt --listen --wait spin", "ivshmem-bench rtt --wait spin --rounds 20000")
        self.pair("ivshmem-bench rtt --listen --wait spin --pause on",
                  "ivshmem-bench rtt --wait spin --pause on --rounds 20000")
        self.pair("ivshmem-bench rtt --listen --wait doorbell", "ivshmem-bench rtt --wait doorbell --rounds 5000")
        self.pair(f"ivshmem-bench rtt --listen --tcp-only --tcp {TCP}:5002",
                  f"ivshmem-bench rtt --tcp-only --tcp {TCP}:5002 --rounds 5000")

    def pingpong(self):
        """pingpong's spin round trip with and without the pause hint; it prints prose."""
        print("==> pingpong spin, pause hint off and on", flush=True)
        res = {}
        for pause in (False, True):
            flag = " --pause" if pause else ""
            before = watch(self.cpu)
            self.sh(2, f"rm -f /tmp/p.out; (pingpong --role pong --mode spin --rounds 20000 --offset 32M{flag}"
                       " > /tmp/p.out 2>&1; echo exit=$? >> /tmp/p.out) &")
            out = self.sh(1, f"pingpong --role ping --mode spin --rounds 20000 --offset 32M{flag}")
            m = re.search(r"min ([\d.]+) median ([\d.]+) p99 ([\d.]+) max ([\d.]+)", out)
            if not m:
                raise RuntimeError(f"pingpong output: {out}")
            for _ in range(100):
                if "exit=" in self.sh(2, "cat /tmp/p.out"):
                    break
                self.sh(2, "sleep 0.1")
            line = (f"pingpong pause={'on' if pause else 'off'} min_us={m.group(1)} p50_us={m.group(2)} "
                    f"p99_us={m.group(3)} max_us={m.group(4)}{cpu_tag(self.cpu, before)}")
            self.raw.append(line)
            print("   ", line, flush=True)
            res[pause] = line
        return res


class MapLab:
    """The cost of mapping: one guest, the 64 MiB device and a `big` one (BAR2 above 4 GiB)."""

    def __init__(self, big, rounds):
        self.big = big
        self.rounds = rounds
        self.guest = None
        self.raw = []
        self.meta = {}

    def sh(self, cmd, timeout=900):
        status, out = self.guest.run(cmd, timeout)
        if status != 0:
            raise RuntimeError(f"guest 1: '{cmd}' exited {status}:\n{out}")
        return out

    def env(self):
        e = env()
        e.update(IVSHMEM_GUESTS="1", IVSHMEM_MODE="plain", IVSHMEM_NET="0", IVSHMEM_EXTRA_SHM=self.big)
        return e

    def boot(self):
        self.stop()
        os.makedirs(RUN, exist_ok=True)
        for path in (SHM, SHM + ".1"):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/initramfs.sh"), os.path.join(RUN, "initramfs.cpio.gz"),
                        os.path.join(ROOT, "ivshmem.ko"), TOOLS], check=True)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/start.sh"), os.path.join(RUN, "initramfs.cpio.gz")],
                       env=self.env(), check=True)
        self.guest = lab.Guest(1, RUN)
        self.guest.wait_ready(300)
        self.sh("insmod /ivshmem.ko")

    def stop(self):
        if self.guest:
            self.guest.close()
            self.guest = None
        subprocess.run(["bash", os.path.join(ROOT, "scripts/stop.sh")], env=self.env(), check=False)
        for path in (SHM, SHM + ".1"):
            if os.path.exists(path):
                os.unlink(path)

    def measure(self, path, what):
        sizes = ",".join(dict.fromkeys(["64M", "1G", "4G", self.big]))
        out = self.sh(f"ivshmem-bench map -d {path} --sizes {sizes} --rounds {self.rounds}")
        lines = [f"{ln} via={what}" for ln in out.splitlines() if re.match(r"^map(ref)? ", ln)]
        if not lines:
            raise RuntimeError(f"no map lines from {path}:\n{out}")
        for ln in lines:
            print("   ", ln, flush=True)
        self.raw += lines

    def run(self):
        info = self.sh("ivshmem info -d 1")
        bdf = re.search(r"^pci (\S+)", info, re.M).group(1)
        start = int(self.sh(f"cat /sys/bus/pci/devices/{bdf}/resource").splitlines()[2].split()[0], 16)
        self.meta = {"map_date": datetime.date.today().isoformat(), "map_kernel": self.sh("uname -r").strip(),
                     "map_device": f"{bdf} {self.big} BAR2 at {start:#x}", "map_rounds": self.rounds,
                     "map_load_before": "%.1f" % os.getloadavg()[0]}
        print(f"==> mapping cost: {self.big} device {bdf}, BAR2 at {start:#x}", flush=True)
        # Untimed: QEMU's first touch of each page of the backing file costs the host a fault.
        self.sh(f"ivshmem-bench map -d 1 --sizes {self.big}")
        self.measure("/dev/ivshmem1", "driver")
        self.sh(f"echo {bdf} > /sys/bus/pci/drivers/ivshmem/unbind")
        try:
            self.measure(f"/sys/bus/pci/devices/{bdf}/resource2", "sysfs")
        finally:
            self.sh(f"echo {bdf} > /sys/bus/pci/drivers/ivshmem/bind; test -e /dev/ivshmem1")
        bad = [ln for ln in self.sh("dmesg").splitlines()
               if re.search(r"WARNING:|BUG:|Oops|Kernel panic|Call Trace|general protection", ln)]
        if bad:
            raise RuntimeError("guest dmesg:\n" + "\n".join(bad[:20]))
        self.meta["map_load_after"] = "%.1f" % os.getloadavg()[0]
        return [f"meta {k}={v}" for k, v in self.meta.items()] + self.raw


class IsolatedLab(Bench):
    """The isolated topology beside one device: /dev/ivshmem0 the doorbell (1 MiB), 1 and 2 the
    guests' own devices (each read-only in the other guest), 3 a shared plain device."""

    ROUNDS = 5
    PAIR = {1: "-d 1 --peer-device 2 --doorbell 0", 2: "-d 2 --peer-device 1 --doorbell 0"}

    def env(self):
        e = env(IVSHMEM_TOPOLOGY="isolated")
        e.update(IVSHMEM_NET="0", IVSHMEM_EXTRA_SHM="64M")
        return e

    def boot(self):
        self.stop()
        os.makedirs(RUN, exist_ok=True)
        lab.remove_backing(SHM)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/initramfs.sh"), os.path.join(RUN, "initramfs.cpio.gz"),
                        os.path.join(ROOT, "ivshmem.ko"), TOOLS], check=True)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/start.sh"), os.path.join(RUN, "initramfs.cpio.gz")],
                       env=self.env(), check=True)
        self.guests = [lab.Guest(i, RUN) for i in (1, 2)]
        for g in self.guests:
            g.wait_ready(300)
        for g in (1, 2):
            self.sh(g, "insmod /ivshmem.ko")

    def stop(self):
        for g in self.guests:
            g.close()
        self.guests = []
        subprocess.run(["bash", os.path.join(ROOT, "scripts/stop.sh")], env=self.env(), check=False)
        lab.remove_backing(SHM)

    def run(self):
        secs = self.seconds
        print("==> isolated topology beside one device (spin; rounds alternate)", flush=True)
        quiet = f"meta iso_quiet={settle(self.cpu)}"
        for r in range(self.ROUNDS):
            for topology, dev in (("shared", {1: "-d 3", 2: "-d 3"}), ("isolated", self.PAIR)):
                tag = f" topology={topology} round={r}"
                self.pair(f"ivshmem-bench stream --listen {dev[2]} --wait spin --channel s{r}",
                          f"ivshmem-bench stream {dev[1]} --wait spin --channel s{r} --seconds {secs} "
                          "--modes copy --sizes 4K,64K,1M", tag=tag)
                self.pair(f"ivshmem-bench rtt --listen {dev[2]} --wait spin --channel r{r}",
                          f"ivshmem-bench rtt {dev[1]} --wait spin --channel r{r} --rounds 20000", tag=tag)
        self.pair(f"ivshmem-bench rtt --listen {self.PAIR[2]} --wait doorbell --channel d",
                  f"ivshmem-bench rtt {self.PAIR[1]} --wait doorbell --channel d --rounds 5000",
                  tag=" topology=isolated round=0")
        return [f"meta iso_date={datetime.date.today().isoformat()}", quiet] + self.raw


def isolated_lab(seconds):
    """Boots the isolated lab, measures, stops; returns its raw lines."""
    b = IsolatedLab(seconds)
    try:
        b.boot()
        return b.run()
    finally:
        b.stop()


def isolated_section(rows, meta):
    """The report's lines on the isolated topology, from the rows tagged with a topology."""
    rows_all = [(k, f) for k, f in rows if "topology" in f]
    rows = [f for k, f in rows_all if k in ("stream", "rtt")]
    if not rows:
        return []

    def med(kind, topology, key, size=None, rnd=None):
        vals = [f[key] for f in rows if f["topology"] == topology and key in f
                and (size is None or int(f["size"]) == size) and (kind != "rtt" or f.get("wait") == "spin")
                and (rnd is None or int(f.get("round", -1)) == rnd)]
        return statistics.median(vals) if vals else None

    out = ["", f"## The isolated topology beside one device ({meta.get('iso_date', '?')})", "",
           "Two guests in `IVSHMEM_TOPOLOGY=isolated` (doorbell mode) with a 64 MiB plain device both write "
           "beside: the same channels through a pair (`-d OWN --peer-device PEER`: each guest writes only its own "
           "device and maps the other's read-only, QEMU `readonly=on`) and through the shared device, "
           f"alternately, {IsolatedLab.ROUNDS} rounds in one boot, spinning; medians, and the ratio of each "
           "round. Under TCG on a shared host the rounds spread widely: a ratio means something only where the "
           "rounds agree. " + host_cpu_note(rows_all, meta.get("iso_quiet")) + placement_note(rows_all), "",
           "| figure | one device | isolated | isolated / one device | per round |",
           "|---|---:|---:|---:|---|"]

    def spread(kind, key, size=None):
        """The ratios isolated / one device of each round (measured back to back)."""
        def one(topology, r):
            return med(kind, topology, key, size, r)
        ratios = [one("isolated", r) / one("shared", r) for r in range(IsolatedLab.ROUNDS)
                  if one("isolated", r) and one("shared", r)]
        return f"{min(ratios):.2f} to {max(ratios):.2f}" if ratios else "–"
    for size in (4 << 10, 64 << 10, 1 << 20):
        a, b = med("stream", "shared", "mbps", size), med("stream", "isolated", "mbps", size)
        if a and b:
            out.append(f"| streaming {size_name(size)} messages, MB/s | {a:,.1f} | {b:,.1f} | {b / a:.2f} "
                       f"| {spread('stream', 'mbps', size)} |")
    a, b = med("rtt", "shared", "p50_us"), med("rtt", "isolated", "p50_us")
    if a and b:
        out.append(f"| 64-byte round trip p50, µs | {a:.2f} | {b:.2f} | {b / a:.2f} | {spread('rtt', 'p50_us')} |")
    d = [f for f in rows if f.get("wait") == "doorbell"]
    if d:
        out += ["", f"With the doorbell device for the wake-ups (every wait sleeps): 64-byte round trip p50 "
                f"{d[0]['p50_us']:.1f} µs, p99 {d[0]['p99_us']:.1f} µs through the pair."]
    return out


class HostBench:
    """The stand-in for KVM guests (issue 21): two processes on this host on one shared file in
    /dev/shm, running the guests' tools (statically linked, they run here too) with the host's
    real cache coherence and no emulation: channel and bare round trips and streaming, TCP over
    loopback, a UNIX socket and named pipes, alternately in rounds; and instructions per 64-byte
    send + recv and per KiB streamed, counted with callgrind (repeatable where timings are not),
    when valgrind is installed."""

    ROUNDS = 5

    def __init__(self, seconds):
        self.seconds = seconds
        self.raw = []
        self.file = SHM + "-host"
        # The two processes on two CPUs, as two guests' vCPUs would be.
        two = (os.cpu_count() or 1) >= 2
        self.cpus = (["taskset", "-c", "1"], ["taskset", "-c", "0"]) if two else ([], [])
        self.cpu = hostcpu.HostCpu(RUN, BENCH_EXE)

    def pair(self, listen, drive, tag):
        before = watch(self.cpu)
        lis = subprocess.Popen(self.cpus[0] + [BENCH_EXE] + listen, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        try:
            out = subprocess.run(self.cpus[1] + [BENCH_EXE] + drive, capture_output=True, text=True, timeout=600)
            lout, _ = lis.communicate(timeout=60)
        finally:
            if lis.poll() is None:
                lis.kill()
        if out.returncode != 0 or lis.returncode != 0:
            raise RuntimeError(f"host: ivshmem-bench {' '.join(drive)} exited {out.returncode} "
                               f"(listener {lis.returncode}):\n{out.stdout}{out.stderr}{lout}")
        tag += cpu_tag(self.cpu, before)
        lines = [ln + tag for ln in out.stdout.splitlines() if re.match(r"^(stream|rtt) ", ln)]
        self.raw += lines
        for ln in lines:
            print("   ", ln, flush=True)

    def instructions(self):
        """Instructions per 64-byte send + recv (examples/channel_instructions.rs: the difference of
        two counts cancels start-up)."""
        if shutil.which("valgrind") is None:
            print("    (no valgrind: no instruction counts)", flush=True)
            return
        subprocess.run(["cargo", "build", "--quiet", "--release", "--locked", "--example", "channel_instructions"],
                       cwd=os.path.join(ROOT, "userspace"), check=True)
        exe = os.path.join(ROOT, "userspace/target/release/examples/channel_instructions")

        def refs(n, what):
            out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", exe, str(n), what],
                                 capture_output=True, text=True, check=True).stderr
            return int(re.search(r"refs:\s+([\d,]+)", out).group(1).replace(",", ""))
        counts = [("send_recv_64", what, (refs(200_000, what) - refs(100_000, what)) / 100_000)
                  for what in ("pipe", "connection")]
        # 64 KiB per round: the difference of 2,000 rounds, per KiB.
        counts += [("per_kib", what, (refs(4_000, what) - refs(2_000, what)) / (2_000 * 64))
                   for what in ("stream", "stream-bare")]
        for what, channel, n in counts:
            line = f"instructions what={what} channel={channel} count={n:.1f} host=1"
            self.raw.append(line)
            print("   ", line, flush=True)

    def run(self):
        print("==> on the host: two processes on one file (rounds alternate)", flush=True)
        quiet = f"meta host_quiet={settle(self.cpu)}"
        lab.remove_backing(self.file)
        with open(self.file, "wb") as f:
            f.truncate(64 << 20)
        try:
            for r in range(self.ROUNDS):
                tag = f" host=1 round={r}"
                d = ["-d", self.file, "--wait", "spin"]
                self.pair(["rtt", "--listen"] + d + ["--bare", "--channel", f"r{r}"],
                          ["rtt"] + d + ["--bare", "--channel", f"r{r}", "--rounds", "100000"], tag)
                tcp = f"127.0.0.1:{5400 + 2 * r}"
                self.pair(["rtt", "--listen", "--tcp-only", "--tcp", tcp] + d,
                          ["rtt", "--tcp-only", "--tcp", tcp, "--rounds", "20000"] + d, tag)
                tcp = f"127.0.0.1:{5401 + 2 * r}"
                self.pair(["stream", "--listen", "--tcp", tcp, "--channel", f"s{r}"] + d,
                          ["stream", "--tcp", tcp, "--channel", f"s{r}", "--seconds", str(self.seconds / 2),
                           "--modes", "copy,bare", "--sizes", "64,4K,64K,1M"] + d, tag)
                # The kernel's local baselines: a UNIX socket, then named pipes.
                for kind in ("unix", "pipe"):
                    path = os.path.join(tempfile.gettempdir(), f"ivshmem-bench-host-{os.getpid()}-{r}.{kind}")
                    addr = f"{kind}:{path}"
                    self.pair(["rtt", "--listen", "--tcp-only", "--tcp", addr] + d,
                              ["rtt", "--tcp-only", "--tcp", addr, "--rounds", "20000"] + d, tag)
                    self.pair(["stream", "--listen", "--tcp-only", "--tcp", addr] + d,
                              ["stream", "--tcp-only", "--tcp", addr, "--seconds", str(self.seconds / 2),
                               "--sizes", "64,4K,64K,1M"] + d, tag)
        finally:
            lab.remove_backing(self.file)
        self.instructions()
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        return [f"meta host_date={datetime.date.today().isoformat()}", f"meta host_cpu={os.cpu_count()} × {cpu}",
                f"meta host_load={os.getloadavg()[0]:.1f}", quiet] + self.raw


def measurement_name(kind, f):
    """A result line's measurement in a few words: 'stream tcp 1 MiB', 'rtt channel spin'."""
    words = [kind, f.get("transport"), f.get("wait") if kind == "rtt" else f.get("mode"),
             size_name(int(f["size"])) if "size" in f and kind != "rtt" else None,
             f"guest {int(f['guest'])}" if "guest" in f else None,
             f"pause {f['pause']}" if kind == "pingpong" else None]
    return " ".join(str(w) for w in words if w not in (None, "-"))


def host_cpu_note(rows, quiet):
    """The report's words on what the rest of the host took while a section measured (hostcpu.py)."""
    cpu = [(k, f) for k, f in rows if "other_cpu" in f]
    if not cpu:
        return ("The rest of the host's CPU use was not recorded (results from before scripts/hostcpu.py, "
                "2026-12-07).")
    other = [f["other_cpu"] for _, f in cpu]
    steal = [f["steal_cpu"] for _, f in cpu]
    busy = [(k, f) for k, f in cpu if f["other_cpu"] + f["steal_cpu"] > BUSY
            and (f["other_cpu"] + f["steal_cpu"]) * f.get("cpu_secs", 1e9) > BUSY_SECS]
    text = (f"The rest of the host while these {len(cpu)} figures were measured (scripts/hostcpu.py): other "
            f"processes {statistics.median(other):.2f} cores in the median, {max(other):.2f} at most; steal "
            f"{max(steal):.2f} at most" + (f" (before measuring: {quiet})" if quiet else "") + ".")
    if not busy:
        return text + " Quiet throughout."
    names = [f"{measurement_name(k, f)} ({f['other_cpu'] + f['steal_cpu']:.2f})" for k, f in busy]
    return (text + f" **A busy host: more than {BUSY} of a core went elsewhere during {len(busy)} of them** ("
            + ", ".join(names[:8]) + (", …" if len(names) > 8 else "") + "): those figures are not comparable "
            "with a quiet run's: on a 2-core host one busy process took TCP between the guests from 54 to 23 MB/s "
            "and channel streaming from 3,639 to 1,305 MB/s, while a guest's memcpy lost 2% (README, the TCP "
            "baseline).")


def placement_note(rows):
    """The report's words on how far apart the host's two CPUs were while a section measured
    (hostcpu.HostCpu.placement); empty where that was not probed."""
    probed = [(k, f) for k, f in rows if "xcpu0_us" in f]
    if not probed:
        return ""
    xs = [v for _, f in probed for v in (f["xcpu0_us"], f["xcpu1_us"])]
    near = min(xs)
    text = (f" The host's CPU 0 <-> 1 round trip, probed before and after each figure (a bare spin ping-pong "
            f"on the host), was {near:.2f} to {max(xs):.2f} µs (on the 2-core AMD host of 2026-12-07: 0.11-0.14 "
            "near, 0.48-0.61 far)")
    # What one guest (or process) does alone does not cross between the CPUs.
    far = [(k, f) for k, f in probed if max(f["xcpu0_us"], f["xcpu1_us"]) > 2 * near
           and k not in ("memcpy", "pause")]
    if not far:
        return text + ": one placement for everything that crosses between them."
    # One pair measures each mode and transport of a size: one name for them.
    # Sections measured in rounds: which rounds (their ratios are the suspects).
    names = list(dict.fromkeys(
        f"round {int(f['round'])}" if "round" in f
        else f"{k} {size_name(int(f['size']))}" if k == "stream" else measurement_name(k, f) for k, f in far))
    if all(n.startswith("round ") for n in names):
        names.sort(key=lambda n: int(n.split()[1]))
    return (text + f". **The CPUs were far apart (over twice the nearest) around {len(far)} figures** ("
            + ", ".join(names[:8]) + (", …" if len(names) > 8 else "") + "): the hypervisor under this host "
            "moved them, and what crosses between them slows with it (between the lab's guests streaming 2-3×, "
            "their bare ping-pong 3.5-4×); compare those figures with each other, not with the rest.")


def guest_clock_note(text):
    """The report's words on the guests' clocks against the host's (Bench.clocks)."""
    if not text:
        return "The guests' clocks were not checked against the host's (results from before 2026-12-07's sixth run)."
    rates = [float(v) for v in text.split()]
    note = (f"The guests' clocks, which time every figure, ran {' and '.join(f'{v:.3f}' for v in rates)} seconds "
            "per host second over the run (uptime against the host's monotonic clock)")
    off = max(abs(v - 1) for v in rates)
    if off > 0.02:
        return note + (f": **off by {off:.0%}: every figure timed in the guests is off by as much** (the guest "
                       "kernel's TSC calibration: `dmesg | grep -i tsc` in a guest).")
    return note + "."


def host_section(rows, meta):
    """The report's lines on the host part, from the rows tagged host=1."""
    rows = [(k, f) for k, f in rows if "host" in f]
    if not rows:
        return []

    def vals(kind, transport, key, size=None, rnd=None):
        return [f[key] for k, f in rows if k == kind and f.get("transport") == transport and key in f
                and (size is None or int(f["size"]) == size) and (rnd is None or int(f["round"]) == rnd)]

    def med(kind, transport, key, size=None):
        v = vals(kind, transport, key, size)
        return statistics.median(v) if v else None

    def ratios(kind, a, b, key, size=None):
        out = []
        for r in range(HostBench.ROUNDS):
            x, y = vals(kind, a, key, size, r), vals(kind, b, key, size, r)
            if x and y and y[0]:
                out.append(x[0] / y[0])
        return out

    out = ["", f"## On the host: two processes on one file, the stand-in for KVM guests ({meta.get('host_date', '?')})",
           "",
           f"Host: {meta.get('host_cpu', '?')}, load average {meta.get('host_load', '?')}. The same tools as in the "
           "guests, two processes on one 64 MiB file in /dev/shm (each pinned to a CPU of its own), spinning: real "
           "cache coherence and no emulation, which is what KVM guests on one host share. "
           f"{HostBench.ROUNDS} rounds, alternating; medians, with the range of the per-round ratios (each ratio "
           "from one round, measured back to back). The bare references are the physical limit of this protocol "
           "shape: a one-word spin ping-pong (round trip) and a ring with two indices and nothing else (streaming, "
           "the same copies). " + host_cpu_note(rows, meta.get("host_quiet")) + placement_note(rows), "",
           "| figure | channel | bare | channel / bare | per round | TCP (loopback) | UNIX socket | pipe |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]

    def cell(v, fmt):
        return format(v, fmt) if v else "–"
    a, b = med("rtt", "channel", "p50_us"), med("rtt", "bare", "p50_us")
    if a and b:
        rs = ratios("rtt", "channel", "bare", "p50_us")
        spread = f"{min(rs):.2f} to {max(rs):.2f}" if rs else "–"
        out.append(f"| 64-byte round trip p50, µs | {a:.3f} | {b:.3f} | {a / b:.2f} | {spread} | "
                   f"{cell(med('rtt', 'tcp', 'p50_us'), '.1f')} | {cell(med('rtt', 'unix', 'p50_us'), '.1f')} | "
                   f"{cell(med('rtt', 'pipe', 'p50_us'), '.1f')} |")
    for size in (64, 4 << 10, 64 << 10, 1 << 20):
        a, b = med("stream", "channel", "mbps", size), med("stream", "bare", "mbps", size)
        if a and b:
            rs = ratios("stream", "channel", "bare", "mbps", size)
            spread = f"{min(rs):.2f} to {max(rs):.2f}" if rs else "–"
            out.append(f"| streaming {size_name(size)} messages, MB/s | {a:,.0f} | {b:,.0f} | {a / b:.2f} | {spread} | "
                       f"{cell(med('stream', 'tcp', 'mbps', size), ',.0f')} | "
                       f"{cell(med('stream', 'unix', 'mbps', size), ',.0f')} | "
                       f"{cell(med('stream', 'pipe', 'mbps', size), ',.0f')} |")
    ins = [f for k, f in rows if k == "instructions"]
    msg = [f for f in ins if f.get("what", "send_recv_64") == "send_recv_64"]
    kib = {f["channel"]: f["count"] for f in ins if f.get("what") == "per_kib"}
    if msg:
        names = {"pipe": "named channel", "connection": "connection"}
        per_msg = ", ".join(f"{f['count']:.0f} ({names.get(f['channel'], f['channel'])})" for f in msg)
        out += ["", "Instructions counted with callgrind (`examples/channel_instructions.rs`, one thread, both ends "
                f"spinning): per 64-byte send + recv {per_msg}"
                + (f"; per KiB streamed in 64 KiB writes and reads {kib['stream']:.1f}, against "
                   f"{kib['stream-bare']:.1f} for the same two copies into and out of a plain buffer: the channel "
                   f"adds {kib['stream'] - kib['stream-bare']:.1f} per KiB ({kib['stream'] / kib['stream-bare']:.3f}×; "
                   "callgrind counts every byte of glibc's `rep movsb` as an instruction, so the copies' own count "
                   "is about one per byte each)" if "stream" in kib and kib.get("stream-bare") else "") + "."]
    return out


def map_lab(big, rounds):
    """Boots the mapping lab, measures, stops; returns its raw lines (meta first)."""
    m = MapLab(big, rounds)
    try:
        m.boot()
        return m.run()
    finally:
        m.stop()


# ---- report ---------------------------------------------------------------------------------

def size_name(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}"
    return f"{n} B"


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e"]


def pyplot():
    """matplotlib's pyplot on the file-only backend, set up for reproducible SVG (no date, fixed
    ids). matplotlib comes from the test environment's venv (scripts/vmtests/requirements.txt),
    which main() switches to first (`with_matplotlib`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.hashsalt": "ivshmem-rs", "svg.fonttype": "none", "font.size": 10})
    return plt


def svg(fig):
    """The figure as SVG text, closed afterwards."""
    import io
    plt = pyplot()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


def line_chart(title, xlabel, ylabel, xs, series, xfmt):
    """A line chart, log2 x (values xs), log10 y; series: [(name, [y or None]), ...]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, vals) in enumerate(series):
        pts = [(x, y) for x, y in zip(xs, vals, strict=True) if y]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=COLORS[i % len(COLORS)], label=name,
                    linestyle="--" if name.startswith("memcpy") else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [xfmt(x) for x in xs])
    ax.minorticks_off()
    ax.grid(True, which="major", color="#ddd")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return svg(fig)


def bar_chart(title, ylabel, groups, bars):
    """A grouped bar chart, log10 y: groups = names along x; bars = [(name, [v per group])]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(bars)
    for bi, (name, vs) in enumerate(bars):
        xs = [gi + (bi - (len(bars) - 1) / 2) * width for gi, v in enumerate(vs) if v]
        ys = [v for v in vs if v]
        rects = ax.bar(xs, ys, width * 0.9, color=COLORS[bi % len(COLORS)], label=name)
        ax.bar_label(rects, labels=[f"{v:.0f}" if v >= 100 else f"{v:.3g}" for v in ys], fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(True, axis="y", which="major", color="#ddd")
    ax.set_axisbelow(True)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return svg(fig)


def map_section(rows, meta, out_dir):
    """The "Mapping cost" section of the report (markdown lines) and map.svg, from the `map` and
    `mapref` lines (median of the rounds per path and size); nothing without them."""
    runs, refs = {}, {}
    for kind, f in rows:
        if kind in ("map", "mapref"):
            (runs if kind == "map" else refs).setdefault((f["via"], int(f["size"])), []).append(f)
    if not runs:
        return []
    sizes = sorted({s for _, s in runs})
    paths = (("sysfs", "old: sysfs `resource2`"), ("driver", "new: `/dev/ivshmem1`"))

    def med(via, size, key, table=runs):
        vals = [f[key] for f in table.get((via, size), []) if key in f]
        return statistics.median(vals) if vals else None

    def anon(size, key):
        vals = [f[key] for via, _ in paths for f in refs.get((via, size), []) if key in f]
        return statistics.median(vals) if vals else None

    def num(v, digits=0):
        return "–" if v is None else f"{v:,.{digits}f}"
    with open(os.path.join(out_dir, "map.svg"), "w") as f:
        def ms(via, s, key):
            v = med(via, s, key)
            return v / 1000 if v is not None else None
        bars = [(f"{what}, {'old' if via == 'sysfs' else 'new'}", [ms(via, s, key) for s in sizes])
                for what, key in (("mmap", "mmap_us"), ("first reads", "touch_us"), ("munmap", "munmap_us"))
                for via, _ in paths]
        f.write(bar_chart("Mapping cost in a TCG guest (median)", "milliseconds (log scale)",
                          [size_name(s) for s in sizes], bars))
    md = ["", "## Mapping cost (issue 10)", "", "![map](map.svg)", "",
          f"- One guest ({meta.get('map_date', '?')}, kernel {meta.get('map_kernel', '?')}, TCG, load average "
          f"{meta.get('map_load_before', '?')} before and {meta.get('map_load_after', '?')} after) with an extra "
          f"ivshmem-plain device {meta.get('map_device', '?')}. `ivshmem-bench map` maps [0, size) of it through "
          "the library (`Device::map`: the address aligned like the offset to 1 GiB from 1 GiB up, to 2 MiB "
          "from 2 MiB up; three or four calls: reserve, map, trim the head if any and the tail), reads one word "
          "of every 4 KiB page, and unmaps; VmPTE is the growth of the process's page tables from before the "
          f"mmap to after the reads. Median of {meta.get('map_rounds', '?')} rounds per path, after one untimed "
          "round (QEMU's first touch of each page of the backing file).",
          "- Old path: sysfs `resource2` with the driver unbound, which populates every 4 KiB entry at mmap "
          "(`io_remap_pfn_range`), as the driver did before. New path: `/dev/ivshmem1` through the driver, "
          "which inserts 1 GiB and 2 MiB entries at fault time.",
          "- References, mapped and unmapped untouched in the same rounds: the device in one mmap call at the "
          "kernel's address (the driver's own cost, without the library's alignment), and anonymous "
          "`PROT_NONE` memory of the same size (the floor of any mmap in this guest). Under TCG every system "
          "call costs far more than on hardware and varies with the host's load; these rows say what part of "
          "a time is the driver's. On the new path, munmap after the reads costs far more than untouched (the "
          "one-call row), though it only clears a few huge entries: presumably the guest's TLB flush then "
          "clears QEMU's software TLB, which the reads filled.", "",
          "| mapping | path | mmap (µs) | first read of every page (ms) | munmap (µs) | VmPTE growth (kB) "
          "| address aligned to |", "|---:|---|---:|---:|---:|---:|---:|"]
    for s in sizes:
        for via, name in paths:
            if (via, s) not in runs:
                continue
            align = min(f["addr_align"] for f in runs[(via, s)])
            touch = med(via, s, "touch_us")
            md.append(f"| {size_name(s)} | {name} | {num(med(via, s, 'mmap_us'), 1)} "
                      f"| {num(touch / 1000 if touch is not None else None, 1)} | {num(med(via, s, 'munmap_us'), 1)} "
                      f"| {num(med(via, s, 'vmpte_kb'))} | {size_name(int(align))} |")
        if ("driver", s) in refs:
            md.append(f"| {size_name(s)} | new, one mmap call, untouched | "
                      f"{num(med('driver', s, 'call_mmap_us', refs), 1)} | – "
                      f"| {num(med('driver', s, 'call_munmap_us', refs), 1)} | – | – |")
        if anon(s, "anon_mmap_us") is not None:
            md.append(f"| {size_name(s)} | reference: anonymous | {num(anon(s, 'anon_mmap_us'), 1)} | – "
                      f"| {num(anon(s, 'anon_munmap_us'), 1)} | – | – |")
    big = 4 << 30
    mmap_new, pte_new = med("driver", big, "mmap_us"), med("driver", big, "vmpte_kb")
    mmap_old, pte_old = med("sysfs", big, "mmap_us"), med("sysfs", big, "vmpte_kb")

    def met(v, ok):
        return "not measured" if v is None else ("met" if ok else "missed")
    spread = [f["mmap_us"] for f in runs.get(("driver", big), [])]
    spread = f" (rounds {num(min(spread), 1)} to {num(max(spread), 1)} µs)" if spread else ""
    call = med("driver", big, "call_mmap_us", refs)
    md += ["", "| target (issue 10), new path | measured (median) | |", "|---|---|---|",
           f"| 4 GiB: mmap < 1 ms, the mmap call | {num(call, 1)} µs; anonymous memory "
           f"{num(anon(big, 'anon_mmap_us'), 1)} µs; old path {num(mmap_old, 1)} µs "
           f"| {met(call, call is not None and call < 1000)} |",
           f"| 4 GiB: mmap < 1 ms, `Device::map` (three or four calls) | {num(mmap_new, 1)} µs{spread} "
           f"| {met(mmap_new, mmap_new is not None and mmap_new < 1000)} |",
           f"| 4 GiB: page tables ≤ 64 kB | VmPTE +{num(pte_new)} kB (old path +{num(pte_old)} kB) "
           f"| {met(pte_new, pte_new is not None and pte_new <= 64)} |"]
    return md


def report(raw, meta, out_dir):
    """Writes README.md, throughput.svg, rtt.svg and map.svg into out_dir from the raw lines (the
    caller writes results.txt, with the meta lines); returns the headline figures."""
    os.makedirs(out_dir, exist_ok=True)
    all_rows = [(ln.split()[0], fields(ln)) for ln in raw]
    # The isolated topology's lines and the host's have sections of their own.
    rows = [(k, f) for k, f in all_rows if "topology" not in f and "host" not in f]
    memcpy = {}
    for kind, f in rows:
        if kind == "memcpy":
            s = int(f["size"])
            memcpy[s] = max(memcpy.get(s, f["mbps"]), f["mbps"])
    stream = {(f["transport"], f["mode"], int(f["size"])): f["mbps"] for k, f in rows if k == "stream"}
    rtt = {}
    for kind, f in rows:
        if kind == "rtt":
            name = "TCP" if f["transport"] == "tcp" else (
                f"channel {f['wait']}" + (", pause on" if f.get("pause") == "on" else ""))
            rtt[name] = f
        if kind == "pingpong":
            rtt[f"pingpong spin, pause {f['pause']}"] = f
    sizes = sorted({s for (_, _, s) in stream} | set(memcpy))
    pause = next((f for k, f in rows if k == "pause"), None)

    def get(t, m, s):
        return stream.get((t, m, s))

    def r(a, b):
        return a / b if a and b else None

    # TCG's absolute figures say little about hardware: the tables and plots give ratios within
    # this run (the raw lines keep the figures). Streaming relative to the guest's memcpy of the
    # same size; round trips relative to the bare ping-pong's median.
    ser = [("channel, copying", [r(get("channel", "copy", s), memcpy.get(s)) for s in sizes]),
           ("channel, zero-copy", [r(get("channel", "zero", s), memcpy.get(s)) for s in sizes]),
           ("TCP", [r(get("tcp", "copy", s), memcpy.get(s)) for s in sizes])]
    with open(os.path.join(out_dir, "throughput.svg"), "w") as f:
        f.write(line_chart("Streaming between two TCG guests, relative to the guest's memcpy", "message size",
                           "throughput / memcpy (log scale)", sizes, ser, size_name))
    order = [n for n in ("channel spin", "channel spin, pause on", "channel doorbell", "TCP",
                         "pingpong spin, pause off", "pingpong spin, pause on") if n in rtt]
    bare = rtt.get("pingpong spin, pause off", {}).get("p50_us")
    pcts = [("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us")]
    rtt_order = [n for n in order if not n.startswith("pingpong")]
    if bare:
        with open(os.path.join(out_dir, "rtt.svg"), "w") as f:
            short = {"channel spin": "ch. spin", "channel spin, pause on": "ch. spin, pause on",
                     "channel doorbell": "ch. doorbell"}
            f.write(bar_chart("64-byte round trip between two TCG guests, relative to the bare ping-pong",
                              "multiple of the bare ping-pong's median (log scale)",
                              [short.get(n, n) for n in rtt_order],
                              [(p, [r(rtt[n].get(k), bare) for n in rtt_order]) for p, k in pcts]))

    big = max(sizes)
    mc = memcpy.get(big)
    head = {
        "memcpy": mc,
        "copy": get("channel", "copy", big), "zero": get("channel", "zero", big), "tcp": get("tcp", "copy", big),
        "best_copy": max((v for (t, m, _), v in stream.items() if t == "channel" and m == "copy"), default=None),
        "best_zero": max((v for (t, m, _), v in stream.items() if t == "channel" and m == "zero"), default=None),
        "best_tcp": max((v for (t, m, _), v in stream.items() if t == "tcp"), default=None),
        "spin": rtt.get("channel spin", {}).get("p50_us"),
        "doorbell": rtt.get("channel doorbell", {}).get("p50_us"),
        "tcp_rtt": rtt.get("TCP", {}).get("p50_us"),
    }
    md = [f"# Channels against TCP between two lab guests ({meta['date']})", "",
          "Generated by `make bench` (scripts/bench.py); do not edit by hand.", "",
          f"- Guest kernel: {meta['kernel']}; QEMU: {meta['qemu']}; host: {meta.get('cpus', '?')} × {meta['cpu']}, "
          f"load average {meta.get('load_before', '?')} before the run and {meta.get('load_after', '?')} after "
          "(two busy guests alone make 2)",
          "- " + host_cpu_note(rows, meta.get("quiet")) + placement_note(rows),
          "- " + guest_clock_note(meta.get("guest_clock")),
          "- Two guests under **TCG** (no KVM), one vCPU and 512 MiB each, on a host shared with other work; "
          "ivshmem-doorbell (64 MiB, our ivshmem-server) and a virtio-net link (QEMU `-netdev dgram` over UNIX "
          "sockets). Guest 1 drives, guest 2 listens.",
          "- **Only ratios within one run mean anything**: TCG emulates every instruction, so absolute figures "
          "say little about real hardware, and a busy host moves them from run to run. So the tables and plots "
          "of the guests give ratios; every figure is in the raw lines (`results.txt`), and the host part below "
          "gives real ones.",
          "- Streaming: each size for "
          f"{meta['seconds']:g} s, from the first byte to the listener's acknowledgement of the last. Copying: "
          "`write_all` from a buffer, `read` into one. Zero-copy: the sender's one copy goes straight into the "
          "ring (`write_slice`/`commit`, as an application building its data there), the receiver loads one "
          "byte per 64-byte line in place (`read_slice`/`release`). Channel ring 2 MiB per direction, waiting "
          "`auto` (the doorbell after 10 000 spin rounds). TCP: `write_all`/`read` of the same sizes.",
          "- memcpy: each guest copies a hot buffer of the message size to successive places of a 2 MiB "
          "buffer (`ivshmem-bench memcpy`); the table takes the higher of the two guests (the stricter reference). "
          "Guest memcpy is glibc's; the lab's guests run without ERMS (`-cpu max,-erms`), with which glibc "
          "picks `rep movsb` for 16-256 KiB and TCG runs it an iteration at a time (a sevenfold dip there in "
          "the reports before 2026-12-07's fourth run). The channel copies with the same memcpy.",
          "- Round trips: 64-byte messages on a message channel (`send`/`recv`); spin (the library's spin "
          "loop, without the pause hint as by default; also with it), doorbell (spin budget 0: every wait sleeps in "
          "IVSHMEM_WAIT), "
          "TCP with TCP_NODELAY. `pingpong --mode spin` is the bare 4-byte counter ping-pong.", "",
          "## Streaming throughput (ratios)", "", "![throughput](throughput.svg)", "",
          "| message | copying / memcpy | zero-copy / memcpy | TCP / memcpy | channel copying / TCP "
          "| zero-copy / TCP |",
          "|---:|---:|---:|---:|---:|---:|"]

    def f2(v):
        return "–" if v is None else f"{v:.3f}" if v < 0.1 else f"{v:.2f}"
    for s in sizes:
        m, c, z, t = memcpy.get(s), get("channel", "copy", s), get("channel", "zero", s), get("tcp", "copy", s)
        md.append(f"| {size_name(s)} | {f2(r(c, m))} | {f2(r(z, m))} | {f2(r(t, m))} "
                  f"| {f2(r(c, t))} | {f2(r(z, t))} |")
    md += ["", "## 64-byte round trip (multiples of the bare ping-pong's median)", "", "![rtt](rtt.svg)", "",
           "The bare reference is `pingpong --mode spin` (a 4-byte counter, no pause hint), whose times come in "
           "0.1 µs steps here; the raw lines have every figure in µs.", "",
           "| transport | rounds | min | p50 | p90 | p99 |", "|---|---:|---:|---:|---:|---:|"]
    for n in order:
        f = rtt[n]
        md.append(f"| {n} | {int(f['rounds']) if 'rounds' in f else 20000} | {f2(r(f['min_us'], bare))} "
                  f"| {f2(r(f['p50_us'], bare))} | {f2(r(f.get('p90_us'), bare))} | {f2(r(f['p99_us'], bare))} |")
    if pause:
        md += ["", "## The CPU pause hint", "",
               f"A spin loop that loads a word takes {pause['plain_ns']:.1f} ns per round in guest 1, "
               f"{pause['hint_ns']:.1f} ns with `std::hint::spin_loop()` (x86 `pause`) in it "
               f"(`ivshmem-bench pause`, best of three). Under TCG the hint leaves the translated code "
               "(QEMU's pause helper exits the CPU loop); under KVM it can cause pause-loop exits. The "
               "round-trip rows with and without it above show what it does to a spinning waiter."]
    md += ["", "## Against the targets of issue 9", "",
           "| target | measured | met |", "|---|---|---|"]

    def target(name, measured, ok):
        md.append(f"| {name} | {measured} | {ok if isinstance(ok, str) else ('yes' if ok else 'no')} |")
    best_ch = max(filter(None, [head["best_copy"], head["best_zero"]]), default=None)
    per_size = [r(max(filter(None, [get("channel", "copy", s), get("channel", "zero", s)]), default=None),
                  get("tcp", "copy", s)) for s in sizes]
    per_size = [x for x in per_size if x]
    spread = f" (per size {min(per_size):.1f}× to {max(per_size):.1f}×)" if per_size else ""
    target("streaming ≥ 10× TCP (best of each)",
           f"{f2(r(best_ch, head['best_tcp']))}×{spread}",
           bool(r(best_ch, head["best_tcp"]) and r(best_ch, head["best_tcp"]) >= 10))
    for mode, name, goal in (("copy", "copying", 0.5), ("zero", "zero-copy", 0.9)):
        ratios = [(r(get("channel", mode, s), memcpy.get(s)), s) for s in sizes]
        ratios = [(x, s) for x, s in ratios if x]
        if ratios:
            best, at = max(ratios)
            under = [size_name(s) for x, s in ratios if x < goal]
            target(f"{name} ≥ {goal}× memcpy", f"best {best:.2f}× (at {size_name(at)}); "
                   f"{size_name(big)}: {f2(r(get('channel', mode, big), mc))}×; "
                   + (f"below at {', '.join(under)}" if under else "met at every size"),
                   "every size" if not under else ("some sizes" if best >= goal else False))
            head[f"{mode}_ratio"] = best
    target("spin round trip ≤ 0.5 µs (p50; the one absolute target)",
           f"{f2(head['spin'])} µs, {f2(r(head['spin'], bare))}× the bare ping-pong",
           bool(head["spin"] and head["spin"] <= 0.5))
    target("doorbell round trip below TCP's (p50)", f"{f2(r(head['doorbell'], head['tcp_rtt']))}× TCP's",
           bool(head["doorbell"] and head["tcp_rtt"] and head["doorbell"] < head["tcp_rtt"]))
    md += map_section(rows, meta, out_dir)
    md += isolated_section(all_rows, meta)
    md += host_section(all_rows, meta)
    md += ["", "Raw lines: [results.txt](results.txt).", ""]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(md))
    return head


def meta_info(b):
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    qemu = qemu.splitlines()[0].replace("QEMU emulator version ", "") if qemu else "?"
    cpu = "?"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kernel = b.sh(1, "uname -r").strip()
    return {"date": datetime.date.today().isoformat(), "kernel": kernel, "qemu": qemu, "cpu": cpu,
            "cpus": os.cpu_count(), "load_before": "%.1f" % os.getloadavg()[0]}


def rewrite_report(raw, out_dir):
    """Writes the report and results.txt of out_dir from raw lines, meta lines included."""
    meta = dict(re.findall(r"(\w+)=(.*)", "\n".join(ln[5:] for ln in raw if ln.startswith("meta "))))
    meta["seconds"] = float(meta.get("seconds", 2.0))
    head = report([ln for ln in raw if not ln.startswith("meta ")], meta, out_dir)
    with open(os.path.join(out_dir, "results.txt"), "w") as f:
        f.write("\n".join(raw) + "\n")
    return head


def is_map_line(ln):
    return re.match(r"^(map |mapref |meta map_)", ln) is not None


def is_isolated_line(ln):
    return " topology=" in ln or ln.startswith("meta iso_")


def is_host_line(ln):
    return " host=1" in ln or ln.startswith("meta host_")


def with_matplotlib():
    """Runs this script again with the test environment's Python when this one lacks matplotlib
    (the report's plots need it), so that every way README shows works with any python3: before
    anything is measured."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    venv = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/config.sh && ivshmem_venv"],
                          capture_output=True, text=True).stdout.strip()
    python = os.path.join(venv, "bin", "python")
    # A venv's python links to the system's: tell them apart by their prefix.
    if venv and os.path.exists(os.path.join(venv, ".ivshmem-complete")) and \
            os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(python, [python, os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit("bench.py: no matplotlib for the report's plots: scripts/setup.sh host installs the test "
             f"environment ({venv or 'ivshmem_venv'}), make bench runs with it")


def main():
    with_matplotlib()
    args = sys.argv[1:]
    seconds = 2.0
    out_dir = os.path.join(ROOT, "userspace/bench")
    rewrite = None
    only_map = bool(args) and args[0] == "map"
    only_iso = bool(args) and args[0] == "isolated"
    only_host = bool(args) and args[0] == "host"
    if only_map or only_iso or only_host:
        args = args[1:]
    big, rounds = "4G", 5
    while args:
        if args[0] in ("--seconds", "--out", "--report-only", "--big", "--rounds") and len(args) > 1:
            if args[0] == "--seconds":
                seconds = float(args[1])
            elif args[0] == "--out":
                out_dir = args[1]
            elif args[0] == "--big":
                big = args[1]
            elif args[0] == "--rounds":
                rounds = int(args[1])
            else:
                rewrite = args[1]
            args = args[2:]
        else:
            print(__doc__, file=sys.stderr)
            return 2
    if rewrite:
        # Rewrites the report from a results.txt (e.g. after a change to this script).
        rewrite_report(open(rewrite).read().splitlines(), out_dir)
        return 0
    if only_map or only_iso or only_host:
        # The other sections keep their lines: only this section's lines of results.txt are replaced.
        results = os.path.join(out_dir, "results.txt")
        kept = open(results).read().splitlines() if os.path.exists(results) else []
        if only_map:
            raw = [ln for ln in kept if not is_map_line(ln)] + map_lab(big, rounds)
        elif only_host:
            raw = [ln for ln in kept if not is_host_line(ln)] + HostBench(seconds).run()
        else:
            raw = [ln for ln in kept if not is_isolated_line(ln)] + isolated_lab(seconds)
        rewrite_report(raw, out_dir)
        print(f"report: {os.path.relpath(out_dir, ROOT)}/README.md")
        return 0
    b = Bench(seconds)
    try:
        b.boot()
        meta = meta_info(b)
        meta["seconds"] = seconds
        meta["quiet"] = settle(b.cpu)
        c0 = b.clocks()
        b.run()
        b.pingpong()
        c1 = b.clocks()
        meta["guest_clock"] = " ".join(f"{lab.clock_rate(x, y):.4f}" for x, y in zip(c0, c1, strict=True))
        meta["load_after"] = "%.1f" % os.getloadavg()[0]
    finally:
        b.stop()
        if os.path.exists(SHM):
            os.unlink(SHM)
    raw = ([f"meta {k}={v}" for k, v in meta.items()] + b.raw + map_lab(big, rounds) + isolated_lab(seconds)
           + HostBench(seconds).run())
    head = rewrite_report(raw, out_dir)
    print(f"report: {os.path.relpath(out_dir, ROOT)}/README.md")
    for k, v in head.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
