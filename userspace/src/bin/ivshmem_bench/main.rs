//! `ivshmem-bench`: channel throughput and round-trip latency, beside the same workload over
//! TCP between the same two ends, and the memcpy bandwidth they are measured against; and the
//! cost of mapping the shared memory. One side runs with `--listen` (receives, echoes), the
//! other drives and prints one `key=value` line per figure for `scripts/bench.py`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ivshmem::args::{device_path, parse_size, run_tool, Args, Devices};
use ivshmem::channel::{Channel, Kind, Options, Wait};
use ivshmem::{Device, ToolError};

mod bare;

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
  --tcp ADDR:PORT    also run the workload over TCP
  --tcp-only         only TCP (needs --tcp)
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
/// Header of a stream phase: magic, operation, message size.
const MAGIC: u32 = u32::from_le_bytes(*b"IVBS");
const OP_COPY: u32 = 1;
const OP_ZERO: u32 = 2;
const OP_QUIT: u32 = 3;
const OP_BARE: u32 = 4;
/// How long the driving side retries connecting to a listener that is not up yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Copy,
    Zero,
    /// The bare ring reference (copying).
    Bare,
}

#[derive(Debug)]
struct Common {
    listen: bool,
    devices: Devices,
    channel: String,
    wait: Wait,
    spin: Option<u32>,
    pause: Option<bool>,
    capacity: u64,
    tcp: Option<String>,
    tcp_only: bool,
}

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

fn parse_common(a: &mut Args) -> Result<Common, ToolError> {
    let listen = a.flag(&["--listen"]);
    let tcp_only = a.flag(&["--tcp-only"]);
    let devices = a.devices()?;
    let channel = a.value(&["--channel"])?.unwrap_or_else(|| "bench".into());
    if channel.is_empty() || channel.len() > 28 {
        return Err(ToolError::usage("--channel: 1 to 28 bytes"));
    }
    let wait = a.parsed::<Wait>(&["--wait"])?.unwrap_or_default();
    let spin = a.parsed::<u32>(&["--spin"])?;
    let pause = match a.value(&["--pause"])?.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(p) => return Err(ToolError::Usage(format!("bad --pause '{p}' (on or off)"))),
    };
    let capacity = a.size(&["--capacity"])?.unwrap_or(2 << 20);
    if !capacity.is_power_of_two() || !(64..=1 << 30).contains(&capacity) {
        return Err(ToolError::usage(
            "--capacity must be a power of two from 64 to 1G",
        ));
    }
    let tcp = a.value(&["--tcp"])?;
    if tcp_only && tcp.is_none() {
        return Err(ToolError::usage("--tcp-only needs --tcp ADDR:PORT"));
    }
    Ok(Common {
        listen,
        devices,
        channel,
        wait,
        spin,
        pause,
        capacity,
        tcp,
        tcp_only,
    })
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

/// A connection the stream and rtt workloads run over: a channel or a TCP socket.
trait Link: Read + Write {
    /// Ends this side's stream: the peer reads the rest, then end-of-file.
    fn close_write(&mut self) -> io::Result<()>;
    /// The channel under this link, for zero-copy.
    fn channel(&mut self) -> Option<&mut Channel> {
        None
    }
}

impl Link for Channel {
    fn close_write(&mut self) -> io::Result<()> {
        Channel::close_write(self)
    }
    fn channel(&mut self) -> Option<&mut Channel> {
        Some(self)
    }
}

impl Link for TcpStream {
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

fn chan_err(what: &str, e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(format!("{what}: {e}"))
}

impl Common {
    fn options(&self, kind: Kind, rtt: bool) -> Options {
        // Round trips keep one message in flight: a small ring does.
        let capacity = if rtt { 64 << 10 } else { self.capacity };
        let mut o = Options::new()
            .kind(kind)
            .capacity(capacity)
            .open_timeout(Duration::from_secs(600));
        if let Some(n) = self.spin_rounds(rtt) {
            o = o.spin(n);
        }
        if let Some(p) = self.pause {
            o = o.spin_hint(p);
        }
        o
    }

    /// The spin budget: `--spin`, else none for rtt on the doorbell (so it measures the
    /// doorbell, not a spin that catches the echo first), else the library's default.
    fn spin_rounds(&self, rtt: bool) -> Option<u32> {
        match (self.spin, rtt, self.wait) {
            (Some(n), _, _) => Some(n),
            (None, true, Wait::Doorbell) => Some(0),
            _ => None,
        }
    }

    /// Opens channel `NAME.suffix` on the device or file.
    fn open(&self, suffix: &str, kind: Kind, rtt: bool) -> Result<Channel, ToolError> {
        let name = format!("{}.{suffix}", self.channel);
        let opts = self.options(kind, rtt).wait(self.wait);
        let (region, opts) = self.devices.open(&opts)?;
        Channel::open(&region, &name, &opts).map_err(|e| chan_err(&name, e))
    }

    /// The memory of the bare references: the payload of channel `NAME.bare`.
    fn bare_area(&self) -> Result<bare::Area, ToolError> {
        if self.devices.peer.is_some() {
            return Err(ToolError::usage(
                "the bare references need one device that both sides write: not with \
                 --peer-device",
            ));
        }
        bare::Area::new(self.open("bare", Kind::Stream, false)?)
    }

    fn tcp_addr(&self) -> &str {
        self.tcp.as_deref().unwrap_or_default()
    }

    fn wait_name(&self) -> &'static str {
        self.wait.name()
    }
}

fn listen_tcp(c: &Common) -> Result<Option<TcpListener>, ToolError> {
    match &c.tcp {
        Some(addr) if c.listen => TcpListener::bind(addr)
            .map(Some)
            .map_err(|e| ToolError::sys(format!("bind {addr}"), e)),
        _ => Ok(None),
    }
}

/// Connects to the listener, retrying while it is not up yet.
fn connect(addr: &str) -> Result<TcpStream, ToolError> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e)
                if start.elapsed() < CONNECT_PATIENCE
                    && matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(ToolError::sys(format!("connect {addr}"), e)),
        }
    }
}

fn accept(l: &TcpListener) -> Result<TcpStream, ToolError> {
    l.accept()
        .map(|(s, _)| s)
        .map_err(|e| ToolError::sys("accept", e))
}

fn io_err(what: &str) -> impl Fn(io::Error) -> ToolError + '_ {
    move |e| ToolError::sys(what, e)
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

// ---- stream ----

/// The driving side of one phase: `mode` messages of `size` bytes for `secs`. Returns the
/// bytes the listener acknowledged and the time to the acknowledgement.
fn stream_send(
    l: &mut dyn Link,
    mode: Mode,
    size: usize,
    secs: f64,
    src: &[u8],
    bare: Option<&bare::Area>,
) -> Result<(u64, f64), ToolError> {
    let e = io_err("stream");
    let op = match mode {
        Mode::Copy => OP_COPY,
        Mode::Zero => OP_ZERO,
        Mode::Bare => OP_BARE,
    };
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&MAGIC.to_le_bytes());
    hdr[4..8].copy_from_slice(&op.to_le_bytes());
    hdr[8..].copy_from_slice(&(size as u64).to_le_bytes());
    l.write_all(&hdr).map_err(&e)?;
    let mut ready = [0u8; 1];
    l.read_exact(&mut ready).map_err(&e)?;
    let limit = Duration::from_secs_f64(secs);
    // The clock is read once per batch of about 256 KiB.
    let batch = ((256 << 10) / size).max(1);
    let mut sent = 0u64;
    let start = Instant::now();
    let msg = &src[..size];
    match mode {
        Mode::Bare => {
            let area = bare.ok_or_else(|| ToolError::Check("bare phase over TCP".into()))?;
            let (bytes, _) = area.stream_send(msg, secs)?;
            sent = bytes;
            // Timed as the channel phases are: to the listener's acknowledgement.
        }
        Mode::Copy => loop {
            for _ in 0..batch {
                l.write_all(msg).map_err(&e)?;
            }
            sent += (batch * size) as u64;
            if start.elapsed() >= limit {
                break;
            }
        },
        Mode::Zero => loop {
            let ch = l
                .channel()
                .ok_or_else(|| ToolError::usage("zero-copy needs a channel"))?;
            for _ in 0..batch {
                let mut done = 0;
                while done < size {
                    let mut w = ch.write_slice().map_err(&e)?;
                    let n = w.len().min(size - done);
                    w.copy_from(0, &msg[done..done + n]);
                    w.commit(n).map_err(&e)?;
                    done += n;
                }
            }
            sent += (batch * size) as u64;
            if start.elapsed() >= limit {
                break;
            }
        },
    }
    l.close_write().map_err(&e)?;
    let mut ack = [0u8; 8];
    l.read_exact(&mut ack).map_err(&e)?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(ack);
    if got != sent {
        return Err(ToolError::Check(format!(
            "sent {sent} bytes, the listener counted {got}"
        )));
    }
    Ok((sent, secs))
}

/// Reads one phase header; `None` for the end.
fn read_header(l: &mut dyn Link) -> Result<Option<(u32, usize)>, ToolError> {
    let mut hdr = [0u8; 16];
    l.read_exact(&mut hdr).map_err(io_err("stream header"))?;
    let [m0, m1, m2, m3, o0, o1, o2, o3, s @ ..] = hdr;
    let op = u32::from_le_bytes([o0, o1, o2, o3]);
    let size = u64::from_le_bytes(s);
    if u32::from_le_bytes([m0, m1, m2, m3]) != MAGIC
        || !(OP_COPY..=OP_BARE).contains(&op)
        || !(1..=1 << 30).contains(&size)
    {
        return Err(ToolError::Check(format!(
            "bad phase header {hdr:02x?}: is the other side ivshmem-bench stream?"
        )));
    }
    Ok((op != OP_QUIT).then_some((op, size as usize)))
}

/// The listening side of one phase: counts every byte until end-of-file and acknowledges.
/// Returns false at the end.
fn stream_recv(l: &mut dyn Link, bare: Option<&bare::Area>) -> Result<bool, ToolError> {
    let e = io_err("stream");
    let Some((op, size)) = read_header(l)? else {
        return Ok(false);
    };
    if op == OP_BARE {
        let area = bare.ok_or_else(|| ToolError::Check("bare phase over TCP".into()))?;
        area.reset();
        l.write_all(&[1]).map_err(&e)?;
        let got = area.stream_recv(size)?;
        // The driver closes its side of the channel after the bare ring's last byte.
        while l.read(&mut [0u8; 1]).map_err(&e)? > 0 {}
        l.write_all(&got.to_le_bytes()).map_err(&e)?;
        return Ok(true);
    }
    l.write_all(&[1]).map_err(&e)?;
    let mut got = 0u64;
    match (op, l.channel()) {
        (OP_ZERO, Some(ch)) => {
            let mut sum = 0u64;
            loop {
                let r = ch.read_slice().map_err(&e)?;
                let n = r.len();
                if n == 0 {
                    break;
                }
                let p = r.as_ptr();
                for i in (0..n).step_by(64) {
                    // SAFETY: `i < n`, inside the readable slice `as_ptr` points to; a
                    // volatile byte read of shared memory, no reference is made.
                    sum = sum.wrapping_add(u64::from(unsafe { p.add(i).read_volatile() }));
                }
                r.release(n).map_err(&e)?;
                got += n as u64;
            }
            std::hint::black_box(sum);
        }
        (OP_ZERO, None) => {
            return Err(ToolError::Check("zero-copy phase over TCP".into()));
        }
        _ => {
            let mut buf = vec![0u8; size];
            loop {
                let n = l.read(&mut buf).map_err(&e)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
        }
    }
    l.write_all(&got.to_le_bytes()).map_err(&e)?;
    l.flush().map_err(&e)?;
    Ok(true)
}

fn quit(l: &mut dyn Link) -> Result<(), ToolError> {
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&MAGIC.to_le_bytes());
    hdr[4..8].copy_from_slice(&OP_QUIT.to_le_bytes());
    hdr[8..].copy_from_slice(&1u64.to_le_bytes());
    l.write_all(&hdr).map_err(io_err("stream"))?;
    l.flush().map_err(io_err("stream"))
}

fn print_stream(transport: &str, mode: &str, size: usize, bytes: u64, secs: f64) {
    println!(
        "stream transport={transport} mode={mode} size={size} bytes={bytes} secs={secs:.6} mbps={:.1}",
        mbps(bytes, secs)
    );
}

fn stream(c: &Common, sizes: &[usize], secs: f64, modes: &[Mode]) -> Result<(), ToolError> {
    let listener = listen_tcp(c)?;
    if !c.tcp_only {
        if c.listen {
            // One session per phase: the channel's end-of-file ends a phase. A pair has no
            // bare references (a driving side that asks for them fails first).
            let area = c
                .devices
                .peer
                .is_none()
                .then(|| c.bare_area())
                .transpose()?;
            loop {
                let mut ch = c.open("s", Kind::Stream, false)?;
                if !stream_recv(&mut ch, area.as_ref())? {
                    break;
                }
            }
        } else {
            let src: Vec<u8> = (0..*sizes.iter().max().unwrap_or(&64))
                .map(|i| i as u8)
                .collect();
            let area = (c.devices.peer.is_none() || modes.contains(&Mode::Bare))
                .then(|| c.bare_area())
                .transpose()?;
            for &mode in modes {
                for &size in sizes {
                    let mut ch = c.open("s", Kind::Stream, false)?;
                    let (bytes, t) = stream_send(&mut ch, mode, size, secs, &src, area.as_ref())?;
                    drop(ch);
                    let (transport, name) = match mode {
                        Mode::Copy => ("channel", "copy"),
                        Mode::Zero => ("channel", "zero"),
                        Mode::Bare => ("bare", "copy"),
                    };
                    print_stream(transport, name, size, bytes, t);
                }
            }
            let mut ch = c.open("s", Kind::Stream, false)?;
            quit(&mut ch)?;
        }
    }
    if c.tcp.is_none() {
        return Ok(());
    }
    if let Some(l) = &listener {
        loop {
            let mut s = accept(l)?;
            if !stream_recv(&mut s, None)? {
                break;
            }
        }
    } else {
        let src: Vec<u8> = (0..*sizes.iter().max().unwrap_or(&64))
            .map(|i| i as u8)
            .collect();
        for &size in sizes {
            let mut s = connect(c.tcp_addr())?;
            let (bytes, t) = stream_send(&mut s, Mode::Copy, size, secs, &src, None)?;
            print_stream("tcp", "copy", size, bytes, t);
        }
        let mut s = connect(c.tcp_addr())?;
        quit(&mut s)?;
        // Wait for the listener to close, so it is gone before the next run binds the port.
        let _ = s.read(&mut [0u8; 1]);
    }
    Ok(())
}

// ---- rtt ----

/// Untimed round trips first: page faults, caches, the peer's first wake-up.
const WARMUP: usize = 100;

/// One round trip of `msg` over `l`: send it, wait for the echo of the same length.
trait Echo {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()>;
    /// Echoes one message; false at the end.
    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;
}

impl Echo for Channel {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        self.send(msg)?;
        match self.recv(buf)? {
            Some(n) if n == msg.len() => Ok(()),
            Some(n) => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("echo of {n} bytes for {}", msg.len()),
            )),
            None => Err(ErrorKind::UnexpectedEof.into()),
        }
    }

    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self.recv(buf)? {
            Some(_) => self.send(buf).map(|()| true),
            None => Ok(false),
        }
    }
}

/// Over TCP the echo has the length of the message: the first message fixes it.
impl Echo for TcpStream {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        self.write_all(msg)?;
        buf.resize(msg.len(), 0);
        self.read_exact(buf)
    }

    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self.read_exact(buf) {
            Ok(()) => self.write_all(buf).map(|()| true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The value at fraction `p` of sorted `v` (nearest rank).
fn percentile(v: &[u64], p: f64) -> u64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ping(e: &mut dyn Echo, rounds: usize, size: usize) -> Result<Vec<u64>, ToolError> {
    let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = Vec::with_capacity(size);
    let err = io_err("rtt");
    for _ in 0..WARMUP {
        e.round(&msg, &mut buf).map_err(&err)?;
    }
    let mut ns = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        e.round(&msg, &mut buf).map_err(&err)?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    if buf != msg {
        return Err(ToolError::Check("the echo differs from the message".into()));
    }
    ns.sort_unstable();
    Ok(ns)
}

fn print_rtt(transport: &str, wait: &str, pause: &str, size: usize, ns: &[u64]) {
    let us = |v: u64| v as f64 / 1e3;
    println!(
        "rtt transport={transport} wait={wait} pause={pause} size={size} rounds={} min_us={:.3} p50_us={:.3} p90_us={:.3} p99_us={:.3} max_us={:.3}",
        ns.len(),
        us(ns[0]),
        us(percentile(ns, 0.5)),
        us(percentile(ns, 0.9)),
        us(percentile(ns, 0.99)),
        us(ns[ns.len() - 1]),
    );
}

fn rtt(c: &Common, rounds: usize, size: usize, bare: bool) -> Result<(), ToolError> {
    let listener = listen_tcp(c)?;
    let err = io_err("rtt");
    if !c.tcp_only {
        let mut ch = c.open("m", Kind::Messages, true)?;
        let area = bare.then(|| c.bare_area()).transpose()?;
        if c.listen {
            let mut buf = Vec::new();
            while ch.serve(&mut buf).map_err(&err)? {}
            // The driver reset the area before it closed the channel.
            if let Some(a) = &area {
                a.pong()?;
            }
        } else {
            let ns = ping(&mut ch, rounds, size)?;
            let pause = match c.pause {
                None => "default",
                Some(true) => "on",
                Some(false) => "off",
            };
            print_rtt("channel", c.wait_name(), pause, size, &ns);
            if let Some(a) = &area {
                a.reset();
                drop(ch);
                let ns = a.ping(WARMUP, rounds)?;
                print_rtt("bare", "spin", "off", 8, &ns);
            }
        }
    }
    if let Some(l) = &listener {
        let mut s = accept(l)?;
        s.set_nodelay(true).map_err(&err)?;
        let mut buf = vec![0u8; size];
        while s.serve(&mut buf).map_err(&err)? {}
    } else if c.tcp.is_some() {
        let mut s = connect(c.tcp_addr())?;
        s.set_nodelay(true).map_err(&err)?;
        let ns = ping(&mut s, rounds, size)?;
        print_rtt("tcp", "-", "-", size, &ns);
        s.close_write().map_err(&err)?;
        let _ = s.read(&mut [0u8; 1]);
    }
    Ok(())
}

// ---- memcpy ----

/// Size of the destination the copies walk through, as a ring of the default capacity.
const MEMCPY_DEST: usize = 2 << 20;

fn memcpy(sizes: &[usize], secs: f64) {
    let max = *sizes.iter().max().unwrap_or(&64);
    let src: Vec<u8> = (0..max).map(|i| i as u8).collect();
    let mut dst = vec![0u8; MEMCPY_DEST.max(max)];
    let limit = Duration::from_secs_f64(secs);
    for &size in sizes {
        let batch = ((256 << 10) / size).max(1);
        let mut at = 0;
        let mut bytes = 0u64;
        let start = Instant::now();
        loop {
            for _ in 0..batch {
                if at + size > dst.len() {
                    at = 0;
                }
                dst[at..at + size].copy_from_slice(&src[..size]);
                at += size;
            }
            std::hint::black_box(&mut dst);
            bytes += (batch * size) as u64;
            if start.elapsed() >= limit {
                break;
            }
        }
        let t = start.elapsed().as_secs_f64();
        println!(
            "memcpy size={size} bytes={bytes} secs={t:.6} mbps={:.1}",
            mbps(bytes, t)
        );
    }
}

// ---- pause ----

/// Nanoseconds per round of a spin loop that loads a word (as a spin on a ring index does),
/// with or without the pause hint.
fn spin_rounds(rounds: u64, hint: bool) -> f64 {
    let word = std::sync::atomic::AtomicU64::new(0);
    let start = Instant::now();
    for _ in 0..rounds {
        if std::hint::black_box(&word).load(std::sync::atomic::Ordering::Acquire) == u64::MAX {
            break;
        }
        if hint {
            std::hint::spin_loop();
        }
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

fn pause(rounds: u64) {
    // Alternate, so that a change in the host's load hits both alike; keep the best of three.
    let (mut plain, mut hint) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        plain = plain.min(spin_rounds(rounds, false));
        hint = hint.min(spin_rounds(rounds, true));
    }
    println!("pause rounds={rounds} plain_ns={plain:.2} hint_ns={hint:.2}");
}

// ---- map ----

/// Sizes mapped by default: the 64 MiB, 1 GiB and 4 GiB.
const MAP_SIZES: [u64; 3] = [64 << 20, 1 << 30, 4 << 30];
/// The step of the first touch: one word per 4 KiB page.
const PAGE: usize = 4096;

fn map_sizes(v: String) -> Result<Vec<u64>, ToolError> {
    v.split(',')
        .map(|s| match parse_size(s) {
            Ok(n) if (PAGE as u64..=1 << 46).contains(&n) => Ok(n),
            Ok(_) => Err(ToolError::Usage(format!(
                "size '{s}' out of range (4K to 64T)"
            ))),
            Err(e) => Err(ToolError::Usage(format!("bad size '{s}' in --sizes: {e}"))),
        })
        .collect()
}

/// The size of the memory behind `dev`: the driver's answer, or, for a sysfs `resource2` or a
/// regular file (no ivshmem ioctls: ENOTTY), the file's size.
fn mem_size(dev: &Device) -> Result<u64, ToolError> {
    match dev.size() {
        Err(e) if e.errno() == Some(ivshmem::sys::errno::ENOTTY) => std::fs::metadata(dev.path())
            .map(|m| m.len())
            .map_err(|e| ToolError::sys(dev.path(), e)),
        r => Ok(r?),
    }
}

/// The sizes to map: each of `want` capped at `total`, without repeats, in order.
fn capped(want: &[u64], total: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for s in want.iter().map(|&s| s.min(total)) {
        if s > 0 && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// This process's page tables (`VmPTE` of /proc/self/status), in kB.
fn vm_pte_kb() -> Result<u64, ToolError> {
    ivshmem::sys::vm_pte_kb().map_err(|e| ToolError::sys("/proc/self/status", e))
}

/// The largest power of two (up to 1 GiB) that divides `addr`.
fn addr_align(addr: usize) -> usize {
    1 << addr.trailing_zeros().min(30)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The time of one mmap call of `len` bytes at the kernel's address, `prot` and `flags` of
/// `fd` (-1: anonymous), and of its munmap, with nothing touched in between. Anonymous
/// `PROT_NONE` memory is the floor of what an mmap costs here, whatever the size (under TCG,
/// and on a busy host, far more than on hardware).
fn call_cost(
    len: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    what: &str,
) -> Result<(Duration, Duration), ToolError> {
    use ivshmem::sys;
    let t = Instant::now();
    // SAFETY: a fresh mapping chosen by the kernel (no address, no MAP_FIXED): nothing
    // existing is touched, and nothing reads or writes it before the munmap below.
    let p = unsafe { sys::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    let mapped = t.elapsed();
    if p == sys::MAP_FAILED {
        return Err(ToolError::sys(what, io::Error::last_os_error()));
    }
    let t = Instant::now();
    // SAFETY: `p`/`len` is the mapping just made, used by nothing.
    unsafe { sys::munmap(p, len) };
    Ok((mapped, t.elapsed()))
}

/// Per size and round, a line of mmap, first read of every page, munmap, VmPTE growth; and
/// one of the references ([`call_cost`]).
fn map_cost(path: &str, sizes: Option<&[u64]>, rounds: u32) -> Result<(), ToolError> {
    use ivshmem::sys::{MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED};
    use ivshmem::sys::{PROT_NONE, PROT_READ, PROT_WRITE};
    let dev = Device::open(path)?;
    let fd = dev.as_raw_fd();
    let total = mem_size(&dev)?;
    for size in capped(sizes.unwrap_or(&MAP_SIZES), total) {
        let len = usize::try_from(size)
            .map_err(|_| ToolError::Failed(format!("{size} bytes do not fit in memory")))?;
        for round in 1..=rounds {
            let pte = vm_pte_kb()?;
            let t = Instant::now();
            let m = dev.map(0, len)?;
            let mapped = t.elapsed();
            let t = Instant::now();
            let mut sum = 0u32;
            for page in (0..len).step_by(PAGE) {
                sum = sum.wrapping_add(m.load_u32(page.min(len - 4) & !3)?);
            }
            let touched = t.elapsed();
            std::hint::black_box(sum);
            let grown = vm_pte_kb()?.saturating_sub(pte);
            let align = addr_align(m.as_ptr() as usize);
            let t = Instant::now();
            drop(m);
            let unmapped = t.elapsed();
            println!(
                "map path={path} size={size} round={round} addr_align={align} mmap_us={:.1} touch_us={:.1} munmap_us={:.1} vmpte_kb={grown}",
                us(mapped),
                us(touched),
                us(unmapped)
            );
            let (cm, cu) = call_cost(len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, path)?;
            let anon = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
            let (am, au) = call_cost(len, PROT_NONE, anon, -1, "anonymous mmap")?;
            println!(
                "mapref size={size} round={round} call_mmap_us={:.1} call_munmap_us={:.1} anon_mmap_us={:.1} anon_munmap_us={:.1}",
                us(cm),
                us(cu),
                us(am),
                us(au)
            );
        }
    }
    Ok(())
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
                assert!(c.listen && c.tcp.as_deref() == Some("10.0.7.1:5000"));
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
        usage(&["rtt", "--pause", "yes"], "bad --pause 'yes'");
        usage(&["memcpy", "--seconds", "0"], "out of range");
        usage(&["pause", "--rounds", "0"], "out of range");
        usage(&["map", "--sizes", "1G,100"], "size '100' out of range");
        usage(&["map", "--sizes", "4x"], "bad size '4x'");
        usage(&["map", "--rounds", "0"], "--rounds out of range");
        usage(&["map", "--size", "4K"], "unknown option --size");
    }

    #[test]
    fn map_options_and_sizes() {
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
        // Capped at the memory's size, each once.
        assert_eq!(capped(&MAP_SIZES, 64 << 20), [64 << 20]);
        assert_eq!(capped(&MAP_SIZES, 2 << 30), [64 << 20, 1 << 30, 2 << 30]);
        assert_eq!(capped(&MAP_SIZES, 16 << 30), MAP_SIZES);
        assert_eq!(addr_align(0x7f00_4020_0000), 2 << 20);
        assert_eq!(addr_align(0x7f00_0000_0000), 1 << 30);
        assert_eq!(addr_align(0x7f00_0000_3000), 4096);
    }

    /// `map` on a regular file: its size caps the list; VmPTE is there to read.
    #[test]
    fn map_cost_on_a_file() {
        let path = std::env::temp_dir().join(format!("ivshmem-bench-map-{}", std::process::id()));
        File::create(&path).unwrap().set_len(3 << 20).unwrap();
        assert!(vm_pte_kb().unwrap() > 0);
        map_cost(path.to_str().unwrap(), Some(&[4096, 2 << 20, 1 << 30]), 2).unwrap();
        let e = map_cost("/nonexistent/ivshmem", None, 1).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ivshmem: open"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
    }

    /// Both sides of the stream and rtt workloads over TCP on the loopback, and over a
    /// channel on a file, in two threads.
    #[test]
    fn stream_and_rtt_on_the_host() {
        let path = std::env::temp_dir().join(format!("ivshmem-bench-test-{}", std::process::id()));
        File::create(&path).unwrap().set_len(16 << 20).unwrap();
        let dev = path.to_str().unwrap().to_string();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let common = |listen: bool| {
            let mut a = vec!["-d", &dev, "--tcp", &addr, "--wait", "spin"];
            if listen {
                a.push("--listen");
            }
            parse_common(&mut Args::new(a)).unwrap()
        };
        let server = {
            let c = common(true);
            std::thread::spawn(move || {
                stream(
                    &c,
                    &[64, 100_000],
                    0.05,
                    &[Mode::Copy, Mode::Zero, Mode::Bare],
                )
                .unwrap();
                rtt(&c, 50, 64, true).unwrap();
            })
        };
        let c = common(false);
        stream(
            &c,
            &[64, 100_000],
            0.05,
            &[Mode::Copy, Mode::Zero, Mode::Bare],
        )
        .unwrap();
        rtt(&c, 50, 64, true).unwrap();
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
