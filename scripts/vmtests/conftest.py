"""The VM suite's fixtures: kinds of guest kernel, their guest images, booted labs.

Each scenario (test_<name>.py) boots its lab in a module fixture `s` built on `vm`; its tests
run in file order on that lab. Options:

    --kind KIND[,KIND...] | all   guest kernels (kinds.py; default $IVSHMEM_FLAVOUR, else release)
    --tier check | full           check: every driver and channel path once (CHECK_SCENARIOS),
                                  small volumes, no figures (make check); full: everything
                                  (make test; default)
    --build                       build each kind's module, race build and tools first (make)
    --module PATH                 the ivshmem.ko to test instead of the kind's (one kind)

Markers: `figure` (a check whose point is a time or memory figure: skipped on the debug
kernel, left out of the check tier), `x86` (x86 behaviour, skipped on arm64 guests), `full`
(volume or repetition that the check tier leaves out), and one per kind for -m.
"""

import fcntl
import os
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lab  # noqa: E402
from kinds import ALL_KINDS, CHECK_SCENARIOS, KINDS, ROOT, SCENARIOS  # noqa: E402

# Overridable so that two suites (two checkouts) can run side by side.
RUN = os.environ.get("IVSHMEM_VMTEST_RUN", os.path.join(tempfile.gettempdir(), "ivshmem-rs-vmtest"))
SHM = os.environ.get("IVSHMEM_VMTEST_SHM", "/dev/shm/ivshmem-rs-vmtest")
# Builds (--build) take this lock: one suite at a time.
BUILD_LOCK = os.path.join(tempfile.gettempdir(), "ivshmem-rs-vmtest-build.lock")

# Figures measured since the last report (helpers.measured, scenario times): each report takes
# them as JUnit properties ("measured"); the run's summary lists them.
FIGURES = []
# The lab of the scenario running now: its guests' consoles go into a failure's report.
CURRENT = {}


def pytest_addoption(parser):
    parser.addoption("--kind", default=os.environ.get("IVSHMEM_FLAVOUR") or "release",
                     help=f"kinds of guest kernel, comma-separated, or all ({', '.join(ALL_KINDS)})")
    parser.addoption("--tier", choices=["check", "full"], default="full",
                     help="check: each path once, small volumes, no figures; full: everything")
    parser.addoption("--build", action="store_true",
                     help="build each kind's module, fault-injection build and tools before its tests")
    parser.addoption("--module", help="test this ivshmem.ko instead of the kind's (e.g. a build of another tree)")


def selected_kinds(config):
    text = config.getoption("--kind")
    kinds = ALL_KINDS if text == "all" else [k for k in text.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise pytest.UsageError(f"unknown kind {' '.join(bad)}: --kind {'|'.join(KINDS)}[,...] or all")
    return kinds


def pytest_configure(config):
    for line in ("figure: a figure of time or memory (skipped on the debug kernel, not in the check tier)",
                 "x86: x86 behaviour (skipped on arm64 guests)",
                 "full: volume or repetition of the full tier only (make test)",
                 *(f"{k}: runs on the {k} kind" for k in KINDS)):
        config.addinivalue_line("markers", line)
    config.ivshmem_kinds = selected_kinds(config)


def pytest_generate_tests(metafunc):
    if "kind" in metafunc.fixturenames:
        kinds = metafunc.config.ivshmem_kinds
        metafunc.parametrize("kind", kinds, ids=kinds, scope="session", indirect=True)


def scenario_of(item):
    return item.module.__name__.removeprefix("test_")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Leaves out what a kind or tier does not run; orders the tests kind by kind, scenario by
    scenario (SCENARIOS), each file's tests in file order."""
    tier = config.getoption("--tier")
    keep, drop = [], []
    for i, item in enumerate(items):
        params = item.callspec.params if hasattr(item, "callspec") else {}
        kind = KINDS[params["kind"]] if "kind" in params else None
        if kind is None:
            keep.append((0, 0, i, item))
            continue
        scenario = scenario_of(item)
        left_out_of_check = scenario not in CHECK_SCENARIOS or any(
            item.get_closest_marker(m) for m in ("full", "figure"))
        if scenario not in kind.scenarios or tier == "check" and left_out_of_check:
            drop.append(item)
            continue
        item.add_marker(kind.name)
        if item.get_closest_marker("figure") and kind.flavour == "debug":
            item.add_marker(pytest.mark.skip(reason="a figure: the debug kernel's timings and memory mean nothing"))
        if item.get_closest_marker("x86") and kind.arch != "x86_64":
            item.add_marker(pytest.mark.skip(reason=f"x86 only: {kind.arch} guests have no PAT"))
        order = SCENARIOS.index(scenario) if scenario in SCENARIOS else len(SCENARIOS)
        keep.append((config.ivshmem_kinds.index(kind.name), order, i, item))
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = [item for *_, item in sorted(keep, key=lambda t: t[:3])]


def make(targets, log):
    """Runs make with `targets` at the top of the checkout; its output goes to `log`."""
    with open(log, "w") as f:
        r = subprocess.run(["make", "--no-print-directory", "-C", ROOT, *targets], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-30:])
        pytest.fail(f"make {' '.join(targets)} failed (log {log}):\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def kind(request):
    """The kind under test, with its guest image built (and with --build, its module first)."""
    k = KINDS[request.param]
    os.makedirs(RUN, exist_ok=True)
    if request.config.getoption("--build"):
        started = time.monotonic()
        # One build at a time (two checkouts' suites): the kinds' module builds
        # copy the top-level tree (Makefile, copy_build) that `make all` writes.
        with open(BUILD_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            make(["all", *k.make], os.path.join(RUN, f"build-{k.name}.log"))
        FIGURES.append(f"{k.name}: make all {' '.join(k.make)}: {time.monotonic() - started:.0f} s")
    module = request.config.getoption("--module") or k.module
    missing = [m for m in (module, k.race) if not os.path.exists(m)]
    if missing:
        pytest.fail(f"no {' '.join(missing)}: run make {' '.join(k.make)} (or pass --build)", pytrace=False)
    k.image = os.path.join(RUN, f"initramfs-{k.name}.cpio.gz")
    env = dict(os.environ, **k.selecting_env())
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts/initramfs.sh"), k.image, module, k.tools, k.race],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{k.name} guest image: {r.stderr.strip()}", pytrace=False)
    return k


@pytest.fixture(scope="module")
def vm(kind, request):
    """A lab for one scenario on the kind's kernel, not booted yet (the scenario's `s` fixture
    boots it). At the end: every guest still up must have a clean dmesg (KASAN, lockdep, WARNING,
    BUG, ...), then the guests stop and the backing files go."""
    s = lab.Lab(RUN, SHM, kind.image, kind.selecting_env())
    s.kind = kind
    s.tier = request.config.getoption("--tier")
    CURRENT["lab"] = s
    started = time.monotonic()
    try:
        yield s
        for i, g in enumerate(s.guests, 1):
            if g.alive():
                s.dmesg_clean(i)
    finally:
        s.stop()
        CURRENT.pop("lab", None)
        try:
            lab.remove_backing(SHM)
        except OSError:
            pass
        FIGURES.append(f"{request.module.__name__}[{kind.name}] took {time.monotonic() - started:.0f} s")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure's report gets the last lines of each guest's console; the figures measured
    since the last report become its properties (JUnit)."""
    rep = yield
    s = CURRENT.get("lab")
    if rep.failed and s is not None:
        for i in range(1, len(s.guests) + 1):
            rep.sections.append((f"guest {i} console (last 60 lines)", s.console_tail(i)))
    rep.user_properties.extend(("measured", text) for text in FIGURES)
    FIGURES.clear()
    return rep


def pytest_terminal_summary(terminalreporter):
    lines = [f"{rep.nodeid}: {value}" for reports in terminalreporter.stats.values() for rep in reports
             for name, value in getattr(rep, "user_properties", ()) if name == "measured"]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
