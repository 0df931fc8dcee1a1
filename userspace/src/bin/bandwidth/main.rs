//! memcpy bandwidth to and from ivshmem shared memory, next to the same copy on this guest's
//! private memory. Wall-clock time; every copy is verified.
//!
//! The comparison is only fair if the two copies differ in the memory alone: not in first
//! touches (page faults, page-table population), not in the machine's load, not in address
//! layout. So every page is touched and one copy of each kind made, untimed, before any
//! timing; shared and private copies alternate; the private memory is placed relative to the
//! mapping (`placed.rs`); and the median (and best) of each is reported.

mod copies;
mod measure;
mod placed;

use std::time::Duration;

use ivshmem::args::{device_path, run_tool, Args};
use ivshmem::{pattern, CacheType, Device, ToolError};

use copies::{Dir, MemCopies};
use measure::{measure, summarize, Summary};
use placed::{Anon, GAP};

const PROG: &str = "bandwidth";
/// Pattern seed of the source buffer.
const SEED: u64 = 0xb4d;

const HELP: &str = "\
usage: bandwidth [-d DEVICE] [-s SIZE] [-r REPS] [--direction write|read|both]
                 [--cache wb|wc|uc] [--offset OFFSET] [--machine]

Copies SIZE bytes from a private buffer into the shared memory (write) and/or
out of it into the buffer (read), and the same between the buffer and a private
twin of the shared memory, and prints the median and best bandwidth of each,
and the ratio of the medians (shared/private).

Method: first, untimed, every page of the shared memory and of both private
buffers is touched and one full copy of each kind is made, so that neither side
is charged for first-touch page faults; then the REPS shared and REPS private
copies alternate (shared, private, shared, private, ...), so that a change in
the machine's load hits both alike. Before each copy its destination is cleared
and after it the copy is checked, both untimed. The twin lies a multiple of
16 GiB away from the mapping, and the buffer far from a multiple of any power of
two away from both, so that address-indexed caches and TLBs treat the two
copies alike.

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

const NOT_PLACED: &str = "no room to place the private buffers relative to the mapping: \
                          the ratio may include address-layout effects";

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
    // The data buffer GAP away from the mapping, its twin a multiple of STRIDE away.
    let (buf, twin) = (
        Anon::placed(map.as_ptr(), GAP, len),
        Anon::placed(map.as_ptr(), 0, len),
    );
    let placed = buf.is_some() && twin.is_some();
    if !placed {
        eprintln!("{PROG}: {}", NOT_PLACED);
    }
    let mut buf = buf.map_or_else(|| Anon::new(len), Ok)?;
    let mut twin = twin.map_or_else(|| Anon::new(len), Ok)?;
    pattern::fill(SEED, 0, &mut buf);
    for &dir in o.direction.dirs() {
        let times = measure(&mut MemCopies::new(dir, &map, &mut buf, &mut twin), o.reps)?;
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
    use ivshmem::errno::ENOENT;

    fn p(a: &[&str]) -> Result<Option<Opts>, ToolError> {
        parse(Args::new(a.iter().copied()))
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
