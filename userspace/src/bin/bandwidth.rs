//! memcpy bandwidth to and from ivshmem shared memory, next to the same copy on this guest's
//! private memory. Wall-clock time; every copy is verified.

use std::time::{Duration, Instant};

use ivshmem::args::{device_path, run_tool, Args};
use ivshmem::{pattern, CacheType, Device, Mapping};

const PROG: &str = "bandwidth";

const HELP: &str = "\
usage: bandwidth [-d DEVICE] [-s SIZE] [-r REPS] [--direction write|read|both]
                 [--cache wb|wc|uc] [--offset OFFSET] [--machine]

Copies SIZE bytes into (write) and/or out of (read) the shared memory REPS times,
and the same between two private buffers, and prints the best bandwidth of each.

  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0)
  -s, --size SIZE       bytes per copy (default 64M)
  -r, --reps N          repetitions; the best is reported (default 5)
      --direction DIR   write (to shared memory), read (from it) or both (default write)
      --cache TYPE      cache type of the mapping: wb (default), wc or uc
      --offset OFFSET   where in the shared memory (page-aligned, default 0)
      --machine         one key=value line per result, for scripts
  -h, --help            this help";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    Write,
    Read,
    Both,
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

fn parse(mut args: Args) -> Result<Option<Opts>, String> {
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
        Some(d) => return Err(format!("bad direction '{d}' (write, read or both)")),
    };
    let cache = args
        .parsed::<CacheType>(&["--cache"])?
        .unwrap_or(CacheType::WriteBack);
    let offset = args.size(&["--offset"])?.unwrap_or(0);
    let rest = args.finish()?;
    if !rest.is_empty() {
        return Err(format!("unexpected argument '{}'", rest[0]));
    }
    if size == 0 || reps == 0 {
        return Err("size and reps must be positive".into());
    }
    if offset % 4096 != 0 {
        return Err(format!("offset {offset} is not page-aligned"));
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

/// Best (shortest) time of `reps` runs of `f`.
fn best(reps: u32, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn copy_to(map: &Mapping, src: &[u8]) {
    // SAFETY: `map` is at least `src.len()` bytes (checked by the caller).
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), map.as_ptr(), src.len()) }
}

fn copy_from(map: &Mapping, dst: &mut [u8]) {
    // SAFETY: `map` is at least `dst.len()` bytes (checked by the caller).
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), dst.as_mut_ptr(), dst.len()) }
}

/// The copies must fit in the region: a clear error instead of a failed mmap.
fn check_fits(o: &Opts, region: u64) -> Result<(), String> {
    if o.offset.checked_add(o.size).is_none_or(|end| end > region) {
        return Err(format!(
            "{} has {} bytes of shared memory: too small for {} bytes at offset {} (use --size)",
            o.device, region, o.size, o.offset
        ));
    }
    Ok(())
}

fn run(o: &Opts) -> Result<(), String> {
    let dev = Device::open(&o.device).map_err(|e| e.to_string())?;
    let region = dev.size().map_err(|e| e.to_string())?;
    check_fits(o, region)?;
    let len = usize::try_from(o.size).map_err(|_| "size too large".to_string())?;
    dev.set_cache(o.cache).map_err(|e| e.to_string())?;
    let map = dev.map(o.offset, len).map_err(|e| e.to_string())?;
    if !o.machine {
        println!("--- mmap successful");
    }

    let mut src = vec![0u8; len];
    pattern::fill(0xb4d, 0, &mut src);
    let mut dst = vec![0u8; len];
    let mut results = Vec::new();

    if matches!(o.direction, Direction::Write | Direction::Both) {
        let shm = best(o.reps, || copy_to(&map, &src));
        copy_from(&map, &mut dst);
        if let Some(at) = pattern::first_mismatch(0xb4d, 0, &dst) {
            return Err(format!(
                "verification failed: shared memory differs at byte {at}"
            ));
        }
        let private = best(o.reps, || dst.copy_from_slice(&src));
        results.push(("write", shm, private));
    }
    if matches!(o.direction, Direction::Read | Direction::Both) {
        copy_to(&map, &src);
        dst.fill(0);
        let shm = best(o.reps, || copy_from(&map, &mut dst));
        if let Some(at) = pattern::first_mismatch(0xb4d, 0, &dst) {
            return Err(format!(
                "verification failed: copy out differs at byte {at}"
            ));
        }
        let private = best(o.reps, || dst.copy_from_slice(&src));
        results.push(("read", shm, private));
    }

    for (dir, shm, private) in results {
        let (s, p) = (mbps(o.size, shm), mbps(o.size, private));
        if o.machine {
            println!(
                "direction={dir} size={} reps={} cache={} shm_mbps={s:.2} private_mbps={p:.2} ratio={:.3}",
                o.size,
                o.reps,
                o.cache.name(),
                s / p
            );
        } else {
            let what = if dir == "write" { "to" } else { "from" };
            println!("memcpy bandwidth: {s:.2} MB/s ({what} shared memory, {} MiB, best of {}, cache {})", o.size >> 20, o.reps, o.cache.name());
            println!(
                "private memory:   {p:.2} MB/s (ratio shared/private {:.2})",
                s / p
            );
        }
    }
    Ok(())
}

fn main() {
    run_tool(PROG, HELP, parse, |o| run(&o));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Option<Opts>, String> {
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
        assert!(p(&["--direction", "sideways"])
            .unwrap_err()
            .contains("sideways"));
        assert!(p(&["--cache", "xx"]).unwrap_err().contains("xx"));
        assert!(p(&["-s", "0"]).is_err());
        assert!(p(&["--offset", "100"])
            .unwrap_err()
            .contains("page-aligned"));
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let o = p(&["-d", "/nonexistent/ivshmem0"]).unwrap().unwrap();
        assert!(run(&o)
            .unwrap_err()
            .contains("is the ivshmem module loaded"));
    }

    #[test]
    fn too_small_region_is_refused() {
        let o = p(&["-s", "64M"]).unwrap().unwrap();
        assert!(check_fits(&o, 64 << 20).is_ok());
        let e = check_fits(&o, 4 << 20).unwrap_err();
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
}
