//! Taking back the blocks of connections and listeners nobody uses any more, so that a region
//! serves unbounded connections over its life.
//!
//! A connection's two blocks are freed by whoever sees that neither end can use them again:
//! the last end to leave ([`Retire`], from the channel's drop: see `Control::leave`), or a
//! sweep ([`sweep`]) for ends that died. A sweep writes no block, only the page map: an end
//! is done when its state word says it left, when its heartbeat stood still for the agreed
//! liveness bound, or when its block never became ready (its creator died between allocating
//! and publishing its state word) and stood so that long; an end's block is freed once it is
//! done and so is its peer (or it has none any more), except a named channel's opener that
//! closed with bytes in its ring before anyone joined: they wait for a reader.
//!
//! A block freed by mistake (its owner was only paused past the bound) is noticed by its owner
//! when it resumes: its own state word or its peer's no longer shows its session (`control.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::chan::CLOSED;
use super::chan::{ATTACHED, SIDE_HEARTBEAT, SIDE_LIVENESS};
use super::conn_layout::Arenas;
use super::conn_layout::{
    BlockView, EndHeader, ACCEPTOR, CONNECTION, E_PROD, E_SIDE, E_STATE, LISTENER, L_SIDE, L_STATE,
    OPENER,
};
use super::control::end_state;
use super::liveness::{self, Watch};
use super::pagemap::Block;

/// What a process saw of the arenas of a mapping over time, kept with the region's memory;
/// blocks are keyed by their arena's start (a pair has two arenas), head and generation.
#[derive(Default)]
pub(crate) struct Sightings {
    /// Reserved map entries of the writable arena and since when they stand unchanged (see
    /// `Arena::alloc`).
    pub reserved: HashMap<u32, (u64, Instant)>,
    /// Blocks whose state word was not ready: the word and since when.
    unready: HashMap<(usize, u32, u32), (u64, Instant)>,
    /// Heartbeats of attached owners.
    beats: HashMap<(usize, u32, u32), Option<Watch>>,
}

/// The blocks that the last of their users frees: a connection's two on one region, or the
/// end's own on a pair (its peer's side frees the other); `arena` holds them, and `peer` is
/// the arena where the end's peer has its block.
#[derive(Clone)]
pub(super) struct Retire {
    pub arena: Arena,
    pub peer: Arena,
    pub blocks: Vec<Block>,
}

impl Retire {
    /// Whether the end and its peer have their blocks in one arena (one region, not a pair).
    pub(super) fn shared(&self) -> bool {
        self.arena.start() == self.peer.start()
    }

    /// The same, freeing nothing: the end's side sweeps its blocks later.
    pub(super) fn keeping_all(mut self) -> Self {
        self.blocks.clear();
        self
    }

    /// Frees the blocks that are still as they were (freeing is a compare-and-swap in the
    /// map: of two ends that both saw the other gone, each block is freed once).
    pub(super) fn free(&self) {
        for b in &self.blocks {
            self.arena.free(b);
        }
    }
}

/// What a sweep makes of one block.
struct Seen {
    block: Block,
    /// Its owner will not touch it again: it left, died, or never made it ready.
    done: bool,
    /// A connection end's role and the block it names.
    end: Option<(u32, (u32, u32))>,
    /// An opener that closed with bytes in its ring: they wait for a reader to join.
    unread: bool,
}

/// One look at every listener and connection block of this side's own arena: frees the
/// blocks whose owner is done (see the top of this file) and, for a connection end, whose peer
/// is done too (its block lies in the peer's arena: the same one on one region). An owner is
/// dead when its heartbeat stood still for the agreed bound (this end's liveness timeout `own`
/// or the longer one it published); a block stuck unready is given up after `stale`. Called
/// again and again (a listener does between accepts, an allocator that found no room does), it
/// frees what dead processes left. How many blocks it freed.
pub(super) fn sweep(arenas: &Arenas, own: Duration, stale: Duration) -> u32 {
    let arena = &arenas.own;
    let mem = arena.mem().clone();
    let now = Instant::now();
    let mut s = mem.sightings.lock().unwrap_or_else(PoisonError::into_inner);
    let mine = look(arena, &mut s, now, own, stale);
    let theirs = (!arenas.shared()).then(|| look(&arenas.peer, &mut s, now, own, stale));
    let peers = theirs.as_ref().unwrap_or(&mine);
    drop(s);
    // A connector's (or opener's) acceptor: the end block on the other side that names it.
    let acceptors: HashMap<(u32, u32), bool> = peers
        .values()
        .filter_map(|x| match x.end {
            Some((ACCEPTOR, names)) => Some((names, x.done)),
            _ => None,
        })
        .collect();
    let mut freed = 0;
    for x in mine.values().filter(|x| x.done) {
        let peer_done = match x.end {
            // A connector or an opener: its acceptor's (joiner's), if it has one; an opener
            // with none that closed with unread bytes keeps them for one. An acceptor: its
            // connector's or opener's, if that block is still there (a freed one reads
            // nothing); on a pair, a joiner stays while its opener's block does, so that the
            // opener's side never takes the opener for unjoined (see `named::join`).
            Some((ACCEPTOR, names)) => peers.get(&names).is_none_or(|p| {
                p.done && (arenas.shared() || p.end.is_none_or(|(role, _)| role != OPENER))
            }),
            Some(_) => match acceptors.get(&(x.block.head, x.block.gen)) {
                Some(&d) => d,
                None => !x.unread,
            },
            None => true,
        };
        if peer_done && arena.free(&x.block) {
            freed += 1;
        }
    }
    freed
}

/// What one look at `arena` makes of each of its blocks (see [`sweep`]); forgets the
/// sightings of its blocks that are gone.
fn look(
    arena: &Arena,
    s: &mut Sightings,
    now: Instant,
    own: Duration,
    stale: Duration,
) -> HashMap<(u32, u32), Seen> {
    let mem = arena.mem();
    let id = arena.start();
    let blocks = arena.blocks();
    let present: std::collections::HashSet<(usize, u32, u32)> =
        blocks.iter().map(|b| (id, b.head, b.gen)).collect();
    s.unready.retain(|k, _| k.0 != id || present.contains(k));
    s.beats.retain(|k, _| k.0 != id || present.contains(k));
    let mut seen: HashMap<(u32, u32), Seen> = HashMap::new();
    for b in blocks {
        let (state_at, side_at) = match b.kind {
            LISTENER => (L_STATE, L_SIDE),
            CONNECTION => (E_STATE, E_SIDE),
            _ => continue,
        };
        let v = BlockView::new(arena, mem, &b);
        let Ok(word) = v.w64(state_at) else {
            continue;
        };
        let w = word.load(Acquire);
        let end = (b.kind == CONNECTION)
            .then(|| EndHeader::read(&v).map(|h| (h.role, h.names)))
            .flatten();
        let prod = v.w64(E_PROD).map_or(0, |w| w.load(Acquire));
        if !super::conn_layout::still(arena, &b) {
            // Freed (and maybe reused) while we read it: gone, and nothing of it was read.
            continue;
        }
        let key = (id, b.head, b.gen);
        let ready = end_state(w, b.gen).filter(|_| b.kind == LISTENER || end.is_some());
        let done = match ready {
            None => {
                // Not ready (or not a word any end writes): its creator died half-way, if it
                // stays so.
                let (first, since) = *s.unready.entry(key).or_insert((w, now));
                if first != w {
                    s.unready.insert(key, (w, now));
                }
                first == w && now.duration_since(since) >= stale
            }
            Some((ATTACHED, _)) => {
                s.unready.remove(&key);
                let (Ok(hb), Ok(lv)) = (
                    v.w64(side_at + SIDE_HEARTBEAT),
                    v.w32(side_at + SIDE_LIVENESS),
                ) else {
                    continue;
                };
                let bound = liveness::agreed(own, lv.load(Relaxed));
                let watch = s.beats.entry(key).or_default();
                Watch::dead(watch, b.gen, hb.load(Relaxed), now, bound)
            }
            Some(_) => true, // closed, or left dead
        };
        let unread = ready.is_some_and(|(s, _)| s == CLOSED)
            && end.is_some_and(|(role, _)| role == OPENER)
            && prod != 0;
        seen.insert(
            (b.head, b.gen),
            Seen {
                block: b,
                done,
                end: ready.and(end),
                unread,
            },
        );
    }
    seen
}
