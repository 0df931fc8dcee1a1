#!/usr/bin/env python3
"""Talks to the lab guests: run a command in guest N and get its output and exit status.

Each guest serves commands on its second serial port, a UNIX socket on the host
($IVSHMEM_RUN/guestN.sock). Protocol (scripts/guest/agent): the host sends one line
"<id> <command>", the guest answers "@@BEGIN <id>", the output, "@@END <id> <status>".

    scripts/lab.py wait N [TIMEOUT]          wait until guest N answers
    scripts/lab.py run N [--timeout S] CMD   run CMD in guest N (once it answers); exit with its status
"""

import os
import re
import socket
import subprocess
import sys
import time
import uuid

RUN = os.environ.get("IVSHMEM_RUN", os.path.join(os.environ.get("TMPDIR", "/tmp"), "ivshmem-rs-run"))


class GuestError(Exception):
    pass


class Guest:
    def __init__(self, n, run=None):
        run = run or RUN
        self.n = n
        self.sock_path = os.path.join(run, f"guest{n}.sock")
        self.console = os.path.join(run, f"guest{n}.console")
        self.pidfile = os.path.join(run, f"guest{n}.pid")
        self.sock = None
        self.buf = b""

    def alive(self):
        try:
            pid = int(open(self.pidfile).read())
            with open(f"/proc/{pid}/status") as f:
                return not re.search(r"^State:\s*Z", f.read(), re.M)
        except (OSError, ValueError):
            return False

    def not_running(self):
        if os.path.exists(self.console):
            return GuestError(f"guest {self.n} is not running (see {self.console})")
        return GuestError(f"guest {self.n} is not running (no live pid in {self.pidfile}): "
                          "start it with scripts/start.sh")

    def _connect(self):
        if self.sock is None:
            if not self.alive():
                raise self.not_running()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock_path)
            except OSError as e:
                s.close()
                raise GuestError(f"guest {self.n}: cannot connect to {self.sock_path}: {e.strerror or e}") from e
            self.sock = s
            self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read_until(self, pattern, deadline):
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if not self.alive():
                    raise GuestError(f"guest {self.n} died (see {self.console})") from None
                continue
            except OSError as e:
                self.close()
                raise GuestError(f"guest {self.n}: command port: {e.strerror or e}") from e
            if not data:
                self.close()
                raise GuestError(f"guest {self.n} closed its command port")
            self.buf += data

    def _send(self, cmd, timeout):
        if "\n" in cmd:
            raise ValueError("commands are one line")
        self._connect()
        tag = uuid.uuid4().hex[:12]
        try:
            self.sock.sendall(f"{tag} {cmd}\n".encode())
        except OSError as e:
            self.close()
            raise GuestError(f"guest {self.n}: command port: {e.strerror or e}") from e
        deadline = time.monotonic() + timeout
        m = self._read_until(re.escape(f"@@BEGIN {tag}\n".encode()), deadline)
        if m is None:
            return None
        self.buf = self.buf[m.end():]
        m = self._read_until(rb"@@END " + re.escape(tag.encode()) + rb" (\d+)\n", deadline)
        if m is None:
            raise GuestError(f"guest {self.n}: timeout after {timeout}s running: {cmd}")
        out = self.buf[:m.start()]
        self.buf = self.buf[m.end():]
        return int(m.group(1)), out.decode(errors="replace")

    def wait_ready(self, timeout=180):
        """Waits until the guest's agent answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.not_running()
            try:
                r = self._send("echo ready", 2)
                if r is not None and r[1].strip() == "ready":
                    return
            except (OSError, GuestError):
                self.close()
                time.sleep(0.5)
        raise GuestError(f"guest {self.n} did not answer within {timeout}s (see {self.console})")

    def run(self, cmd, timeout=120):
        """Runs `cmd` with sh in the guest; returns (status, output)."""
        r = self._send(cmd, timeout)
        if r is None:
            raise GuestError(f"guest {self.n}: no answer to: {cmd}")
        return r


# Reports, not banners: the debug kernel's "KernelAddressSanitizer initialized" and lockdep's
# "Lock dependency validator" boot lines must not match.
BAD_DMESG = re.compile(r"WARNING:|BUG:|BUG |Oops|Kernel panic|Call Trace|general protection fault"
                       r"|kmemleak: \d+ new suspected|BUG: KASAN|possible circular locking"
                       r"|possible recursive locking|inconsistent lock state|BUG: sleeping function"
                       r"|list_add corruption|list_del corruption|UBSAN")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CheckFailed(AssertionError):
    """A check of the lab's state failed (an AssertionError, so test runners report it as a
    failed check, not an error)."""


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


class Lab:
    """A set of booted guests (scripts/start.sh) with their backing files, run directory and
    environment, and the commands tests run in them.

    `env` selects the guest kernel (scripts/config.sh: IVSHMEM_FLAVOUR, IVSHMEM_KERNEL_SERIES,
    IVSHMEM_ARCH); `image` is the guest image scripts/initramfs.sh built for it."""

    def __init__(self, run, shm, image, env=None):
        self.run_dir = run
        self.main_shm = shm
        self.image = image
        self.kernel_env = dict(env or {})
        self.guests = []
        self.mode = "plain"
        self.shm = shm
        self.size = "64M"
        self.topology = "shared"
        # The VM suite's machine unless a scenario asks for q35 (scripts/start.sh's default): BAR2
        # in the 32-bit hole, the downgrade path and the PCI addresses the checks name.
        self.machine = "pc"

    def env(self, **kw):
        return dict(os.environ, **self.kernel_env, IVSHMEM_RUN=self.run_dir, IVSHMEM_SHM_SIZE="64M",
                    IVSHMEM_SHM_PATH=self.main_shm, **kw)

    def boot(self, guests, extra, mode="plain", shm=None, size="64M", topology="shared", machine="pc"):
        """Boots `guests` guests on fresh backing files: the main one of `size` at `shm` (in
        doorbell mode the server's), one more per size in `extra` at shm.1, shm.2, ...; in the
        isolated topology each guest N's own device of `size` at shm.ownN instead of the main
        one; on `machine` (x86: pc or q35; scripts/start.sh)."""
        self.stop()
        self.mode = mode
        self.topology = topology
        self.machine = machine
        self.shm = shm or self.main_shm
        self.size = size
        remove_backing(self.shm)
        self.start(guests=guests, extra=extra)
        self.guests = [Guest(i, self.run_dir) for i in range(1, guests + 1)]
        for g in self.guests:
            g.wait_ready(240)
        return self

    def start(self, guests, extra, only=""):
        env = self.env(IVSHMEM_GUESTS=str(guests), IVSHMEM_EXTRA_SHM=extra, IVSHMEM_MODE=self.mode,
                       IVSHMEM_VECTORS="2", IVSHMEM_ONLY=only, IVSHMEM_TOPOLOGY=self.topology,
                       IVSHMEM_MACHINE=self.machine)
        env["IVSHMEM_SHM_PATH"] = self.shm
        env["IVSHMEM_SHM_SIZE"] = self.size
        subprocess.run(["bash", os.path.join(ROOT, "scripts/start.sh"), self.image], env=env, check=True)

    def stop(self):
        for g in self.guests:
            g.close()
        subprocess.run(["bash", os.path.join(ROOT, "scripts/stop.sh")], env=dict(os.environ, IVSHMEM_RUN=self.run_dir),
                       check=False)

    def sh(self, g, cmd, timeout=300, ok=True):
        """Runs cmd in guest g (1-based); with ok, fails the check on a non-zero status."""
        status, out = self.guests[g - 1].run(cmd, timeout)
        if ok and status != 0:
            raise CheckFailed(f"guest {g}: '{cmd}' exited {status}:\n{out}")
        return status, out

    def dmesg_clean(self, g):
        _, out = self.sh(g, "dmesg")
        bad = [line for line in out.splitlines() if BAD_DMESG.search(line)]
        check(not bad, f"guest {g} dmesg:\n" + "\n".join(bad[:20]))

    def bg(self, g, cmd, out):
        """Starts cmd in the background in guest g; its output, then `exit=STATUS`, go to out."""
        self.sh(g, f"rm -f {out}; ({cmd} > {out} 2>&1; echo exit=$? >> {out}) &")

    def wait_line(self, g, out, text, secs=30):
        """Waits until file out in guest g holds text; fails the check if it never does."""
        _, found = self.sh(g, f"for i in $(seq {secs * 10}); do grep -q '{text}' {out} && break; sleep 0.1; done; "
                              f"cat {out}")
        check(text in found, f"guest {g}: no '{text}' in {out} after {secs} s:\n{found}")
        return found

    def leak_check_start(self, g):
        self.sh(g, "test -w /sys/kernel/debug/kmemleak")  # the check below must be able to fail
        self.sh(g, "echo scan > /sys/kernel/debug/kmemleak; echo clear > /sys/kernel/debug/kmemleak")

    def no_leaks(self, g):
        # Two scans, so that young objects are judged too.
        self.sh(g, "echo scan > /sys/kernel/debug/kmemleak; sleep 1; echo scan > /sys/kernel/debug/kmemleak")
        _, out = self.sh(g, "cat /sys/kernel/debug/kmemleak")
        check(out.strip() == "", f"guest {g}: kmemleak reports leaks:\n" + out[:3000])

    def pid(self, name):
        """The pid in $run/NAME.pid (guestN, server)."""
        with open(os.path.join(self.run_dir, f"{name}.pid")) as f:
            return int(f.read())

    def console_tail(self, g, lines=60):
        """The last lines of guest g's console log ("" if there is none)."""
        try:
            with open(self.guests[g - 1].console, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""


def remove_backing(shm):
    """Removes backing file `shm` and its numbered siblings (shm.1, shm.2, ..., and the isolated
    topology's shm.own1, shm.own2, ...)."""
    d, base = os.path.split(shm)
    if not os.path.isdir(d or "."):
        return
    for name in os.listdir(d or "."):
        suffix = name[len(base) + 1:].removeprefix("own")
        if name == base or name.startswith(base + ".") and suffix.isdigit():
            os.unlink(os.path.join(d, name))


def guest_clock(sh):
    """(host monotonic, guest uptime) in seconds, the uptime read through `sh` (a command's
    output) between two host readings and paired with their midpoint: two of them give a guest's
    seconds per host second. Every figure the lab measures is timed by a guest's clock."""
    t0 = time.monotonic()
    up = float(sh("cut -d' ' -f1 /proc/uptime"))
    return (t0 + time.monotonic()) / 2, up


def clock_rate(a, b):
    """A guest's seconds per host second from two guest_clock readings."""
    return (b[1] - a[1]) / (b[0] - a[0])


def host_read(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def host_write(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# The reproducible pattern of userspace/src/pattern.rs, byte for byte.
M64 = (1 << 64) - 1


def _word(seed, w):
    z = (seed * 0x9E3779B97F4A7C15 + w + 0x632BE59BD9B4E019) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def pattern(seed, start, length):
    out = bytearray()
    w = start // 8
    while len(out) < (start % 8) + length:
        out += _word(seed, w).to_bytes(8, "little")
        w += 1
    return bytes(out[start % 8:start % 8 + length])


class UsageError(Exception):
    pass


def number(text, what):
    try:
        return int(text) if what == "guest number" else float(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not '{text}'") from None


def main(argv):
    if argv[:1] == ["wait"] and len(argv) in (2, 3):
        n = number(argv[1], "guest number")
        Guest(n).wait_ready(number(argv[2], "timeout") if len(argv) > 2 else 180)
        return 0
    if argv[:1] == ["run"] and len(argv) >= 3:
        n, rest = number(argv[1], "guest number"), argv[2:]
        timeout = 120
        if rest[0] == "--timeout":
            if len(rest) < 3:
                raise UsageError("run N --timeout SECONDS CMD")
            timeout, rest = number(rest[1], "timeout"), rest[2:]
        g = Guest(n)
        g.wait_ready(timeout)  # a guest started a moment ago may still be booting
        status, out = g.run(" ".join(rest), timeout)
        sys.stdout.write(out)
        return status
    if argv == ["selftest"]:
        assert list(pattern(1, 0, 8)) == [186, 2, 105, 119, 71, 5, 198, 92]
        assert pattern(5, 13, 20) == pattern(5, 0, 40)[13:33]
        print("ok")
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UsageError as e:
        print(f"lab: {e}", file=sys.stderr)
        sys.exit(2)
    except (GuestError, ValueError) as e:  # ValueError: a command of several lines
        print(f"lab: {e}", file=sys.stderr)
        sys.exit(125)
    except KeyboardInterrupt:
        sys.exit(130)
