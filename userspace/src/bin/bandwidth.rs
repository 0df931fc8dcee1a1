//! memcpy bandwidth to and from ivshmem shared memory, next to the same copy on this guest's
//! private memory. Wall-clock time; every copy is verified.
//!
//! The comparison is only fair if neither side pays for first touches (page faults, page-table
//! population) and both see the same machine: so every page of both buffers is touched and one
//! copy of each kind made, untimed, before any timing; then shared and private copies
//! alternate, and the median (and best) of each is reported.

use std::time::{Duration, Instant};

use ivshmem::args::{device_path, run_tool, Args};
use ivshmem::{pattern, CacheType, Device, Mapping, ToolError};

const PROG: &str = "bandwidth";
/// Pattern seed of the source buffer.
const SEED: u64 = 0xb4d;

const HELP: &str = "\
usage: bandwidth [-d DEVICE] [-s SIZE] [-r REPS] [--direction write|read|both]
                 [--cache wb|wc|uc] [--offset OFFSET] [--machine]

Copies SIZE bytes into (write) and/or out of (read) the shared memory, and the
same between two private buffers, and prints the median and best bandwidth of
each, and the ratio of the medians (shared/private).

Method: first, untimed, every page of the shared and the private buffers is
touched and one full copy of each kind is made, so that neither side is charged
for first-touch page faults; then the REPS shared and REPS private copies
alternate (shared, private, shared, private, ...), so that a change in the
machine's load hits both alike. Before each copy its destination is cleared and
after it the copy is checked, both untimed.

  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0)
  -s, --size SIZE       bytes per copy (default 64M)
  -r, --reps N          timed copies of each kind (default 5)
      --direction DIR   write (to shared memory), read (from it) or both (default write)
      --cache TYPE      cache type of the mapping: wb (default), wc or uc
      --offset OFFSET   where in the shared memory (page-aligned, default 0)
      --machine         one key=value line per direction, for scripts: size, reps,
                        cache, shm_best_mbps, private_best_mbps, shm_mbps and
                        private_mbps (medians), ratio (of the medians)
  -h, --help            this help";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Write,
    Read,
    Both,
}

impl Direction {
    /// The directions measured, in order.
    fn dirs(self) -> &'static [Dir] {
        match self {
            Direction::Write => &[Dir::Write],
            Direction::Read => &[Dir::Read],
            Direction::Both => &[Dir::Write, Dir::Read],
        }
    }
}

/// One measured direction: copies to (write) or from (read) the shared memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Write,
    Read,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Write => "write",
            Dir::Read => "read",
        }
    }
}

#[derive(Debug)]
struct Opts {
    device: String,
    size: u64,
    reps: u32,
    direction: Direction,
    cache: CacheType,
    offset: u64,
    machine: bool,
}

fn parse(mut args: Args) -> Result<Option<Opts>, ToolError> {
    if args.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let machine = args.flag(&["--machine"]);
    let device = device_path(args.value(&["-d", "--device"])?);
    let size = args.size(&["-s", "--size"])?.unwrap_or(64 << 20);
    let reps = args.parsed::<u32>(&["-r", "--reps"])?.unwrap_or(5);
    let direction = match args.value(&["--direction"])?.as_deref() {
        None | Some("write") => Direction::Write,
        Some("read") => Direction::Read,
        Some("both") => Direction::Both,
        Some(d) => {
            return Err(ToolError::Usage(format!(
                "bad direction '{d}' (write, read or both)"
            )))
        }
    };
    let cache = args
        .parsed::<CacheType>(&["--cache"])?
        .unwrap_or(CacheType::WriteBack);
    let offset = args.size(&["--offset"])?.unwrap_or(0);
    let rest = args.finish()?;
    if !rest.is_empty() {
        return Err(ToolError::Usage(format!(
            "unexpected argument '{}'",
            rest[0]
        )));
    }
    if size == 0 || reps == 0 {
        return Err(ToolError::usage("size and reps must be positive"));
    }
    if offset % 4096 != 0 {
        return Err(ToolError::Usage(format!(
            "offset {offset} is not page-aligned"
        )));
    }
    Ok(Some(Opts {
        device,
        size,
        reps,
        direction,
        cache,
        offset,
        machine,
    }))
}

/// The memory a copy goes to or comes from, besides the private source buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Shared,
    Private,
}

/// The order of the timed copies: shared and private alternate, shared first, `reps` each.
fn schedule(reps: u32) -> impl Iterator<Item = Side> {
    (0..reps).flat_map(|_| [Side::Shared, Side::Private])
}

/// Median and best (shortest) of a set of copy times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Summary {
    median: Duration,
    best: Duration,
}

/// `None` for no times; the median of an even count is the mean of the middle two.
fn summarize(times: &[Duration]) -> Option<Summary> {
    let mut t = times.to_vec();
    t.sort();
    let n = t.len();
    let best = *t.first()?;
    let median = if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2
    };
    Some(Summary { median, best })
}

/// The copies of one direction, with the untimed steps around each.
trait Copier {
    /// Clears the destination of `side`'s copy, touching every page of it.
    fn clear(&mut self, side: Side) -> Result<(), ToolError>;
    /// The timed copy.
    fn copy(&mut self, side: Side);
    /// Checks that the copy arrived, byte for byte.
    fn verify(&mut self, side: Side) -> Result<(), ToolError>;
}

/// Copy times of each side, in the order they were taken.
#[derive(Debug, Default)]
struct Times {
    shared: Vec<Duration>,
    private: Vec<Duration>,
}

/// Warms up (one untimed clear, copy and check of each side), then times `reps` copies of each
/// side in [`schedule`] order, each one cleared before and checked after.
fn measure(c: &mut impl Copier, reps: u32) -> Result<Times, ToolError> {
    for side in [Side::Shared, Side::Private] {
        c.clear(side)?;
        c.copy(side);
        c.verify(side)?;
    }
    let mut times = Times::default();
    for side in schedule(reps) {
        c.clear(side)?;
        let start = Instant::now();
        c.copy(side);
        let took = start.elapsed();
        c.verify(side)?;
        match side {
            Side::Shared => times.shared.push(took),
            Side::Private => times.private.push(took),
        }
    }
    Ok(times)
}

fn copy_to(map: &Mapping, src: &[u8]) {
    assert!(src.len() <= map.len());
    // SAFETY: `map` holds at least `src.len()` bytes (asserted); `src` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), map.as_ptr(), src.len()) }
}

fn copy_from(map: &Mapping, dst: &mut [u8]) {
    assert!(dst.len() <= map.len());
    // SAFETY: `map` holds at least `dst.len()` bytes (asserted); `dst` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), dst.as_mut_ptr(), dst.len()) }
}

/// Where `a` and `b` first differ (memcmp speed when they are equal).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// The real copies: `src` to the shared memory or `dst` (write), or the shared memory or `src`
/// to `dst` (read). The private copy is `src` to `dst` either way.
struct MemCopier<'a> {
    dir: Dir,
    map: &'a Mapping,
    src: &'a [u8],
    dst: &'a mut [u8],
}

impl<'a> MemCopier<'a> {
    /// For a read, first puts `src` in the shared memory.
    fn new(dir: Dir, map: &'a Mapping, src: &'a [u8], dst: &'a mut [u8]) -> Self {
        if dir == Dir::Read {
            copy_to(map, src);
        }
        Self { dir, map, src, dst }
    }

    fn check(&self, what: &str) -> Result<(), ToolError> {
        match first_difference(self.src, self.dst) {
            None => Ok(()),
            Some(at) => Err(ToolError::Check(format!(
                "verification failed: {what} differs at byte {at}"
            ))),
        }
    }
}

impl Copier for MemCopier<'_> {
    fn clear(&mut self, side: Side) -> Result<(), ToolError> {
        match (side, self.dir) {
            (Side::Shared, Dir::Write) => self.map.fill(0, self.src.len(), 0)?,
            _ => self.dst.fill(0),
        }
        Ok(())
    }

    fn copy(&mut self, side: Side) {
        match (side, self.dir) {
            (Side::Shared, Dir::Write) => copy_to(self.map, self.src),
            (Side::Shared, Dir::Read) => copy_from(self.map, self.dst),
            (Side::Private, _) => self.dst.copy_from_slice(self.src),
        }
    }

    fn verify(&mut self, side: Side) -> Result<(), ToolError> {
        match (side, self.dir) {
            (Side::Shared, Dir::Write) => {
                copy_from(self.map, self.dst);
                self.check("shared memory")
            }
            (Side::Shared, Dir::Read) => self.check("copy out"),
            (Side::Private, _) => self.check("private copy"),
        }
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// The copies must fit in the region: a clear error instead of a failed mmap.
fn check_fits(o: &Opts, region: u64) -> Result<(), ToolError> {
    if o.offset.checked_add(o.size).is_none_or(|end| end > region) {
        return Err(ToolError::Failed(format!(
            "{} has {} bytes of shared memory: too small for {} bytes at offset {} (use --size)",
            o.device, region, o.size, o.offset
        )));
    }
    Ok(())
}

/// The result lines of one direction.
fn report(o: &Opts, dir: Dir, shm: Summary, private: Summary) -> String {
    let (s, p) = (mbps(o.size, shm.median), mbps(o.size, private.median));
    let (sb, pb) = (mbps(o.size, shm.best), mbps(o.size, private.best));
    if o.machine {
        format!(
            "direction={} size={} reps={} cache={} shm_best_mbps={sb:.2} private_best_mbps={pb:.2} \
             shm_mbps={s:.2} private_mbps={p:.2} ratio={:.3}",
            dir.name(),
            o.size,
            o.reps,
            o.cache.name(),
            s / p
        )
    } else {
        let what = if dir == Dir::Write { "to" } else { "from" };
        format!(
            "memcpy bandwidth: {s:.2} MB/s ({what} shared memory, {} MiB, median of {}, best \
             {sb:.2} MB/s, cache {})\n\
             private memory:   {p:.2} MB/s (median of {}, best {pb:.2} MB/s; ratio shared/private \
             {:.2})",
            o.size >> 20,
            o.reps,
            o.cache.name(),
            o.reps,
            s / p
        )
    }
}

fn run(o: &Opts) -> Result<(), ToolError> {
    let dev = Device::open(&o.device)?;
    let region = dev.size()?;
    check_fits(o, region)?;
    let len = usize::try_from(o.size).map_err(|_| ToolError::Failed("size too large".into()))?;
    dev.set_cache(o.cache)?;
    let map = dev.map(o.offset, len)?;
    if !o.machine {
        println!("--- mmap successful");
    }
    let mut src = vec![0u8; len];
    pattern::fill(SEED, 0, &mut src);
    let mut dst = vec![0u8; len];
    for &dir in o.direction.dirs() {
        let times = measure(&mut MemCopier::new(dir, &map, &src, &mut dst), o.reps)?;
        let summary = |t: &[Duration]| {
            summarize(t).ok_or_else(|| ToolError::usage("size and reps must be positive"))
        };
        let (shm, private) = (summary(&times.shared)?, summary(&times.private)?);
        println!("{}", report(o, dir, shm, private));
    }
    Ok(())
}

fn main() {
    run_tool(PROG, HELP, parse, |o| run(&o));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivshmem::sys::errno::ENOENT;

    fn p(a: &[&str]) -> Result<Option<Opts>, ToolError> {
        parse(Args::new(a.iter().copied()))
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn defaults_match_the_seed() {
        let o = p(&[]).unwrap().unwrap();
        assert_eq!(o.size, 64 << 20);
        assert_eq!(o.direction, Direction::Write);
        assert_eq!(o.cache, CacheType::WriteBack);
        assert_eq!(o.reps, 5);
    }

    #[test]
    fn options_and_errors() {
        let o = p(&[
            "-s",
            "1M",
            "-r",
            "2",
            "--direction",
            "both",
            "--cache",
            "wc",
            "--machine",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.size, o.reps, o.direction, o.cache, o.machine),
            (1 << 20, 2, Direction::Both, CacheType::WriteCombining, true)
        );
        assert_eq!(o.direction.dirs(), [Dir::Write, Dir::Read]);
        let usage = |a: &[&str], text: &str| match p(a) {
            Err(ToolError::Usage(m)) => assert!(m.contains(text), "{a:?}: {m}"),
            other => panic!("{a:?}: {other:?}"),
        };
        usage(&["--direction", "sideways"], "sideways");
        usage(&["--cache", "xx"], "xx");
        usage(&["-s", "0"], "positive");
        usage(&["-r", "0"], "positive");
        usage(&["--offset", "100"], "page-aligned");
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let o = p(&["-d", "/nonexistent/ivshmem0"]).unwrap().unwrap();
        let e = run(&o).unwrap_err();
        assert_eq!(e.errno(), Some(ENOENT));
        assert!(
            e.to_string().contains("is the ivshmem module loaded"),
            "{e}"
        );
    }

    #[test]
    fn too_small_region_is_refused() {
        let o = p(&["-s", "64M"]).unwrap().unwrap();
        assert!(check_fits(&o, 64 << 20).is_ok());
        let e = check_fits(&o, 4 << 20).unwrap_err().to_string();
        assert!(e.contains("too small") && e.contains("--size"), "{e}");
        let o = p(&["-s", "4M", "--offset", "4K"]).unwrap().unwrap();
        assert!(check_fits(&o, 4 << 20).is_err());
        let o = p(&["-s", "4K", "--offset", "0xfffffffffffff000"])
            .unwrap()
            .unwrap();
        assert!(check_fits(&o, 4 << 20).is_err(), "overflow must not wrap");
    }

    #[test]
    fn bandwidth_arithmetic() {
        assert!((mbps(64_000_000, Duration::from_secs(1)) - 64.0).abs() < 1e-9);
    }

    #[test]
    fn shared_and_private_alternate_shared_first() {
        use Side::{Private as P, Shared as S};
        assert_eq!(schedule(1).collect::<Vec<_>>(), [S, P]);
        assert_eq!(schedule(3).collect::<Vec<_>>(), [S, P, S, P, S, P]);
    }

    #[test]
    fn median_and_best() {
        let s = |v: &[u64]| summarize(&ms(v)).unwrap();
        let d = Duration::from_millis;
        assert_eq!(
            s(&[7]),
            Summary {
                median: d(7),
                best: d(7)
            }
        );
        assert_eq!(
            s(&[50, 10, 30]),
            Summary {
                median: d(30),
                best: d(10)
            }
        );
        // An even count: the mean of the middle two; order does not matter.
        assert_eq!(
            s(&[40, 10, 30, 20]),
            Summary {
                median: d(25),
                best: d(10)
            }
        );
        // One slow outlier (a first touch, a busy host) moves the median little.
        assert_eq!(
            s(&[900, 10, 11, 12, 13]),
            Summary {
                median: d(12),
                best: d(10)
            }
        );
        assert_eq!(summarize(&[]), None);
    }

    /// Records every step, optionally failing the check of the N-th shared copy.
    #[derive(Default)]
    struct Log {
        steps: Vec<(&'static str, Side)>,
        fail_shared_check: Option<usize>,
    }

    impl Copier for Log {
        fn clear(&mut self, side: Side) -> Result<(), ToolError> {
            self.steps.push(("clear", side));
            Ok(())
        }
        fn copy(&mut self, side: Side) {
            self.steps.push(("copy", side));
        }
        fn verify(&mut self, side: Side) -> Result<(), ToolError> {
            self.steps.push(("verify", side));
            let n = self
                .steps
                .iter()
                .filter(|s| *s == &("verify", Side::Shared))
                .count();
            match self.fail_shared_check {
                Some(k) if side == Side::Shared && n == k => {
                    Err(ToolError::Check("differs".into()))
                }
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn warm_up_then_alternating_verified_copies() {
        let mut log = Log::default();
        let t = measure(&mut log, 2).unwrap();
        assert_eq!((t.shared.len(), t.private.len()), (2, 2));
        let mut want = Vec::new();
        // Warm-up, then the schedule: every copy between a clear and a check.
        for side in [Side::Shared, Side::Private].into_iter().chain(schedule(2)) {
            want.extend([("clear", side), ("copy", side), ("verify", side)]);
        }
        assert_eq!(log.steps, want);
    }

    #[test]
    fn a_failed_check_stops_the_measurement() {
        let mut log = Log {
            fail_shared_check: Some(2),
            ..Log::default()
        };
        let e = measure(&mut log, 5).unwrap_err();
        assert!(matches!(e, ToolError::Check(_)), "{e:?}");
        // Warm-up (6 steps) and the first timed shared copy (3): the second one failed.
        assert_eq!(log.steps.len(), 6 + 3);
    }

    /// A shared mapping of /dev/zero stands in for the device: same mmap, no driver.
    fn zero_mapping(len: usize) -> Mapping {
        Device::open("/dev/zero").unwrap().map(0, len).unwrap()
    }

    #[test]
    fn real_copies_arrive_in_both_directions() {
        let len = 256 << 10;
        let map = zero_mapping(len);
        let mut src = vec![0u8; len];
        pattern::fill(SEED, 0, &mut src);
        let mut dst = vec![0u8; len];
        for dir in [Dir::Write, Dir::Read] {
            let t = measure(&mut MemCopier::new(dir, &map, &src, &mut dst), 3).unwrap();
            assert_eq!((t.shared.len(), t.private.len()), (3, 3));
            assert_eq!(dst, src);
        }
        let mut back = vec![0u8; len];
        map.read(0, &mut back).unwrap();
        assert_eq!(back, src);
    }

    #[test]
    fn a_copy_that_did_not_happen_is_caught() {
        let len = 64 << 10;
        let map = zero_mapping(len);
        let mut src = vec![0u8; len];
        pattern::fill(SEED, 0, &mut src);
        let first = src.iter().position(|&b| b != 0).unwrap();
        let mut dst = vec![0u8; len];
        let mut c = MemCopier::new(Dir::Write, &map, &src, &mut dst);
        c.clear(Side::Shared).unwrap();
        c.copy(Side::Shared);
        c.verify(Side::Shared).unwrap();
        // Cleared and not copied again: the stale bytes of the last copy must not pass.
        c.clear(Side::Shared).unwrap();
        let e = c.verify(Side::Shared).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("verification failed: shared memory differs at byte {first}")
        );
        c.clear(Side::Private).unwrap();
        let e = c.verify(Side::Private).unwrap_err().to_string();
        assert!(
            e.starts_with("verification failed: private copy differs"),
            "{e}"
        );
    }

    #[test]
    fn output_keeps_what_scripts_parse() {
        let o = p(&["-s", "4M", "-r", "3"]).unwrap().unwrap();
        let d = Duration::from_millis;
        let shm = Summary {
            median: d(8),
            best: d(4),
        };
        let private = Summary {
            median: d(4),
            best: d(2),
        };
        let human = report(&o, Dir::Write, shm, private);
        let lines: Vec<&str> = human.lines().collect();
        assert_eq!(lines.len(), 2, "{human}");
        assert!(lines[0].starts_with("memcpy bandwidth: 524.29 MB/s (to shared memory, 4 MiB, median of 3, best 1048.58 MB/s"), "{human}");
        assert!(
            lines[1].starts_with("private memory:   1048.58 MB/s"),
            "{human}"
        );
        assert!(lines[1].ends_with("ratio shared/private 0.50)"), "{human}");
        let o = p(&["-s", "4M", "-r", "3", "--machine"]).unwrap().unwrap();
        assert_eq!(
            report(&o, Dir::Read, shm, private),
            "direction=read size=4194304 reps=3 cache=wb shm_best_mbps=1048.58 \
             private_best_mbps=2097.15 shm_mbps=524.29 private_mbps=1048.58 ratio=0.500"
        );
    }
}
