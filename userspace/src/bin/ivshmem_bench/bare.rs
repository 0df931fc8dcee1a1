//! The bare references of `stream --modes bare` and `rtt --bare`: the channels' workloads with
//! nothing of the channels, on memory of the same device in the same run, so that a channel's
//! figure can be put against what the memory and the two CPUs allow. A single-producer
//! single-consumer ring copied into and out of (two indices, each on its own cache line; no
//! checks, sessions, wake-ups or heartbeats), and a ping-pong of one word each way.
//!
//! The memory is the ring payloads of a channel `NAME.bare` that both sides open and never use
//! as a channel: its two blocks (layout version 2: the opener's and the joiner's, each with
//! the payload of one ring) reserve the space, and `channel::list` says where they are. The
//! bare ring is the opener's ring payload, as large as a ring of the channels measured beside
//! it; the control lines are the start of the joiner's.

use std::cell::OnceCell;
use std::ptr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use ivshmem::channel::{self, Channel};
use ivshmem::ToolError;

/// Where a channel block's ring payload starts: after its first page (layout version 2,
/// `ChannelInfo::offset`).
const PAYLOAD: u64 = 0x1000;
/// The control lines, at the start of the joiner's payload: producer index, consumer index,
/// end flag (or ping), pong.
const LINES: usize = 4 * 64;
/// A side that sees no progress from the other for this long gives up.
const STUCK: Duration = Duration::from_secs(30);

/// The memory of the references.
///
/// # Invariants
///
/// `ring` points to `cap` bytes of the region `chan` keeps mapped, 64-byte aligned; `lines`,
/// once found, to `LINES` other bytes of it, 64-byte aligned. Both sides access the control
/// words only as atomics.
pub struct Area {
    chan: Channel,
    /// Offset of the opener's block (the channel's `ChannelInfo::offset`).
    opener: u64,
    ring: *mut u8,
    cap: usize,
    /// The control lines, found at their first use (the other side has opened the channel by
    /// then, its block is the joiner's), or why they were not.
    lines: OnceCell<Result<*mut u8, String>>,
}

impl Area {
    /// The ring payloads of channel `chan` (opened, or created with its options), as an area.
    /// Does not wait for the other side: the control lines are found at their first use.
    pub fn new(chan: Channel) -> Result<Self, ToolError> {
        let region = chan.region();
        let info = channel::list(&region)
            .map_err(|e| ToolError::Failed(format!("bare area: {e}")))?
            .into_iter()
            .find(|i| i.name == chan.name())
            .ok_or_else(|| ToolError::Failed(format!("bare area: no channel {}", chan.name())))?;
        // The ring: the opener's payload, as large as the channel's rings.
        let (ring, cap) = (info.offset + PAYLOAD, info.capacities[0]);
        if ring + cap > region.len() as u64 || cap < LINES as u64 {
            return Err(ToolError::Failed(format!(
                "bare area: the rings of channel {} are too small (at least {LINES} bytes)",
                chan.name()
            )));
        }
        // SAFETY: `ring + cap` is inside the region (checked), which `chan` keeps mapped.
        let ring = unsafe { region.as_ptr().add(ring as usize) };
        Ok(Self {
            opener: info.offset,
            chan,
            ring,
            cap: cap as usize,
            lines: OnceCell::new(),
        })
    }

    /// The control lines: the start of the joiner's payload, waited for (at most [`STUCK`])
    /// at the first call.
    fn lines(&self) -> Result<*mut u8, ToolError> {
        self.lines
            .get_or_init(|| self.find_lines())
            .clone()
            .map_err(ToolError::Failed)
    }

    fn find_lines(&self) -> Result<*mut u8, String> {
        let region = self.chan.region();
        let name = self.chan.name();
        let start = Instant::now();
        loop {
            let info = channel::list(&region)
                .map_err(|e| format!("bare area: {e}"))?
                .into_iter()
                .find(|i| i.name == name && i.offset == self.opener)
                .ok_or_else(|| format!("bare area: channel {name} is gone"))?;
            if let Some(joiner) = info.joiner {
                let lines = joiner + PAYLOAD;
                if lines + LINES as u64 > region.len() as u64 || info.capacities[1] < LINES as u64 {
                    return Err(format!(
                        "bare area: the rings of channel {name} are too small"
                    ));
                }
                // SAFETY: Inside the region (checked), which `self.chan` keeps mapped.
                return Ok(unsafe { region.as_ptr().add(lines as usize) });
            }
            if start.elapsed() > STUCK {
                return Err(format!(
                    "bare reference: the other side did not open channel {name} within \
                     {STUCK:?} (the bare reference runs on both sides or on neither)"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The control words: producer index, consumer index, end flag (or ping), pong.
    fn words(&self) -> Result<[&AtomicU64; 4], ToolError> {
        let lines = self.lines()?;
        Ok(std::array::from_fn(|i| {
            // SAFETY: Line `i` is inside the control lines (type invariant), 64-byte aligned;
            // both sides access it only as an atomic.
            unsafe { AtomicU64::from_ptr(lines.add(64 * i).cast()) }
        }))
    }

    /// Zeroes the control words (the listener, before it says it is ready). Without them (the
    /// other side never opened the channel) there is nothing to zero: the next call says why.
    pub fn reset(&self) {
        if let Ok(words) = self.words() {
            for w in words {
                w.store(0, Relaxed);
            }
        }
    }

    /// The ring's part at free-running position `pos`, `len` bytes: one or two (offset in the
    /// ring, length).
    fn parts(&self, pos: u64, len: usize) -> [(usize, usize); 2] {
        let off = (pos % self.cap as u64) as usize;
        let first = len.min(self.cap - off);
        [(off, first), (0, len - first)]
    }

    /// The driving side of `stream`: messages of `msg.len()` bytes for `secs`, then the end
    /// flag; returns the bytes and the time until the listener consumed the last one.
    pub fn stream_send(&self, msg: &[u8], secs: f64) -> Result<(u64, f64), ToolError> {
        let [prod, cons, end, _] = self.words()?;
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
                    // SAFETY: Inside the ring (`parts`); the consumer is done with these bytes
                    // (its index, acquired above, is past them).
                    unsafe {
                        ptr::copy_nonoverlapping(msg.as_ptr().add(done), self.ring.add(off), len)
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
        let [prod, cons, end, _] = self.words()?;
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
                // SAFETY: Inside the ring (`parts`); published by the producer (its index,
                // acquired above, is past them); `buf` holds `size >= n` bytes.
                unsafe {
                    ptr::copy_nonoverlapping(self.ring.add(off), buf.as_mut_ptr().add(done), len)
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
        let [_, _, ping, pong] = self.words()?;
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
        let [_, _, ping, pong] = self.words()?;
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
