//! The tests of one end: sessions, waiting, streams, messages and zero copy between two ends
//! in one process.

use super::*;
use crate::channel::FdWaker;
use std::io::{Read, Write};

fn pair(opts: &Options) -> (Region, Channel, Channel) {
    let r = Region::anonymous(1 << 20).unwrap();
    let a = Channel::open(&r, "t", opts).unwrap();
    let b = Channel::open(&r, "t", opts).unwrap();
    (r, a, b)
}

/// The state word of an end.
fn ctl_word(c: &Channel) -> usize {
    match c.ctl {
        Control::Pending { own, .. } | Control::Owned { own, .. } => own,
    }
}

fn kind_of(e: &io::Error) -> io::ErrorKind {
    e.kind()
}

#[test]
fn stream_wraps_and_writes_partially() {
    let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
    assert_eq!((a.side(), b.side()), (0, 1));
    assert_eq!(a.epoch(), b.epoch());
    let data: Vec<u8> = (0..=255).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    let mut buf = [0u8; 40];
    while got.len() < data.len() {
        if sent < data.len() {
            let n = a.write(&data[sent..]).unwrap();
            assert!(n >= 1 && n <= 64 - (sent - got.len()));
            sent += n;
        }
        let n = b.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, data);
    // Full ring: a partial write, then WouldBlock.
    a.set_nonblocking(true);
    assert_eq!(a.write(&[7u8; 100]).unwrap(), 64);
    assert_eq!(
        kind_of(&a.write(&[7u8]).unwrap_err()),
        io::ErrorKind::WouldBlock
    );
    a.set_nonblocking(false);
    a.set_write_timeout(Some(Duration::from_millis(30)));
    let t = Instant::now();
    assert_eq!(
        kind_of(&a.write(&[7u8]).unwrap_err()),
        io::ErrorKind::TimedOut
    );
    assert!(t.elapsed() >= Duration::from_millis(30));
    a.close_write().unwrap();
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, [7u8; 64]);
    assert_eq!(b.read(&mut buf).unwrap(), 0, "EOF stays EOF");
    assert_eq!(
        kind_of(&a.write(b"x").unwrap_err()),
        io::ErrorKind::BrokenPipe
    );
}

#[test]
fn empty_ring_would_block_or_time_out() {
    let (_r, _a, mut b) = pair(&Options::new());
    let mut buf = [0u8; 8];
    b.set_nonblocking(true);
    assert_eq!(
        kind_of(&b.read(&mut buf).unwrap_err()),
        io::ErrorKind::WouldBlock
    );
    b.set_nonblocking(false);
    b.set_read_timeout(Some(Duration::from_millis(20)));
    assert_eq!(
        kind_of(&b.read(&mut buf).unwrap_err()),
        io::ErrorKind::TimedOut
    );
}

#[test]
fn messages_keep_their_boundaries() {
    let opts = Options::new().kind(Kind::Messages).capacity(128);
    let (r, mut a, mut b) = pair(&opts);
    // The record's header and the next one's, which the commit clears, take 16 bytes.
    assert_eq!(a.max_message(), 112);
    let mut buf = Vec::new();
    for round in 0..50usize {
        let len = (round * 7) % 113;
        let msg: Vec<u8> = (0..len).map(|i| (i + round) as u8).collect();
        a.send(&msg).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), Some(len));
        assert_eq!(buf, msg);
    }
    let e = a.send(&[0u8; 113]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("113 bytes is larger"), "{e}");
    // Two that fit together (56-byte records and the next header word), the third waits.
    a.set_nonblocking(true);
    a.send(&[1; 44]).unwrap();
    a.send(&[2; 44]).unwrap();
    assert_eq!(
        a.send(&[3; 44]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(b.recv(&mut buf).unwrap(), Some(44));
    assert_eq!(buf, [1; 44]);
    a.send(&[3; 44]).unwrap();
    a.send(b"").unwrap(); // the last 16 bytes: its header and the next one's
    a.send(b"").unwrap_err(); // full: the empty message needs its header too
    drop(a);
    assert_eq!(b.recv(&mut buf).unwrap(), Some(44));
    assert_eq!(buf, [2; 44]);
    assert_eq!(b.recv(&mut buf).unwrap(), Some(44));
    assert_eq!(buf, [3; 44]);
    assert_eq!(b.recv(&mut buf).unwrap(), Some(0));
    assert_eq!(b.recv(&mut buf).unwrap(), None);
    // The wrong API and the wrong kind are clear errors.
    let mut c = [0u8; 1];
    let e = b.read(&mut c).unwrap_err();
    assert!(e.to_string().contains("use the send/recv API"), "{e}");
    let e = Channel::open(&r, "t", &Options::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("carries messages, not a byte stream"),
        "{e}"
    );
}

#[test]
fn zero_copy_slices() {
    let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
    a.write_all(&[0u8; 40]).unwrap();
    let mut sink = [0u8; 40];
    b.read_exact(&mut sink).unwrap();
    // The writable slice ends where the ring wraps.
    let mut w = a.write_slice().unwrap();
    assert_eq!(w.len(), 24);
    w.copy_from(0, b"zero-copy");
    w.commit(9).unwrap();
    let r = b.read_slice().unwrap();
    assert_eq!(r.len(), 9);
    let mut got = [0u8; 4];
    r.copy_to(5, &mut got);
    assert_eq!(&got, b"copy");
    // SAFETY: Both ends are in this test; nobody writes the ring meanwhile.
    assert_eq!(unsafe { r.as_slice() }, b"zero-copy");
    r.release(9).unwrap();
    let w = a.write_slice().unwrap();
    assert!(w.commit(1000).is_err());
    a.close_write().unwrap();
    assert!(b.read_slice().unwrap().is_empty());
}

#[test]
fn zero_copy_messages_across_the_wrap() {
    let opts = Options::new().kind(Kind::Messages).capacity(64);
    let (_r, mut a, mut b) = pair(&opts);
    let mut buf = Vec::new();
    let mut wrapped = 0;
    for round in 0..40usize {
        // Records of 24 to 40 bytes: their starts walk around the 64-byte ring, and now
        // and then a payload wraps over its end.
        let len = 9 + round * 5 % 20;
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
        let mut slot = a.reserve(len).unwrap();
        assert_eq!(slot.len(), len);
        if round % 2 == 0 {
            slot.copy_from(0, &msg[..5]);
            slot.copy_from(5, &msg[5..]);
        } else {
            // SAFETY: Both ends are in this test; the peer does not write our free space.
            let (p, q) = unsafe { slot.as_mut_slices() };
            assert_eq!(p.len() + q.len(), len);
            let n = p.len();
            p.copy_from_slice(&msg[..n]);
            q.copy_from_slice(&msg[n..]);
        }
        slot.commit(len).unwrap();
        let view = b.peek().unwrap().unwrap();
        assert_eq!(view.len(), len);
        let mut got = vec![0u8; len];
        view.copy_to(0, &mut got);
        assert_eq!(got, msg, "round {round}");
        // SAFETY: As above.
        let (p, q) = unsafe { view.as_slices() };
        assert_eq!([p, q].concat(), msg);
        wrapped += usize::from(!q.is_empty());
        if round % 3 == 0 {
            let _ = view; // not released: still next
            assert_eq!(b.recv(&mut buf).unwrap(), Some(len));
            assert_eq!(buf, msg);
        } else {
            view.release().unwrap();
        }
    }
    assert!(wrapped >= 5, "{wrapped} of 40 payloads wrapped");
    // A shorter commit, a dropped slot (nothing sent), an oversized commit.
    let mut slot = a.reserve(30).unwrap();
    slot.copy_from(0, b"short");
    slot.commit(5).unwrap();
    let _ = a.reserve(30).unwrap();
    assert!(a.reserve(10).unwrap().commit(11).is_err());
    assert_eq!(b.recv(&mut buf).unwrap(), Some(5));
    assert_eq!(buf, b"short");
    // try_recv and recv_timeout leave the modes as they were.
    assert_eq!(
        b.try_recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let t = Instant::now();
    let e = b
        .recv_timeout(&mut buf, Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(30));
    a.send(b"late").unwrap();
    assert_eq!(b.try_recv(&mut buf).unwrap(), Some(4));
    b.set_read_timeout(Some(Duration::from_millis(10)));
    assert_eq!(
        b.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    drop(a);
    assert!(b.peek().unwrap().is_none(), "end of the sequence");
}

#[test]
fn closed_peer_breaks_the_pipe_after_the_data() {
    let (_r, mut a, mut b) = pair(&Options::new());
    b.write_all(b"last words").unwrap();
    drop(b);
    let mut got = String::new();
    a.read_to_string(&mut got).unwrap();
    assert_eq!(got, "last words");
    assert_eq!(a.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn abort_is_not_end_of_file() {
    let (_r, mut a, mut b) = pair(&Options::new());
    b.write_all(b"partial").unwrap();
    b.abort();
    let mut got = Vec::new();
    let e = a.read_to_end(&mut got).unwrap_err();
    assert_eq!(got, b"partial");
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert!(e.to_string().contains("declared dead"), "{e}");
}

#[test]
fn drain_waits_until_the_peer_read_everything_flush_does_not() {
    let (_r, mut a, mut b) = pair(&Options::new());
    a.write_all(b"12345").unwrap();
    a.set_write_timeout(Some(Duration::from_millis(20)));
    assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::TimedOut);
    // Both ends flush before either reads: no deadlock, and a BufWriter drops at once.
    a.set_write_timeout(None);
    b.write_all(b"67890").unwrap();
    io::Write::flush(&mut a).unwrap();
    io::Write::flush(&mut b).unwrap();
    let mut w = io::BufWriter::new(&mut a);
    w.write_all(b"!").unwrap();
    drop(w);
    let mut buf = [0u8; 6];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"12345!");
    a.read_exact(&mut buf[..5]).unwrap();
    a.drain().unwrap();
}

#[test]
fn duration_max_means_no_timeout() {
    let opts = Options::new()
        .open_timeout(Duration::MAX)
        .liveness_timeout(Duration::MAX);
    let (_r, mut a, mut b) = pair(&opts);
    a.set_read_timeout(Some(Duration::MAX));
    b.set_write_timeout(Some(Duration::MAX));
    b.write_all(b"x").unwrap();
    let mut buf = [0u8; 1];
    a.read_exact(&mut buf).unwrap();
    b.drain().unwrap();
}

/// Stops the heartbeat of `c`, which stays attached: a stalled end.
fn stall(c: &Channel) {
    *c.leave.as_ref().unwrap().heartbeat.lock().unwrap() = None;
}

/// Stops the heartbeat and leaks the end, as a crash would.
fn crash(c: Channel) {
    stall(&c);
    std::mem::forget(c);
}

#[test]
fn dead_peer_is_detected_and_replaced() {
    let opts = Options::new().liveness_timeout(Duration::from_millis(100));
    let (r, mut a, mut b) = pair(&opts);
    b.write_all(b"before").unwrap();
    crash(b);
    let mut buf = [0u8; 16];
    assert_eq!(a.read(&mut buf).unwrap(), 6);
    let t = Instant::now();
    let e = a.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert!(e.to_string().contains("heartbeat stood still"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(70),
        "dead after 7/10 of the timeout"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let old = a.epoch();
    // A new end waits for the survivor to leave, the survivor reopens: a fresh session.
    let r2 = r.clone();
    let o2 = opts.clone();
    let newcomer = std::thread::spawn(move || {
        let mut c = Channel::open(&r2, "t", &o2).unwrap();
        c.write_all(b"fresh").unwrap();
        c.drain().unwrap();
        c
    });
    std::thread::sleep(Duration::from_millis(20));
    drop(a);
    let mut a = Channel::open(&r, "t", &opts).unwrap();
    let mut got = [0u8; 5];
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fresh");
    let c = newcomer.join().unwrap();
    assert_eq!(a.epoch(), old + 1);
    assert_eq!(c.epoch(), old + 1);
}

#[test]
fn a_stale_end_leaves_a_new_session_alone() {
    let opts = Options::new().liveness_timeout(Duration::from_millis(100));
    let (r, mut a, mut b) = pair(&opts);
    stall(&a); // alive, but silent
    let mut buf = [0u8; 4];
    assert_eq!(
        b.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
    drop(b);
    let mut c = Channel::open(&r, "t", &opts).unwrap();
    let mut d = Channel::open(&r, "t", &opts).unwrap();
    assert_eq!(c.epoch(), a.epoch() + 1);
    let e = a.write(b"stale").unwrap_err();
    assert!(e.to_string().contains("detached"), "{e}");
    drop(a); // must not close the new session's ring
    c.write_all(b"new").unwrap();
    d.set_nonblocking(true);
    assert_eq!(d.read(&mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"new");
    assert_eq!(
        d.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

/// The stale end of issue 18: a receiver that stalls past the liveness bound with a full
/// ring, then resumes while a newer session has put its own bytes where it would read.
#[test]
fn a_stale_reader_takes_nothing_from_the_next_session() {
    for kind in [Kind::Stream, Kind::Messages] {
        let opts = Options::new()
            .kind(kind)
            .capacity(64)
            .liveness_timeout(Duration::from_millis(100));
        let (r, mut a, mut b) = pair(&opts);
        stall(&b); // alive, but silent
        let fill = |c: &mut Channel, byte: u8| match kind {
            Kind::Stream => c.write_all(&[byte; 64]),
            // A 56-byte record and the next header word: the whole ring.
            Kind::Messages => c.send(&[byte; 48]),
        };
        fill(&mut a, 1).unwrap();
        a.set_write_timeout(Some(Duration::from_secs(5)));
        let e = fill(&mut a, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        drop(a);
        let mut c = Channel::open(&r, "t", &opts).unwrap();
        let mut d = Channel::open(&r, "t", &opts).unwrap();
        fill(&mut c, 2).unwrap();
        // `b` would find 64 published bytes where its own were: it must take none.
        let mut buf = [0u8; 64];
        let mut msg = Vec::new();
        let e = match kind {
            Kind::Stream => b.read(&mut buf).map(|_| ()).unwrap_err(),
            Kind::Messages => b.recv(&mut msg).map(|_| ()).unwrap_err(),
        };
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        assert!(e.to_string().contains("detached from session"), "{e}");
        drop(b);
        // The new session is whole: its bytes, its index, its open write side.
        match kind {
            Kind::Stream => {
                d.read_exact(&mut buf).unwrap();
                assert_eq!(buf, [2u8; 64]);
            }
            Kind::Messages => {
                assert_eq!(d.recv(&mut msg).unwrap(), Some(48));
                assert_eq!(msg, [2u8; 48]);
            }
        }
        fill(&mut c, 3).unwrap();
        drop(c);
        match kind {
            Kind::Stream => {
                let mut rest = Vec::new();
                d.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, [3u8; 64]);
            }
            Kind::Messages => {
                assert_eq!(d.recv(&mut msg).unwrap(), Some(48));
                assert_eq!(msg, [3u8; 48]);
                assert_eq!(d.recv(&mut msg).unwrap(), None);
            }
        }
    }
}

#[test]
fn an_end_whose_block_was_taken_back_stops_beating() {
    let (_r, a, b) = pair(&Options::new().liveness_timeout(Duration::from_millis(100)));
    // As an allocator zeroing `b`'s block for a new owner after it was freed.
    b.w64(ctl_word(&b)).store(0, Relaxed);
    let hb = b.w64(b.sides[b.side] + SIDE_HEARTBEAT as usize);
    let t = Instant::now();
    loop {
        let v = hb.load(Relaxed);
        std::thread::sleep(Duration::from_millis(50)); // five beat periods
        if hb.load(Relaxed) == v {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "still beating");
    }
    let last = hb.load(Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(hb.load(Relaxed), last);
    // `a` is still attached and beats.
    let ha = a.w64(a.sides[a.side] + SIDE_HEARTBEAT as usize);
    let v = ha.load(Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(ha.load(Relaxed), v);
}

#[test]
fn one_heartbeat_thread_for_many_ends() {
    let r = Region::anonymous(4 << 20).unwrap();
    let opts = Options::new()
        .capacity(4096)
        .liveness_timeout(Duration::from_millis(100));
    let ends: Vec<Channel> = (0..60)
        .map(|i| Channel::open(&r, &format!("c{}", i / 2), &opts).unwrap())
        .collect();
    // Every end beats: each heartbeat word moves within a few periods.
    let words: Vec<u64> = ends
        .iter()
        .map(|c| {
            c.w64(c.sides[c.side] + SIDE_HEARTBEAT as usize)
                .load(Relaxed)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(60));
    for (c, w) in ends.iter().zip(words) {
        let now = c
            .w64(c.sides[c.side] + SIDE_HEARTBEAT as usize)
            .load(Relaxed);
        assert!(now > w, "{} side {} did not beat", c.name, c.side);
    }
    // It runs (they beat), so it has its name and its mask.
    let masks = crate::channel::heartbeat::beat_threads();
    assert_eq!(masks.len(), 1, "one thread");
    let blocked = |sig: u32| masks[0] & 1 << (sig - 1) != 0;
    assert!(
        blocked(2) && blocked(15) && blocked(10),
        "SIGINT, SIGTERM, SIGUSR1 blocked"
    );
}

#[test]
fn the_longer_liveness_bound_applies_to_both() {
    let r = Region::anonymous(1 << 20).unwrap();
    let slow = Options::new().liveness_timeout(Duration::from_secs(2));
    let fast = Options::new().liveness_timeout(Duration::from_millis(100));
    let mut a = Channel::open(&r, "t", &slow).unwrap();
    let mut b = Channel::open(&r, "t", &fast).unwrap();
    assert_eq!(b.bound_for(a.side), Duration::from_secs(2));
    assert_eq!(a.bound_for(b.side), Duration::from_secs(2));
    // `a` beats every 200 ms: `b`, blocked for 600 ms, must not declare it dead.
    b.set_read_timeout(Some(Duration::from_millis(600)));
    let mut buf = [0u8; 1];
    assert_eq!(
        b.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    a.write_all(b"x").unwrap();
    b.read_exact(&mut buf).unwrap();
}

#[test]
fn a_dead_holder_is_replaced_on_open() {
    let opts = Options::new().liveness_timeout(Duration::from_millis(100));
    let (r, a, b) = pair(&opts);
    crash(a);
    crash(b);
    let t = Instant::now();
    let mut c = Channel::open(&r, "t", &opts).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    let mut d = Channel::open(&r, "t", &opts).unwrap();
    c.write_all(b"ok").unwrap();
    let mut got = [0u8; 2];
    d.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
    // Two live ends hold the channel: a third gets Busy.
    let e = Channel::open(
        &r,
        "t",
        &opts.clone().open_timeout(Duration::from_millis(50)),
    )
    .unwrap_err();
    assert!(matches!(e, ChannelError::Busy(_)), "{e}");
}

#[test]
fn scribbled_index_is_corrupt_and_stays_so() {
    let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
    a.write_all(b"abc").unwrap();
    a.mem.w64(a.out.prod).store(1 << 40, Relaxed);
    let mut buf = [0u8; 8];
    let e = b.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("producer index"), "{e}");
    a.mem.w64(a.out.prod).store(3, Relaxed);
    assert_eq!(
        b.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    // A garbage state word: no end wrote it for this session (its block may have been
    // taken back and reused), so the end is detached.
    a.mem.w64(ctl_word(&a)).store(u64::MAX, Relaxed);
    a.set_nonblocking(true);
    let mut buf = [0u8; 1];
    let e = a.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert!(e.to_string().contains("detached"), "{e}");
}

#[test]
fn message_header_scribbles_are_corrupt() {
    let opts = Options::new().kind(Kind::Messages).capacity(64);
    let (_r, mut a, mut b) = pair(&opts);
    a.send(b"hello").unwrap();
    // Length 5 with a wrong check word.
    let data = a.out.data;
    a.mem.w32(data + 4).store(0, Relaxed);
    let e = b.recv(&mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("message header"), "{e}");
}

/// A sleeping end and a spinning one: the sleeper stops looking for announcements once it
/// sees its peer does not notify, and backs off instead of sleeping; both directions flow.
#[test]
fn a_sleeping_end_and_a_spinning_one() {
    let (wa, _wb) = FdWaker::pair().unwrap();
    let r = Region::anonymous(1 << 20).unwrap();
    let o = Options::new().capacity(64).spin(100);
    let mut a = Channel::open(&r, "t", &o.clone().waker(Arc::new(wa))).unwrap();
    let mut b = Channel::open(&r, "t", &o).unwrap();
    assert_eq!(a.peer_sleeps, None);
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let want = data.clone();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        b.write_all(&got[..1000]).unwrap();
        got
    });
    a.write_all(&data).unwrap();
    assert_eq!(
        a.peer_sleeps,
        Some(false),
        "the spinning peer's side line says so"
    );
    a.close_write().unwrap();
    let mut back = vec![0u8; 1000];
    a.read_exact(&mut back).unwrap();
    assert_eq!(back, want[..1000]);
    assert_eq!(reader.join().unwrap(), want);
}

#[test]
fn sleeping_ends_wake_each_other() {
    let (wa, wb) = FdWaker::pair().unwrap();
    let r = Region::anonymous(1 << 20).unwrap();
    let base = Options::new().capacity(64).spin(0);
    let mut a = Channel::open(&r, "t", &base.clone().waker(Arc::new(wa))).unwrap();
    let mut b = Channel::open(&r, "t", &base.waker(Arc::new(wb))).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        got
    });
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    a.write_all(&data).unwrap();
    a.close_write().unwrap();
    assert_eq!(reader.join().unwrap(), data);
}
