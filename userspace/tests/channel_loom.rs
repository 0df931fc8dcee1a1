//! A loom model of one ring: the index protocol and the event-suppression handshake of
//! `ivshmem::channel::protocol` (the very functions the channels run), with loom's atomics.
//! One producer, one consumer, a ring of two slots, both sides sleeping on a doorbell when
//! they cannot go on. Loom explores the interleavings and weak-memory outcomes: a lost wake-up
//! leaves both sides asleep, which loom reports as a deadlock; a payload access not ordered by
//! the indices is a data race on the `UnsafeCell` slots; the consumer checks FIFO order.
//! Further models: message records committed in band (layout version 3), the address
//! handshake, a stale end's session check (it never delivers a
//! newer session's bytes), arming a non-blocking end for a poller (no lost wake-up), the page
//! map, and the leave handshake of a connection's two ends (their blocks are always freed,
//! each once); each with a broken variant that loom must catch, so the models can fail.
//!
//! Builds only with the `loom` cfg (the Makefile's `unit-test` rule runs it):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test channel_loom
//! ```
#![allow(unexpected_cfgs)]
#![cfg(loom)]

use std::sync::atomic::Ordering;

use ivshmem::channel::control::{self, end_word, ATTACHED, CLOSED};
use ivshmem::channel::pagemap;
use ivshmem::channel::protocol::{Atomics, Consumer, Producer};
use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicU64;
use loom::sync::{Arc, Condvar, Mutex};

/// Ring slots (one byte each).
const CAP: u64 = 2;
/// Items sent: enough to wrap and to fill the ring.
const ITEMS: u8 = 3;

/// The protocol on loom's atomics.
enum Loom {}

impl Atomics for Loom {
    type U64 = AtomicU64;
    fn load(w: &AtomicU64, o: Ordering) -> u64 {
        w.load(o)
    }
    fn store(w: &AtomicU64, v: u64, o: Ordering) {
        w.store(v, o)
    }
    fn cas(w: &AtomicU64, c: u64, n: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        w.compare_exchange(c, n, s, f)
    }
    fn fence(o: Ordering) {
        loom::sync::atomic::fence(o)
    }
}

/// The same, with the SeqCst fences weakened to AcqRel: the bug the fences prevent.
enum NoSeqCst {}

impl Atomics for NoSeqCst {
    type U64 = AtomicU64;
    fn load(w: &AtomicU64, o: Ordering) -> u64 {
        w.load(o)
    }
    fn store(w: &AtomicU64, v: u64, o: Ordering) {
        w.store(v, o)
    }
    fn cas(w: &AtomicU64, c: u64, n: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        w.compare_exchange(c, n, s, f)
    }
    fn fence(o: Ordering) {
        let o = if o == Ordering::SeqCst {
            Ordering::AcqRel
        } else {
            o
        };
        loom::sync::atomic::fence(o)
    }
}

/// A doorbell: a ring is remembered until the next wait (like an eventfd or an interrupt
/// counter); waiting has no timeout here, so a lost wake-up blocks for good.
struct Doorbell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Doorbell {
    fn new() -> Self {
        Self {
            rung: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.cv.wait(rung).unwrap();
        }
        *rung = false;
    }

    /// Consumes a pending ring without waiting (`Waker::clear`).
    fn clear(&self) {
        *self.rung.lock().unwrap() = false;
    }
}

/// The shared words of one ring, as in a channel block.
struct Ring {
    prod: AtomicU64,
    cons: AtomicU64,
    producer_wake_at: AtomicU64,
    consumer_wake_at: AtomicU64,
    slots: [UnsafeCell<u8>; CAP as usize],
    producer_bell: Doorbell,
    consumer_bell: Doorbell,
}

impl Ring {
    fn new() -> Self {
        Self {
            prod: AtomicU64::new(0),
            cons: AtomicU64::new(0),
            producer_wake_at: AtomicU64::new(0),
            consumer_wake_at: AtomicU64::new(0),
            slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
            producer_bell: Doorbell::new(),
            consumer_bell: Doorbell::new(),
        }
    }
}

fn producer<A: Atomics<U64 = AtomicU64>>(r: &Ring) {
    let mut p = Producer::new(CAP);
    for item in 1..=ITEMS {
        // Wait for space as `Channel::wait` does: look, announce, look again, sleep.
        while p.space::<A>(&r.cons, 1).unwrap() == 0 {
            p.announce_wait::<A>(&r.producer_wake_at, 1);
            if p.space::<A>(&r.cons, 1).unwrap() == 0 {
                r.producer_bell.wait();
            }
        }
        r.slots[(p.pos % CAP) as usize].with_mut(|slot| {
            // SAFETY: The slot is in the producer's free space; loom checks that the
            // consumer's last read of it happened before (via the consumer index).
            unsafe { *slot = item }
        });
        if p.publish::<A>(1, &r.prod, &r.consumer_wake_at, true) {
            r.consumer_bell.ring();
        }
    }
}

fn consumer<A: Atomics<U64 = AtomicU64>>(r: &Ring) {
    let mut c = Consumer::new(CAP);
    for want in 1..=ITEMS {
        while c.avail::<A>(&r.prod, 1).unwrap() == 0 {
            c.announce_wait::<A>(&r.consumer_wake_at, 1);
            if c.avail::<A>(&r.prod, 1).unwrap() == 0 {
                r.consumer_bell.wait();
            }
        }
        let got = r.slots[(c.pos % CAP) as usize].with(|slot| {
            // SAFETY: The slot is published; loom checks that the producer's write
            // happened before (via the producer index).
            unsafe { *slot }
        });
        assert_eq!(got, want, "FIFO order");
        if c.release::<A>(1, &r.cons, &r.producer_wake_at, true) {
            r.producer_bell.ring();
        }
    }
}

fn check<A: Atomics<U64 = AtomicU64> + 'static>() {
    let mut b = loom::model::Builder::new();
    // Five preemptions by default: seconds. LOOM_MAX_PREEMPTIONS=9 took 5 minutes here and
    // passed; LOOM_FULL=1 (no bound) did not finish in 30.
    if b.preemption_bound.is_none() && std::env::var("LOOM_FULL").is_err() {
        b.preemption_bound = Some(5);
    }
    b.check(|| {
        let ring = Arc::new(Ring::new());
        let r = ring.clone();
        let t = loom::thread::spawn(move || producer::<A>(&r));
        consumer::<A>(&ring);
        t.join().unwrap();
    });
}

/// The protocol as the channels run it: no lost wake-up, no race on the payload, FIFO.
#[test]
fn no_lost_wakeup_and_fifo() {
    check::<Loom>();
}

/// The broken protocol, run by the test below in a child process: loom reports the
/// deadlock by panicking, and its blocked threads then abort the process.
#[test]
#[ignore = "run by without_seqcst_fences_a_wakeup_is_lost"]
fn broken_model() {
    check::<NoSeqCst>();
}

/// Without the SeqCst fences the model finds the lost wake-up (so the model can fail).
#[test]
fn without_seqcst_fences_a_wakeup_is_lost() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["broken_model", "--exact", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the broken model passed");
    assert!(err.contains("deadlock"), "not a lost wake-up: {err}");
}

/// Message records committed in band (layout version 3, `Producer::commit` and
/// `Consumer::committed`/`consume`): a ring of record slots, each a header word (an atomic, as
/// the channels access it) and a payload byte, positions counted in words (a record is two:
/// header and payload). The producer needs room for its record and the next record's header
/// word, which it clears before it stores the header (release); the consumer polls the header
/// word at its position and never reads the producer index. Loom checks that a header the
/// consumer sees is its record's (never an older lap's: the values name the item), that the
/// payload read is ordered after the write (a race on the cell otherwise), FIFO order, and
/// that no wake-up is lost (both sides sleep when they cannot go on).
const SLOTS: u64 = 2;

struct Records {
    prod: AtomicU64,
    cons: AtomicU64,
    producer_wake_at: AtomicU64,
    consumer_wake_at: AtomicU64,
    headers: [AtomicU64; SLOTS as usize],
    payload: [UnsafeCell<u8>; SLOTS as usize],
    producer_bell: Doorbell,
    consumer_bell: Doorbell,
}

/// A record's header: never 0, and naming its item.
fn header(item: u8) -> u64 {
    0x100 | u64::from(item)
}

/// The record slot of a word position.
fn slot(pos: u64) -> usize {
    (pos % (2 * SLOTS) / 2) as usize
}

fn record_producer<A: Atomics<U64 = AtomicU64>>(r: &Records, clear: bool) {
    let mut p = Producer::new(2 * SLOTS);
    for item in 1..=ITEMS {
        // The record's two words and the next header word.
        while p.space::<A>(&r.cons, 3).unwrap() < 3 {
            p.announce_wait::<A>(&r.producer_wake_at, 3);
            if p.space::<A>(&r.cons, 3).unwrap() < 3 {
                r.producer_bell.wait();
            }
        }
        let (this, next) = (slot(p.pos), slot(p.pos + 2));
        r.payload[this].with_mut(|cell| {
            // SAFETY: The slot is in the producer's free space; loom checks that the
            // consumer's last read of it happened before (via the consumer index).
            unsafe { *cell = item }
        });
        let rings = if clear {
            p.commit::<A>(
                2,
                &r.headers[this],
                &r.headers[next],
                header(item),
                &r.prod,
                &r.consumer_wake_at,
                true,
            )
        } else {
            // The bug the clear prevents: the next header word keeps an older lap's header.
            A::store(&r.headers[this], header(item), Ordering::Release);
            p.publish::<A>(2, &r.prod, &r.consumer_wake_at, true)
        };
        if rings {
            r.consumer_bell.ring();
        }
    }
}

fn record_consumer<A: Atomics<U64 = AtomicU64>>(r: &Records) {
    let mut c = Consumer::new(2 * SLOTS);
    for want in 1..=ITEMS {
        let this = slot(c.pos);
        let mut h = c.committed::<A>(&r.headers[this]);
        while h == 0 {
            // As `Channel::wait`: announce the header word's index, look again, sleep.
            c.announce_wait::<A>(&r.consumer_wake_at, 1);
            h = c.committed::<A>(&r.headers[this]);
            if h == 0 {
                r.consumer_bell.wait();
                h = c.committed::<A>(&r.headers[this]);
            }
        }
        assert_eq!(h, header(want), "a header of another record");
        let got = r.payload[this].with(|cell| {
            // SAFETY: The header is committed; loom checks that the producer's write of the
            // payload happened before (via the header's release and acquire).
            unsafe { *cell }
        });
        assert_eq!(got, want, "FIFO order");
        if c.consume::<A>(2, &r.cons, &r.producer_wake_at, true) {
            r.producer_bell.ring();
        }
    }
}

fn check_records(clear: bool) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() && std::env::var("LOOM_FULL").is_err() {
        b.preemption_bound = Some(5);
    }
    b.check(move || {
        let ring = Arc::new(Records {
            prod: AtomicU64::new(0),
            cons: AtomicU64::new(0),
            producer_wake_at: AtomicU64::new(0),
            consumer_wake_at: AtomicU64::new(0),
            headers: [AtomicU64::new(0), AtomicU64::new(0)],
            payload: [UnsafeCell::new(0), UnsafeCell::new(0)],
            producer_bell: Doorbell::new(),
            consumer_bell: Doorbell::new(),
        });
        let r = ring.clone();
        let t = loom::thread::spawn(move || record_producer::<Loom>(&r, clear));
        record_consumer::<Loom>(&ring);
        t.join().unwrap();
    });
}

/// The in-band commit as the channels run it: every header seen is its record's, no race on
/// the payload, FIFO, no lost wake-up.
#[test]
fn records_committed_in_band_are_seen_whole_and_in_order() {
    check_records(true);
}

/// The model can fail: without clearing the next header word, the consumer takes an older
/// lap's header for its record.
#[test]
fn without_the_clear_an_old_header_reads_as_new() {
    let res = std::panic::catch_unwind(|| check_records(false));
    let e = res.expect_err("the model passed without the clear");
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("a header of another record"), "{msg}");
}

/// The address handshake of `Channel::open` and `Channel::peer_address`: a side stores where
/// to ring it (its doorbell peer id), fences (SeqCst), and only later announces a wait
/// (wake-at store, SeqCst fence); the waker moves its index, fences, loads the wake-at word and,
/// if it must ring, fences (Acquire) and loads the address. A waker that sees the announcement
/// must see the address, never the stale one of an earlier session.
#[test]
fn a_waker_that_sees_the_announcement_sees_the_address() {
    use loom::sync::atomic::fence;
    use Ordering::{Acquire, Relaxed, Release, SeqCst};
    loom::model(|| {
        let addr = Arc::new(AtomicU64::new(0));
        let wake_at = Arc::new(AtomicU64::new(0));
        let index = Arc::new(AtomicU64::new(0));
        let (a, w, i) = (addr.clone(), wake_at.clone(), index.clone());
        let sleeper = loom::thread::spawn(move || {
            a.store(1 + 7, Relaxed);
            fence(SeqCst);
            w.store(1, Relaxed);
            fence(SeqCst);
            i.load(Relaxed)
        });
        index.store(1, Release);
        fence(SeqCst);
        let rings = wake_at.load(Relaxed) == 1;
        let seen = if rings {
            fence(Acquire);
            Some(addr.load(Relaxed))
        } else {
            None
        };
        let sleeper_saw = sleeper.join().unwrap();
        if let Some(a) = seen {
            assert_eq!(a, 8, "rang a stale address");
        }
        // The SeqCst fences: at least one side sees the other (no lost wake-up).
        assert!(rings || sleeper_saw == 1);
    });
}

/// The session check of a stale end (`Channel::check_session` after a copy out of the ring):
/// an end of session 1 copies a published byte, then fences (Acquire) and loads the control
/// word, and delivers the byte only if the word still shows session 1. Meanwhile a new end
/// takes the channel: it changes the control word (session 2), empties the ring, fences
/// (SeqCst, the end of `Channel::open`), and then writes its own byte where the stale end
/// reads. If the stale end delivers, it must be its own session's byte.
fn stale_reader(writer_fences: bool, reader_fences: bool) {
    use loom::sync::atomic::fence;
    use Ordering::{Acquire, Relaxed, Release, SeqCst};
    const OLD: u64 = 0xa;
    const NEW: u64 = 0xb;
    loom::model(move || {
        let ctl = Arc::new(AtomicU64::new(1 << 32));
        let prod = Arc::new(AtomicU64::new(1));
        // The payload byte: an atomic here because in the real region the two sides' accesses
        // race exactly when the session changed (which the check must then catch).
        let data = Arc::new(AtomicU64::new(OLD));
        let (c, p, d) = (ctl.clone(), prod.clone(), data.clone());
        let newcomer = loom::thread::spawn(move || {
            c.compare_exchange(1 << 32, 2 << 32, Acquire, Relaxed)
                .unwrap();
            p.store(0, Relaxed);
            if writer_fences {
                fence(SeqCst);
            }
            d.store(NEW, Relaxed);
            p.store(1, Release);
        });
        // The stale end saw index 1 before it stopped: the byte at 0 is published to it.
        let got = data.load(Relaxed);
        if reader_fences {
            fence(Acquire);
        }
        let delivered = ctl.load(Relaxed) >> 32 == 1;
        newcomer.join().unwrap();
        if delivered {
            assert_eq!(got, OLD, "a stale end delivered the next session's byte");
        }
    });
}

/// The fences as the channels have them: the stale end never delivers the new byte.
#[test]
fn a_stale_end_never_delivers_the_next_sessions_bytes() {
    stale_reader(true, true);
}

/// The model can fail: without the newcomer's fence, or without the stale end's, loom finds
/// the new byte delivered as the old session's.
#[test]
fn without_either_fence_a_stale_end_delivers_new_bytes() {
    for (w, r) in [(false, true), (true, false)] {
        let res = std::panic::catch_unwind(|| stale_reader(w, r));
        assert!(
            res.is_err(),
            "writer fence {w}, reader fence {r}: the model passed"
        );
    }
}

/// Arming for a poller (`Channel::wait` in non-blocking mode): the consumer finds the ring
/// empty, drains its descriptor, announces the index it waits for, looks again, and only
/// then polls. `drain_first` false drains after that second look, just before polling: a
/// ring that came in between is eaten and the poller sleeps for good.
fn poller<A: Atomics<U64 = AtomicU64>>(r: &Ring, drain_first: bool) {
    let mut c = Consumer::new(CAP);
    for want in 1..=ITEMS {
        loop {
            if c.avail::<A>(&r.prod, 1).unwrap() > 0 {
                break;
            }
            // `WouldBlock`: arm.
            if drain_first {
                r.consumer_bell.clear();
            }
            c.announce_wait::<A>(&r.consumer_wake_at, 1);
            if c.avail::<A>(&r.prod, 1).unwrap() > 0 {
                break;
            }
            if !drain_first {
                r.consumer_bell.clear();
            }
            // Poll the descriptor, then retry.
            r.consumer_bell.wait();
        }
        let got = r.slots[(c.pos % CAP) as usize].with(|slot| {
            // SAFETY: As in `consumer`.
            unsafe { *slot }
        });
        assert_eq!(got, want, "FIFO order");
        if c.release::<A>(1, &r.cons, &r.producer_wake_at, true) {
            r.producer_bell.ring();
        }
    }
}

fn check_poller(drain_first: bool) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(4);
    }
    b.check(move || {
        let ring = Arc::new(Ring::new());
        let r = ring.clone();
        let t = loom::thread::spawn(move || producer::<Loom>(&r));
        poller::<Loom>(&ring, drain_first);
        t.join().unwrap();
    });
}

/// Arming as the channels do it: a poller never misses a wake-up.
#[test]
fn an_armed_poller_never_misses_a_wakeup() {
    check_poller(true);
}

#[test]
#[ignore = "run by draining_after_the_second_look_loses_a_wakeup"]
fn broken_poller_model() {
    check_poller(false);
}

/// The model can fail: draining after the second look loses a wake-up (a deadlock).
#[test]
fn draining_after_the_second_look_loses_a_wakeup() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["broken_poller_model", "--exact", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the broken model passed");
    assert!(err.contains("deadlock"), "not a lost wake-up: {err}");
}

/// The page map with a compare-and-swap that always succeeds (a plain store): what makes two
/// allocators take the same page.
enum BlindCas {}

impl Atomics for BlindCas {
    type U64 = AtomicU64;
    fn load(w: &AtomicU64, o: Ordering) -> u64 {
        w.load(o)
    }
    fn store(w: &AtomicU64, v: u64, o: Ordering) {
        w.store(v, o)
    }
    fn cas(w: &AtomicU64, c: u64, n: u64, _s: Ordering, _f: Ordering) -> Result<u64, u64> {
        w.store(n, Ordering::Release);
        Ok(c)
    }
    fn fence(o: Ordering) {
        loom::sync::atomic::fence(o)
    }
}

/// A page map of two pages on loom's atomics, with a payload cell per page.
struct Pages {
    map: [AtomicU64; 2],
    data: [UnsafeCell<u32>; 2],
}

impl<A: Atomics<U64 = AtomicU64>> pagemap::Words<A> for Pages {
    fn pages(&self) -> u32 {
        2
    }
    fn word(&self, i: u32) -> &AtomicU64 {
        &self.map[i as usize]
    }
}

/// Allocates `n` pages (a few tries), writes and reads back its id in each, frees the block.
fn allocator<A: Atomics<U64 = AtomicU64>>(p: &Pages, id: u32, n: u32) {
    for _ in 0..2 {
        let Some(r) = pagemap::reserve::<A, _>(p, 1, n, id) else {
            loom::thread::yield_now();
            continue;
        };
        let Some(b) = pagemap::publish::<A, _>(p, r) else {
            continue;
        };
        for i in b.head..b.head + b.pages {
            p.data[i as usize].with_mut(|d| {
                // SAFETY: The block's pages are this allocator's alone; loom reports a race
                // if another thread's access is not ordered with this one.
                unsafe { *d = id }
            });
        }
        for i in b.head..b.head + b.pages {
            let v = p.data[i as usize].with(|d| {
                // SAFETY: As above.
                unsafe { *d }
            });
            assert_eq!(v, id, "page {i} changed under its owner");
        }
        assert!(pagemap::free::<A, _>(p, &b));
        return;
    }
}

fn check_pagemap<A: Atomics<U64 = AtomicU64> + 'static>() {
    loom::model(|| {
        let p = Arc::new(Pages {
            map: [AtomicU64::new(0), AtomicU64::new(0)],
            data: [UnsafeCell::new(0), UnsafeCell::new(0)],
        });
        let q = p.clone();
        let t = loom::thread::spawn(move || allocator::<A>(&q, 1, 2));
        allocator::<A>(&p, 2, 1);
        t.join().unwrap();
        for w in &p.map {
            let e = pagemap::Entry(w.load(Ordering::Relaxed));
            assert_eq!(e.state(), pagemap::FREE, "a page left taken");
        }
    });
}

/// Two allocators racing for two pages: a page is never in two blocks, and reuse after a free
/// is ordered (no race on the payload).
#[test]
fn racing_allocators_never_share_a_page() {
    check_pagemap::<Loom>();
}

/// The model can fail: with a compare-and-swap that always wins, loom finds two owners of one
/// page.
#[test]
fn a_blind_compare_and_swap_shares_a_page() {
    let res = std::panic::catch_unwind(check_pagemap::<BlindCas>);
    assert!(res.is_err(), "the broken page map passed");
}

/// The generations of a connection's two blocks (from the page map; distinct).
const GENS: [u32; 2] = [7, 9];

/// A connection's two ends: each block's state word, and a stand-in for the block's head entry
/// in the page map (its generation while the block is taken, 0 once freed).
struct Conn {
    state: [AtomicU64; 2],
    head: [AtomicU64; 2],
}

impl Conn {
    fn new() -> Self {
        Self {
            state: GENS.map(|g| AtomicU64::new(end_word(g, ATTACHED))),
            head: GENS.map(|g| AtomicU64::new(g.into())),
        }
    }

    /// End `me` leaves (`control::leave`, CLOSED) and, if its peer was gone, frees both
    /// blocks as the reclaimer does (a compare-and-swap on each head). Whether it saw its peer
    /// gone, and which blocks its compare-and-swaps freed.
    fn leave<A: Atomics<U64 = AtomicU64>>(&self, me: usize) -> (bool, [bool; 2]) {
        let (left, peer_gone) = control::leave::<A>(
            &self.state[me],
            end_word(GENS[me], ATTACHED),
            &self.state[1 - me],
            end_word(GENS[1 - me], ATTACHED),
            CLOSED,
        );
        assert!(left, "an attached end did not leave");
        let mut freed = [false; 2];
        if peer_gone {
            for (b, f) in freed.iter_mut().enumerate() {
                let gen = u64::from(GENS[b]);
                *f = A::cas(&self.head[b], gen, 0, Ordering::AcqRel, Ordering::Acquire).is_ok();
            }
        }
        (peer_gone, freed)
    }
}

fn check_leave<A: Atomics<U64 = AtomicU64> + 'static>() {
    loom::model(|| {
        let conn = Arc::new(Conn::new());
        let c = conn.clone();
        let t = loom::thread::spawn(move || c.leave::<A>(1));
        let (_, mine) = conn.leave::<A>(0);
        let (_, theirs) = t.join().unwrap();
        for b in 0..2 {
            let frees = usize::from(mine[b]) + usize::from(theirs[b]);
            assert_eq!(
                conn.head[b].load(Ordering::Relaxed),
                0,
                "block {b} never freed"
            );
            assert_eq!(frees, 1, "block {b} freed {frees} times");
        }
    });
}

/// Two ends of a connection leaving at once (`control::leave`, the code `Control::leave`
/// runs): at least one sees the other gone, so both blocks are freed, each exactly once.
#[test]
fn two_leaving_ends_free_both_blocks_once() {
    check_leave::<Loom>();
}

/// The model can fail: without the SeqCst fence, both ends can miss the other's leaving (a
/// store buffer each) and nobody frees the blocks.
#[test]
fn without_the_seqcst_fence_the_blocks_leak() {
    let res = std::panic::catch_unwind(check_leave::<NoSeqCst>);
    assert!(res.is_err(), "the broken leave handshake passed");
}

/// One end leaves while its peer stays attached (it only looks at the leaver's word, as its
/// session checks do): the leaver never sees the peer gone, so nobody frees memory a live peer
/// uses.
#[test]
fn an_end_leaving_an_attached_peer_frees_nothing() {
    loom::model(|| {
        let conn = Arc::new(Conn::new());
        let c = conn.clone();
        let t = loom::thread::spawn(move || c.state[0].load(Ordering::Acquire));
        let (peer_gone, freed) = conn.leave::<Loom>(0);
        t.join().unwrap();
        assert!(!peer_gone, "saw an attached peer gone");
        assert_eq!(freed, [false, false]);
        for (b, g) in GENS.iter().enumerate() {
            assert_eq!(conn.head[b].load(Ordering::Relaxed), u64::from(*g));
        }
        assert_eq!(
            conn.state[1].load(Ordering::Relaxed),
            end_word(GENS[1], ATTACHED)
        );
    });
}
