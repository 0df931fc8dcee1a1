//! Named channels on layout version 3: [`Channel::open`] is a rendezvous of two ends on a
//! name, either end first, on the blocks connections use (`conn_layout.rs`).
//!
//! - The first end publishes an *opener* block with the name, kind and capacity and returns at
//!   once: it writes into its own ring before a peer exists, reading zeroes (its block's "no
//!   peer yet" lines) as the peer's consumer index, and looks for a joiner whenever it waits or
//!   blocks were announced (`Channel::try_pair`).
//! - The next end finds the opener (live and unjoined, or closed with unread bytes) and joins
//!   it with an acceptor block that names it, exactly as a listener accepts a connector.
//! - While a joined pair with a live end holds the name, further ends wait (at most the open
//!   timeout, then `Busy`); dead ends are found by the same sweep that frees connections
//!   (`reclaim.rs`), so a name whose ends died is opened afresh.
//!
//! Two ends that publish at once (two openers of one name, or two joiners of one opener) each
//! write their block's header, fence (SeqCst) and look for the other: of two such stores and
//! loads at least one sees the other, and an end that sees a rival withdraws (frees its block)
//! and tries again after a random pause. Withdrawing ends are never taken as peers: an opener
//! pairs only with a joiner whose state word is published, which happens after the rival check.
//!
//! An opener that leaves before anyone joined frees its block, unless it closed with bytes in
//! its ring: those wait for a reader, as a pipe's do (a crashed opener's do not).

use std::sync::atomic::fence;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::chan::{Ring, ATTACHED, CLOSED, DEAD};
use super::conn_layout::Arenas;
use super::conn_layout::{
    self as cl, BlockView, EndHeader, ACCEPTOR, CONNECTION, E_CLOSED, E_CONS, E_DATA, E_NAME,
    E_NAME_LEN, E_NO_CLOSED, E_NO_CONS, E_NO_DATA, E_NO_PROD, E_NO_SIDE, E_PROD, E_SIDE, E_STATE,
    OPENER,
};
use super::control::{end_state, end_word, Control};
use super::layout::{ChannelInfo, Kind};
use super::listener::{alloc_end, end_channel};
use super::pagemap::Block;
use super::reclaim::{self, Retire};
use super::region::Region;
use super::{Channel, ChannelError, Options};

/// What a scan found of one name.
#[derive(Default)]
struct Found {
    /// The opener to join: the lowest-paged one that is live and unjoined, or closed with
    /// unread bytes.
    joinable: Option<(Block, EndHeader)>,
    /// A joined pair with an end still attached holds the name.
    held: bool,
    /// An end is being published (an opener or a joiner that has not published its state).
    busy: bool,
    /// What the name carries, from the first opener that has published its state.
    kind: Option<Kind>,
}

/// The producer index of an end's ring: not 0 once it wrote (the consumer starts at 0).
fn wrote(v: &BlockView<'_>) -> bool {
    v.w64(E_PROD).is_ok_and(|w| w.load(Acquire) != 0)
}

/// An end's block in a scan: the block, its state and verdict if published, its header.
type End = (Block, Option<(u8, u8)>, EndHeader);

/// The ends in `arena`.
fn ends_in(arena: &Arena) -> Vec<End> {
    let mem = arena.mem();
    arena
        .blocks()
        .into_iter()
        .filter(|b| b.kind == CONNECTION)
        .filter_map(|b| {
            let v = BlockView::new(arena, mem, &b);
            let h = EndHeader::read(&v)?;
            let w = v.w64(E_STATE).ok()?.load(Acquire);
            let state = end_state(w, b.gen);
            // A word no end writes (not 0, being published, nor a state): not an end at all.
            let end = w == 0 || state.is_some();
            (end && cl::still(arena, &b)).then_some((b, state, h))
        })
        .collect()
}

/// Looks at the ends of channel `name`: openers in the peer's arena, joined from this side's
/// (one arena on one region). On a pair, an opener on this side holds the name here too: it
/// waits for the other side, and a second end of this side can neither join it (joiners come
/// from the other side) nor open beside it.
fn scan(arenas: &Arenas, name: &str) -> Found {
    let own = ends_in(&arenas.own);
    let mut found = Found::default();
    if arenas.shared() {
        scan_openers(&arenas.own, &own, &own, name, &mut found);
    } else {
        let peer = ends_in(&arenas.peer);
        scan_openers(&arenas.peer, &peer, &own, name, &mut found);
        let mut here = Found::default();
        scan_openers(&arenas.own, &own, &peer, name, &mut here);
        found.held |= here.held || here.joinable.is_some();
        found.busy |= here.busy;
        found.kind = found.kind.or(here.kind);
    }
    found
}

/// The openers of `name` among `ends` (in `arena`) and their joiners among `joiners`.
fn scan_openers(arena: &Arena, ends: &[End], joiners: &[End], name: &str, found: &mut Found) {
    let mem = arena.mem();
    for (o, state, h) in ends {
        let v = BlockView::new(arena, mem, o);
        if h.role != OPENER || v.opener_name().as_deref() != Some(name) || !cl::still(arena, o) {
            continue;
        }
        let Some((state, _)) = *state else {
            found.busy = true;
            continue;
        };
        found.kind.get_or_insert(h.kind);
        let mut joined = false;
        for (_, a_state, ah) in joiners {
            if ah.role != ACCEPTOR || ah.names != (o.head, o.gen) {
                continue;
            }
            match a_state {
                None => found.busy = true,
                Some((s, _)) => {
                    joined = true;
                    found.held |= *s == ATTACHED || state == ATTACHED;
                }
            }
        }
        let open = state == ATTACHED || (state == CLOSED && wrote(&v));
        if !joined && open && found.joinable.is_none() {
            found.joinable = Some((*o, *h));
        }
    }
}

/// Whether a block other than `me` of role `role` with the same name (openers, on either
/// side) or naming the same opener (joiners, on this side) exists, published or not: a rival
/// of `me`'s.
fn rival(arenas: &Arenas, me: &Block, role: u32, name: &str, names: (u32, u32)) -> bool {
    let mut all = arenas.all();
    if role != OPENER {
        all.truncate(1);
    }
    // `me` lies in this side's own arena, the first.
    all.into_iter()
        .enumerate()
        .any(|(i, a)| rival_in(a, (i == 0).then_some(me), role, name, names))
}

/// [`rival`] in one arena; `me` is skipped there if given.
fn rival_in(arena: &Arena, me: Option<&Block>, role: u32, name: &str, names: (u32, u32)) -> bool {
    let mem = arena.mem();
    arena.blocks().into_iter().any(|b| {
        if b.kind != CONNECTION || Some(&b) == me {
            return false;
        }
        let v = BlockView::new(arena, mem, &b);
        let Some(h) = EndHeader::read(&v) else {
            return false;
        };
        // Being published (0) or in use: attached, or an opener that closed with bytes for a
        // reader (the end to join). Closed, dead or garbage: no rival.
        let w = v.w64(E_STATE).map_or(1, |w| w.load(Acquire));
        let live = w == 0
            || match end_state(w, b.gen) {
                Some((ATTACHED, _)) => true,
                Some((CLOSED, _)) => role == OPENER && wrote(&v),
                _ => false,
            };
        h.role == role
            && live
            && match role {
                OPENER => v.opener_name().as_deref() == Some(name),
                _ => h.names == names,
            }
            && cl::still(arena, &b)
    })
}

/// A short random pause after withdrawing, so that two ends that saw each other do not meet
/// again and again.
fn jitter() {
    let t = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
    std::thread::sleep(Duration::from_micros(200 + u64::from(t % 1800)));
}

impl Channel {
    /// Opens the channel `name` (1 to 32 bytes) in `region`, laying out a zeroed region as
    /// version 3 first. Either end may come first: the first returns at once and may write
    /// before its peer comes (up to its ring's capacity); the second joins it, with a ring of
    /// the same capacity, and must ask for the same [`Kind`]. A third waits while a pair with
    /// an attached end holds the name, then gets `Busy` after [`Options::open_timeout`]; ends
    /// that died are replaced once found dead (their heartbeat still for the liveness bound).
    /// With [`Options::create`]`(false)` an end only joins: `InvalidInput` when no end waits.
    ///
    /// A region serves named channels and connections alike, without end: every pair's blocks
    /// are freed when both of its ends are gone.
    pub fn open(region: &Region, name: &str, opts: &Options) -> Result<Self, ChannelError> {
        cl::check_name(name)?;
        let arena = cl::attach(region, opts.open_timeout_value())?;
        arena.tidy(opts.liveness_bound());
        let deadline = Instant::now().checked_add(opts.open_timeout_value());
        let opts = &opts.for_one_end()?;
        let bound = opts.liveness_bound();
        loop {
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(ChannelError::Busy(format!(
                    "channel '{name}' is held by a pair of ends, one of them attached, or its \
                     ends kept changing, for longer than the open timeout: two ends use it (or \
                     one whose peer left has not closed yet; on a pair, an end on this side \
                     waits for the other side)"
                )));
            }
            let found = scan(&arena, name);
            if let Some(k) = found.kind.filter(|&k| k != opts.kind_value()) {
                return Err(ChannelError::Invalid(format!(
                    "channel '{name}' carries {}, not {}",
                    kind_name(k),
                    kind_name(opts.kind_value())
                )));
            }
            if let Some((o, h)) = found.joinable {
                if let Some(c) = join(&arena, name, &o, &h, opts)? {
                    return Ok(c);
                }
                jitter();
                // On a pair, what held the other end back may be an ended pair's block on
                // this side that only this side can free.
                arena.tidy(bound);
            } else if !found.held && !found.busy {
                if !opts.create_value() {
                    return Err(ChannelError::Invalid(format!(
                        "no channel named '{name}' (no end of it waits to be joined)"
                    )));
                }
                if let Some(c) = create(&arena, name, opts)? {
                    return Ok(c);
                }
                jitter();
                arena.tidy(bound);
            } else {
                // Ends that died are found over several looks (`reclaim::sweep`), as are
                // blocks whose creator died before publishing them.
                reclaim::sweep(&arena, bound, bound);
                if found.held {
                    std::thread::sleep((bound / 20).clamp(Duration::from_millis(1), bound));
                } else {
                    // An end being published: a matter of microseconds.
                    jitter();
                }
            }
        }
    }
}

/// The end that joined opener `own` (its block first in `own`), once one has published its
/// state; the map is scanned again only when blocks were announced since `seen`.
pub(super) fn joiner(own: &Retire, seen: &mut Option<u64>) -> Option<Joiner> {
    let arena = &own.peer;
    let (a, cap) = super::connect::acceptor_of(arena, own.blocks.first()?, seen)
        .ok()
        .flatten()?;
    let v = BlockView::new(arena, arena.mem(), &a);
    // Every word below is inside the joiner's block (checked) and so the region; its ring's
    // payload was checked with its capacity (`EndHeader::read`).
    for at in [E_STATE, E_SIDE + 0x18, E_PROD + 8, E_CONS + 8] {
        v.w64(at).ok()?;
    }
    v.w32(E_CLOSED).ok()?;
    Some(Joiner {
        state: (v.off + E_STATE) as usize,
        word: end_word(a.gen, ATTACHED),
        side: (v.off + E_SIDE) as usize,
        cons: v.off + E_CONS,
        prod: v.off + E_PROD,
        closed: v.off + E_CLOSED,
        data: v.off + E_DATA,
        cap,
    })
}

/// The end that joined an opener: where its words are.
pub(super) struct Joiner {
    pub state: usize,
    pub word: u64,
    pub side: usize,
    pub cons: u64,
    pub prod: u64,
    pub closed: u64,
    pub data: u64,
    pub cap: u64,
}

/// Creates an opener block for `name` and returns its end, or `None` after seeing a rival.
fn create(arenas: &Arenas, name: &str, opts: &Options) -> Result<Option<Channel>, ChannelError> {
    let cap = opts.capacity_value();
    let header = EndHeader {
        role: OPENER,
        kind: opts.kind_value(),
        names: (0, 0),
        cap,
    };
    let b = alloc_end(arenas, &header, opts, &format!("channel '{name}'"))?;
    let arena = &arenas.own;
    let mem = arena.mem().clone();
    let v = BlockView::new(arena, &mem, &b);
    v.w32(E_NAME_LEN)?.store(name.len() as u32, Relaxed);
    mem.copy_in(v.off + E_NAME, name.as_bytes())?;
    // Our header, then theirs: see the top of this file.
    fence(SeqCst);
    if rival(arenas, &b, OPENER, name, (0, 0)) {
        arena.free(&b);
        return Ok(None);
    }
    let own_word = end_word(b.gen, ATTACHED);
    // Release: an end that finds it (acquire) sees its header.
    v.w64(E_STATE)?.store(own_word, Release);
    cl::announce(arena);
    let ctl = Control::Pending {
        own: (v.off + E_STATE) as usize,
        own_word,
    };
    let sides = [(v.off + E_SIDE) as usize, (v.off + E_NO_SIDE) as usize];
    let out = Ring::on_lines(
        v.off + E_PROD,
        v.off + E_CLOSED,
        v.off + E_NO_CONS,
        v.off + E_DATA,
        cap,
    );
    // Nothing to read until a peer joins: its producer line and first record header read
    // zeroes.
    let inp = Ring::on_lines(
        v.off + E_NO_PROD,
        v.off + E_NO_CLOSED,
        v.off + E_CONS,
        v.off + E_NO_DATA,
        cap,
    );
    let mut chan = Channel::on_lines(mem, name, opts.kind_value(), ctl, sides, [out, inp], opts);
    chan.start(0, b.gen, Some(arenas.retire(b, None)))?;
    Ok(Some(chan))
}

/// Joins opener `o` (header `h`) with an acceptor block; `None` after seeing a rival joiner,
/// or when the opener left meanwhile.
fn join(
    arenas: &Arenas,
    name: &str,
    o: &Block,
    h: &EndHeader,
    opts: &Options,
) -> Result<Option<Channel>, ChannelError> {
    let header = EndHeader {
        role: ACCEPTOR,
        kind: h.kind,
        names: (o.head, o.gen),
        cap: h.cap,
    };
    let b = alloc_end(arenas, &header, opts, &format!("channel '{name}'"))?;
    let (arena, peer) = (&arenas.own, &arenas.peer);
    let mem = arena.mem().clone();
    let v = BlockView::new(arena, &mem, &b);
    fence(SeqCst);
    if rival(arenas, &b, ACCEPTOR, name, (o.head, o.gen)) {
        arena.free(&b);
        return Ok(None);
    }
    v.w64(E_STATE)?.store(end_word(b.gen, ATTACHED), Release);
    cl::announce(arena);
    // Our state, then the opener's: an opener leaving at once stores its state, then looks
    // for us (`opener_left`), so one of us sees the other.
    fence(SeqCst);
    // On a pair the joiner never frees its block as it leaves: while it names the opener, the
    // opener's side sees the opener joined, and does not hand the bytes it had read to a new
    // joiner; the joiner's side sweeps it once the opener's block is gone (`reclaim::sweep`).
    let blocks = match arenas.shared() {
        true => arenas.retire(b, Some(*o)),
        false => arenas.retire(b, None).keeping_all(),
    };
    let ov = BlockView::new(peer, &mem, o);
    let state = ov
        .w64(E_STATE)
        .ok()
        .and_then(|w| end_state(w.load(Acquire), o.gen));
    let open = matches!(state, Some((ATTACHED, 0))) || (state == Some((CLOSED, 0)) && wrote(&ov));
    if !peer.current(o) || !open {
        v.w64(E_STATE)?.store(end_word(b.gen, CLOSED), Release);
        // Not joined: nobody read through this block.
        arenas.retire(b, Some(*o)).free();
        return Ok(None);
    }
    let mut chan = end_channel(&mem, name, h.kind, [&ov, &v], [h.cap; 2], 1, opts)?;
    chan.start(1, o.gen, Some(blocks))?;
    chan.notify_peer();
    Ok(Some(chan))
}

/// What an opener does after storing its leaving state (`Control::leave`): if an end joined
/// it, the two leave as a connection's ends do (the blocks are freed when the joiner is gone
/// too; the joiner's side line is returned, to ring it); if none did, its block is freed,
/// unless it closed with bytes in its ring, which wait for a reader.
pub(super) fn opener_left(own: &Retire, state: u8) -> Option<usize> {
    let (arena, peer) = (&own.arena, &own.peer);
    let b = *own.blocks.last()?;
    let mem = arena.mem();
    let v = BlockView::new(arena, mem, &b);
    // The state store, then the look for a joiner: a joiner publishing at once stores its
    // state, then re-reads ours (`join`), so one of us sees the other.
    fence(SeqCst);
    let mut seen = None;
    let Ok(Some((a, _))) = super::connect::acceptor_of(peer, &b, &mut seen) else {
        if state == DEAD || !wrote(&v) {
            arena.free(&b);
        }
        return None;
    };
    let av = BlockView::new(peer, mem, &a);
    let verdict = v
        .w64(E_STATE)
        .is_ok_and(|w| (w.load(Relaxed) >> 8) as u8 == DEAD);
    let gone = av
        .w64(E_STATE)
        .ok()
        .and_then(|w| end_state(w.load(Acquire), a.gen))
        .is_none_or(|(s, _)| s != ATTACHED);
    if gone || verdict {
        let mut blocks = own.clone();
        if own.shared() {
            blocks.blocks.insert(0, a);
        }
        blocks.free();
    }
    Some((av.off + E_SIDE) as usize)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Stream => "a byte stream",
        Kind::Messages => "messages",
    }
}

/// The named channels of `region` (for tools and diagnostics): each opener block, whether
/// joined or not. Fails on a region that does not hold layout version 3; does not initialise
/// a zeroed one (an empty list).
pub fn list(region: &Region) -> Result<Vec<ChannelInfo>, ChannelError> {
    if region.mem.u32_at(0)?.load(Acquire) == 0 {
        return Ok(Vec::new());
    }
    let arenas = cl::attach(region, Duration::ZERO)?;
    let mem = arenas.own.mem();
    let mut out = Vec::new();
    // Openers on each side, joined from the other (one arena on one region).
    let sides = match arenas.shared() {
        true => vec![(&arenas.own, &arenas.own)],
        false => vec![(&arenas.own, &arenas.peer), (&arenas.peer, &arenas.own)],
    };
    for (arena, other) in sides {
        for b in arena.blocks().into_iter().filter(|b| b.kind == CONNECTION) {
            let v = BlockView::new(arena, mem, &b);
            let Some(h) = EndHeader::read(&v).filter(|h| h.role == OPENER) else {
                continue;
            };
            let Some(name) = v.opener_name().filter(|_| cl::still(arena, &b)) else {
                continue;
            };
            let joiner = super::connect::acceptor_of(other, &b, &mut None)
                .ok()
                .flatten()
                .map(|(a, _)| other.offset(&a));
            out.push(ChannelInfo {
                name,
                kind: h.kind,
                capacities: [h.cap, h.cap],
                offset: v.off,
                joiner,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::usage;
    use super::*;
    use std::io::{Read, Write};

    fn opts() -> Options {
        Options::new()
            .capacity(4096)
            .liveness_timeout(Duration::from_millis(100))
            .open_timeout(Duration::from_millis(500))
    }

    /// A writer that closed before any reader came: its bytes wait in its block, through
    /// sweeps, and the reader that comes later gets them, then end-of-file; then every block
    /// is freed. Without unread bytes an opener's block goes at once.
    #[test]
    fn bytes_of_an_opener_that_left_wait_for_a_reader() {
        let r = Region::anonymous(1 << 20).unwrap();
        let mut a = Channel::open(&r, "p", &opts()).unwrap();
        a.write_all(b"hello").unwrap();
        drop(a);
        let arena = cl::attach(&r, Duration::ZERO).unwrap();
        for _ in 0..5 {
            reclaim::sweep(&arena, Duration::from_millis(100), Duration::from_millis(1));
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(list(&r).unwrap().len(), 1, "kept for a reader");
        let mut b = Channel::open(&r, "p", &opts()).unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        drop(b);
        assert_eq!(usage(&r).unwrap().ends, 0);
        drop(Channel::open(&r, "q", &opts()).unwrap());
        assert_eq!(usage(&r).unwrap().ends, 0, "nothing written, nothing kept");
    }

    /// A third end waits while a live pair holds the name, then gets `Busy`; once the pair is
    /// gone it opens afresh. An end that asks for the other kind is told so at once.
    #[test]
    fn a_held_name_is_busy_and_the_kind_is_the_openers() {
        let r = Region::anonymous(1 << 20).unwrap();
        let a = Channel::open(&r, "p", &opts()).unwrap();
        let b = Channel::open(&r, "p", &opts()).unwrap();
        let e = Channel::open(&r, "p", &opts()).unwrap_err();
        assert!(matches!(e, ChannelError::Busy(_)), "{e}");
        let e = Channel::open(&r, "p", &opts().kind(Kind::Messages)).unwrap_err();
        assert!(e.to_string().contains("carries a byte stream"), "{e}");
        drop((a, b));
        let c = Channel::open(&r, "p", &opts()).unwrap();
        assert_ne!(c.epoch(), 0);
        assert_eq!(list(&r).unwrap().len(), 1);
    }
}
