//! `ivshmem`: inspect a device and write or check reproducible patterns in its shared memory.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ivshmem::args::{device_path, Args};
use ivshmem::placed::{self, PlacedMapping};
use ivshmem::{os, pattern, uapi, CacheType, Device, GrantedCache, ToolError};

extern "C" fn ignore(_: i32) {}

/// Installs a do-nothing SIGUSR1 handler, so the signal interrupts a wait (EINTR).
fn catch_sigusr1() {
    // SAFETY: The handler does nothing, so it is safe to run at any point.
    unsafe { os::set_signal_handler(os::Signal::USR1, ignore) };
}

const PROG: &str = "ivshmem";

const HELP: &str = "\
usage: ivshmem info   [-d DEVICE] [--cache wb|wc|uc]
       ivshmem fill   [-d DEVICE] --seed N [--offset O] [--len L] [--cache wb|wc|uc] [PLACE]
       ivshmem verify [-d DEVICE] --seed N [--offset O] [--len L] [--cache wb|wc|uc] [PLACE]
       ivshmem touch  [-d DEVICE] [--offset O] [--len L] [--cache wb|wc|uc] [PLACE]
       ivshmem ring   [-d DEVICE] --peer ID [--vector V]
       ivshmem wait   [-d DEVICE] [--vector V] [--timeout MS] [--catch-signal]
       ivshmem pattern --seed N [--offset O] --len L | --check

  info     size, PCI address, peer id, vectors, mode and cache type of the device, and
           the type mappings really get (x86: `pat`, what PAT granted the cache type,
           which --cache selects; arm64: `attr`, the memory attribute it selects)
  fill     write pattern N over [O, O+L) (byte i of the region gets pattern(N, i))
  verify   check [O, O+L) holds pattern N; exit 1 at the first difference
  touch    time mmap of [O, O+L) and a first read of each of its pages; print the
           mapping's address and the process's page tables (VmPTE) before and after
  ring     interrupt vector V (default 0) of peer ID (doorbell devices)
  wait     wait for an interrupt on vector V; MS: -1 forever (default), 0 don't block;
           prints the count, or the errno (EAGAIN, ETIMEDOUT, EINTR, ENODEV) and exits 1;
           --catch-signal: SIGUSR1 interrupts the wait instead of killing the process
  pattern  write bytes [O, O+L) of pattern N to standard output (test data for pipes);
           --check reads standard input instead and checks it is pattern N from O on:
           prints the byte count, exits 1 at the first difference (a prefix passes)

  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0)
      --offset O        start (default 0);  --len L  length (default: to the end)
  -h, --help            this help

  PLACE: which pages are mapped, and where (the driver maps with 2 MiB entries
  where the address is congruent to the offset modulo that size):
      --map-offset MO --map-len ML   map [MO, MO+ML) (default: the pages of the range),
                                     which must hold the range
      --align A [--skew S]           map it at an address congruent to MO+S modulo A
                                     (default: where the library maps, Device::map);
                                     --skew 4K forbids huge entries
  Errors of mmap name the errno first (EBUSY: ...).";

struct Range {
    dev: Device,
    offset: u64,
    len: u64,
}

fn open_range(args: &mut Args) -> Result<Range, ToolError> {
    let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))?;
    let size = dev.size()?;
    let offset = args.size(&["--offset"])?.unwrap_or(0);
    if offset > size {
        return Err(ToolError::Failed(format!(
            "offset {offset} is beyond the {size}-byte region"
        )));
    }
    let len = args.size(&["--len"])?.unwrap_or(size - offset);
    if len > size - offset {
        return Err(ToolError::Failed(format!(
            "{len} bytes at {offset} exceed the {size}-byte region"
        )));
    }
    Ok(Range { dev, offset, len })
}

/// What to map for a range, and where (the PLACE options).
#[derive(Debug, PartialEq)]
struct Window {
    offset: u64,
    len: u64,
    /// `Some((align, skew))`: the tool places the mapping; `None`: the library does.
    place: Option<(usize, usize)>,
}

/// The PLACE options for the range `[start, start + n)`.
fn window(args: &mut Args, start: u64, n: u64) -> Result<Window, ToolError> {
    let offset = args.size(&["--map-offset"])?.unwrap_or(start & !4095);
    let len = match args.size(&["--map-len"])? {
        Some(l) => l,
        None if offset <= start => (start - offset + n).div_ceil(4096) * 4096,
        None => 0,
    };
    if offset > start || offset.saturating_add(len) < start + n {
        return Err(ToolError::usage(format!(
            "the mapping [{offset}, {}) does not hold the range [{start}, {})",
            offset.saturating_add(len),
            start + n
        )));
    }
    let align = args.size(&["--align"])?;
    let skew = args.size(&["--skew"])?;
    let place = match (align, skew) {
        (None, None) => None,
        (a, s) => {
            let align = a.map_or_else(|| placed::natural_align(len as usize), |a| a as usize);
            if !align.is_power_of_two() || align < 4096 {
                return Err(ToolError::usage(format!(
                    "--align {align}: a power of two of at least 4096"
                )));
            }
            Some((align, s.unwrap_or(0) as usize))
        }
    };
    Ok(Window { offset, len, place })
}

/// A mapping made by the library, or placed by the tool.
enum Map {
    Lib(ivshmem::Mapping),
    Own(PlacedMapping),
}

impl Map {
    fn addr(&self) -> usize {
        match self {
            Map::Lib(m) => m.as_ptr() as usize,
            Map::Own(m) => m.as_ptr() as usize,
        }
    }

    fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), ToolError> {
        match self {
            Map::Lib(m) => Ok(m.read(at, buf)?),
            Map::Own(m) => Ok(m.read(at, buf)?),
        }
    }

    fn write(&self, at: usize, data: &[u8]) -> Result<(), ToolError> {
        match self {
            Map::Lib(m) => Ok(m.write(at, data)?),
            Map::Own(m) => Ok(m.write(at, data)?),
        }
    }

    fn load_u32(&self, at: usize) -> Result<u32, ToolError> {
        match self {
            Map::Lib(m) => Ok(m.load_u32(at & !3)?),
            Map::Own(m) => Ok(m.load_u32(at)?),
        }
    }
}

/// Maps window `w` of the range's device; returns the mapping and the range's start in it.
/// A failed mmap names its errno first: `EBUSY: /dev/ivshmem1: mmap: ...`.
fn map(r: &Range, w: &Window) -> Result<(Map, usize), ToolError> {
    let at = (r.offset - w.offset) as usize;
    let len = usize::try_from(w.len)
        .map_err(|_| ToolError::Failed(format!("{} bytes do not fit in memory", w.len)))?;
    let m = match w.place {
        None => Map::Lib(r.dev.map(w.offset, len).map_err(ToolError::Errno)?),
        Some((align, skew)) => {
            let fd = std::os::fd::AsFd::as_fd(&r.dev);
            Map::Own(
                PlacedMapping::new(fd, w.offset, len, align, skew).map_err(|e| {
                    ToolError::Failed(format!(
                        "{}: {}: mmap: {e}",
                        placed::errno_name(&e),
                        r.dev.path()
                    ))
                })?,
            )
        }
    };
    Ok((m, at))
}

/// Writes bytes `[offset, offset + len)` of pattern `seed` to standard output.
fn write_pattern(seed: u64, offset: u64, len: u64) -> Result<(), ToolError> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        pattern::fill(seed, offset + done, &mut buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ToolError::sys("standard output", e))?;
        done += n as u64;
    }
    out.flush()
        .map_err(|e| ToolError::sys("standard output", e))
}

/// Checks that standard input is pattern `seed` from `offset` on, for as long as it goes.
fn check_pattern(seed: u64, offset: u64) -> Result<(), ToolError> {
    let mut input = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ToolError::sys("standard input", e)),
        };
        pattern::fill(seed, offset + done, &mut want[..n]);
        if let Some(k) = (0..n).find(|&k| buf[k] != want[k]) {
            return Err(ToolError::Check(format!(
                "byte {} of the input is {:#04x}, pattern {seed} has {:#04x} at offset {}",
                done + k as u64,
                buf[k],
                want[k],
                offset + done + k as u64
            )));
        }
        done += n as u64;
    }
    println!("{done} bytes match pattern {seed}");
    Ok(())
}

/// `info`'s line on the type mappings really get: on x86 the type PAT granted (`pat wb`, or
/// `pat uc- (wb requested: ...)` where the MTRRs refuse write-back), on arm64 the memory
/// attribute the type selects (nothing there overrides it).
fn granted_line(cache: Option<CacheType>, info: &uapi::IvshmemInfo) -> String {
    let Some(cache) = cache else {
        return "pat unknown".into();
    };
    if cfg!(target_arch = "aarch64") {
        return match cache {
            CacheType::WriteBack => "attr normal (write-back)",
            CacheType::WriteCombining => "attr normal-nc",
            CacheType::Uncached => "attr device-ngnrne",
        }
        .into();
    }
    match GrantedCache::from_info(info) {
        None => "pat unknown (the driver does not report it)".into(),
        Some(g) if g.is(cache) => format!("pat {}", g.name()),
        Some(g) if cache == CacheType::WriteBack && g == GrantedCache::UncachedMinus => {
            "pat uc- (wb requested: BAR2 lies where the MTRRs make memory uncachable; place \
             it above 4 GiB, see README's troubleshooting)"
                .into()
        }
        Some(g) => format!("pat {} ({} requested)", g.name(), cache.name()),
    }
}

fn run(cmd: &str, mut args: Args) -> Result<(), ToolError> {
    match cmd {
        "info" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))?;
            if let Some(c) = args.parsed::<CacheType>(&["--cache"])? {
                dev.set_cache(c)?;
            }
            args.finish()?;
            let info = dev.info()?;
            println!("device {}", dev.path());
            println!("size {}", info.size);
            let name = info.pci_name.split(|&b| b == 0).next().unwrap_or_default();
            println!("pci {}", String::from_utf8_lossy(name));
            if info.peer_id == uapi::IVSHMEM_NO_PEER {
                println!("peer_id none");
            } else {
                println!("peer_id {}", info.peer_id);
            }
            println!("vectors {}", info.vectors);
            let doorbell = info.flags & uapi::IVSHMEM_FLAG_DOORBELL != 0;
            println!("mode {}", if doorbell { "doorbell" } else { "plain" });
            let cache = CacheType::from_raw(info.cache);
            println!("cache {}", cache.map_or("unknown", |c| c.name()));
            println!("{}", granted_line(cache, &info));
        }
        "fill" | "verify" => {
            let seed = args
                .parsed::<u64>(&["--seed"])?
                .ok_or_else(|| ToolError::usage("--seed is required"))?;
            let cache = args.parsed::<CacheType>(&["--cache"])?;
            let r = open_range(&mut args)?;
            let w = window(&mut args, r.offset, r.len)?;
            args.finish()?;
            if let Some(c) = cache {
                r.dev.set_cache(c)?;
            }
            let (m, at) = map(&r, &w)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < r.len {
                let n = (r.len - done).min(buf.len() as u64) as usize;
                let pos = r.offset + done;
                if cmd == "fill" {
                    pattern::fill(seed, pos, &mut buf[..n]);
                    m.write(at + done as usize, &buf[..n])?;
                } else {
                    m.read(at + done as usize, &mut buf[..n])?;
                    if let Some(k) = pattern::first_mismatch(seed, pos, &buf[..n]) {
                        let off = pos + k as u64;
                        return Err(ToolError::Check(format!(
                            "mismatch at offset {off}: found {:#04x}, pattern {seed} has {:#04x}",
                            buf[k],
                            pattern::byte(seed, off)
                        )));
                    }
                }
                done += n as u64;
            }
            let verb = if cmd == "fill" { "filled" } else { "verified" };
            println!(
                "{verb} {} bytes at offset {} with pattern {seed}",
                r.len, r.offset
            );
        }
        "pattern" => {
            let seed = args
                .parsed::<u64>(&["--seed"])?
                .ok_or_else(|| ToolError::usage("--seed is required"))?;
            let offset = args.size(&["--offset"])?.unwrap_or(0);
            let check = args.flag(&["--check"]);
            let len = args.size(&["--len"])?;
            args.finish()?;
            if check {
                check_pattern(seed, offset)?;
            } else {
                let len = len.ok_or_else(|| ToolError::usage("--len or --check is required"))?;
                write_pattern(seed, offset, len)?;
            }
        }
        "touch" => {
            let cache = args.parsed::<CacheType>(&["--cache"])?;
            let r = open_range(&mut args)?;
            let w = window(&mut args, r.offset, r.len)?;
            args.finish()?;
            if let Some(c) = cache {
                r.dev.set_cache(c)?;
            }
            let pte =
                || ivshmem::os::vm_pte_kb().map_err(|e| ToolError::sys("/proc/self/status", e));
            let pte_before = pte()?;
            let t = Instant::now();
            let (m, at) = map(&r, &w)?;
            let mapped = t.elapsed();
            let t = Instant::now();
            let mut sum = 0u32;
            for page in (0..r.len as usize).step_by(4096) {
                sum = sum.wrapping_add(m.load_u32(at + page)?);
            }
            let touched = t.elapsed();
            let pte_after = pte()?;
            println!(
                "mmap of {} bytes at {:#x}: {:.3} ms; first read of {} pages: {:.3} ms \
                 (checksum {sum:#x}); VmPTE {pte_before} -> {pte_after} kB",
                r.len,
                m.addr() + at,
                mapped.as_secs_f64() * 1e3,
                r.len.div_ceil(4096),
                touched.as_secs_f64() * 1e3
            );
        }
        "ring" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))?;
            let peer = args
                .parsed::<u32>(&["--peer"])?
                .ok_or_else(|| ToolError::usage("--peer is required"))?;
            let vector = args.parsed::<u32>(&["--vector"])?.unwrap_or(0);
            args.finish()?;
            dev.ring(peer, vector)?;
            println!("rang peer {peer} vector {vector}");
        }
        "wait" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))?;
            let vector = args.parsed::<u32>(&["--vector"])?.unwrap_or(0);
            let ms = args.parsed::<i64>(&["--timeout"])?.unwrap_or(-1);
            if args.flag(&["--catch-signal"]) {
                catch_sigusr1();
            }
            args.finish()?;
            let timeout = (ms >= 0).then(|| Duration::from_millis(ms as u64));
            println!("waiting");
            // The errno is the answer: EAGAIN, ETIMEDOUT, EINTR, ENODEV, named first.
            let n = dev.wait(vector, timeout).map_err(ToolError::Errno)?;
            println!("{n} interrupt(s) on vector {vector}");
        }
        _ => {
            return Err(ToolError::Usage(format!(
                "unknown command '{cmd}' (see --help)"
            )))
        }
    }
    Ok(())
}

fn main() {
    ivshmem::args::die_on_closed_output();
    let mut args = Args::from_env();
    if args.flag(&["-h", "--help"]) {
        println!("{HELP}");
        return;
    }
    let Some(cmd) = args.subcommand() else {
        ToolError::usage("no command given (see --help)").exit(PROG)
    };
    if let Err(e) = run(&cmd, args) {
        e.exit(PROG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ivshmem::errno::{ENOENT, ENOTTY};

    fn run_args(cmd: &str, a: &[&str]) -> Result<(), ToolError> {
        run(cmd, Args::new(a.iter().copied()))
    }

    #[test]
    fn usage_errors_exit_2() {
        for (cmd, a, text) in [
            ("frob", &[][..], "unknown command 'frob'"),
            ("fill", &["-d", "/nonexistent/x"][..], "--seed is required"),
            ("ring", &["-d", "/dev/null"][..], "--peer is required"),
            ("verify", &["--seed", "x"][..], "bad value 'x' for --seed"),
            (
                "wait",
                &["-d", "/dev/null", "--vector"][..],
                "option --vector needs a value",
            ),
        ] {
            match run_args(cmd, a) {
                Err(e @ ToolError::Usage(_)) => {
                    assert!(e.to_string().contains(text), "{cmd} {a:?}: {e}");
                    assert_eq!(e.exit_code(), 2);
                }
                other => panic!("{cmd} {a:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn windows_hold_the_range_and_place_where_asked() {
        let w = |a: &[&str], start, n| window(&mut Args::new(a.iter().copied()), start, n);
        // Default: the pages of the range, placed by the library.
        assert_eq!(
            w(&[], 4097, 8192).unwrap(),
            Window {
                offset: 4096,
                len: 12288,
                place: None
            }
        );
        let g = 1u64 << 30;
        let a = ["--map-offset", "0", "--map-len", "2G", "--align", "1G"];
        assert_eq!(
            w(&a, g - 4096, 8192).unwrap(),
            Window {
                offset: 0,
                len: 2 * g,
                place: Some((1 << 30, 0))
            }
        );
        // A skew alone takes the library's alignment for the length.
        let a = ["--map-offset", "0", "--map-len", "64M", "--skew", "4K"];
        assert_eq!(w(&a, 0, 4096).unwrap().place, Some((2 << 20, 4096)));
        for (a, text) in [
            (&["--map-offset", "8192"][..], "does not hold the range"),
            (&["--map-len", "4096"][..], "does not hold the range"),
            (&["--align", "3000"][..], "a power of two"),
        ] {
            match w(a, 4096, 8192) {
                Err(e @ ToolError::Usage(_)) => assert!(e.to_string().contains(text), "{a:?}: {e}"),
                other => panic!("{a:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn device_errors_carry_the_errno() {
        let e = run_args("info", &["-d", "/nonexistent/ivshmem0"]).unwrap_err();
        assert!(matches!(e, ToolError::Device(_)), "{e:?}");
        assert_eq!((e.errno(), e.exit_code()), (Some(ENOENT), 1));
        let e = run_args("ring", &["-d", "/dev/null", "--peer", "1"]).unwrap_err();
        assert!(matches!(e, ToolError::Device(_)), "{e:?}");
        assert_eq!(e.errno(), Some(ENOTTY));
    }

    #[test]
    fn wait_names_the_errno_first() {
        let e = run_args("wait", &["-d", "/dev/null", "--timeout", "0"]).unwrap_err();
        assert!(matches!(e, ToolError::Errno(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("ENOTTY: /dev/null: ioctl: "),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
    }
}
