//! `ivshmem-bench`: channel throughput and round-trip latency, beside the same workload over
//! TCP between the same two ends, and the memcpy bandwidth they are measured against; and the
//! cost of mapping the shared memory. One side runs with `--listen` (receives, echoes), the
//! other drives and prints one `key=value` line per figure for `scripts/bench.py`.

mod bare;
mod common;
mod figures;
mod link;
mod map;
mod memcpy;
mod pause;
mod rtt;
mod stream;

use ivshmem::args::{device_path, parse_size, run_tool, Args};
use ivshmem::ToolError;

use common::{parse_common, Common};
use map::{map_cost, map_sizes};
use memcpy::memcpy;
use pause::pause;
use rtt::rtt;
use stream::{stream, Mode};

const PROG: &str = "ivshmem-bench";

const HELP: &str = "\
usage: ivshmem-bench stream [--listen] [COMMON] [--sizes LIST] [--seconds S]
                            [--modes copy,zero,bare]
       ivshmem-bench rtt    [--listen] [COMMON] [--rounds N] [--size BYTES] [--bare]
       ivshmem-bench memcpy [--sizes LIST] [--seconds S]
       ivshmem-bench pause  [--rounds N]
       ivshmem-bench map    [-d PATH] [--sizes LIST] [--rounds N]

stream: the driving side streams messages of each size for S seconds (default 1)
  through a byte-stream channel, in copying mode (Write::write_all from a buffer,
  Read::read into one) and zero-copy mode (write_slice + commit after one copy
  into the ring, as an application building its data there; read_slice, one
  load per 64-byte line in place, release). The listener counts and acknowledges
  every byte; the figure runs from the first byte sent to that acknowledgement.
  Mode bare (not by default) is the reference: the same copies through a bare
  single-producer single-consumer ring (two indices, nothing else) of the same
  size on the same device, printed as transport=bare.
rtt: the driving side sends N (default 10000) messages of BYTES (default 64)
  over a message channel and waits for each echo: percentiles of the round trip.
  --bare (on both sides) adds the reference: a spin ping-pong of one 8-byte word
  each way on the same device, printed as transport=bare.
memcpy: this machine's copy bandwidth for the same sizes (a hot source copied to
  successive places of a 2 MiB buffer, as into a ring).
pause: the cost of the CPU pause hint (std::hint::spin_loop) here: N (default
  10000000) rounds of a spin loop that loads a word, with and without the hint.
map: for each size (default 64M,1G,4G; sizes beyond the memory become its size),
  N times (default 1): mmap [0, size) of PATH through the library (Device::map,
  at an address aligned for huge pages), read one word of every 4 KiB page, and
  munmap; with the growth of the process's page tables (VmPTE) from before the
  mmap to after the reads. PATH: /dev/ivshmemN (default /dev/ivshmem0), the
  sysfs /sys/bus/pci/devices/BDF/resource2 (while no driver is bound), or a file.
  Then two references, mapped and unmapped untouched: PATH in one mmap call at
  the kernel's address (the driver's own cost, without the library's alignment),
  and anonymous PROT_NONE memory of the same size (the floor of any mmap here).
With --tcp ADDR:PORT, stream and rtt repeat the workload over TCP after the
channel (TCP_NODELAY for rtt): the listener binds ADDR:PORT, the other connects.
With --tcp unix:PATH, over a UNIX stream socket at PATH instead (transport=unix);
with --tcp pipe:PATH, over two named pipes, PATH.N.up and PATH.N.down for the Nth
connection, which the listener makes and removes (transport=pipe).

COMMON:
  --listen           the receiving / echoing side (start it first or second)
  -d DEVICE          /dev/ivshmemN or a regular file (host side; default /dev/ivshmem0)
  --peer-device PEER the isolated topology: DEVICE is this side's own, PEER the other's
                     (read-only; the other side swaps them); not with the bare references,
                     whose ring both sides write
  --doorbell DEV     with --peer-device: the device whose doorbell wakes
  --channel NAME     channel name prefix (default bench)
  --wait MODE        auto (default), spin or doorbell
  --spin N           spin rounds before sleeping (default: the library's; 0 for
                     rtt --wait doorbell, so it measures the doorbell)
  --pause on|off     the CPU pause hint in spin loops (default: the library's)
  --capacity BYTES   ring size per direction when creating (default 2M)
  --tcp ADDR:PORT    also run the workload over TCP (unix:PATH: a UNIX socket;
                     pipe:PATH: named pipes)
  --tcp-only         only the kernel baseline (needs --tcp)
Output (driving side): lines of key=value, e.g.
  stream transport=channel mode=copy size=4096 bytes=N secs=S mbps=X
  rtt transport=tcp wait=- pause=- size=64 rounds=N min_us=.. p50_us=.. p90_us=.. p99_us=.. max_us=..
  memcpy size=4096 bytes=N secs=S mbps=X
  pause rounds=N plain_ns=.. hint_ns=.. (per round)
  map path=P size=N round=R addr_align=A mmap_us=.. touch_us=.. munmap_us=.. vmpte_kb=..
  mapref size=N round=R call_mmap_us=.. call_munmap_us=.. anon_mmap_us=.. anon_munmap_us=..";

/// Message sizes 64 B to 1 MiB, powers of 4.
const SIZES: [usize; 8] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
];

#[derive(Debug)]
enum Cmd {
    Stream {
        c: Common,
        sizes: Vec<usize>,
        secs: f64,
        modes: Vec<Mode>,
    },
    Rtt {
        c: Common,
        rounds: usize,
        size: usize,
        bare: bool,
    },
    Memcpy {
        sizes: Vec<usize>,
        secs: f64,
    },
    Pause {
        rounds: u64,
    },
    Map {
        path: String,
        sizes: Option<Vec<u64>>,
        rounds: u32,
    },
}

fn parse_sizes(v: Option<String>) -> Result<Vec<usize>, ToolError> {
    let Some(v) = v else {
        return Ok(SIZES.to_vec());
    };
    v.split(',')
        .map(|s| match parse_size(s) {
            Ok(n) if (1..=1 << 30).contains(&n) => Ok(n as usize),
            Ok(_) => Err(ToolError::Usage(format!(
                "size '{s}' out of range (1 to 1G)"
            ))),
            Err(e) => Err(ToolError::Usage(format!("bad size '{s}' in --sizes: {e}"))),
        })
        .collect()
}

fn parse_secs(a: &mut Args) -> Result<f64, ToolError> {
    match a.parsed::<f64>(&["--seconds"])? {
        None => Ok(1.0),
        Some(s) if s > 0.0 && s <= 3600.0 => Ok(s),
        Some(s) => Err(ToolError::Usage(format!("--seconds {s} out of range"))),
    }
}

fn parse(mut a: Args) -> Result<Option<Cmd>, ToolError> {
    if a.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let cmd = match a.subcommand().as_deref() {
        Some("stream") => {
            let c = parse_common(&mut a)?;
            let sizes = parse_sizes(a.value(&["--sizes"])?)?;
            let secs = parse_secs(&mut a)?;
            let modes = match a.value(&["--modes"])? {
                None => vec![Mode::Copy, Mode::Zero],
                Some(v) => v
                    .split(',')
                    .map(|m| match m {
                        "copy" => Ok(Mode::Copy),
                        "zero" => Ok(Mode::Zero),
                        "bare" => Ok(Mode::Bare),
                        _ => Err(ToolError::Usage(format!(
                            "bad mode '{m}' (copy, zero, bare)"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            };
            Cmd::Stream {
                c,
                sizes,
                secs,
                modes,
            }
        }
        Some("rtt") => {
            let c = parse_common(&mut a)?;
            let rounds = a.parsed::<usize>(&["--rounds"])?.unwrap_or(10_000);
            if !(1..=10_000_000).contains(&rounds) {
                return Err(ToolError::usage("--rounds out of range (1 to 10000000)"));
            }
            let bare = a.flag(&["--bare"]);
            let size = a.size(&["--size"])?.unwrap_or(64);
            if !(1..=16 << 10).contains(&size) {
                return Err(ToolError::usage("--size out of range (1 to 16K)"));
            }
            Cmd::Rtt {
                c,
                rounds,
                size: size as usize,
                bare,
            }
        }
        Some("memcpy") => Cmd::Memcpy {
            sizes: parse_sizes(a.value(&["--sizes"])?)?,
            secs: parse_secs(&mut a)?,
        },
        Some("pause") => match a.parsed::<u64>(&["--rounds"])?.unwrap_or(10_000_000) {
            rounds @ 1..=10_000_000_000 => Cmd::Pause { rounds },
            _ => return Err(ToolError::usage("--rounds out of range")),
        },
        Some("map") => Cmd::Map {
            path: device_path(a.value(&["-d", "--device"])?),
            sizes: a.value(&["--sizes"])?.map(map_sizes).transpose()?,
            rounds: match a.parsed::<u32>(&["--rounds"])?.unwrap_or(1) {
                r @ 1..=1000 => r,
                _ => return Err(ToolError::usage("--rounds out of range (1 to 1000)")),
            },
        },
        Some(s) => {
            return Err(ToolError::Usage(format!(
                "unknown command '{s}' (stream, rtt, memcpy, pause or map)"
            )))
        }
        None => {
            return Err(ToolError::usage(
                "a command is required: stream, rtt, memcpy, pause or map",
            ))
        }
    };
    let rest = a.finish()?;
    if let Some(r) = rest.first() {
        return Err(ToolError::Usage(format!("unexpected argument '{r}'")));
    }
    Ok(Some(cmd))
}

fn run(cmd: Cmd) -> Result<(), ToolError> {
    match cmd {
        Cmd::Stream {
            c,
            sizes,
            secs,
            modes,
        } => stream(&c, &sizes, secs, &modes),
        Cmd::Rtt {
            c,
            rounds,
            size,
            bare,
        } => rtt(&c, rounds, size, bare),
        Cmd::Memcpy { sizes, secs } => {
            memcpy(&sizes, secs);
            Ok(())
        }
        Cmd::Pause { rounds } => {
            pause(rounds);
            Ok(())
        }
        Cmd::Map {
            path,
            sizes,
            rounds,
        } => map_cost(&path, sizes.as_deref(), rounds),
    }
}

fn main() {
    run_tool(PROG, HELP, parse, run);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::net::TcpListener;

    use ivshmem::channel::Wait;
    use ivshmem::local_socket::Addr;

    use crate::link::Baseline;

    fn p(a: &[&str]) -> Result<Option<Cmd>, ToolError> {
        parse(Args::new(a.iter().copied()))
    }

    #[test]
    fn options() {
        match p(&[
            "stream",
            "--listen",
            "--sizes",
            "64,4K",
            "--tcp",
            "10.0.7.1:5000",
        ]) {
            Ok(Some(Cmd::Stream {
                c, sizes, modes, ..
            })) => {
                assert!(
                    c.listen && c.tcp == Some(Baseline::Socket(Addr::Tcp("10.0.7.1:5000".into())))
                );
                assert_eq!(sizes, [64, 4096]);
                assert_eq!(modes, [Mode::Copy, Mode::Zero]);
            }
            other => panic!("{other:?}"),
        }
        match p(&["rtt", "--wait", "doorbell", "--rounds", "5"]) {
            Ok(Some(Cmd::Rtt {
                c, rounds, size, ..
            })) => {
                assert_eq!((c.wait, rounds, size), (Wait::Doorbell, 5, 64));
                assert_eq!(c.spin_rounds(true), Some(0));
                assert_eq!(c.spin_rounds(false), None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors() {
        let usage = |a: &[&str], text: &str| match p(a) {
            Err(ToolError::Usage(m)) => assert!(m.contains(text), "{a:?}: {m}"),
            other => panic!("{a:?}: {other:?}"),
        };
        usage(&[], "a command is required");
        usage(&["bogus"], "unknown command 'bogus'");
        usage(&["stream", "--sizes", "64,x"], "bad size 'x'");
        usage(&["stream", "--modes", "fast"], "bad mode 'fast'");
        usage(&["rtt", "--wait", "sleep"], "'sleep' is not a wait mode");
        usage(&["rtt", "--capacity", "1000"], "power of two");
        usage(&["rtt", "--tcp-only"], "needs --tcp");
        usage(
            &["rtt", "--tcp", "localhost"],
            "--tcp: 'localhost' is neither",
        );
        usage(&["rtt", "--pause", "yes"], "bad --pause 'yes'");
        usage(&["memcpy", "--seconds", "0"], "out of range");
        usage(&["pause", "--rounds", "0"], "out of range");
        usage(&["map", "--sizes", "1G,100"], "size '100' out of range");
        usage(&["map", "--sizes", "4x"], "bad size '4x'");
        usage(&["map", "--rounds", "0"], "--rounds out of range");
        usage(&["map", "--size", "4K"], "unknown option --size");
    }

    #[test]
    fn map_options() {
        match p(&["map", "-d", "1", "--sizes", "4K,2G", "--rounds", "3"]) {
            Ok(Some(Cmd::Map {
                path,
                sizes,
                rounds,
            })) => {
                assert_eq!(path, "/dev/ivshmem1");
                assert_eq!(sizes, Some(vec![4096, 2 << 30]));
                assert_eq!(rounds, 3);
            }
            other => panic!("{other:?}"),
        }
        match p(&["map"]) {
            Ok(Some(Cmd::Map { path, sizes, .. })) => {
                assert_eq!((path.as_str(), sizes), ("/dev/ivshmem0", None));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Runs `stream` (copying and `modes` at 64 B and 100,000 B) and `rtt` (with or without
    /// the bare reference) with the options `args`, the listening side on a thread.
    fn both_sides(args: &[&str], modes: &'static [Mode], bare: bool) {
        let common = |listen: bool| {
            let mut a = args.to_vec();
            if listen {
                a.push("--listen");
            }
            parse_common(&mut Args::new(a)).unwrap()
        };
        let run = move |c: &Common| {
            stream(c, &[64, 100_000], 0.05, modes).unwrap();
            rtt(c, 50, 64, bare).unwrap();
        };
        let server = {
            let c = common(true);
            std::thread::spawn(move || run(&c))
        };
        run(&common(false));
        server.join().unwrap();
    }

    /// Both sides of the kernel baselines without a network, a UNIX socket and named pipes.
    #[test]
    fn stream_and_rtt_over_a_unix_socket_and_named_pipes() {
        let base =
            std::env::temp_dir().join(format!("ivshmem-bench-baseline-{}", std::process::id()));
        for kind in ["unix", "pipe"] {
            let addr = format!("{kind}:{}.{kind}", base.display());
            both_sides(&["--tcp", &addr, "--tcp-only"], &[Mode::Copy], false);
            let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.path()
                        .to_string_lossy()
                        .starts_with(&*base.to_string_lossy())
                })
                .collect();
            assert!(left.is_empty(), "{kind}: left behind: {left:?}");
        }
    }

    /// Both sides of the stream and rtt workloads over TCP on the loopback, and over a
    /// channel on a file (copying, zero-copy, the bare references).
    #[test]
    fn stream_and_rtt_on_the_host() {
        let path = std::env::temp_dir().join(format!("ivshmem-bench-test-{}", std::process::id()));
        File::create(&path).unwrap().set_len(16 << 20).unwrap();
        let dev = path.to_str().unwrap().to_string();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        both_sides(
            &["-d", &dev, "--tcp", &addr, "--wait", "spin"],
            &[Mode::Copy, Mode::Zero, Mode::Bare],
            true,
        );
        std::fs::remove_file(&path).unwrap();
    }
}
