//! `ivshmem`: inspect a device and write or check reproducible patterns in its shared memory.

use std::time::{Duration, Instant};

use ivshmem::args::{device_path, usage_error, Args};
use ivshmem::sys::errno::{EAGAIN, EINTR, ENODEV, ETIMEDOUT};
use ivshmem::{pattern, sys, uapi, CacheType, Device};

extern "C" fn ignore(_: i32) {}

/// Installs a do-nothing SIGUSR1 handler, so the signal interrupts a wait (EINTR).
fn catch_sigusr1() {
    let handler: extern "C" fn(i32) = ignore;
    // SAFETY: the handler does nothing, so it is safe to run at any point.
    unsafe { sys::signal(sys::SIGUSR1, handler as usize) };
}

const PROG: &str = "ivshmem";

const HELP: &str = "\
usage: ivshmem info   [-d DEVICE]
       ivshmem fill   [-d DEVICE] --seed N [--offset O] [--len L] [--cache wb|wc|uc]
       ivshmem verify [-d DEVICE] --seed N [--offset O] [--len L]
       ivshmem touch  [-d DEVICE] [--offset O] [--len L] [--cache wb|wc|uc]
       ivshmem ring   [-d DEVICE] --peer ID [--vector V]
       ivshmem wait   [-d DEVICE] [--vector V] [--timeout MS] [--catch-signal]

  info     size, PCI address, peer id, vectors, mode and cache type of the device
  fill     write pattern N over [O, O+L) (byte i of the region gets pattern(N, i))
  verify   check [O, O+L) holds pattern N; exit 1 at the first difference
  touch    time mmap of [O, O+L) and a first read of each of its pages
  ring     interrupt vector V (default 0) of peer ID (doorbell devices)
  wait     wait for an interrupt on vector V; MS: -1 forever (default), 0 don't block;
           prints the count, or the errno (EAGAIN, ETIMEDOUT, EINTR, ENODEV) and exits 1;
           --catch-signal: SIGUSR1 interrupts the wait instead of killing the process

  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0)
      --offset O        start (default 0);  --len L  length (default: to the end)
  -h, --help            this help";

struct Range {
    dev: Device,
    offset: u64,
    len: u64,
}

fn open_range(args: &mut Args) -> Result<Range, String> {
    let dev =
        Device::open(&device_path(args.value(&["-d", "--device"])?)).map_err(|e| e.to_string())?;
    let size = dev.size().map_err(|e| e.to_string())?;
    let offset = args.size(&["--offset"])?.unwrap_or(0);
    if offset > size {
        return Err(format!("offset {offset} is beyond the {size}-byte region"));
    }
    let len = args.size(&["--len"])?.unwrap_or(size - offset);
    if len > size - offset {
        return Err(format!(
            "{len} bytes at {offset} exceed the {size}-byte region"
        ));
    }
    Ok(Range { dev, offset, len })
}

/// Maps the pages covering the range; returns the mapping and the range's start in it.
fn map(r: &Range) -> Result<(ivshmem::Mapping, usize), String> {
    let base = r.offset & !4095;
    let len = (r.offset - base + r.len).div_ceil(4096) * 4096;
    let m = r.dev.map(base, len as usize).map_err(|e| e.to_string())?;
    Ok((m, (r.offset - base) as usize))
}

fn run(cmd: &str, mut args: Args) -> Result<(), String> {
    match cmd {
        "info" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))
                .map_err(|e| e.to_string())?;
            args.finish()?;
            let info = dev.info().map_err(|e| e.to_string())?;
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
            let cache = CacheType::from_raw(info.cache).map_or("unknown", |c| c.name());
            println!("cache {cache}");
        }
        "fill" | "verify" => {
            let seed = args
                .parsed::<u64>(&["--seed"])?
                .ok_or("--seed is required")?;
            let cache = args.parsed::<CacheType>(&["--cache"])?;
            let r = open_range(&mut args)?;
            args.finish()?;
            if let Some(c) = cache {
                r.dev.set_cache(c).map_err(|e| e.to_string())?;
            }
            let (m, at) = map(&r)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < r.len {
                let n = (r.len - done).min(buf.len() as u64) as usize;
                let pos = r.offset + done;
                if cmd == "fill" {
                    pattern::fill(seed, pos, &mut buf[..n]);
                    m.write(at + done as usize, &buf[..n])
                        .map_err(|e| e.to_string())?;
                } else {
                    m.read(at + done as usize, &mut buf[..n])
                        .map_err(|e| e.to_string())?;
                    if let Some(k) = pattern::first_mismatch(seed, pos, &buf[..n]) {
                        let off = pos + k as u64;
                        return Err(format!(
                            "mismatch at offset {off}: found {:#04x}, pattern {seed} has {:#04x}",
                            buf[k],
                            pattern::byte(seed, off)
                        ));
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
        "touch" => {
            let cache = args.parsed::<CacheType>(&["--cache"])?;
            let r = open_range(&mut args)?;
            args.finish()?;
            if let Some(c) = cache {
                r.dev.set_cache(c).map_err(|e| e.to_string())?;
            }
            let t = Instant::now();
            let (m, at) = map(&r)?;
            let mapped = t.elapsed();
            let t = Instant::now();
            let mut sum = 0u32;
            for page in (0..r.len as usize).step_by(4096) {
                sum = sum.wrapping_add(m.load_u32((at + page) & !3).map_err(|e| e.to_string())?);
            }
            let touched = t.elapsed();
            println!(
                "mmap of {} bytes: {:.3} ms; first read of {} pages: {:.3} ms (checksum {sum:#x})",
                r.len,
                mapped.as_secs_f64() * 1e3,
                r.len.div_ceil(4096),
                touched.as_secs_f64() * 1e3
            );
        }
        "ring" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))
                .map_err(|e| e.to_string())?;
            let peer = args
                .parsed::<u32>(&["--peer"])?
                .ok_or("--peer is required")?;
            let vector = args.parsed::<u32>(&["--vector"])?.unwrap_or(0);
            args.finish()?;
            dev.ring(peer, vector).map_err(|e| e.to_string())?;
            println!("rang peer {peer} vector {vector}");
        }
        "wait" => {
            let dev = Device::open(&device_path(args.value(&["-d", "--device"])?))
                .map_err(|e| e.to_string())?;
            let vector = args.parsed::<u32>(&["--vector"])?.unwrap_or(0);
            let ms = args.parsed::<i64>(&["--timeout"])?.unwrap_or(-1);
            if args.flag(&["--catch-signal"]) {
                catch_sigusr1();
            }
            args.finish()?;
            let timeout = (ms >= 0).then(|| Duration::from_millis(ms as u64));
            println!("waiting");
            match dev.wait(vector, timeout) {
                Ok(n) => println!("{n} interrupt(s) on vector {vector}"),
                Err(e) => {
                    let name = match e.errno() {
                        Some(EAGAIN) => "EAGAIN",
                        Some(ETIMEDOUT) => "ETIMEDOUT",
                        Some(EINTR) => "EINTR",
                        Some(ENODEV) => "ENODEV",
                        _ => "error",
                    };
                    return Err(format!("{name}: {e}"));
                }
            }
        }
        _ => return Err(format!("unknown command '{cmd}' (see --help)")),
    }
    Ok(())
}

fn main() {
    let mut args = Args::from_env();
    if args.flag(&["-h", "--help"]) {
        println!("{HELP}");
        return;
    }
    let cmd = match args.subcommand() {
        Some(c) => c,
        None => usage_error(PROG, "no command given (see --help)"),
    };
    if let Err(e) = run(&cmd, args) {
        let code = if e.contains("unknown") || e.contains("required") || e.contains("bad value") {
            2
        } else {
            1
        };
        eprintln!("{PROG}: {e}");
        std::process::exit(code);
    }
}
