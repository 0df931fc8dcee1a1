//! An event loop: one thread polls the descriptors of 16 channels and reads from a channel
//! only when its descriptor says the peer rang. A lost wake-up (an end that returned
//! `WouldBlock` without arming itself) leaves a message unread with no descriptor readable:
//! the poll times out and the test fails.

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::channel::{Channel, FdWaker, Kind, Options, Region};
use ivshmem::os::{self, PollFd};

const CHANNELS: usize = 16;
const MESSAGES: u64 = 1500;
/// Far beyond any pause of a sender: a poll that waits this long missed a wake-up.
const STUCK: Duration = Duration::from_secs(10);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Message `i` of channel `c`: up to 300 bytes.
fn message(c: usize, i: u64) -> Vec<u8> {
    let seed = mix((c as u64) << 32 | i);
    (0..seed % 301).map(|j| mix(seed ^ j) as u8).collect()
}

fn opts(kind: Kind, waker: FdWaker) -> Options {
    Options::new()
        .kind(kind)
        .capacity(1024)
        .spin(0)
        .liveness_timeout(Duration::from_secs(5))
        .waker(Arc::new(waker))
}

/// What the poller has of channel `c`: messages, or stream bytes, received so far.
struct Rx {
    ch: Channel,
    got: u64,
    stream: Vec<u8>,
    done: bool,
}

impl Rx {
    /// Reads until `WouldBlock` (the end is armed again) or the end of the data.
    fn drain(&mut self, c: usize, buf: &mut Vec<u8>) {
        loop {
            let r = match self.ch.kind() {
                Kind::Messages => self.ch.recv(buf).map(|m| {
                    if let Some(len) = m {
                        assert_eq!(
                            *buf,
                            message(c, self.got),
                            "channel {c} message {}",
                            self.got
                        );
                        assert_eq!(len, buf.len());
                        self.got += 1;
                    }
                    m.is_some()
                }),
                Kind::Stream => {
                    let mut chunk = [0u8; 700];
                    self.ch.read(&mut chunk).map(|n| {
                        self.stream.extend_from_slice(&chunk[..n]);
                        n > 0
                    })
                }
            };
            match r {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("channel {c}: {e}"),
            }
        }
    }
}

#[test]
fn a_poll_loop_over_16_channels_never_misses_a_wakeup() {
    let region = Region::anonymous(4 << 20).unwrap();
    let mut rxs = Vec::new();
    let mut senders = Vec::new();
    for c in 0..CHANNELS {
        let kind = if c % 2 == 0 {
            Kind::Messages
        } else {
            Kind::Stream
        };
        let (mine, theirs) = FdWaker::pair().unwrap();
        let name = format!("poll{c}");
        let mut ch = Channel::open(&region, &name, &opts(kind, mine)).unwrap();
        ch.set_nonblocking(true);
        assert!(ch.as_raw_fd().is_some());
        rxs.push(Rx {
            ch,
            got: 0,
            stream: Vec::new(),
            done: false,
        });
        let region = region.clone();
        senders.push(std::thread::spawn(move || {
            let mut tx = Channel::open(&region, &name, &opts(kind, theirs)).unwrap();
            tx.set_write_timeout(Some(STUCK));
            for i in 0..MESSAGES {
                let m = message(c, i);
                match kind {
                    Kind::Messages => tx.send(&m).unwrap(),
                    Kind::Stream => tx.write_all(&m).unwrap(),
                }
                // Pauses of random length, so that the poller often sleeps with every end
                // armed, and sometimes finds several messages at once.
                match mix(i ^ (c as u64) << 20) % 16 {
                    0 => std::thread::sleep(Duration::from_micros(mix(i) % 2000)),
                    1..=3 => std::thread::yield_now(),
                    _ => {}
                }
            }
            tx.close_write().unwrap();
            tx.drain().unwrap();
        }));
    }
    let mut buf = Vec::new();
    // Arm every end once: a `WouldBlock` from each.
    for (c, rx) in rxs.iter_mut().enumerate() {
        rx.drain(c, &mut buf);
    }
    let (mut wakeups, mut loops) = (0u64, 0u64);
    while rxs.iter().any(|r| !r.done) {
        let mut fds: Vec<PollFd> = rxs
            .iter()
            .map(|r| {
                // SAFETY: The channel's descriptor stays open while the channel lives, longer
                // than this poll.
                let fd = unsafe { BorrowedFd::borrow_raw(r.ch.as_raw_fd().unwrap()) };
                PollFd::new(fd, !r.done)
            })
            .collect();
        let t = Instant::now();
        let n = os::poll(&mut fds, STUCK).expect("ppoll");
        let waiting: Vec<_> = rxs
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.done)
            .map(|(c, r)| (c, r.got, r.stream.len()))
            .collect();
        assert!(
            n > 0,
            "no wake-up for {:?} while channels wait (channel, messages, stream bytes): {waiting:?}",
            t.elapsed()
        );
        loops += 1;
        for (c, fd) in fds.iter().enumerate() {
            if fd.readable() {
                wakeups += 1;
                rxs[c].drain(c, &mut buf);
            }
        }
    }
    for s in senders {
        s.join().unwrap();
    }
    for (c, rx) in rxs.iter().enumerate() {
        match rx.ch.kind() {
            Kind::Messages => assert_eq!(rx.got, MESSAGES, "channel {c}"),
            Kind::Stream => {
                let want: Vec<u8> = (0..MESSAGES).flat_map(|i| message(c, i)).collect();
                assert!(rx.stream == want, "channel {c}: the stream differs");
            }
        }
    }
    eprintln!(
        "{loops} polls, {wakeups} wake-ups for {} messages",
        CHANNELS as u64 * MESSAGES
    );
}
