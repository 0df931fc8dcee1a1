//! Layout version 3 (`userspace/docs/channels-v2.md`: version 2's arena and blocks, with
//! messages committed in band): a header page, then an arena
//! ([`Arena`]) of listener blocks and the blocks of channel ends, for named channels
//! ([`super::Channel::open`], `named.rs`) and connections alike, on one region.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x0000 | 4 | magic: 0 fresh, `"ivc2"` being initialised, `"IVC2"` ready |
//! | 0x0004 | 4 | version (3) |
//! | 0x0018 | 8 | region size the initialiser saw |
//! | 0x0020 | 8 | blocks announced: every allocator of the arena adds one once its block is ready, so a listener or a connector scans the map again only when it changed |
//! | 0x1000 | | the arena: its page map, then its pages |
//!
//! Every block is written by one end only (the single-writer layout: no word of a block has
//! a second writer, see `control.rs`). A listener block (one page, kind 1):
//!
//! | offset | field |
//! |---|---|
//! | 0x000 | name length u32 (1 to 32); kind of its connections u32 at 0x008 (1 stream, 2 messages) |
//! | 0x010 | service name |
//! | 0x040 | state word (`control.rs`): the block's generation and `ATTACHED` while it listens, `CLOSED` after |
//! | 0x080 | its side line, as a channel's (epoch, heartbeat, doorbell address, notifies, liveness) |
//!
//! A connection is two blocks of kind 2, one per end: the connector's, which names the
//! listener, and the acceptor's, which names the connector's block. Each holds the ring its
//! end writes, and its end's consumer line for the other's ring:
//!
//! | offset | field |
//! |---|---|
//! | 0x000 | state word (`control.rs`): generation, state, verdict on the peer |
//! | 0x008 | the block it names: head page u32, generation u32 at 0x00c (the listener's for a connector, the connector's for an acceptor) |
//! | 0x010 | role u32 (1 connector, 2 acceptor, 3 opener of a named channel); kind u32 at 0x014; capacity of its ring u32 at 0x018 |
//! | 0x020 | closed u32: 1 once its end closed its write side (version 3; version 2 kept it at 0x090, on the line of the index, which a waiting reader then pulled from the writer with every look) |
//! | 0x040 | its side line, as a channel's; epoch = the connection's session, the connector block's generation |
//! | 0x080 | producer line of its ring: index u64, wake-at u64 at 0x088 |
//! | 0x0c0 | consumer line of the peer's ring: index u64, wake-at u64 at 0x0c8 |
//! | 0x100 | opener: name length u32 (1 to 32), name at 0x104 |
//! | 0x200 | opener: zeroes nobody writes, read as its peer's lines until a peer joins (side line at 0x200, producer line at 0x240 and closed flag at 0x250, consumer line at 0x280, first record header at 0x2c0) |
//! | 0x1000 | its ring's payload |
//!
//! Messages (kind 2) are records in the ring: an 8-byte header (length u32, its complement
//! u32), the payload, padding to 8 bytes. Version 3 commits them in band: the producer clears
//! the header word after the record, then stores the record's header last (release); the
//! consumer polls the header word at its position and never needs the producer index (see
//! `protocol::Producer::commit`). Version 2 published records by the index alone, so its
//! rings hold old laps' bytes where a version 3 reader would look for a header: the versions
//! do not mix.
//!
//! Connecting: the connector allocates its block, publishes its state word (release), adds
//! one to the blocks announced and rings the listener; the listener, seeing the count move,
//! scans the map for connector blocks that name it, allocates its block naming one, and
//! announces it likewise; the connector, seeing the count move, finds that block. No word is
//! written by both.
//!
//! A named channel ([`super::Channel::open`], `named.rs`) is the same pair of blocks with a
//! rendezvous instead of a listener: the first end publishes an opener block carrying the name
//! and uses it at once (writing into its ring before a peer exists); the next end names it
//! with an acceptor block (the joiner); the opener finds its joiner as a connector finds its
//! acceptor.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use super::arena::{Arena, PAGE};
use super::layout::{Kind, MAX_CAPACITY, MAX_NAME, MIN_CAPACITY};
use super::pagemap::Block;
use super::reclaim::Retire;
use super::region::{Mem, Region};
use super::ChannelError;

/// The layout version of regions that carry connections: 3 since message records are
/// committed in band (the arena and blocks are version 2's).
pub const VERSION: u32 = 3;
const MAGIC: u32 = u32::from_le_bytes(*b"IVC2");
const MAGIC_INIT: u32 = u32::from_le_bytes(*b"ivc2");
/// Magic of layout version 1 (named channels), for a clear error.
const MAGIC_V1: u32 = u32::from_le_bytes(*b"IVCH");
const H_MAGIC: u64 = 0x00;
const H_VERSION: u64 = 0x04;
const H_REGION_SIZE: u64 = 0x18;
const H_ANNOUNCED: u64 = 0x20;
/// Where the arena starts.
const ARENA: u64 = 0x1000;

/// Block kinds in the page map.
pub(super) const LISTENER: u8 = 1;
pub(super) const CONNECTION: u8 = 2;

pub(super) const L_NAME_LEN: u64 = 0x000;
pub(super) const L_KIND: u64 = 0x008;
pub(super) const L_NAME: u64 = 0x010;
pub(super) const L_STATE: u64 = 0x040;
pub(super) const L_SIDE: u64 = 0x080;

pub(super) const E_STATE: u64 = 0x000;
pub(super) const E_NAMES: u64 = 0x008;
pub(super) const E_ROLE: u64 = 0x010;
pub(super) const E_KIND: u64 = 0x014;
pub(super) const E_CAP: u64 = 0x018;
/// u32: 1 once its end closed its write side (apart from the producer line: see `Ring`).
pub(super) const E_CLOSED: u64 = 0x020;
pub(super) const E_SIDE: u64 = 0x040;
pub(super) const E_PROD: u64 = 0x080;
pub(super) const E_CONS: u64 = 0x0c0;
pub(super) const E_DATA: u64 = PAGE;
/// Roles of connection blocks.
pub(super) const CONNECTOR: u32 = 1;
pub(super) const ACCEPTOR: u32 = 2;
pub(super) const OPENER: u32 = 3;
pub(super) const E_NAME_LEN: u64 = 0x100;
pub(super) const E_NAME: u64 = 0x104;
/// An opener's peer lines before a peer joins: zeroes in its own first page, never written.
pub(super) const E_NO_SIDE: u64 = 0x200;
pub(super) const E_NO_PROD: u64 = 0x240;
pub(super) const E_NO_CONS: u64 = 0x280;
/// An opener's peer's closed flag before a peer joins: a zero word nobody writes.
pub(super) const E_NO_CLOSED: u64 = 0x250;
/// An opener's peer ring before a peer joins: a zero word in its own first page, never
/// written, read as the header of the first message record (none committed).
pub(super) const E_NO_DATA: u64 = 0x2c0;

/// The arenas an end works in: `own`, where it allocates its blocks (the only memory it
/// writes), and `peer`, where it finds the other side's (listeners, connectors, acceptors,
/// openers). On one region both are the same arena; on a pair ([`Region::map_pair`], the
/// isolated topology) the peer's is the other end's own, mapped read-only here.
#[derive(Clone)]
pub(super) struct Arenas {
    pub own: Arena,
    pub peer: Arena,
}

impl Arenas {
    /// Whether both ends write one arena (one region, not a pair).
    pub fn shared(&self) -> bool {
        self.own.start() == self.peer.start()
    }

    /// The arenas to look in for every end of this side and the other: own, then the peer's
    /// if it is another.
    pub fn all(&self) -> Vec<&Arena> {
        if self.shared() {
            vec![&self.own]
        } else {
            vec![&self.own, &self.peer]
        }
    }

    /// On a pair: frees what ends of this side left behind once their peers are gone too (an
    /// end that leaves while its peer is still there keeps its block: the peer may still read
    /// it, and cannot free it). Called when an end opens, connects or binds; on one region the
    /// last end to leave frees both blocks, and allocations sweep when they find no room.
    pub fn tidy(&self, bound: Duration) {
        if !self.shared() {
            super::reclaim::sweep(self, bound, bound);
        }
    }

    /// The blocks of a connection that this end frees once both ends are gone: its own, and
    /// its peer's when both lie in one arena (on a pair, the peer's side frees its own).
    pub fn retire(&self, own: Block, peer: Option<Block>) -> Retire {
        let mut blocks = Vec::from_iter(peer.filter(|_| self.shared()));
        blocks.push(own);
        Retire {
            arena: self.own.clone(),
            peer: self.peer.clone(),
            blocks,
        }
    }
}

/// Initialises the header of a zeroed region, or checks the one there, and returns its
/// arenas. Two ends starting at once: one wins the magic's compare-and-swap from 0, writes the
/// header and publishes the magic (release); the other waits (acquire) at most `timeout`. On a
/// pair, this end lays out and checks its own part only, and reads the peer's part as the
/// peer laid it out (a part not laid out yet reads as an empty arena).
pub(super) fn attach(region: &Region, timeout: Duration) -> Result<Arenas, ChannelError> {
    let mem = &region.mem;
    let own_len = mem.peer_at.unwrap_or(mem.len()) as u64;
    attach_own(mem, own_len, timeout)?;
    let own = Arena::new(region, ARENA, own_len - ARENA)?;
    let Some(p) = mem.peer_at else {
        return Ok(Arenas {
            peer: own.clone(),
            own,
        });
    };
    let (p, peer_len) = (p as u64, (mem.len() - p) as u64);
    if peer_len < ARENA + 2 * PAGE {
        return Err(ChannelError::TooSmall {
            need: ARENA + 2 * PAGE,
            have: peer_len,
        });
    }
    match mem.u32_at(p + H_MAGIC)?.load(Acquire) {
        0 | MAGIC_INIT => {}
        MAGIC => {
            check_header(mem, p, peer_len)
                .map_err(|e| ChannelError::BadLayout(format!("the peer's memory: {e}")))?;
        }
        m => {
            return Err(ChannelError::BadLayout(format!(
                "the peer's memory holds magic {m:#010x}, not a channel layout of version \
                 {VERSION} (or 0 for one not laid out yet)"
            )))
        }
    }
    let peer = Arena::new(region, p + ARENA, peer_len - ARENA)?.read_only();
    Ok(Arenas { own, peer })
}

/// Lays out or checks the header of this end's own memory, the first `len` bytes.
fn attach_own(mem: &Mem, len: u64, timeout: Duration) -> Result<(), ChannelError> {
    if len < ARENA + 2 * PAGE {
        return Err(ChannelError::TooSmall {
            need: ARENA + 2 * PAGE,
            have: len,
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
                    mem.u64_at(H_REGION_SIZE)?.store(len, Relaxed);
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
                    "the region holds layout version 1 (named channels of an older \
                     ivshmem-rs): this one reads version 3 only; zero the region to reuse it"
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
    // Memory this end cannot write (a device the hypervisor maps read-only: another guest's
    // own, in the isolated topology) drops stores silently: one that does not stick says so.
    // An extra count of announced blocks only makes scanners look once more.
    let announced = mem.u64_at(H_ANNOUNCED)?;
    let before = announced.fetch_add(1, Release);
    if announced.load(Acquire) == before {
        return Err(ChannelError::Open {
            what: "stores into this end's own memory do not stick: it is read-only (in the \
                   isolated topology, another guest's device: give each end its own device \
                   read-write and the other's as its peer)"
                .into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
    }
    check_header(mem, 0, len)
}

/// Checks the version and the size of a laid-out header at `at` of a part of `len` bytes.
fn check_header(mem: &Mem, at: u64, len: u64) -> Result<(), ChannelError> {
    let version = mem.u32_at(at + H_VERSION)?.load(Relaxed);
    if version != VERSION {
        return Err(ChannelError::Version {
            found: version,
            supported: VERSION,
        });
    }
    let size = mem.u64_at(at + H_REGION_SIZE)?.load(Relaxed);
    if size != len {
        return Err(ChannelError::BadLayout(format!(
            "the region was laid out for {size} bytes, this mapping has {len}"
        )));
    }
    Ok(())
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
            "name '{name}' must be 1 to {MAX_NAME} bytes"
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
    /// The block's generation when it was looked up.
    pub gen: u32,
}

impl<'a> BlockView<'a> {
    pub fn new(arena: &Arena, mem: &'a Mem, b: &Block) -> Self {
        Self {
            mem,
            off: arena.offset(b),
            len: u64::from(b.pages) * PAGE,
            gen: b.gen,
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
        self.name_at(L_NAME_LEN, L_NAME)
    }

    /// The name an opener block holds, if it is a valid one.
    pub fn opener_name(&self) -> Option<String> {
        self.name_at(E_NAME_LEN, E_NAME)
    }

    fn name_at(&self, len_at: u64, at: u64) -> Option<String> {
        let len = self.w32(len_at).ok()?.load(Relaxed) as usize;
        if len == 0 || len > MAX_NAME {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.mem.copy_out(self.off + at, &mut buf).ok()?;
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

/// Pages a connection end's block needs for a ring of `cap` bytes.
pub(super) fn end_pages(cap: u64) -> Result<u32, ChannelError> {
    if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
        return Err(ChannelError::Invalid(format!(
            "capacity {cap} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}"
        )));
    }
    Ok(1 + cap.div_ceil(PAGE) as u32)
}

#[derive(Debug, Clone, Copy)]
/// What a connection end's block says of itself, checked against the block: role, kind, the
/// block it names (head, generation) and the capacity of its ring.
pub(super) struct EndHeader {
    pub role: u32,
    pub kind: Kind,
    pub names: (u32, u32),
    pub cap: u64,
}

impl EndHeader {
    pub fn read(v: &BlockView<'_>) -> Option<Self> {
        let w = |at| v.w32(at).map_or(0, |w| w.load(Relaxed));
        let cap = u64::from(w(E_CAP));
        let ok = cap.is_power_of_two()
            && (MIN_CAPACITY..=MAX_CAPACITY).contains(&cap)
            && E_DATA + cap <= v.len;
        let role = w(E_ROLE);
        (ok && matches!(role, CONNECTOR | ACCEPTOR | OPENER)).then_some(Self {
            role,
            kind: kind_of(w(E_KIND))?,
            names: (w(E_NAMES), w(E_NAMES + 4)),
            cap,
        })
    }

    /// Writes the header of this end's block (before its state word is published).
    pub fn write(&self, v: &BlockView<'_>) -> Result<(), ChannelError> {
        v.w32(E_ROLE)?.store(self.role, Relaxed);
        v.w32(E_KIND)?.store(kind_code(self.kind), Relaxed);
        v.w32(E_NAMES)?.store(self.names.0, Relaxed);
        v.w32(E_NAMES + 4)?.store(self.names.1, Relaxed);
        v.w32(E_CAP)?.store(self.cap as u32, Relaxed);
        Ok(())
    }
}

/// Whether block `b`, whose words the caller has just read, is still published as the scan of
/// the map found it: an acquire fence orders those reads before this look at its map entry (as
/// a seqlock reader validates), so the words of a block freed and reused meanwhile (zeroed and
/// rewritten by a new owner: a new generation) are never taken for `b`'s.
pub(super) fn still(arena: &Arena, b: &Block) -> bool {
    std::sync::atomic::fence(Acquire);
    arena.current(b)
}

/// The count of blocks announced in the region's header (see the table above).
pub(super) fn announced(arena: &Arena) -> Result<&AtomicU64, ChannelError> {
    arena
        .mem()
        .u64_at(arena.start() as u64 - ARENA + H_ANNOUNCED)
}

/// Announces a block whose state word was published: scanners looking for it scan again.
pub(super) fn announce(arena: &Arena) {
    if let Ok(w) = announced(arena) {
        // Release: a scanner that loads the new count (acquire) then finds the block ready.
        w.fetch_add(1, Release);
    }
}

/// What a region of connections holds (for tools and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The services with a block (live or not yet freed), in page order.
    pub listeners: Vec<String>,
    /// Connections: their connectors' blocks, whatever their state.
    pub connections: u32,
    /// Blocks of connection ends (two per accepted connection), whatever their state.
    pub ends: u32,
    /// Pages in blocks, of all the arena's pages.
    pub pages_used: u32,
    pub pages: u32,
}

/// The blocks in a region of connections. Fails on a region that does not hold this layout
/// version; does not initialise a zeroed one.
pub fn usage(region: &Region) -> Result<Usage, ChannelError> {
    if !is_connections(region) {
        return Err(ChannelError::BadLayout(format!(
            "the region does not hold connections (layout version {VERSION})"
        )));
    }
    let arena = attach(region, Duration::ZERO)?.own;
    let mut u = Usage {
        listeners: Vec::new(),
        connections: 0,
        ends: 0,
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
            CONNECTION => {
                u.ends += 1;
                let v = BlockView::new(&arena, &region.mem, &b);
                u.connections +=
                    u32::from(EndHeader::read(&v).is_some_and(|h| h.role == CONNECTOR));
            }
            _ => {}
        }
    }
    Ok(u)
}
