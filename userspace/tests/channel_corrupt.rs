//! Garbage where the layout should be (layout version 2, `src/channel/conn_layout.rs`): random
//! header pages, random page maps and block headers, random words written over the blocks of a
//! live channel, a header laid out for another region size. Every outcome must be a value or a
//! clear error, quickly: no panic, no hang, no access outside the region (the region is a heap
//! block: a stray access would crash or show up under a sanitizer).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ivshmem::channel::{
    self, Channel, ChannelError, Kind, Listener, Options, Region, MIN_REGION, VERSION,
};
use ivshmem::pattern::SplitMix64;

/// The test's dice (seeded: a failure replays).
type Rng = SplitMix64;

/// The regions of these tests: 64 KiB, the header page, one page of map and 14 pages.
const LEN: u64 = 1 << 16;
/// Where the page map starts (the arena's first page), and the first page of blocks (the map
/// of 14 words takes one page).
const MAP: u64 = 0x1000;
const PAGES: u64 = 0x2000;
/// Pages in the arena of a `LEN` region.
const ARENA_PAGES: u64 = 14;
/// Magic words of the header (`conn_layout.rs`): ready, being initialised, layout version 1.
const MAGIC: u32 = u32::from_le_bytes(*b"IVC2");
const MAGIC_INIT: u32 = u32::from_le_bytes(*b"ivc2");
const MAGIC_V1: u32 = u32::from_le_bytes(*b"IVCH");
/// Every round of every test finishes within this.
const ROUND: Duration = Duration::from_secs(2);

fn word(r: &Region, off: u64) -> &AtomicU64 {
    assert!(off + 8 <= r.len() as u64 && off.is_multiple_of(8));
    // SAFETY: In bounds and aligned (asserted); the region outlives the reference and every
    // access to its control words is atomic.
    unsafe { AtomicU64::from_ptr(r.as_ptr().add(off as usize).cast()) }
}

fn fill(r: &Region, from: u64, to: u64, rng: &mut Rng) {
    for off in (from..to).step_by(8) {
        word(r, off).store(rng.next(), Ordering::Relaxed);
    }
}

fn opts() -> Options {
    Options::new()
        .capacity(256)
        .open_timeout(Duration::from_millis(20))
        .liveness_timeout(Duration::from_millis(50))
}

const _: () = assert!(LEN >= MIN_REGION);

fn region() -> Region {
    Region::anonymous(LEN as usize).unwrap()
}

/// Leaves channel "setup" in `r`: its opener wrote "hello" and closed, so its block stays
/// for a reader (at the arena's first page).
fn setup(r: &Region) {
    let mut a = Channel::open(r, "setup", &opts()).unwrap();
    a.write_all(b"hello").unwrap();
    drop(a);
    let l = channel::list(r).unwrap();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!((l[0].name.as_str(), l[0].offset), ("setup", PAGES));
}

/// Two ends of `name` carry a few bytes each way (with a liveness timeout that a loaded
/// machine does not trip: these ends must not fail).
fn pair_works(r: &Region, name: &str) {
    let o = opts().liveness_timeout(Duration::from_secs(5));
    let mut a = Channel::open(r, name, &o).unwrap();
    let mut b = Channel::open(r, name, &o).unwrap();
    a.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    b.write_all(b"pong").unwrap();
    a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

/// What a round of `random_header_pages` wrote at the start of the header page (the rest of
/// it is random in every case).
#[derive(Debug, Clone, Copy)]
enum Header {
    /// A magic that is no layout's.
    Garbage,
    /// Layout version 1's magic.
    V1,
    /// The magic of a header being initialised (its initialiser died).
    Initialising,
    /// Magic 0: a fresh region (the rest of the page is initialised by the first end).
    Fresh,
    /// Version 2's magic, another version.
    Version(u32),
    /// Version 2's magic and version, another region size.
    Size(u64),
    /// Version 2's magic, version and size: the random rest of the page is not looked at.
    Good,
}

/// The error every operation must give on header `h` (kind and part of the message), or
/// `None` where operations work.
fn refusal(h: Header) -> Option<(io::ErrorKind, String)> {
    use io::ErrorKind::{InvalidData, ResourceBusy};
    match h {
        Header::Garbage => Some((InvalidData, "is not a channel layout".into())),
        Header::V1 => Some((InvalidData, "layout version 1".into())),
        Header::Initialising => Some((ResourceBusy, "initialising".into())),
        Header::Version(v) => Some((
            InvalidData,
            format!("channel layout version {v}, this library speaks version {VERSION}"),
        )),
        Header::Size(s) => Some((
            InvalidData,
            format!("the region was laid out for {s} bytes, this mapping has {LEN}"),
        )),
        Header::Fresh | Header::Good => None,
    }
}

fn assert_refused<T: std::fmt::Debug>(
    what: &str,
    h: Header,
    r: Result<T, ChannelError>,
    want: &(io::ErrorKind, String),
) {
    let e = r.expect_err(&format!("{what} on header {h:?}"));
    assert_eq!(e.kind(), want.0, "{what} on header {h:?}: {e}");
    assert!(e.to_string().contains(&want.1), "{what} on {h:?}: {e}");
    // The kind survives the conversion to io::Error, with the message.
    let io = io::Error::from(e);
    assert_eq!(io.kind(), want.0);
    assert!(ChannelError::of(&io).is_some(), "{io}");
}

/// Random bytes over the whole header page, with the magic, version and region size either
/// random or right: open (creating or joining), list, usage, connect and bind refuse what is
/// not version 2 laid out for this region with the error of what is wrong, and work where the
/// checked fields are right whatever the rest holds.
#[test]
fn random_header_pages_give_values_or_clear_errors() {
    let mut rng = Rng::new(1);
    let mut seen = [0usize; 7];
    for round in 0..300 {
        let r = region();
        let h = match rng.next() % 7 {
            0 => Header::Garbage,
            1 => Header::V1,
            2 => Header::Initialising,
            3 => Header::Fresh,
            4 => Header::Version(loop {
                let v = if rng.next().is_multiple_of(2) {
                    (rng.next() % 8) as u32
                } else {
                    rng.next() as u32
                };
                if v != VERSION {
                    break v;
                }
            }),
            5 => Header::Size(loop {
                let s = match rng.next() % 3 {
                    0 => LEN + 4096,
                    1 => LEN - 4096,
                    _ => rng.next(),
                };
                if s != LEN {
                    break s;
                }
            }),
            _ => Header::Good,
        };
        seen[match h {
            Header::Garbage => 0,
            Header::V1 => 1,
            Header::Initialising => 2,
            Header::Fresh => 3,
            Header::Version(_) => 4,
            Header::Size(_) => 5,
            Header::Good => 6,
        }] += 1;
        // An arena with something in it, except in a fresh region.
        if !matches!(h, Header::Fresh) {
            setup(&r);
        }
        fill(&r, 0, MAP, &mut rng);
        let magic = match h {
            Header::Garbage => loop {
                let m = rng.next() as u32;
                if ![0, MAGIC, MAGIC_INIT, MAGIC_V1].contains(&m) {
                    break m;
                }
            },
            Header::V1 => MAGIC_V1,
            Header::Initialising => MAGIC_INIT,
            Header::Fresh => 0,
            _ => MAGIC,
        };
        let version = match h {
            Header::V1 => 1,
            Header::Version(v) => v,
            Header::Size(_) | Header::Good => VERSION,
            _ => rng.next() as u32,
        };
        word(&r, 0).store(
            u64::from(magic) | u64::from(version) << 32,
            Ordering::Relaxed,
        );
        match h {
            Header::Size(s) => word(&r, 0x18).store(s, Ordering::Relaxed),
            Header::Good => word(&r, 0x18).store(LEN, Ordering::Relaxed),
            _ => {}
        }
        let t = Instant::now();
        let usage = channel::usage(&r);
        match refusal(h) {
            Some(want) => {
                assert_refused("open", h, Channel::open(&r, "c", &opts()), &want);
                assert_refused(
                    "joining open",
                    h,
                    Channel::open(&r, "setup", &opts().create(false)),
                    &want,
                );
                assert_refused("list", h, channel::list(&r), &want);
                assert_refused("connect", h, Channel::connect(&r, "svc", &opts()), &want);
                assert_refused("bind", h, Listener::bind(&r, "svc", &opts()), &want);
                // usage reads only a header of this version, and names the same error there.
                let e = usage.expect_err("usage");
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{h:?}: {e}");
                if matches!(h, Header::Version(_) | Header::Size(_)) {
                    assert!(e.to_string().contains(&want.1), "{h:?}: {e}");
                } else {
                    let v = format!("layout version {VERSION}");
                    assert!(e.to_string().contains(&v), "{h:?}: {e}");
                }
                // Nothing was written: the refusals leave the region as they found it.
                assert_eq!(word(&r, 0).load(Ordering::Relaxed) as u32, magic);
            }
            None if matches!(h, Header::Fresh) => {
                // A fresh region lists no channel and holds no layout until an end lays it
                // out, over whatever the rest of the header page held.
                assert!(channel::list(&r).unwrap().is_empty());
                assert!(usage.is_err());
                pair_works(&r, "c");
                assert_eq!(channel::usage(&r).unwrap().pages_used, 0);
                let e = Channel::connect(&r, "svc", &opts()).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
            }
            None => {
                let u = usage.unwrap();
                assert_eq!((u.ends, u.pages, u.pages_used), (1, 14, 2), "{u:?}");
                let names: Vec<String> = channel::list(&r)
                    .unwrap()
                    .into_iter()
                    .map(|i| i.name)
                    .collect();
                assert_eq!(names, ["setup"]);
                // The bytes left in "setup" are read, then the stream ends.
                let mut b = Channel::open(&r, "setup", &opts().create(false)).unwrap();
                let mut got = String::new();
                b.read_to_string(&mut got).unwrap();
                assert_eq!(got, "hello");
                drop(b);
                pair_works(&r, "c");
                let e = Channel::connect(&r, "svc", &opts()).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
                let l = Listener::bind(&r, "svc", &opts()).unwrap();
                assert_eq!(channel::usage(&r).unwrap().listeners, ["svc"]);
                drop(l);
                assert_eq!(channel::usage(&r).unwrap().pages_used, 0);
            }
        }
        assert!(
            t.elapsed() < ROUND,
            "round {round} ({h:?}): {:?}",
            t.elapsed()
        );
    }
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

/// Garbage over the page map and the first pages of the arena (where channel "setup" left its
/// block with unread bytes): listing, usage, joining "setup", a new channel, connecting and
/// binding each give a value or a clear error, quickly. Corrupt map entries are skipped and
/// blocks with garbage headers ignored, so the garbage sometimes hides "setup" and sometimes
/// not.
#[test]
fn random_page_maps_and_block_headers_give_values_or_clear_errors() {
    let mut rng = Rng::new(2);
    // Joining "setup": worked, failed.
    let mut joined = [0usize; 2];
    // Bytes read from "setup" once joined.
    let mut read = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..300 {
        let r = region();
        setup(&r);
        // A few words of the map's live entries, of the headers of the first blocks (the
        // first 0x200 bytes of each of the first four pages: state word, header, lines,
        // name), or a run anywhere over the map and the first four pages.
        match round % 3 {
            0 => {
                let from = MAP + 8 * (rng.next() % ARENA_PAGES);
                let to = (from + 8 * (1 + rng.next() % 4)).min(MAP + 8 * ARENA_PAGES);
                fill(&r, from, to, &mut rng);
            }
            1 => {
                for _ in 0..1 + rng.next() % 6 {
                    let page = PAGES + 0x1000 * (rng.next() % 4);
                    let off = page + ((rng.next() % 0x200) & !7);
                    word(&r, off).store(rng.next(), Ordering::Relaxed);
                }
            }
            _ => {
                let from = (MAP + rng.next() % (5 * 0x1000)) & !7;
                let to = (from + 8 * (1 + rng.next() % 64)).min(PAGES + 4 * 0x1000);
                fill(&r, from, to, &mut rng);
            }
        }
        let t = Instant::now();
        let mut note = |e: &ChannelError| {
            assert!(!e.to_string().is_empty());
            *kinds.entry(format!("{:?}", e.kind())).or_default() += 1;
        };
        if let Err(e) = channel::list(&r) {
            note(&e);
        }
        if let Err(e) = channel::usage(&r) {
            note(&e);
        }
        match Channel::open(&r, "setup", &opts().create(false)) {
            Ok(mut b) => {
                joined[0] += 1;
                b.set_nonblocking(true);
                let mut buf = [0u8; 64];
                // Whatever the garbage left of the ring: bytes, the end, or a clear error.
                for _ in 0..3 {
                    match b.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => read += n,
                        Err(e) => {
                            assert!(ChannelError::of(&e).is_some(), "{e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                joined[1] += 1;
                note(&e);
            }
        }
        match (
            Channel::open(&r, "other", &opts()),
            Channel::open(&r, "other", &opts()),
        ) {
            (Ok(mut a), Ok(mut b)) => {
                a.set_nonblocking(true);
                b.set_nonblocking(true);
                let _ = a.write(b"x");
                let _ = b.read(&mut [0u8; 8]);
            }
            (a, b) => {
                for e in [a.err(), b.err()].iter().flatten() {
                    note(e);
                }
            }
        }
        match Channel::connect(&r, "nobody", &opts()) {
            Ok(c) => panic!("round {round}: connected to nobody: {c:?}"),
            Err(e) => note(&e),
        }
        if let Err(e) = Listener::bind(&r, "svc", &opts()) {
            note(&e);
        }
        assert!(t.elapsed() < ROUND, "round {round}: {:?}", t.elapsed());
    }
    eprintln!("joined {joined:?}, read {read} bytes, errors {kinds:?}");
    // The garbage hit "setup"'s entry or header some of the time, not always.
    assert!(joined[0] > 0 && joined[1] > 0, "{joined:?}");
}

/// Random words written over the first 0x100 bytes of a live channel's two blocks (the
/// opener's and the joiner's: state words, headers, side lines, ring lines) between
/// operations: each operation returns a value, `WouldBlock`, or ends the transfer with
/// `InvalidData` (a ring index that breaks the protocol) or `BrokenPipe` (a state word that is
/// not the session's: detached); an end that reported corruption stays broken; another
/// channel on the region is not disturbed; every round is quick.
#[test]
fn random_scribbles_on_a_live_channel() {
    let mut rng = Rng::new(3);
    // Rounds with an InvalidData, with a BrokenPipe (and no InvalidData), with neither.
    let mut outcomes = [0usize; 3];
    for round in 0..300u64 {
        let r = region();
        let kind = if round % 2 == 0 {
            Kind::Stream
        } else {
            Kind::Messages
        };
        let o = opts().kind(kind);
        let mut a = Channel::open(&r, "c", &o).unwrap();
        let mut b = Channel::open(&r, "c", &o).unwrap();
        a.set_nonblocking(true);
        b.set_nonblocking(true);
        let info = channel::list(&r).unwrap().remove(0);
        let blocks = [info.offset, info.joiner.expect("b joined")];
        assert_ne!(blocks[0], blocks[1]);
        let t = Instant::now();
        // Which end reported corruption: it stays unusable (every call is InvalidData).
        let mut corrupt = [false; 2];
        let (mut data, mut invalid, mut broken) = (false, false, false);
        let mut buf = vec![0u8; 300];
        let mut msg = Vec::new();
        for step in 0..40 {
            if step % 4 == 1 {
                let block = blocks[(rng.next() % 2) as usize];
                let off = block + ((rng.next() % 0x100) & !7);
                word(&r, off).store(rng.next(), Ordering::Relaxed);
            }
            let n = (rng.next() % 200) as usize;
            // a to b, then b to a.
            let results: [(usize, io::Result<usize>); 4] = match kind {
                Kind::Stream => [
                    (0, a.write(&buf[..n])),
                    (1, b.read(&mut buf[..n])),
                    (1, b.write(&buf[..n])),
                    (0, a.read(&mut buf[..n])),
                ],
                _ => [
                    (0, a.send(&buf[..n.min(a.max_message())]).map(|_| n)),
                    (1, b.recv(&mut msg).map(|m| m.unwrap_or(0))),
                    (1, b.send(&buf[..n.min(b.max_message())]).map(|_| n)),
                    (0, a.recv(&mut msg).map(|m| m.unwrap_or(0))),
                ],
            };
            for (end, res) in results {
                match res {
                    Ok(k) => {
                        data |= k > 0;
                        assert!(!corrupt[end], "round {round}: end {end} works again");
                    }
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            assert!(!corrupt[end], "round {round}: end {end}: {e}");
                        }
                        io::ErrorKind::InvalidData => {
                            assert!(
                                matches!(ChannelError::of(&e), Some(ChannelError::Corrupt(_))),
                                "round {round}: {e}"
                            );
                            corrupt[end] = true;
                            invalid = true;
                        }
                        io::ErrorKind::BrokenPipe => {
                            assert!(!corrupt[end], "round {round}: end {end}: {e}");
                            broken = true;
                        }
                        k => panic!("round {round}: end {end}: {k:?}: {e}"),
                    },
                }
            }
        }
        assert!(data || invalid || broken, "round {round}: nothing moved");
        outcomes[if invalid {
            0
        } else if broken {
            1
        } else {
            2
        }] += 1;
        drop((a, b));
        // The garbage stayed in "c"'s blocks: another channel works, and what is left of "c"
        // is listed (or refused) quickly. Opening "c" again is not tried here: a joiner whose
        // state word is garbage can make that open loop for ever (see
        // `a_joiner_with_a_garbage_state_word_does_not_hold_its_name_forever`).
        pair_works(&r, "d");
        for e in [channel::list(&r).err(), channel::usage(&r).err()]
            .into_iter()
            .flatten()
        {
            assert!(!e.to_string().is_empty());
        }
        assert!(t.elapsed() < ROUND, "round {round}: {:?}", t.elapsed());
    }
    eprintln!("corrupt, detached, completed: {outcomes:?}");
    // The scribbles were noticed both ways, and some missed every word that matters.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}

/// The case of `random_scribbles_on_a_live_channel` that hung: the opener wrote bytes, the
/// joiner's state word was overwritten with garbage (so its end is detached and leaves without
/// storing a state), both ends were dropped. The opener's block stays (closed with unread
/// bytes) and the joiner's block names it with a state word that is neither unpublished (0)
/// nor a state of its generation. Opening the name again must give a value or a clear error
/// within the open timeout (`Channel::open` used to take the old joiner for a rival for ever,
/// in a loop that did not look at the open timeout).
#[test]
fn a_joiner_with_a_garbage_state_word_does_not_hold_its_name_forever() {
    let r = region();
    let mut a = Channel::open(&r, "c", &opts()).unwrap();
    let b = Channel::open(&r, "c", &opts()).unwrap();
    a.write_all(b"unread").unwrap();
    let joiner = channel::list(&r).unwrap()[0].joiner.unwrap();
    word(&r, joiner).store(0x29cf_5fb7_8bb1_0a5b, Ordering::Relaxed);
    drop((a, b));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let r = r.clone();
        move || {
            let _ = tx.send(Channel::open(&r, "c", &opts()).map(drop));
        }
    });
    match rx.recv_timeout(ROUND) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => assert!(!e.to_string().is_empty()),
        // The thread is left behind; the test process ends with the test.
        Err(_) => panic!("Channel::open did not return within {ROUND:?}"),
    }
}

/// A header laid out for another region size (a 1 MiB layout copied into a 64 KiB or a 2 MiB
/// mapping): every entry point refuses it with the sizes, and the original still works.
#[test]
fn a_region_of_another_size_than_its_header_says_is_refused() {
    let big = Region::anonymous(1 << 20).unwrap();
    drop(Channel::open(&big, "c", &opts()).unwrap());
    for len in [LEN, 2 << 20] {
        let other = Region::anonymous(len as usize).unwrap();
        // Copy the header page of the big layout into the other region.
        for off in (0..MAP).step_by(8) {
            let v = word(&big, off).load(Ordering::Relaxed);
            word(&other, off).store(v, Ordering::Relaxed);
        }
        let want = format!("the region was laid out for 1048576 bytes, this mapping has {len}");
        let errors = [
            Channel::open(&other, "c", &opts()).unwrap_err(),
            channel::list(&other).unwrap_err(),
            channel::usage(&other).unwrap_err(),
            Channel::connect(&other, "svc", &opts()).unwrap_err(),
            Listener::bind(&other, "svc", &opts()).unwrap_err(),
        ];
        for e in errors {
            assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
            assert!(e.to_string().contains(&want), "{e}");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }
    // And the plain stream still works in the big one.
    let mut a = Channel::open(&big, "c", &opts()).unwrap();
    let mut b = Channel::open(&big, "c", &opts()).unwrap();
    a.write_all(b"fine").unwrap();
    let mut got = [0u8; 4];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fine");
}
