//! The index and wake-up protocol of one ring, generic over the atomic types so that the loom
//! model in `tests/channel_loom.rs` checks this very code (with loom's atomics) while the
//! channels run it on `std` atomics placed in shared memory.
//!
//! Public only for that model; not a stable interface.
//!
//! Each side keeps its own index in a local (`pos`) and never reads it back from shared
//! memory, so a peer that scribbles over it cannot mislead us; the peer's index is read once per
//! refresh into a local, validated, and only then used.

use std::sync::atomic::{AtomicU64, Ordering};

/// The atomic operations the protocol uses: loads and stores of 64-bit words, and fences (the
/// ring protocol: every shared word has one writer); compare-and-swap for the page map.
pub trait Atomics {
    /// A 64-bit word.
    type U64: ?Sized;
    /// Loads a word.
    fn load(w: &Self::U64, o: Ordering) -> u64;
    /// Stores a word.
    fn store(w: &Self::U64, v: u64, o: Ordering);
    /// Compare-and-swap: `Ok(current)` if the word held `current` and now holds `new`, else
    /// `Err` with what it held. (Only the page map uses it: the ring protocol has one writer
    /// per word.)
    fn cas(
        w: &Self::U64,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// A memory fence.
    fn fence(o: Ordering);
}

/// The real thing: `std` atomics.
pub enum Std {}

impl Atomics for Std {
    type U64 = AtomicU64;
    #[inline(always)]
    fn load(w: &AtomicU64, o: Ordering) -> u64 {
        w.load(o)
    }
    #[inline(always)]
    fn store(w: &AtomicU64, v: u64, o: Ordering) {
        w.store(v, o)
    }
    #[inline(always)]
    fn cas(w: &AtomicU64, c: u64, n: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        w.compare_exchange(c, n, s, f)
    }
    #[inline(always)]
    fn fence(o: Ordering) {
        std::sync::atomic::fence(o)
    }
}

/// The producer's view of a ring: where it writes next and the consumer index it saw last.
///
/// # Invariants
///
/// `pos - seen <= cap` (wrapping arithmetic): the bytes in `[seen, pos)` are the consumer's,
/// `[pos, seen + cap)` the producer's to write.
#[derive(Debug, Clone)]
pub struct Producer {
    /// The next byte to write (free-running).
    pub pos: u64,
    /// The consumer index read last.
    pub seen: u64,
    /// Ring capacity in bytes.
    pub cap: u64,
}

impl Producer {
    /// A producer at the start of a fresh ring.
    pub fn new(cap: u64) -> Self {
        Self {
            pos: 0,
            seen: 0,
            cap,
        }
    }

    /// Free bytes. Re-reads the consumer index (acquire: pairs with the consumer's release in
    /// [`Consumer::release`], so the consumer is done with the bytes it freed) only when the
    /// cached one shows fewer than `want`. A consumer index that is ahead of `pos` or behind the
    /// last one seen is an error.
    pub fn space<A: Atomics>(&mut self, cons: &A::U64, want: u64) -> Result<u64, String> {
        let free = self.cap - self.pos.wrapping_sub(self.seen);
        if free >= want {
            return Ok(free);
        }
        let c = A::load(cons, Ordering::Acquire);
        let used = self.pos.wrapping_sub(c);
        if used > self.pos.wrapping_sub(self.seen) {
            return Err(format!(
                "consumer index {c} outside [{}, {}]",
                self.seen, self.pos
            ));
        }
        self.seen = c;
        Ok(self.cap - used)
    }

    /// Before sleeping until `want` bytes are free: asks the consumer to wake us when its index
    /// reaches the one that frees them, then (the caller) looks at the space again.
    pub fn announce_wait<A: Atomics>(&self, wake_at: &A::U64, want: u64) {
        announce::<A>(wake_at, self.pos.wrapping_add(want).wrapping_sub(self.cap));
    }

    /// Publishes `n` more written bytes (release: pairs with the consumer's acquire in
    /// [`Consumer::avail`], so the payload is visible before the index). With `wakeups`, says
    /// whether this publish crossed the index the consumer asked to be woken at. `n` must not
    /// exceed the last [`space`](Self::space).
    #[inline]
    pub fn publish<A: Atomics>(
        &mut self,
        n: u64,
        prod: &A::U64,
        consumer_wake_at: &A::U64,
        wakeups: bool,
    ) -> bool {
        debug_assert!(self.pos.wrapping_sub(self.seen) + n <= self.cap);
        let old = self.pos;
        self.pos = self.pos.wrapping_add(n);
        A::store(prod, self.pos, Ordering::Release);
        wakeups && crossed::<A>(consumer_wake_at, old, self.pos)
    }

    /// Commits a message record of `n` bytes at `pos` in band (layout version 3): clears
    /// `next`, the header word of the record after it (at `pos + n`), then stores `header`
    /// (never 0) into `this`, the record's header word, with release (pairs with the
    /// consumer's acquire in [`Consumer::committed`], so the payload and the cleared word are
    /// visible before the header); then publishes the index as [`publish`](Self::publish)
    /// does (the wake-up decision, flow control and the stream's end go by it; the consumer
    /// of messages never reads it).
    ///
    /// So the header word at the consumer's position holds 0 or its record's committed
    /// header, never an older lap's bytes: the producer cleared it before committing the
    /// record before it, in its free space, where the consumer reads nothing. `n + 8` must
    /// not exceed the last [`space`](Self::space).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn commit<A: Atomics>(
        &mut self,
        n: u64,
        this: &A::U64,
        next: &A::U64,
        header: u64,
        prod: &A::U64,
        consumer_wake_at: &A::U64,
        wakeups: bool,
    ) -> bool {
        debug_assert!(header != 0 && self.pos.wrapping_sub(self.seen) + n + 8 <= self.cap);
        A::store(next, 0, Ordering::Relaxed);
        A::store(this, header, Ordering::Release);
        self.publish::<A>(n, prod, consumer_wake_at, wakeups)
    }

    /// After the closed flag (stored by the caller): whether the consumer sleeps waiting for
    /// bytes beyond what was published, and must be woken to see the end.
    pub fn consumer_waits<A: Atomics>(&self, consumer_wake_at: &A::U64) -> bool {
        A::fence(Ordering::SeqCst);
        let w = A::load(consumer_wake_at, Ordering::Relaxed);
        w.wrapping_sub(self.pos).wrapping_sub(1) < self.cap
    }
}

/// The consumer's view of a ring: where it reads next and the producer index it saw last.
///
/// # Invariants
///
/// `seen - pos <= cap` (wrapping): the bytes in `[pos, seen)` are published and the
/// consumer's to read.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The next byte to read (free-running).
    pub pos: u64,
    /// The producer index read last.
    pub seen: u64,
    /// Ring capacity in bytes.
    pub cap: u64,
}

impl Consumer {
    /// A consumer at the start of a fresh ring.
    pub fn new(cap: u64) -> Self {
        Self {
            pos: 0,
            seen: 0,
            cap,
        }
    }

    /// Published bytes not yet read. Re-reads the producer index (acquire: pairs with the
    /// release in [`Producer::publish`]) only when the cached one shows fewer than `want`. A
    /// producer index more than `cap` ahead, or behind the last one seen, is an error.
    pub fn avail<A: Atomics>(&mut self, prod: &A::U64, want: u64) -> Result<u64, String> {
        let have = self.seen.wrapping_sub(self.pos);
        if have >= want {
            return Ok(have);
        }
        let p = A::load(prod, Ordering::Acquire);
        let now = p.wrapping_sub(self.pos);
        if now > self.cap || now < have {
            return Err(format!(
                "producer index {p} outside [{}, {}]",
                self.seen,
                self.pos.wrapping_add(self.cap)
            ));
        }
        self.seen = p;
        Ok(now)
    }

    /// Before sleeping until `want` bytes are published: asks the producer to wake us when its
    /// index reaches `pos + want`, then (the caller) looks at the ring again.
    pub fn announce_wait<A: Atomics>(&self, wake_at: &A::U64, want: u64) {
        announce::<A>(wake_at, self.pos.wrapping_add(want));
    }

    /// Gives `n` read bytes back to the producer (release: pairs with the producer's acquire in
    /// [`Producer::space`], so our reads of those bytes happen before the producer reuses
    /// them). With `wakeups`, says whether this release crossed the index the producer asked to
    /// be woken at. `n` must not exceed the last [`avail`](Self::avail).
    #[inline]
    pub fn release<A: Atomics>(
        &mut self,
        n: u64,
        cons: &A::U64,
        producer_wake_at: &A::U64,
        wakeups: bool,
    ) -> bool {
        debug_assert!(n <= self.seen.wrapping_sub(self.pos));
        let old = self.pos;
        self.pos = self.pos.wrapping_add(n);
        A::store(cons, self.pos, Ordering::Release);
        wakeups && crossed::<A>(producer_wake_at, old, self.pos)
    }
}

impl Consumer {
    /// The header of the message record at `pos` (`this`, its header word), once committed;
    /// 0 while it is not (acquire: pairs with the release in [`Producer::commit`], so the
    /// record's payload is visible). The in-band commit: one load, on the line the payload
    /// starts on, where the index protocol needs two (the index, then the record).
    #[inline]
    pub fn committed<A: Atomics>(&self, this: &A::U64) -> u64 {
        A::load(this, Ordering::Acquire)
    }

    /// Counts a message record of `n` bytes whose header [`committed`](Self::committed)
    /// returned as published, so that [`release`](Self::release) can give it back.
    #[inline]
    pub fn record_committed(&mut self, n: u64) {
        debug_assert!(n <= self.cap);
        if self.seen.wrapping_sub(self.pos) < n {
            self.seen = self.pos.wrapping_add(n);
        }
    }

    /// Gives back a message record of `n` bytes whose header [`committed`](Self::committed)
    /// returned: [`record_committed`](Self::record_committed), then [`release`](Self::release).
    pub fn consume<A: Atomics>(
        &mut self,
        n: u64,
        cons: &A::U64,
        producer_wake_at: &A::U64,
        wakeups: bool,
    ) -> bool {
        self.record_committed(n);
        self.release::<A>(n, cons, producer_wake_at, wakeups)
    }
}

/// The sleeper's half of the handshake: store the index to be woken at, then a SeqCst fence
/// before the caller re-checks the ring. See [`crossed`].
fn announce<A: Atomics>(wake_at: &A::U64, at: u64) {
    A::store(wake_at, at, Ordering::Relaxed);
    A::fence(Ordering::SeqCst);
}

/// The waker's half: after storing its index (moved from `old` to `new`), a SeqCst fence, then
/// whether the peer's wake-up index lies in `(old, new]` (virtio's `vring_need_event`).
///
/// Each side stores one word and then loads the other's, which x86 may reorder through its
/// store buffer; with a SeqCst fence on both sides at least one of them sees the other's
/// store: the sleeper sees the new index and does not sleep, or the waker sees the wake-up
/// index. Only the first index move past the announced one rings: a stale announcement lies
/// behind every later move and costs nothing, so nobody has to clear it.
#[inline]
fn crossed<A: Atomics>(wake_at: &A::U64, old: u64, new: u64) -> bool {
    A::fence(Ordering::SeqCst);
    let w = A::load(wake_at, Ordering::Relaxed);
    w.wrapping_sub(old).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_avail_follow_the_indices() {
        let (prod, cons, wake) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let mut p = Producer::new(8);
        let mut c = Consumer::new(8);
        assert_eq!(p.space::<Std>(&cons, 1), Ok(8));
        assert!(!p.publish::<Std>(5, &prod, &wake, true));
        assert_eq!(p.space::<Std>(&cons, 4), Ok(3));
        assert_eq!(c.avail::<Std>(&prod, 1), Ok(5));
        c.release::<Std>(5, &cons, &wake, false);
        assert_eq!(p.space::<Std>(&cons, 8), Ok(8));
        assert_eq!(c.avail::<Std>(&prod, 1), Ok(0));
    }

    #[test]
    fn wild_indices_are_errors() {
        let (prod, cons) = (AtomicU64::new(9), AtomicU64::new(0));
        let mut c = Consumer::new(8);
        assert!(c
            .avail::<Std>(&prod, 1)
            .unwrap_err()
            .contains("producer index 9"));
        prod.store(4, Ordering::Relaxed);
        assert_eq!(c.avail::<Std>(&prod, 1), Ok(4));
        prod.store(3, Ordering::Relaxed); // went backwards
        assert!(c.avail::<Std>(&prod, 5).is_err());
        let mut p = Producer::new(8);
        p.pos = 8;
        cons.store(9, Ordering::Relaxed); // ahead of the producer
        assert!(p
            .space::<Std>(&cons, 1)
            .unwrap_err()
            .contains("consumer index 9"));
        cons.store(u64::MAX, Ordering::Relaxed);
        assert!(p.space::<Std>(&cons, 1).is_err());
    }

    #[test]
    fn only_the_move_past_the_announced_index_wakes() {
        let (prod, cons, wake) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let (mut p, mut c) = (Producer::new(8), Consumer::new(8));
        c.announce_wait::<Std>(&wake, 1);
        assert!(p.publish::<Std>(2, &prod, &wake, true), "0 -> 2 crosses 1");
        assert!(!p.publish::<Std>(1, &prod, &wake, true), "2 -> 3 does not");
        assert!(
            !p.publish::<Std>(1, &prod, &wake, false),
            "no wake-ups wanted"
        );
        assert!(
            !p.consumer_waits::<Std>(&wake),
            "the consumer waits for nothing past 4"
        );
        c.avail::<Std>(&prod, 1).unwrap();
        c.release::<Std>(4, &cons, &wake, false);
        c.announce_wait::<Std>(&wake, 1);
        assert!(p.consumer_waits::<Std>(&wake), "it waits for byte 5");
        // The producer waits for 8 free bytes: the consumer must reach index 4 + 8 - 8 = 4.
        let wake_p = AtomicU64::new(0);
        p.publish::<Std>(4, &prod, &wake, false);
        p.space::<Std>(&cons, 8).unwrap();
        p.announce_wait::<Std>(&wake_p, 8);
        assert_eq!(wake_p.load(Ordering::Relaxed), 8);
        c.avail::<Std>(&prod, 1).unwrap();
        assert!(
            !c.release::<Std>(3, &cons, &wake_p, true),
            "4 -> 7 stops short of 8"
        );
        assert!(
            c.release::<Std>(1, &cons, &wake_p, true),
            "7 -> 8 reaches it"
        );
    }
}
