//! The page map of an arena (the channel layout since version 2, `userspace/docs/channels-v2.md`):
//! one word per page says whether the page is free, the head of a block (its kind, length and
//! generation), the body of one, or reserved by an allocation in progress. Only this module writes
//! the map, and the map is never payload, so a scan never takes data for metadata.
//!
//! Generic over the atomics, as [`super::protocol`] is, so that the loom model in
//! `tests/channel_loom.rs` checks this very code. Public only for that model; not a stable
//! interface.
//!
//! # The word
//!
//! | bits | field |
//! |---|---|
//! | 0-3 | state: 0 free, 1 head, 2 body, 3 reserved |
//! | 4-7 | kind of the block (head, reserved) |
//! | 8-39 | head: length in pages; body: index of the head page; reserved: the allocation's token |
//! | 40-63 | generation: of the block (head, body); of the page's last block (free, reserved) |
//!
//! # Ordering
//!
//! | store (release) | load (acquire) | what it orders |
//! |---|---|---|
//! | head entry (publish), after the block's pages were written | head entry in a scan, before reading the block | the block's contents |
//! | free entry (free), after the owner's last access to the block | entry, before reserving the page | page reuse |
//!
//! Every transition is a compare-and-swap from the value the writer saw, so two allocators,
//! an allocator and a reclaimer, or an owner and a reclaimer never both win one page.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::protocol::Atomics;

/// Page states.
pub const FREE: u8 = 0;
pub const HEAD: u8 = 1;
pub const BODY: u8 = 2;
pub const RESERVED: u8 = 3;

/// Generations have 24 bits and wrap.
const GEN_MASK: u32 = 0xff_ffff;

/// One word of the map, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry(pub u64);

impl Entry {
    /// An entry of `state`, `kind`, `field` (length, head index or token) and `gen`.
    pub fn new(state: u8, kind: u8, field: u32, gen: u32) -> Self {
        Self(
            u64::from(state & 0xf)
                | u64::from(kind & 0xf) << 4
                | u64::from(field) << 8
                | u64::from(gen & GEN_MASK) << 40,
        )
    }

    pub fn state(self) -> u8 {
        (self.0 & 0xf) as u8
    }

    pub fn kind(self) -> u8 {
        ((self.0 >> 4) & 0xf) as u8
    }

    /// Length (head), head index (body) or token (reserved).
    pub fn field(self) -> u32 {
        (self.0 >> 8) as u32
    }

    pub fn gen(self) -> u32 {
        (self.0 >> 40) as u32
    }
}

/// The words of a map.
pub trait Words<A: Atomics> {
    /// Pages in the map.
    fn pages(&self) -> u32;
    /// The word of page `i` (`i < pages()`).
    fn word(&self, i: u32) -> &A::U64;
}

/// A published block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Its first page.
    pub head: u32,
    /// Its length in pages.
    pub pages: u32,
    pub kind: u8,
    pub gen: u32,
}

impl Block {
    fn entry(&self) -> Entry {
        Entry::new(HEAD, self.kind, self.pages, self.gen)
    }
}

/// Pages reserved by an allocation that has not published its block yet.
///
/// # Invariants
///
/// Pages `head..head + pages` held `RESERVED` entries with `token`, `kind` and each page's
/// previous generation (in `olds`) when [`reserve`] returned.
#[derive(Debug)]
pub struct Reservation {
    pub head: u32,
    pub pages: u32,
    pub kind: u8,
    pub token: u32,
    olds: Vec<u32>,
}

impl Reservation {
    /// The generation the block will have: one more than its head page's last, which
    /// [`reserve`] raised to the last of any of its pages.
    pub fn gen(&self) -> u32 {
        self.olds[0].wrapping_add(1) & GEN_MASK
    }

    fn reserved(&self, i: u32) -> Entry {
        Entry::new(
            RESERVED,
            self.kind,
            self.token,
            self.olds[(i - self.head) as usize],
        )
    }

    fn free(&self, i: u32) -> Entry {
        Entry::new(FREE, 0, 0, self.olds[(i - self.head) as usize])
    }
}

/// Reserves the first run of `pages` free pages for a block of `kind`, marked with `token`
/// (unique to this allocation). `None` when no run is free.
pub fn reserve<A: Atomics, W: Words<A>>(
    w: &W,
    kind: u8,
    pages: u32,
    token: u32,
) -> Option<Reservation> {
    let total = w.pages();
    if pages == 0 || pages > total {
        return None;
    }
    let mut i = 0u32;
    // A page that keeps changing under the compare-and-swap (a hostile peer) ends the search.
    let mut lost = 0u32;
    while i + pages <= total && lost < 1000 {
        match try_run::<A, W>(w, i, pages, kind, token) {
            Ok(olds) => {
                let mut r = Reservation {
                    head: i,
                    pages,
                    kind,
                    token,
                    olds,
                };
                // The head's reservation takes the highest generation of the run, so that
                // the block's (one more) exceeds every page's last: each page's generation
                // only grows (body entries, and free ones after a free, carry the block's),
                // and a (head, generation) pair names one block in the arena's life, until
                // the 24-bit generation wraps. With the head page's own last alone, a page
                // that had been a body went back to an earlier generation, and a new block
                // could take an old one's name: the ends that named the old one took it
                // for theirs.
                let top = r.olds.iter().copied().max().unwrap_or(0);
                if top != r.olds[0] {
                    let raised = Entry::new(RESERVED, kind, token, top);
                    if A::cas(w.word(i), r.reserved(i).0, raised.0, Relaxed, Relaxed).is_err() {
                        // Revoked already: give back the rest, look further.
                        cancel_from(w, &r, i + 1);
                        i += 1;
                        lost += 1;
                        continue;
                    }
                    r.olds[0] = top;
                }
                return Some(r);
            }
            Err((next, raced)) => {
                i = next;
                lost += u32::from(raced);
            }
        }
    }
    None
}

/// Reserves pages `i..i + pages`, or gives back what it took and says where to look next (and
/// whether it lost a race there).
fn try_run<A: Atomics, W: Words<A>>(
    w: &W,
    i: u32,
    pages: u32,
    kind: u8,
    token: u32,
) -> Result<Vec<u32>, (u32, bool)> {
    let total = w.pages();
    let mut olds = Vec::with_capacity(pages as usize);
    let give_back = |olds: &[u32]| {
        // We hold these entries: nobody else changes them.
        for (k, &g) in olds.iter().enumerate() {
            let mine = Entry::new(RESERVED, kind, token, g);
            let back = Entry::new(FREE, 0, 0, g);
            let _ = A::cas(w.word(i + k as u32), mine.0, back.0, Release, Relaxed);
        }
    };
    for j in i..i + pages {
        let e = Entry(A::load(w.word(j), Acquire));
        if e.state() != FREE {
            give_back(&olds);
            // Skip what is certainly not free: a head's whole block, else this page.
            let next = match e.state() {
                HEAD if e.field() >= 1 && e.field() <= total - j => j + e.field(),
                _ => j + 1,
            };
            return Err((next, false));
        }
        let mine = Entry::new(RESERVED, kind, token, e.gen());
        if A::cas(w.word(j), e.0, mine.0, Acquire, Relaxed).is_err() {
            // Someone else took it (or freed it anew): look at this page again.
            give_back(&olds);
            return Err((j, true));
        }
        olds.push(e.gen());
    }
    Ok(olds)
}

/// Whether page `i` of reservation `r` is still reserved by it: an allocation checks this
/// before writing into the page, since a reservation that stood too long may have been
/// revoked ([`revoke`]).
pub fn holds<A: Atomics, W: Words<A>>(w: &W, r: &Reservation, i: u32) -> bool {
    A::load(w.word(i), Relaxed) == r.reserved(i).0
}

/// Publishes the block of reservation `r` (its pages written): body entries, then the head
/// (release). `None` if the reservation was revoked meanwhile; then nothing of it is left.
pub fn publish<A: Atomics, W: Words<A>>(w: &W, r: Reservation) -> Option<Block> {
    let b = Block {
        head: r.head,
        pages: r.pages,
        kind: r.kind,
        gen: r.gen(),
    };
    let body = Entry::new(BODY, 0, b.head, b.gen);
    for j in r.head + 1..r.head + r.pages {
        if A::cas(w.word(j), r.reserved(j).0, body.0, Relaxed, Relaxed).is_err() {
            // Revoked: undo the bodies written, then give back what is still ours.
            for k in r.head + 1..j {
                let _ = A::cas(w.word(k), body.0, r.free(k).0, Release, Relaxed);
            }
            cancel_from(w, &r, r.head);
            return None;
        }
    }
    if A::cas(
        w.word(r.head),
        r.reserved(r.head).0,
        b.entry().0,
        Release,
        Relaxed,
    )
    .is_err()
    {
        for k in r.head + 1..r.head + r.pages {
            let _ = A::cas(w.word(k), body.0, r.free(k).0, Release, Relaxed);
        }
        return None;
    }
    Some(b)
}

/// Gives the pages of a reservation back.
pub fn cancel<A: Atomics, W: Words<A>>(w: &W, r: Reservation) {
    cancel_from(w, &r, r.head);
}

fn cancel_from<A: Atomics, W: Words<A>>(w: &W, r: &Reservation, from: u32) {
    for j in from..r.head + r.pages {
        let _ = A::cas(w.word(j), r.reserved(j).0, r.free(j).0, Release, Relaxed);
    }
}

/// Frees block `b`: its head first (so that nobody takes it for live once its pages can be
/// reused), then its body. False if the head no longer was `b` (freed by someone else).
pub fn free<A: Atomics, W: Words<A>>(w: &W, b: &Block) -> bool {
    let gone = Entry::new(FREE, 0, 0, b.gen);
    if A::cas(w.word(b.head), b.entry().0, gone.0, Release, Relaxed).is_err() {
        return false;
    }
    let body = Entry::new(BODY, 0, b.head, b.gen);
    for j in b.head + 1..b.head.saturating_add(b.pages).min(w.pages()) {
        let _ = A::cas(w.word(j), body.0, gone.0, Release, Relaxed);
    }
    true
}

/// Whether block `b` is still published as it was (acquire: what its owner wrote before
/// publishing is visible).
pub fn current<A: Atomics, W: Words<A>>(w: &W, b: &Block) -> bool {
    b.head < w.pages() && A::load(w.word(b.head), Acquire) == b.entry().0
}

/// Takes back page `i` from an allocation that stands reserved with `entry` (the caller saw
/// it unchanged for longer than any live allocation takes). True if it did.
pub fn revoke<A: Atomics, W: Words<A>>(w: &W, i: u32, entry: Entry) -> bool {
    entry.state() == RESERVED
        && A::cas(
            w.word(i),
            entry.0,
            Entry::new(FREE, 0, 0, entry.gen()).0,
            Release,
            Relaxed,
        )
        .is_ok()
}

/// Frees body pages whose block is gone: their allocator died between freeing the head and
/// the body, or between publishing the body and the head and its reservation was then
/// revoked. A body whose head is live, or still reserved by the allocation publishing it (the
/// generation before the body's), is left alone. How many were freed.
pub fn free_orphans<A: Atomics, W: Words<A>>(w: &W) -> u32 {
    let mut freed = 0;
    for i in 0..w.pages() {
        let e = Entry(A::load(w.word(i), Acquire));
        if e.state() != BODY {
            continue;
        }
        let (h, g) = (e.field(), e.gen());
        let head = if h < i {
            Entry(A::load(w.word(h), Acquire))
        } else {
            Entry(0)
        };
        let live = h < i
            && match head.state() {
                HEAD => head.gen() == g && i - h < head.field(),
                RESERVED => head.gen().wrapping_add(1) & GEN_MASK == g,
                _ => false,
            };
        if !live
            && A::cas(
                w.word(i),
                e.0,
                Entry::new(FREE, 0, 0, g).0,
                Release,
                Relaxed,
            )
            .is_ok()
        {
            freed += 1;
        }
    }
    freed
}

/// The published blocks and the reserved pages, in page order. Entries that no allocator
/// writes (a corrupt map) are skipped page by page.
pub fn scan<A: Atomics, W: Words<A>>(w: &W, mut each: impl FnMut(u32, Entry)) {
    let total = w.pages();
    let mut i = 0u32;
    while i < total {
        let e = Entry(A::load(w.word(i), Acquire));
        each(i, e);
        i = match e.state() {
            HEAD if e.field() >= 1 && e.field() <= total - i => i + e.field(),
            _ => i + 1,
        };
    }
}

/// The published blocks.
pub fn blocks<A: Atomics, W: Words<A>>(w: &W) -> Vec<Block> {
    let mut v = Vec::new();
    scan(w, |i, e| {
        if e.state() == HEAD && e.field() >= 1 && e.field() <= w.pages() - i {
            v.push(Block {
                head: i,
                pages: e.field(),
                kind: e.kind(),
                gen: e.gen(),
            });
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::protocol::Std;
    use std::sync::atomic::AtomicU64;

    struct Map(Vec<AtomicU64>);

    impl Words<Std> for Map {
        fn pages(&self) -> u32 {
            self.0.len() as u32
        }
        fn word(&self, i: u32) -> &AtomicU64 {
            &self.0[i as usize]
        }
    }

    fn map(n: usize) -> Map {
        Map((0..n).map(|_| AtomicU64::new(0)).collect())
    }

    fn alloc(m: &Map, kind: u8, pages: u32, token: u32) -> Option<Block> {
        reserve::<Std, _>(m, kind, pages, token).and_then(|r| publish::<Std, _>(m, r))
    }

    /// A page's generation only grows, whatever blocks it was the head or a body of, so a
    /// (head, generation) pair never comes back: page 1 is a head five times, then the body of
    /// a block whose head page is at generation 0, then a head again.
    #[test]
    fn a_block_never_gets_an_earlier_blocks_name() {
        let m = map(4);
        let mut names = std::collections::HashSet::new();
        let zero = alloc(&m, 1, 1, 1).unwrap();
        for t in 0..5 {
            let b = alloc(&m, 1, 1, 10 + t).unwrap();
            assert_eq!(b.head, 1);
            assert!(names.insert((b.head, b.gen)));
            assert!(free::<Std, _>(&m, &b));
        }
        assert!(free::<Std, _>(&m, &zero));
        let wide = alloc(&m, 1, 2, 20).unwrap();
        assert_eq!(wide.head, 0);
        assert!(free::<Std, _>(&m, &wide));
        let hold = alloc(&m, 1, 1, 21).unwrap();
        assert_eq!(hold.head, 0);
        for t in 0..6 {
            let b = alloc(&m, 1, 1, 30 + t).unwrap();
            assert_eq!(b.head, 1);
            assert!(names.insert((b.head, b.gen)), "{b:?} named again");
            assert!(free::<Std, _>(&m, &b));
        }
    }

    #[test]
    fn first_fit_free_and_generations() {
        let m = map(8);
        let a = alloc(&m, 1, 3, 11).unwrap();
        let b = alloc(&m, 2, 2, 12).unwrap();
        assert_eq!((a.head, a.gen, b.head, b.gen), (0, 1, 3, 1));
        assert_eq!(blocks::<Std, _>(&m), vec![a, b]);
        assert!(alloc(&m, 1, 4, 13).is_none(), "3 pages are left");
        assert!(free::<Std, _>(&m, &a));
        assert!(!free::<Std, _>(&m, &a), "freed once");
        assert!(!current::<Std, _>(&m, &a));
        // The freed run is reused, with a new generation: an old reference never matches.
        let c = alloc(&m, 1, 2, 14).unwrap();
        assert_eq!((c.head, c.gen), (0, 2));
        assert!(
            alloc(&m, 1, 4, 15).is_none(),
            "free: page 2 and pages 5 to 7"
        );
        assert_eq!(alloc(&m, 1, 3, 16).unwrap().head, 5);
        assert_eq!(alloc(&m, 1, 1, 17).unwrap().head, 2);
    }

    #[test]
    fn reservations_are_invisible_until_published_and_can_be_revoked() {
        let m = map(4);
        let r = reserve::<Std, _>(&m, 1, 2, 7).unwrap();
        assert!(blocks::<Std, _>(&m).is_empty());
        assert!(holds::<Std, _>(&m, &r, 1));
        let mut seen = Vec::new();
        scan::<Std, _>(&m, |i, e| seen.push((i, e.state())));
        assert_eq!(seen[..2], [(0, RESERVED), (1, RESERVED)]);
        // A reclaimer takes page 1 back: publishing fails and leaves nothing behind.
        assert!(revoke::<Std, _>(&m, 1, Entry(m.0[1].load(Relaxed))));
        assert!(!holds::<Std, _>(&m, &r, 1));
        assert!(publish::<Std, _>(&m, r).is_none());
        assert!(m.0.iter().all(|w| Entry(w.load(Relaxed)).state() == FREE));
        let r = reserve::<Std, _>(&m, 1, 4, 8).unwrap();
        cancel::<Std, _>(&m, r);
        assert_eq!(alloc(&m, 1, 4, 9).unwrap().head, 0);
    }

    /// Four allocators and a reclaimer that revokes reservations at random, on 64 pages: every
    /// block's pages are its owner's alone (each owner stamps its pages and checks the stamps
    /// before freeing), and at the end every page is free again.
    #[test]
    fn racing_allocators_never_share_a_page() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let m = Arc::new(map(64));
        let stamps: Arc<Vec<AtomicU64>> = Arc::new((0..64).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let reclaimer = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut revoked = 0u64;
                let mut x = 1u64;
                while !stop.load(Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let i = (x >> 33) as u32 % 64;
                    let e = Entry(m.0[i as usize].load(Relaxed));
                    if e.state() == RESERVED && x.is_multiple_of(8) && revoke::<Std, _>(&*m, i, e) {
                        revoked += 1;
                    }
                }
                revoked
            })
        };
        let owners: Vec<_> = (1..=4u32)
            .map(|t| {
                let (m, stamps) = (m.clone(), stamps.clone());
                std::thread::spawn(move || {
                    let mut x = u64::from(t);
                    let mut done = 0;
                    let mut token = t;
                    while done < 5_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        token = token.wrapping_add(4);
                        let Some(b) = alloc(&m, 1, 1 + (x >> 40) as u32 % 4, token) else {
                            std::thread::yield_now();
                            continue;
                        };
                        for p in b.head..b.head + b.pages {
                            stamps[p as usize].store(u64::from(token), Relaxed);
                        }
                        for p in b.head..b.head + b.pages {
                            assert_eq!(stamps[p as usize].load(Relaxed), u64::from(token));
                        }
                        assert!(current::<Std, _>(&*m, &b));
                        assert!(free::<Std, _>(&*m, &b));
                        done += 1;
                    }
                })
            })
            .collect();
        for o in owners {
            o.join().unwrap();
        }
        stop.store(true, Relaxed);
        let revoked = reclaimer.join().unwrap();
        assert!(m.0.iter().all(|w| Entry(w.load(Relaxed)).state() == FREE));
        eprintln!("{revoked} reservations revoked");
    }

    #[test]
    fn orphaned_bodies_are_freed_live_ones_kept() {
        let m = map(8);
        let b = alloc(&m, 1, 3, 1).unwrap();
        // An allocator that died after freeing the head of its block at 0.
        let c = alloc(&m, 1, 3, 2).unwrap();
        m.0[c.head as usize].store(Entry::new(FREE, 0, 0, c.gen).0, Relaxed);
        // One publishing pages 6 and 7: head reserved, body written.
        let r = reserve::<Std, _>(&m, 1, 2, 3).unwrap();
        m.0[7].store(Entry::new(BODY, 0, 6, r.gen()).0, Relaxed);
        assert_eq!(free_orphans::<Std, _>(&m), 2, "c's two body pages");
        assert!(current::<Std, _>(&m, &b));
        assert_eq!(
            Entry(m.0[7].load(Relaxed)).state(),
            BODY,
            "still being published"
        );
        assert_eq!(free_orphans::<Std, _>(&m), 0);
    }

    #[test]
    fn corrupt_entries_are_skipped_not_followed() {
        let m = map(6);
        m.0[1].store(Entry::new(HEAD, 1, 1000, 1).0, Relaxed); // longer than the map
        m.0[3].store(0xf, Relaxed); // state 15
        assert!(blocks::<Std, _>(&m).is_empty());
        let b = alloc(&m, 1, 2, 1).unwrap();
        assert_eq!(b.head, 4, "pages 0 and 2 are single free pages");
    }
}
