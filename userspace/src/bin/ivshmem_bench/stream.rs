//! `stream`: throughput of a byte-stream channel, copying and zero-copy, beside the bare ring
//! reference and TCP. The driving side sends phases (a header, then messages of one size for a
//! time); the listener counts every byte and acknowledges the count.

use std::io::Read;
use std::time::{Duration, Instant};

use ivshmem::channel::Kind;
use ivshmem::ToolError;

use crate::bare;
use crate::common::Common;
use crate::figures::mbps;
use crate::link::{accept, connect, io_err, listen_tcp, Link};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Copy,
    Zero,
    /// The bare ring reference (copying).
    Bare,
}

/// Header of a stream phase: magic, operation, message size.
const MAGIC: u32 = u32::from_le_bytes(*b"IVBS");
const OP_COPY: u32 = 1;
const OP_ZERO: u32 = 2;
const OP_QUIT: u32 = 3;
const OP_BARE: u32 = 4;

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

pub(crate) fn stream(
    c: &Common,
    sizes: &[usize],
    secs: f64,
    modes: &[Mode],
) -> Result<(), ToolError> {
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
    let Some(addr) = &c.tcp else {
        return Ok(());
    };
    if let Some(l) = listener {
        loop {
            let mut s = accept(&l)?;
            if !stream_recv(&mut s, None)? {
                // The listener goes first: the driver waits for this socket to close, then
                // may connect to the next run's (a UNIX socket's path, a TCP port).
                drop(l);
                break;
            }
        }
    } else {
        let src: Vec<u8> = (0..*sizes.iter().max().unwrap_or(&64))
            .map(|i| i as u8)
            .collect();
        for &size in sizes {
            let mut s = connect(addr)?;
            let (bytes, t) = stream_send(&mut s, Mode::Copy, size, secs, &src, None)?;
            print_stream(addr.transport(), "copy", size, bytes, t);
        }
        let mut s = connect(addr)?;
        quit(&mut s)?;
        // Wait for the listener to close, so it is gone before the next run binds the port.
        let _ = s.read(&mut [0u8; 1]);
    }
    Ok(())
}
