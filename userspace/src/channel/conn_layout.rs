//! Layout version 2, connections (`userspace/docs/channels-v2.md`): a header page, then an
//! arena ([`Arena`]) of listener blocks and connection blocks. A region holds one layout:
//! named channels ([`super::Channel::open`], version 1) or connections (this one).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x0000 | 4 | magic: 0 fresh, `"ivc2"` being initialised, `"IVC2"` ready |
//! | 0x0004 | 4 | version (2) |
//! | 0x0018 | 8 | region size the initialiser saw |
//! | 0x1000 | | the arena: its page map, then its pages |
//!
//! A listener block (one page, kind 1), written by the listener's end except the backlog:
//!
//! | offset | field |
//! |---|---|
//! | 0x000 | name length u32 (1 to 32); kind of its connections u32 at 0x008 (1 stream, 2 messages) |
//! | 0x010 | service name |
//! | 0x040 | control word, encoded as a channel's: side A attached with session = the block's generation while it listens; closed or dead after |
//! | 0x080 | its side line, as a channel's (epoch, heartbeat, doorbell address, notifies, liveness) |
//! | 0x100 | backlog: 480 words, 0 or a pending connection (generation << 32, 1 + head page), set by connectors (compare-and-swap from 0), taken by the listener (compare-and-swap to 0) |
//!
//! A connection block (kind 2): one page of header, its rings after it, written by the
//! connector (the header) and then by both ends as a channel block of layout version 1:
//!
//! | offset | field |
//! |---|---|
//! | 0x000 | the listener's head page u32, its generation u32 at 0x004 |
//! | 0x008 | kind u32; capacity of ring 0 (connector to acceptor) u32 at 0x00c, of ring 1 at 0x010 |
//! | 0x0e00 | the channel block's 0x200 bytes of lines (control word with session = the block's generation, side A the connector, side B the acceptor) |
//! | 0x1000 | ring 0, then ring 1 |

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use super::arena::{Arena, PAGE};
use super::layout::{Kind, MAX_CAPACITY, MAX_NAME, MIN_CAPACITY};
use super::pagemap::Block;
use super::region::{Mem, Region};
use super::ChannelError;

/// The layout version of regions that carry connections.
pub const VERSION: u32 = 2;
const MAGIC: u32 = u32::from_le_bytes(*b"IVC2");
const MAGIC_INIT: u32 = u32::from_le_bytes(*b"ivc2");
/// Magic of layout version 1 (named channels), for a clear error.
const MAGIC_V1: u32 = u32::from_le_bytes(*b"IVCH");
const H_MAGIC: u64 = 0x00;
const H_VERSION: u64 = 0x04;
const H_REGION_SIZE: u64 = 0x18;
/// Where the arena starts.
const ARENA: u64 = 0x1000;

/// Block kinds in the page map.
pub(super) const LISTENER: u8 = 1;
pub(super) const CONNECTION: u8 = 2;

pub(super) const L_NAME_LEN: u64 = 0x000;
pub(super) const L_KIND: u64 = 0x008;
pub(super) const L_NAME: u64 = 0x010;
pub(super) const L_CTL: u64 = 0x040;
pub(super) const L_SIDE: u64 = 0x080;
pub(super) const L_BACKLOG: u64 = 0x100;
/// Pending connections a listener holds.
pub(super) const BACKLOG: u32 = ((PAGE - L_BACKLOG) / 8) as u32;

pub(super) const N_LISTENER: u64 = 0x000;
pub(super) const N_KIND: u64 = 0x008;
pub(super) const N_CAP: [u64; 2] = [0x00c, 0x010];
/// The channel block inside a connection block: its rings start at the second page.
pub(super) const N_CHAN: u64 = PAGE - super::layout::CHAN_CTL;

/// Initialises the header of a zeroed region, or checks the one there, and returns the arena.
/// Two ends starting at once: one wins the magic's compare-and-swap from 0, writes the header
/// and publishes the magic (release); the other waits (acquire) at most `timeout`.
pub(super) fn attach(region: &Region, timeout: Duration) -> Result<Arena, ChannelError> {
    let mem = &region.mem;
    if (mem.len() as u64) < ARENA + 2 * PAGE {
        return Err(ChannelError::TooSmall {
            need: ARENA + 2 * PAGE,
            have: mem.len() as u64,
        });
    }
    let magic = mem.u32_at(H_MAGIC)?;
    let start = Instant::now();
    loop {
        match magic.load(Acquire) {
            MAGIC => break,
            0 => {
                if magic
                    .compare_exchange(0, MAGIC_INIT, Acquire, Relaxed)
                    .is_ok()
                {
                    mem.zero(H_VERSION, ARENA - H_VERSION)?;
                    mem.u32_at(H_VERSION)?.store(VERSION, Relaxed);
                    mem.u64_at(H_REGION_SIZE)?.store(mem.len() as u64, Relaxed);
                    magic.store(MAGIC, Release);
                    break;
                }
            }
            MAGIC_INIT => {
                if start.elapsed() > timeout {
                    return Err(ChannelError::Busy(format!(
                        "the layout header has been initialising for {timeout:?}: the end that \
                         started it probably died; zero the region to reset it"
                    )));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            MAGIC_V1 => {
                return Err(ChannelError::BadLayout(
                    "the region holds named channels (layout version 1, Channel::open): \
                     connections need a region of their own (layout version 2); zero it to \
                     reuse it"
                        .into(),
                ))
            }
            m => {
                return Err(ChannelError::BadLayout(format!(
                    "magic {m:#010x} at offset 0 is not a channel layout (want {MAGIC:#010x}, \
                     or 0 for a fresh region)"
                )))
            }
        }
    }
    let version = mem.u32_at(H_VERSION)?.load(Relaxed);
    if version != VERSION {
        return Err(ChannelError::Version {
            found: version,
            supported: VERSION,
        });
    }
    let size = mem.u64_at(H_REGION_SIZE)?.load(Relaxed);
    if size != mem.len() as u64 {
        return Err(ChannelError::BadLayout(format!(
            "the region was laid out for {size} bytes, this mapping has {}",
            mem.len()
        )));
    }
    Arena::new(region, ARENA, mem.len() as u64 - ARENA)
}

/// Whether a region's first word is this layout's magic: tools that take both layouts.
pub fn is_connections(region: &Region) -> bool {
    region
        .mem
        .u32_at(H_MAGIC)
        .is_ok_and(|m| m.load(Acquire) == MAGIC)
}

/// Checks a service name: 1 to 32 bytes.
pub(super) fn check_name(name: &str) -> Result<(), ChannelError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ChannelError::Invalid(format!(
            "service name '{name}' must be 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// The words of one block, at offsets from its start.
///
/// # Invariants
///
/// `off` is the offset of a block of `len` bytes that the arena handed out or found in its
/// map: inside the region and page-aligned. Words are bounds-checked anyway.
pub(super) struct BlockView<'a> {
    pub mem: &'a Mem,
    pub off: u64,
    pub len: u64,
}

impl<'a> BlockView<'a> {
    pub fn new(arena: &Arena, mem: &'a Mem, b: &Block) -> Self {
        Self {
            mem,
            off: arena.offset(b),
            len: u64::from(b.pages) * PAGE,
        }
    }

    pub fn w64(&self, at: u64) -> Result<&'a AtomicU64, ChannelError> {
        debug_assert!(at + 8 <= self.len);
        self.mem.u64_at(self.off + at)
    }

    pub fn w32(&self, at: u64) -> Result<&'a AtomicU32, ChannelError> {
        debug_assert!(at + 4 <= self.len);
        self.mem.u32_at(self.off + at)
    }

    /// The name a listener block holds, if it is a valid one.
    pub fn name(&self) -> Option<String> {
        let len = self.w32(L_NAME_LEN).ok()?.load(Relaxed) as usize;
        if len == 0 || len > MAX_NAME {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.mem.copy_out(self.off + L_NAME, &mut buf).ok()?;
        String::from_utf8(buf).ok()
    }
}

/// Kind codes in listener and connection blocks.
pub(super) fn kind_code(k: Kind) -> u32 {
    match k {
        Kind::Stream => 1,
        Kind::Messages => 2,
    }
}

pub(super) fn kind_of(code: u32) -> Option<Kind> {
    match code {
        1 => Some(Kind::Stream),
        2 => Some(Kind::Messages),
        _ => None,
    }
}

/// Pages a connection block needs for rings of `cap` bytes each way.
pub(super) fn connection_pages(cap: u64) -> Result<u32, ChannelError> {
    if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
        return Err(ChannelError::Invalid(format!(
            "capacity {cap} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}"
        )));
    }
    Ok(1 + (2 * cap).div_ceil(PAGE) as u32)
}

/// The ring capacities a connection block's header gives, checked against the block.
pub(super) fn connection_caps(v: &BlockView<'_>) -> Option<[u64; 2]> {
    let caps = N_CAP.map(|at| v.w32(at).map_or(0, |w| u64::from(w.load(Relaxed))));
    let ok = |c: u64| c.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&c);
    (ok(caps[0]) && ok(caps[1]) && PAGE + caps[0] + caps[1] <= v.len).then_some(caps)
}

/// A backlog word naming connection block `b`.
pub(super) fn backlog_word(b: &Block) -> u64 {
    u64::from(b.gen) << 32 | u64::from(b.head + 1)
}

/// The head page and generation a backlog word names.
pub(super) fn backlog_entry(w: u64) -> Option<(u32, u32)> {
    let head = (w as u32).checked_sub(1)?;
    Some((head, (w >> 32) as u32))
}

/// What a region of connections holds (for tools and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The services with a block (live or not yet freed), in page order.
    pub listeners: Vec<String>,
    /// Connection blocks, whatever their state.
    pub connections: u32,
    /// Pages in blocks, of all the arena's pages.
    pub pages_used: u32,
    pub pages: u32,
}

/// The blocks in a region of connections. Fails on a region that does not hold layout
/// version 2; does not initialise a zeroed one.
pub fn usage(region: &Region) -> Result<Usage, ChannelError> {
    if !is_connections(region) {
        return Err(ChannelError::BadLayout(
            "the region does not hold connections (layout version 2)".into(),
        ));
    }
    let arena = attach(region, Duration::ZERO)?;
    let mut u = Usage {
        listeners: Vec::new(),
        connections: 0,
        pages_used: 0,
        pages: arena.pages(),
    };
    for b in arena.blocks() {
        u.pages_used += b.pages;
        match b.kind {
            LISTENER => u.listeners.push(
                BlockView::new(&arena, &region.mem, &b)
                    .name()
                    .unwrap_or_default(),
            ),
            CONNECTION => u.connections += 1,
            _ => {}
        }
    }
    Ok(u)
}
