//! Host benchmark of channels between two processes on one memfd: throughput for sizes from
//! 64 B to 1 MiB (messages, stream copies, stream zero-copy) and the round trip of a 64-byte
//! message (spinning, and sleeping on eventfds as a doorbell would).
//!
//! ```text
//! cargo run --release --example channel_bench [-- SECONDS_PER_POINT]
//! ```
//!
//! The process runs itself again as the peer (`--peer`), passing the memfd and two eventfds.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::channel::{Channel, FdWaker, Kind, Options, Region};

use ivshmem::os;

const SIZES: [usize; 9] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
];
const RING: u64 = 4 << 20;
const PINGS: usize = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Messages,
    Copy,
    ZeroCopy,
}

struct Ctx {
    region: Region,
    /// Own eventfd, the peer's eventfd.
    efd: (RawFd, RawFd),
    secs: f64,
}

impl Ctx {
    fn opts(&self, kind: Kind, sleeping: bool) -> Options {
        let o = Options::new().kind(kind).capacity(RING);
        if !sleeping {
            return o;
        }
        // SAFETY: Descriptors this process owns and keeps open for its whole life; the
        // copies are owned by the waker.
        let (a, b) = unsafe {
            (
                BorrowedFd::borrow_raw(self.efd.0).try_clone_to_owned(),
                BorrowedFd::borrow_raw(self.efd.1).try_clone_to_owned(),
            )
        };
        o.spin(0).waker(Arc::new(FdWaker::eventfds(
            a.expect("dup"),
            b.expect("dup"),
        )))
    }
}

/// Sends `size`-byte units for about `secs`, then a zero-length end marker; the peer answers
/// with one byte when it has everything. Returns bytes per second.
fn throughput(ctx: &Ctx, mode: Mode, size: usize, peer: bool) -> io::Result<f64> {
    let kind = if mode == Mode::Messages {
        Kind::Messages
    } else {
        Kind::Stream
    };
    let name = format!("t{}-{size}", mode as u8);
    let mut ch = Channel::open(&ctx.region, &name, &ctx.opts(kind, false))?;
    let mut buf = vec![0x5au8; size];
    if peer {
        let mut total = 0u64;
        match mode {
            Mode::Messages => {
                let mut msg = Vec::with_capacity(size);
                while let Some(n) = ch.recv(&mut msg)? {
                    total += n as u64;
                }
            }
            Mode::Copy => loop {
                let n = io::Read::read(&mut ch, &mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            },
            Mode::ZeroCopy => loop {
                let s = ch.read_slice()?;
                if s.is_empty() {
                    break;
                }
                let n = s.len();
                total += n as u64;
                s.release(n)?;
            },
        }
        std::hint::black_box(total);
        return Ok(0.0);
    }
    let start = Instant::now();
    let mut sent = 0u64;
    let mut rounds = 0u32;
    loop {
        match mode {
            Mode::Messages => ch.send(&buf)?,
            Mode::Copy => ch.write_all(&buf)?,
            Mode::ZeroCopy => {
                let mut left = size;
                while left > 0 {
                    let mut s = ch.write_slice()?;
                    let n = s.len().min(left);
                    // The payload is produced in place (a fill stands in for real work).
                    // SAFETY: `n` bytes of the slice are ours until committed.
                    unsafe { std::ptr::write_bytes(s.as_mut_ptr(), 0x5a, n) };
                    s.commit(n)?;
                    left -= n;
                }
            }
        }
        sent += size as u64;
        rounds += 1;
        if rounds.is_multiple_of(64) && start.elapsed().as_secs_f64() > ctx.secs {
            break;
        }
    }
    ch.close_write()?;
    ch.drain()?;
    buf.truncate(0);
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// 64-byte ping-pong; returns sorted round-trip times.
fn round_trips(ctx: &Ctx, sleeping: bool, hint: bool, peer: bool) -> io::Result<Vec<Duration>> {
    let name = format!("rtt{}{}", sleeping as u8, hint as u8);
    let opts = ctx
        .opts(Kind::Messages, sleeping)
        .capacity(64 << 10)
        .spin_hint(hint);
    let mut ch = Channel::open(&ctx.region, &name, &opts)?;
    let mut msg = Vec::with_capacity(64);
    let ping = [7u8; 64];
    if peer {
        while ch.recv(&mut msg)?.is_some() {
            ch.send(&msg)?;
        }
        return Ok(Vec::new());
    }
    let mut times = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 1000 {
        let t = Instant::now();
        ch.send(&ping)?;
        ch.recv(&mut msg)?;
        if i >= 1000 {
            times.push(t.elapsed());
        }
    }
    ch.close_write()?;
    times.sort();
    Ok(times)
}

/// This machine's memcpy bandwidth for 1 MiB blocks, the yardstick for the copying modes.
fn memcpy_rate(secs: f64) -> f64 {
    let src = vec![0x5au8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        n += 1 << 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn run(ctx: &Ctx, peer: bool) -> io::Result<()> {
    if !peer {
        println!(
            "memcpy, one process, 1 MiB blocks: {:.0} MB/s",
            memcpy_rate(ctx.secs) / 1e6
        );
        println!("throughput, MB/s (two processes, one memfd, {RING} B rings)");
        println!(
            "{:>9} {:>10} {:>10} {:>10}",
            "size", "messages", "copy", "zero-copy"
        );
    }
    for size in SIZES {
        let mut row = Vec::new();
        for mode in [Mode::Messages, Mode::Copy, Mode::ZeroCopy] {
            row.push(throughput(ctx, mode, size, peer)? / 1e6);
        }
        if !peer {
            println!(
                "{size:>9} {:>10.0} {:>10.0} {:>10.0}",
                row[0], row[1], row[2]
            );
        }
    }
    if !peer {
        println!("\n64-byte round trip, us: p50 p90 p99 max");
    }
    for (sleeping, hint, what) in [
        (false, true, "spin"),
        (false, false, "spin, no pause"),
        (true, true, "eventfd"),
    ] {
        let t = round_trips(ctx, sleeping, hint, peer)?;
        if !peer {
            let p = |q: f64| t[((t.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            println!(
                "{what:>15} {:.2} {:.2} {:.2} {:.2}",
                p(0.5),
                p(0.9),
                p(0.99),
                p(1.0)
            );
        }
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--peer") {
        let fd: Vec<RawFd> = args[2..5].iter().map(|a| a.parse().unwrap()).collect();
        // SAFETY: The parent passed us this memfd.
        let file = unsafe { File::from_raw_fd(fd[0]) };
        let ctx = Ctx {
            region: Region::map_file(&file)?,
            efd: (fd[1], fd[2]),
            secs: 0.0,
        };
        return run(&ctx, true);
    }
    let secs = args.get(1).map_or(0.5, |s| s.parse().expect("seconds"));
    let file = File::from(os::memfd_create(c"channel-bench")?);
    file.set_len(3 * SIZES.len() as u64 * (2 * RING + 4096) + (8 << 20))?;
    let (a, b) = (FdWaker::eventfd()?, FdWaker::eventfd()?);
    let fds = [file.as_raw_fd(), b.as_raw_fd(), a.as_raw_fd()];
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--peer").args(fds.iter().map(|f| f.to_string()));
    // SAFETY: Only fcntl, async-signal-safe, between fork and exec, on descriptors this
    // process owns (open until the spawn returns).
    unsafe {
        cmd.pre_exec(move || {
            for fd in fds {
                os::set_inheritable(BorrowedFd::borrow_raw(fd))?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let ctx = Ctx {
        region: Region::map_file(&file)?,
        efd: (a.as_raw_fd(), b.as_raw_fd()),
        secs,
    };
    run(&ctx, false)?;
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("peer: {status}")));
    }
    Ok(())
}
