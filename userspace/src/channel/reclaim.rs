//! Taking back the blocks of connections and listeners nobody uses any more, so that a region
//! serves unbounded connections over its life.
//!
//! A block is freed by whoever sees that no end can use it again: the last end to leave
//! ([`Retire`], from the channel's or the listener's drop), or a sweep ([`sweep`]) for ends
//! that died: an attached side whose heartbeat stands still for the agreed liveness bound is
//! marked dead, a block with no live side is freed, and one that never became ready (its
//! creator died between allocating and publishing its control word) is freed once it has stood
//! unchanged that long.
//!
//! Freeing goes through the block's control word: a compare-and-swap from the value that
//! showed it unused to one with both sides `GONE`, then the page map. An end racing to take a
//! side (an acceptor) compare-and-swaps the same word, so exactly one of them wins, and a stale
//! end that wakes up later finds `GONE`, or another generation, never its own session.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::chan::{
    decode, live, session, side_state, with_state, C_CTL, C_SIDE, DEAD, GONE, SIDE_HEARTBEAT,
    SIDE_LIVENESS,
};
use super::conn_layout::{BlockView, CONNECTION, LISTENER, L_CTL, L_SIDE, N_CHAN};
use super::liveness::{self, Watch};
use super::pagemap::Block;

/// What a process saw of an arena over time, kept with the region's memory.
#[derive(Default)]
pub(crate) struct Sightings {
    /// Reserved map entries and since when they stand unchanged (see `Arena::alloc`).
    pub reserved: HashMap<u32, (u64, Instant)>,
    /// Blocks whose control word was not ready (head, generation): the word and since when.
    unready: HashMap<(u32, u32), (u64, Instant)>,
    /// Heartbeats of attached sides (head, generation, side).
    beats: HashMap<(u32, u32, usize), Option<Watch>>,
}

/// A block that the last of its users frees.
#[derive(Clone)]
pub(super) struct Retire {
    pub arena: Arena,
    pub block: Block,
}

impl Retire {
    /// Frees the block if its control word `ctl` still is `w` (which shows no live side):
    /// first both sides `GONE`, so a racing acceptor's compare-and-swap fails, then the map.
    pub(super) fn retire(&self, ctl: &AtomicU64, w: u64) -> bool {
        let gone = with_state(with_state(w, 0, GONE), 1, GONE);
        // AcqRel: acquire sees every access the ends made before leaving (each left with a
        // release); the map's release then hands the pages on after them.
        ctl.compare_exchange(w, gone, AcqRel, Relaxed).is_ok() && self.arena.free(&self.block)
    }
}

/// Where a block kind keeps its control word and side lines, at offsets from its start.
fn words(kind: u8) -> Option<(u64, &'static [u64])> {
    const CONN_SIDES: [u64; 2] = [N_CHAN + C_SIDE[0], N_CHAN + C_SIDE[1]];
    match kind {
        LISTENER => Some((L_CTL, &[L_SIDE])),
        CONNECTION => Some((N_CHAN + C_CTL, &CONN_SIDES)),
        _ => None,
    }
}

/// One look at every listener and connection block of `arena`: marks attached sides whose
/// heartbeat stood still for the agreed bound (this end's liveness timeout `own` or the longer
/// one the side published) dead, and frees blocks no live side uses, or that stood unready for
/// `stale`. Called again and again (a listener does between accepts, an allocator that found
/// no room does), it frees what dead processes left. How many blocks it freed.
pub(super) fn sweep(arena: &Arena, own: Duration, stale: Duration) -> u32 {
    let mem = arena.mem().clone();
    let now = Instant::now();
    let blocks = arena.blocks();
    let mut s = mem.sightings.lock().unwrap_or_else(PoisonError::into_inner);
    let present: std::collections::HashSet<(u32, u32)> =
        blocks.iter().map(|b| (b.head, b.gen)).collect();
    s.unready.retain(|k, _| present.contains(k));
    s.beats.retain(|k, _| present.contains(&(k.0, k.1)));
    let mut freed = 0;
    for b in blocks {
        let Some((ctl_at, sides)) = words(b.kind) else {
            continue;
        };
        let v = BlockView::new(arena, &mem, &b);
        let Ok(ctl) = v.w64(ctl_at) else {
            continue;
        };
        let retire = Retire {
            arena: arena.clone(),
            block: b,
        };
        let mut w = ctl.load(Acquire);
        let states = decode(w).ok().filter(|_| session(w) == b.gen);
        let Some(states) = states.map(|(s, _)| s) else {
            // Not ready (or not a word any end writes): its creator died half-way, if it
            // stays so.
            let (seen, since) = *s.unready.entry((b.head, b.gen)).or_insert((w, now));
            if seen != w {
                s.unready.insert((b.head, b.gen), (w, now));
            } else if now.duration_since(since) >= stale
                && ctl
                    .compare_exchange(w, gone_word(b.gen), AcqRel, Relaxed)
                    .is_ok()
                && arena.free(&b)
            {
                freed += 1;
            }
            continue;
        };
        s.unready.remove(&(b.head, b.gen));
        let mut any_live = false;
        for (side, &line) in sides.iter().enumerate() {
            if !live(states[side]) {
                continue;
            }
            let (Ok(hb), Ok(lv)) = (v.w64(line + SIDE_HEARTBEAT), v.w32(line + SIDE_LIVENESS))
            else {
                continue;
            };
            let bound = liveness::agreed(own, lv.load(Relaxed));
            let watch = s.beats.entry((b.head, b.gen, side)).or_default();
            if Watch::dead(watch, b.gen, hb.load(Relaxed), now, bound) {
                let dead = with_state(w, side, DEAD);
                match ctl.compare_exchange(w, dead, AcqRel, Acquire) {
                    Ok(_) => w = dead,
                    Err(_) => any_live = true, // it moved: look again next time
                }
            } else {
                any_live = true;
            }
        }
        if !any_live && !live(side_state(w, 0)) && !live(side_state(w, 1)) && retire.retire(ctl, w)
        {
            freed += 1;
        }
    }
    freed
}

/// The control word of a block being freed that never became ready.
fn gone_word(gen: u32) -> u64 {
    u64::from(gen) << 32 | u64::from(GONE) << 8 | u64::from(GONE)
}
