//! Garbage where the layout should be: random headers, random tables, random words written
//! over a live channel. Every outcome must be a value or a clear error, quickly: no panic, no
//! hang, no access outside the region (the region is a heap block: a stray access would crash
//! or show up under a sanitizer).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ivshmem::channel::{self, Channel, ChannelError, Kind, Options, Region};
use ivshmem::pattern::SplitMix64;

/// The test's dice (seeded: a failure replays).
type Rng = SplitMix64;

fn word(r: &Region, off: u64) -> &AtomicU64 {
    assert!(off + 8 <= r.len() as u64 && off.is_multiple_of(8));
    // SAFETY: in bounds and aligned (asserted); the region outlives the reference and every
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

#[test]
fn random_headers_are_refused() {
    let mut rng = Rng::new(1);
    for _ in 0..200 {
        let r = Region::anonymous(1 << 16).unwrap();
        fill(&r, 0, 0x40, &mut rng);
        let e = Channel::open(&r, "c", &opts()).unwrap_err();
        assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
        assert!(e.to_string().contains("is not a channel layout"), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);
        assert!(channel::list(&r).is_err());
    }
}

#[test]
fn random_tables_give_values_or_clear_errors() {
    let mut rng = Rng::new(2);
    let mut outcomes = [0usize; 2];
    for _ in 0..200 {
        let r = Region::anonymous(1 << 16).unwrap();
        drop(Channel::open(&r, "setup", &opts()).unwrap());
        // Keep the first 0x40 bytes (a valid header), randomise part of the table.
        let from = 0x40 + (rng.next() % 64) * 128;
        let to = (from + 8 * (1 + rng.next() % 64)).min(0x2040);
        fill(&r, from, to, &mut rng);
        // Listing must cope with the garbage too.
        let _ = channel::list(&r);
        let t = Instant::now();
        match Channel::open(&r, "setup", &opts().create(false)) {
            Ok(_) => outcomes[0] += 1,
            Err(e) => {
                outcomes[1] += 1;
                assert!(!e.to_string().is_empty());
            }
        }
        match Channel::open(&r, "other", &opts()) {
            Ok(_) | Err(_) => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
    }
    // The garbage hit the slot of "setup" some of the time, not always.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// Random words written over the header, table and channel block between operations of a
/// live pair: each operation returns, and once a side reports corruption it stays broken.
#[test]
fn random_scribbles_on_a_live_channel() {
    let mut rng = Rng::new(3);
    let mut errors = 0;
    for round in 0..300u64 {
        let r = Region::anonymous(1 << 16).unwrap();
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
        let block = channel::list(&r).unwrap()[0].offset;
        let t = Instant::now();
        let mut buf = vec![0u8; 300];
        let mut msg = Vec::new();
        for step in 0..40 {
            if step % 4 == 1 {
                // Anywhere in the control block, or now and then the header or table.
                let off = if rng.next().is_multiple_of(8) {
                    (rng.next() % 0x2040) & !7
                } else {
                    (block + rng.next() % 0x200) & !7
                };
                word(&r, off).store(rng.next(), Ordering::Relaxed);
            }
            let n = (rng.next() % 200) as usize;
            let results: [io::Result<usize>; 2] = match kind {
                Kind::Stream => [a.write(&buf[..n]), b.read(&mut buf[..n])],
                _ => [
                    a.send(&buf[..n.min(a.max_message())]).map(|_| n),
                    b.recv(&mut msg).map(|m| m.unwrap_or(0)),
                ],
            };
            for r in results {
                if let Err(e) = r {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        errors += 1;
                    }
                }
            }
            let _ = b.write(&buf[..n]);
            let _ = a.read(&mut buf[..n]);
        }
        drop((a, b));
        let _ = Channel::open(&r, "c", &o);
        assert!(t.elapsed() < Duration::from_secs(2), "round {round}");
    }
    assert!(errors > 0, "the scribbles were noticed");
}

#[test]
fn a_region_smaller_than_its_header_claims_is_refused() {
    let big = Region::anonymous(1 << 20).unwrap();
    drop(Channel::open(&big, "c", &opts()).unwrap());
    let small = Region::anonymous(1 << 16).unwrap();
    // Copy the header of the big layout into the small region.
    for off in (0..0x40).step_by(8) {
        let v = word(&big, off).load(Ordering::Relaxed);
        word(&small, off).store(v, Ordering::Relaxed);
    }
    let e = Channel::open(&small, "c", &opts()).unwrap_err();
    assert!(
        e.to_string()
            .contains("header says the region has 1048576 bytes"),
        "{e}"
    );
    // And the plain stream still works in the big one.
    let mut a = Channel::open(&big, "c", &opts()).unwrap();
    let mut b = Channel::open(&big, "c", &opts()).unwrap();
    a.write_all(b"fine").unwrap();
    let mut got = [0u8; 4];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fine");
}
