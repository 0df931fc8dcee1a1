//! The index and wake-up protocol of one ring, generic over the atomic types so that the loom
//! model in `tests/channel_loom.rs` checks this very code (with loom's atomics) while the
//! channels run it on `std` atomics placed in shared memory.
//!
//! Public only for that model; not a stable interface.
//!
//! Each side keeps its own index in a local (`pos`) and never reads it back from shared
//! memory, so a peer that scribbles over it cannot mislead us; the peer's index is read once per
//! refresh into a local, validated, and only then used.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The atomic operations the protocol uses.
pub trait Atomics {
    /// A 64-bit index word.
    type U64: ?Sized;
    /// A 32-bit flag word.
    type U32: ?Sized;
    /// Loads an index.
    fn load64(w: &Self::U64, o: Ordering) -> u64;
    /// Stores an index.
    fn store64(w: &Self::U64, v: u64, o: Ordering);
    /// Loads a flag.
    fn load32(w: &Self::U32, o: Ordering) -> u32;
    /// Stores a flag.
    fn store32(w: &Self::U32, v: u32, o: Ordering);
    /// Swaps a flag.
    fn swap32(w: &Self::U32, v: u32, o: Ordering) -> u32;
    /// A memory fence.
    fn fence(o: Ordering);
}

/// The real thing: `std` atomics.
pub enum Std {}

impl Atomics for Std {
    type U64 = AtomicU64;
    type U32 = AtomicU32;
    fn load64(w: &AtomicU64, o: Ordering) -> u64 {
        w.load(o)
    }
    fn store64(w: &AtomicU64, v: u64, o: Ordering) {
        w.store(v, o)
    }
    fn load32(w: &AtomicU32, o: Ordering) -> u32 {
        w.load(o)
    }
    fn store32(w: &AtomicU32, v: u32, o: Ordering) {
        w.store(v, o)
    }
    fn swap32(w: &AtomicU32, v: u32, o: Ordering) -> u32 {
        w.swap(v, o)
    }
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
        let c = A::load64(cons, Ordering::Acquire);
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

    /// Publishes `n` more written bytes (release: pairs with the consumer's acquire in
    /// [`Consumer::avail`], so the payload is visible before the index). With `wakeups`, says
    /// whether the consumer announced that it sleeps and must be woken. `n` must not exceed
    /// the last [`space`](Self::space).
    pub fn publish<A: Atomics>(
        &mut self,
        n: u64,
        prod: &A::U64,
        consumer_sleeps: &A::U32,
        wakeups: bool,
    ) -> bool {
        debug_assert!(self.pos.wrapping_sub(self.seen) + n <= self.cap);
        self.pos = self.pos.wrapping_add(n);
        A::store64(prod, self.pos, Ordering::Release);
        wakeups && must_wake::<A>(consumer_sleeps)
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
        let p = A::load64(prod, Ordering::Acquire);
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

    /// Gives `n` read bytes back to the producer (release: pairs with the producer's acquire in
    /// [`Producer::space`], so our reads of those bytes happen before the producer reuses
    /// them). With `wakeups`, says whether the producer sleeps waiting for space and must be
    /// woken. `n` must not exceed the last [`avail`](Self::avail).
    pub fn release<A: Atomics>(
        &mut self,
        n: u64,
        cons: &A::U64,
        producer_sleeps: &A::U32,
        wakeups: bool,
    ) -> bool {
        debug_assert!(n <= self.seen.wrapping_sub(self.pos));
        self.pos = self.pos.wrapping_add(n);
        A::store64(cons, self.pos, Ordering::Release);
        wakeups && must_wake::<A>(producer_sleeps)
    }
}

/// After publishing a change (an index, the closed flag): whether the peer announced that it
/// sleeps, clearing its flag so one announcement costs at most one wake-up.
///
/// The SeqCst fence orders our earlier store before the load of the flag; the sleeper's fence
/// in [`announce_sleep`] orders its flag store before its re-check. With both fences, at least
/// one side sees the other's store: we see the flag, or the sleeper sees our change. Without
/// them a store can pass a later load (x86 store buffer) and the wake-up is lost.
pub fn must_wake<A: Atomics>(sleeps: &A::U32) -> bool {
    A::fence(Ordering::SeqCst);
    A::load32(sleeps, Ordering::Relaxed) != 0 && A::swap32(sleeps, 0, Ordering::Relaxed) != 0
}

/// Before sleeping: announce it, then (the caller) re-check the condition before really
/// sleeping. See [`must_wake`] for the fence.
pub fn announce_sleep<A: Atomics>(sleeps: &A::U32) {
    A::store32(sleeps, 1, Ordering::Relaxed);
    A::fence(Ordering::SeqCst);
}

/// After waking (or finding the condition true): the peer need not ring any more.
pub fn end_sleep<A: Atomics>(sleeps: &A::U32) {
    A::store32(sleeps, 0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_avail_follow_the_indices() {
        let (prod, cons, flag) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU32::new(0));
        let mut p = Producer::new(8);
        let mut c = Consumer::new(8);
        assert_eq!(p.space::<Std>(&cons, 1), Ok(8));
        assert!(!p.publish::<Std>(5, &prod, &flag, true));
        assert_eq!(p.space::<Std>(&cons, 4), Ok(3));
        assert_eq!(c.avail::<Std>(&prod, 1), Ok(5));
        c.release::<Std>(5, &cons, &flag, false);
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
        c.seen = 4;
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
    fn a_sleeping_peer_is_woken_once() {
        let (prod, flag) = (AtomicU64::new(0), AtomicU32::new(0));
        let mut p = Producer::new(8);
        announce_sleep::<Std>(&flag);
        assert!(p.publish::<Std>(1, &prod, &flag, true));
        assert!(!p.publish::<Std>(1, &prod, &flag, true));
        announce_sleep::<Std>(&flag);
        assert!(!p.publish::<Std>(1, &prod, &flag, false));
        end_sleep::<Std>(&flag);
        assert!(!must_wake::<Std>(&flag));
    }
}
