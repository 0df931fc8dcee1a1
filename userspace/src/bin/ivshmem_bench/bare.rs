//! The bare references of `stream --modes bare` and `rtt --bare`: the channels' workloads with
//! nothing of the channels, on memory of the same device in the same run, so that a channel's
//! figure can be put against what the memory and the two CPUs allow. A single-producer
//! single-consumer ring copied into and out of (two indices, each on its own cache line; no
//! checks, sessions, wake-ups or heartbeats), and a ping-pong of one word each way.
//!
//! The memory is the payload of a channel `NAME.bare` that both sides open and never use as a
//! channel: its slot reserves the space, and `channel::list` says where it is.

use std::ptr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use ivshmem::channel::{self, Channel};
use ivshmem::ToolError;

/// Bytes of a channel block before its ring payload (layout version 1, `channel` module docs).
const BLOCK_HEADER: u64 = 0x200;
/// The control lines at the start of the area: producer index, consumer index, end flag (or
/// ping), pong; the ring follows.
const LINES: usize = 4 * 64;
/// A side that sees no progress from the other for this long gives up.
const STUCK: Duration = Duration::from_secs(30);

/// The memory of the references.
///
/// # Invariants
///
/// `base` points to `LINES + cap` bytes of the region `_chan` keeps mapped, 64-byte aligned;
/// both sides access the control words only as atomics.
pub struct Area {
    _chan: Channel,
    base: *mut u8,
    cap: usize,
}

impl Area {
    /// The payload of channel `name` (opened, or created with `chan`'s options), as an area.
    pub fn new(chan: Channel) -> Result<Self, ToolError> {
        let region = chan.region();
        let info = channel::list(&region)
            .map_err(|e| ToolError::Failed(format!("bare area: {e}")))?
            .into_iter()
            .find(|i| i.name == chan.name())
            .ok_or_else(|| ToolError::Failed(format!("bare area: no channel {}", chan.name())))?;
        let payload = info.offset + BLOCK_HEADER;
        let len = info.capacities[0] + info.capacities[1];
        // The ring: as large as one of the channel's, after the control lines.
        let cap = info.capacities[0] as usize;
        if payload + len > region.len() as u64 || (LINES + cap) as u64 > len {
            return Err(ToolError::Failed(
                "bare area: the channel block is too small".into(),
            ));
        }
        // SAFETY: `payload + len` is inside the region (checked), which `chan` keeps mapped.
        let base = unsafe { region.as_ptr().add(payload as usize) };
        Ok(Self {
            _chan: chan,
            base,
            cap,
        })
    }

    /// Control word `i` (0 to 3).
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < 4);
        // SAFETY: line `i` is inside the area (type invariant), 64-byte aligned; both sides
        // access it only as an atomic.
        unsafe { AtomicU64::from_ptr(self.base.add(64 * i).cast()) }
    }

    /// Zeroes the control words (the listener, before it says it is ready).
    pub fn reset(&self) {
        for i in 0..4 {
            self.word(i).store(0, Relaxed);
        }
    }

    /// The ring's part at free-running position `pos`, `len` bytes: one or two (offset, length).
    fn parts(&self, pos: u64, len: usize) -> [(usize, usize); 2] {
        let off = (pos % self.cap as u64) as usize;
        let first = len.min(self.cap - off);
        [(LINES + off, first), (LINES, len - first)]
    }

    /// The driving side of `stream`: messages of `msg.len()` bytes for `secs`, then the end
    /// flag; returns the bytes and the time until the listener consumed the last one.
    pub fn stream_send(&self, msg: &[u8], secs: f64) -> Result<(u64, f64), ToolError> {
        let (prod, cons, end) = (self.word(0), self.word(1), self.word(2));
        let (cap, size) = (self.cap as u64, msg.len() as u64);
        let limit = Duration::from_secs_f64(secs);
        let batch = ((256 << 10) / msg.len()).max(1);
        let (mut pos, mut seen) = (0u64, 0u64);
        let start = Instant::now();
        loop {
            for _ in 0..batch {
                let mut waited = None;
                while cap - (pos - seen) < size {
                    seen = cons.load(Acquire);
                    stuck(&mut waited, "the consumer")?;
                }
                let mut done = 0;
                for (off, len) in self.parts(pos, msg.len()) {
                    // SAFETY: inside the ring (`parts`); the consumer is done with these bytes
                    // (its index, acquired above, is past them).
                    unsafe {
                        ptr::copy_nonoverlapping(msg.as_ptr().add(done), self.base.add(off), len)
                    };
                    done += len;
                }
                pos += size;
                prod.store(pos, Release);
            }
            if start.elapsed() >= limit {
                break;
            }
        }
        end.store(1, Release);
        let mut waited = None;
        while cons.load(Acquire) != pos {
            stuck(&mut waited, "the consumer")?;
        }
        Ok((pos, start.elapsed().as_secs_f64()))
    }

    /// The listening side of `stream`: reads at most `size` bytes at a time until the end
    /// flag; returns the bytes read.
    pub fn stream_recv(&self, size: usize) -> Result<u64, ToolError> {
        let (prod, cons, end) = (self.word(0), self.word(1), self.word(2));
        let mut buf = vec![0u8; size];
        let mut pos = 0u64;
        let mut waited = None;
        loop {
            let p = prod.load(Acquire);
            if p == pos {
                if end.load(Acquire) == 1 && prod.load(Acquire) == pos {
                    return Ok(pos);
                }
                stuck(&mut waited, "the producer")?;
                continue;
            }
            waited = None;
            let n = ((p - pos) as usize).min(size);
            let mut done = 0;
            for (off, len) in self.parts(pos, n) {
                // SAFETY: inside the ring (`parts`); published by the producer (its index,
                // acquired above, is past them); `buf` holds `size >= n` bytes.
                unsafe {
                    ptr::copy_nonoverlapping(self.base.add(off), buf.as_mut_ptr().add(done), len)
                };
                done += len;
            }
            std::hint::black_box(&buf);
            pos += n as u64;
            cons.store(pos, Release);
        }
    }

    /// The driving side of `rtt`: `rounds` ping-pongs after `warmup` untimed ones; the
    /// sorted round trips in nanoseconds. Ends the listener's loop.
    pub fn ping(&self, warmup: usize, rounds: usize) -> Result<Vec<u64>, ToolError> {
        let (ping, pong) = (self.word(2), self.word(3));
        let mut ns = Vec::with_capacity(rounds);
        for i in 1..=(warmup + rounds) as u64 {
            let t = Instant::now();
            ping.store(i, Release);
            let mut waited = None;
            while pong.load(Acquire) != i {
                stuck(&mut waited, "the echo")?;
            }
            if i > warmup as u64 {
                ns.push(t.elapsed().as_nanos() as u64);
            }
        }
        ping.store(u64::MAX, Release);
        ns.sort_unstable();
        Ok(ns)
    }

    /// The listening side of `rtt`: echoes every ping until the driver's end mark.
    pub fn pong(&self) -> Result<(), ToolError> {
        let (ping, pong) = (self.word(2), self.word(3));
        let mut last = 0;
        let mut waited = None;
        loop {
            let v = ping.load(Acquire);
            if v == u64::MAX {
                return Ok(());
            }
            if v != last {
                pong.store(v, Release);
                last = v;
                waited = None;
            } else {
                stuck(&mut waited, "the driver")?;
            }
        }
    }
}

/// Bounds a spin: an error once it has lasted [`STUCK`] (the clock is read every 4096 calls).
fn stuck(since: &mut Option<(Instant, u32)>, who: &str) -> Result<(), ToolError> {
    let (t, n) = since.get_or_insert_with(|| (Instant::now(), 0));
    *n += 1;
    if n.is_multiple_of(4096) && t.elapsed() > STUCK {
        return Err(ToolError::Failed(format!(
            "bare reference: no progress from {who} for {STUCK:?}"
        )));
    }
    Ok(())
}
