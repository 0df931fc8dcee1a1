//! Channels between two processes on one memfd: this test binary runs itself as the peer
//! (`peer_entry` with `CHANNEL_PEER` set), inheriting the memfd and, for sleeping wakers, two
//! eventfds. Every wait is bounded, so a protocol bug fails a test instead of hanging it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::channel::{self, Channel, ChannelError, FdWaker, Kind, Options, Region};

use ivshmem::os::{self, Signal};

/// Bound on any single test step.
const BOUND: Duration = Duration::from_secs(40);

fn memfd(len: u64) -> File {
    let f = File::from(os::memfd_create(c"channel-test").unwrap());
    f.set_len(len).unwrap();
    f
}

/// splitmix64: the seeded randomness of sizes, pauses and payload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Now and then a pause of random length, so the two processes interleave differently.
    fn jitter(&mut self) {
        match self.next() % 64 {
            0 => std::thread::sleep(Duration::from_micros(self.range(1, 300))),
            1..=3 => std::thread::yield_now(),
            _ => {}
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes `pos..pos + len` of the stream named by `seed`.
fn stream(seed: u64, pos: u64, len: usize) -> Vec<u8> {
    (pos..pos + len as u64)
        .map(|p| (mix(seed ^ (p / 8)) >> (8 * (p % 8))) as u8)
        .collect()
}

/// Message `i` of the sequence named by `seed`: random length up to `max`, random bytes.
fn message(seed: u64, i: u64, max: usize) -> Vec<u8> {
    let len = (mix(seed.wrapping_add(i)) % (max as u64 + 1)) as usize;
    stream(seed ^ i.wrapping_mul(0x1234_5678_9abc_def1), 0, len)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum WakerKind {
    Spin,
    Eventfd,
}

/// What a process needs to open its end: the region, and its waker's descriptors.
struct End {
    region: Region,
    fds: Vec<RawFd>,
    waker: WakerKind,
}

impl End {
    fn opts(&self, kind: Kind, cap: u64, liveness: Duration) -> Options {
        let o = Options::new()
            .kind(kind)
            .capacity(cap)
            .liveness_timeout(liveness)
            .open_timeout(BOUND);
        match self.waker {
            WakerKind::Spin => o.spin(2_000),
            WakerKind::Eventfd => {
                // SAFETY: Descriptors 1 and 2 of the list are eventfds this process inherited
                // and keeps open for its whole life.
                let (mine, peers) = unsafe {
                    (
                        BorrowedFd::borrow_raw(self.fds[1])
                            .try_clone_to_owned()
                            .unwrap(),
                        BorrowedFd::borrow_raw(self.fds[2])
                            .try_clone_to_owned()
                            .unwrap(),
                    )
                };
                o.spin(0).waker(Arc::new(FdWaker::eventfds(mine, peers)))
            }
        }
    }
}

/// A parent end: a fresh memfd (and eventfds), and the descriptor list a child inherits.
struct Setup {
    file: File,
    efd: Option<(OwnedFd, OwnedFd)>,
}

impl Setup {
    fn new(len: u64, waker: WakerKind) -> Self {
        let efd = (waker == WakerKind::Eventfd)
            .then(|| (FdWaker::eventfd().unwrap(), FdWaker::eventfd().unwrap()));
        Self {
            file: memfd(len),
            efd,
        }
    }

    fn waker(&self) -> WakerKind {
        if self.efd.is_some() {
            WakerKind::Eventfd
        } else {
            WakerKind::Spin
        }
    }

    /// The parent's end: it waits on eventfd 0 and rings eventfd 1.
    fn end(&self) -> End {
        let mut fds = vec![self.file.as_raw_fd()];
        if let Some((a, b)) = &self.efd {
            fds.extend([a.as_raw_fd(), b.as_raw_fd()]);
        }
        End {
            region: Region::map_file(&self.file).unwrap(),
            fds,
            waker: self.waker(),
        }
    }

    /// Starts this binary as the peer `role`, with the memfd and the eventfds crossed over.
    fn spawn(&self, role: &str, env: &[(&str, String)]) -> Peer {
        let mut fds = vec![self.file.as_raw_fd()];
        if let Some((a, b)) = &self.efd {
            fds.extend([b.as_raw_fd(), a.as_raw_fd()]);
        }
        let list: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["peer_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env("CHANNEL_PEER", role)
            .env("CHANNEL_FDS", list.join(","))
            .env("CHANNEL_WAKER", format!("{:?}", self.waker()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: Between fork and exec the closure only calls fcntl, which is
        // async-signal-safe, on descriptors this process owns (open until the spawn returns).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    os::set_inheritable(BorrowedFd::borrow_raw(fd))?;
                }
                Ok(())
            });
        }
        Peer(cmd.spawn().unwrap())
    }
}

/// A child process, killed if the test ends early.
struct Peer(Child);

impl Peer {
    /// Waits at most `bound` for the child; its exit status and what it said on stderr.
    fn wait(mut self, bound: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                self.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status, err);
            }
            assert!(
                start.elapsed() < bound,
                "peer still running after {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn expect_success(self, bound: Duration) {
        let (status, err) = self.wait(bound);
        assert!(status.success(), "peer failed: {status}: {err}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// Sends `total` bytes of stream `seed` (or messages, `total` of them) in random pieces.
fn send_all(ch: &mut Channel, seed: u64, total: u64, rng: &mut Rng) -> io::Result<()> {
    let cap = ch.capacity().0;
    let mut sent = 0;
    while sent < total {
        if ch.kind() == Kind::Messages {
            ch.send(&message(seed, sent, ch.max_message()))?;
            sent += 1;
        } else {
            let n = rng.range(1, 3 * cap).min(total - sent) as usize;
            let buf = stream(seed, sent, n);
            let mut done = 0;
            while done < n {
                done += ch.write(&buf[done..])?;
            }
            sent += n as u64;
        }
        rng.jitter();
    }
    ch.close_write()?;
    ch.drain()
}

/// Receives and checks stream `seed` (or messages) until end-of-file; returns how many bytes
/// (messages) arrived, all checked, or the error with that count.
fn recv_all(ch: &mut Channel, seed: u64, rng: &mut Rng) -> Result<u64, (io::Error, u64)> {
    let cap = ch.capacity().1;
    let mut got = 0u64;
    let mut msg = Vec::new();
    let mut buf = vec![0u8; 3 * cap as usize];
    loop {
        if ch.kind() == Kind::Messages {
            match ch.recv(&mut msg) {
                Ok(None) => return Ok(got),
                Ok(Some(_)) => {
                    let want = message(seed, got, ch.max_message());
                    assert_eq!(msg, want, "message {got}: boundaries or bytes differ");
                    got += 1;
                }
                Err(e) => return Err((e, got)),
            }
        } else {
            let n = rng.range(1, buf.len() as u64) as usize;
            match ch.read(&mut buf[..n]) {
                Ok(0) => return Ok(got),
                Ok(k) => {
                    assert_eq!(buf[..k], stream(seed, got, k), "bytes {got}..+{k} differ");
                    got += k as u64;
                }
                Err(e) => return Err((e, got)),
            }
        }
        rng.jitter();
    }
}

/// Both directions at once from one thread, non-blocking, in random steps.
fn duplex(ch: &mut Channel, seed_out: u64, seed_in: u64, total: u64, rng: &mut Rng) {
    ch.set_nonblocking(true);
    let messages = ch.kind() == Kind::Messages;
    let (cap_out, cap_in) = ch.capacity();
    let (mut sent, mut got) = (0u64, 0u64);
    let (mut closed, mut eof) = (false, false);
    let mut msg = Vec::new();
    let mut buf = vec![0u8; 2 * cap_in as usize];
    let start = Instant::now();
    let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
    while !(closed && eof) {
        assert!(
            start.elapsed() < BOUND,
            "duplex stuck at {sent} sent, {got} received"
        );
        let mut progress = false;
        if !closed && sent == total {
            ch.close_write().unwrap();
            closed = true;
        }
        if !closed && rng.next().is_multiple_of(2) {
            let r = if messages {
                ch.send(&message(seed_out, sent, ch.max_message()))
                    .map(|_| 1)
            } else {
                let n = rng.range(1, 3 * cap_out).min(total - sent) as usize;
                ch.write(&stream(seed_out, sent, n)).map(|k| k as u64)
            };
            match r {
                Ok(k) => {
                    sent += k;
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => panic!("send after {sent}: {e}"),
            }
        }
        if !eof && rng.next().is_multiple_of(2) {
            if messages {
                match ch.recv(&mut msg) {
                    Ok(None) => eof = true,
                    Ok(Some(_)) => {
                        assert_eq!(msg, message(seed_in, got, ch.max_message()), "msg {got}");
                        got += 1;
                        progress = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => panic!("recv after {got}: {e}"),
                }
            } else {
                let n = rng.range(1, buf.len() as u64) as usize;
                match ch.read(&mut buf[..n]) {
                    Ok(0) => eof = true,
                    Ok(k) => {
                        assert_eq!(buf[..k], stream(seed_in, got, k), "bytes {got}..+{k}");
                        got += k as u64;
                        progress = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => panic!("read after {got}: {e}"),
                }
            }
        }
        if !progress {
            rng.jitter();
        }
    }
    assert_eq!(got, total, "everything arrived, then end-of-file");
}

/// The peer side of every test, run in a child process; a no-op in the normal test run.
#[test]
fn peer_entry() {
    let Ok(role) = std::env::var("CHANNEL_PEER") else {
        return;
    };
    let fds: Vec<RawFd> = std::env::var("CHANNEL_FDS")
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    // SAFETY: The parent passed us this memfd; nothing else here owns it.
    let file = unsafe { File::from_raw_fd(fds[0]) };
    let waker = match std::env::var("CHANNEL_WAKER").unwrap().as_str() {
        "Eventfd" => WakerKind::Eventfd,
        _ => WakerKind::Spin,
    };
    let end = End {
        region: Region::map_file(&file).unwrap(),
        fds,
        waker,
    };
    let code = peer(&role, &end);
    std::process::exit(code);
}

fn peer(role: &str, end: &End) -> i32 {
    let kind = match std::env::var("KIND").as_deref() {
        Ok("messages") => Kind::Messages,
        _ => Kind::Stream,
    };
    let cap = env_u64("CAP");
    let liveness = Duration::from_millis(env_u64("LIVENESS_MS"));
    let mut rng = Rng(env_u64("SEED") ^ 0xc0ffee);
    let name = std::env::var("NAME").unwrap();
    let opts = end.opts(kind, cap, liveness);
    let mut ch = match Channel::open(&end.region, &name, &opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("open: {e}");
            return 2;
        }
    };
    ch.set_read_timeout(Some(BOUND));
    ch.set_write_timeout(Some(BOUND));
    match role {
        "duplex" => {
            duplex(
                &mut ch,
                env_u64("SEED_OUT"),
                env_u64("SEED_IN"),
                env_u64("TOTAL"),
                &mut rng,
            );
            0
        }
        "send" => match send_all(&mut ch, env_u64("SEED_OUT"), env_u64("TOTAL"), &mut rng) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("send: {e}");
                2
            }
        },
        "recv" => match recv_all(&mut ch, env_u64("SEED_IN"), &mut rng) {
            Ok(n) if n == env_u64("TOTAL") => 0,
            Ok(n) => {
                eprintln!("recv: end-of-file after {n}");
                3
            }
            Err((e, n)) => {
                eprintln!("recv: after {n}: {e}");
                2
            }
        },
        "fork" => {
            // This process has a heartbeat thread now (for `ch`); a forked child has none.
            // SAFETY: The child below only opens a channel, sleeps and writes (what a forked
            // child of a process with threads may do: this test's own code, no locks held).
            let forked = unsafe { os::fork() }.expect("fork");
            if forked == os::Forked::Child {
                let name2 = std::env::var("NAME2").unwrap();
                let mut c = Channel::open(&end.region, &name2, &opts).unwrap();
                std::thread::sleep(liveness * 4);
                c.write_all(b"alive").unwrap();
                c.close_write().unwrap();
                c.drain().unwrap();
                std::process::exit(0);
            }
            std::thread::sleep(liveness * 8);
            drop(ch);
            0
        }
        r => panic!("unknown role {r}"),
    }
}

fn env(pairs: &[(&'static str, u64)], name: &str, kind: &str) -> Vec<(&'static str, String)> {
    let mut v: Vec<_> = pairs.iter().map(|(k, n)| (*k, n.to_string())).collect();
    v.push(("NAME", name.to_string()));
    v.push(("KIND", kind.to_string()));
    v
}

#[test]
fn two_channels_both_directions_random_interleavings() {
    let setup = Setup::new(1 << 20, WakerKind::Spin);
    let common = [("CAP", 256), ("LIVENESS_MS", 10_000), ("SEED", 1)];
    let mut peers = Vec::new();
    for (name, kind, total) in [("s", "stream", 300_000), ("m", "messages", 3000)] {
        let mut e = env(&common, name, kind);
        e.extend([
            ("SEED_OUT", "11".into()),
            ("SEED_IN", "22".into()),
            ("TOTAL", format!("{total}")),
        ]);
        peers.push(setup.spawn("duplex", &e));
    }
    let end = setup.end();
    let threads: Vec<_> = [("s", Kind::Stream, 300_000), ("m", Kind::Messages, 3000)]
        .into_iter()
        .map(|(name, kind, total)| {
            let opts = end.opts(kind, 256, Duration::from_secs(10));
            let region = end.region.clone();
            std::thread::spawn(move || {
                let mut ch = Channel::open(&region, name, &opts).unwrap();
                duplex(&mut ch, 22, 11, total, &mut Rng(7));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for p in peers {
        p.expect_success(BOUND);
    }
    // Both channels' ends left: every block is freed, no name stays behind.
    let names: Vec<_> = channel::list(&end.region)
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(channel::usage(&end.region).unwrap().pages_used, 0);
}

/// Both directions of waiting (for data and for space) with sleeping ends: the event
/// suppression protocol across processes, with an eventfd per side.
#[test]
fn sleeping_ends_across_processes() {
    for (kind, total) in [("stream", 400_000u64), ("messages", 2000)] {
        let setup = Setup::new(1 << 20, WakerKind::Eventfd);
        let mut e = env(
            &[("CAP", 128), ("LIVENESS_MS", 10_000), ("SEED", 2)],
            "w",
            kind,
        );
        e.extend([("SEED_IN", "5".into()), ("TOTAL", total.to_string())]);
        let peer = setup.spawn("recv", &e);
        let end = setup.end();
        let k = if kind == "stream" {
            Kind::Stream
        } else {
            Kind::Messages
        };
        let mut ch =
            Channel::open(&end.region, "w", &end.opts(k, 128, Duration::from_secs(10))).unwrap();
        ch.set_write_timeout(Some(BOUND));
        send_all(&mut ch, 5, total, &mut Rng(3)).unwrap();
        drop(ch);
        peer.expect_success(BOUND);
    }
}

/// The receiver first, or the sender first (having finished and left before the receiver
/// came): either way everything arrives, then end-of-file.
#[test]
fn either_end_may_come_first() {
    let setup = Setup::new(1 << 20, WakerKind::Spin);
    let e = |total: u64| {
        let mut e = env(
            &[("CAP", 4096), ("LIVENESS_MS", 10_000), ("SEED", 3)],
            "f",
            "stream",
        );
        e.extend([("SEED_IN", "9".into()), ("TOTAL", total.to_string())]);
        e
    };
    let peer = setup.spawn("recv", &e(100_000));
    std::thread::sleep(Duration::from_millis(100));
    let end = setup.end();
    let opts = end.opts(Kind::Stream, 4096, Duration::from_secs(10));
    let mut ch = Channel::open(&end.region, "f", &opts).unwrap();
    send_all(&mut ch, 9, 100_000, &mut Rng(4)).unwrap();
    drop(ch);
    peer.expect_success(BOUND);

    // Now the sender is done and gone before the receiver starts.
    let mut ch = Channel::open(&end.region, "f", &opts).unwrap();
    ch.write_all(&stream(9, 0, 3000)).unwrap();
    drop(ch);
    setup.spawn("recv", &e(3000)).expect_success(BOUND);
}

/// Two processes start at once on a zeroed region and create the same channel: one layout,
/// one channel, and they talk. Repeated, since the race is the point.
#[test]
fn racing_creators_agree() {
    for round in 0..4u64 {
        let setup = Setup::new(1 << 20, WakerKind::Spin);
        let mut e = env(
            &[("CAP", 1024), ("LIVENESS_MS", 10_000), ("SEED", round)],
            "r",
            "stream",
        );
        e.extend([
            ("SEED_IN", "1".into()),
            ("SEED_OUT", "1".into()),
            ("TOTAL", "20000".into()),
        ]);
        let a = setup.spawn("recv", &e);
        let b = setup.spawn("send", &e);
        b.expect_success(BOUND);
        a.expect_success(BOUND);
        // They met (the stream arrived), and both left: the name's blocks are all freed.
        let region = &setup.end().region;
        let list = channel::list(region).unwrap();
        assert!(list.is_empty(), "{list:?}");
        let u = channel::usage(region).unwrap();
        assert_eq!((u.ends, u.pages_used), (0, 0), "{u:?}");
    }
}

/// The sender is killed mid-stream: the receiver gets `BrokenPipe` within the liveness
/// timeout, having received a prefix of the stream; then a new sender works.
#[test]
fn killed_sender_then_a_new_one() {
    let setup = Setup::new(1 << 20, WakerKind::Spin);
    let liveness = Duration::from_millis(1000);
    let mut e = env(
        &[("CAP", 4096), ("LIVENESS_MS", 1000), ("SEED", 4)],
        "k",
        "stream",
    );
    e.extend([("SEED_OUT", "77".into()), ("TOTAL", u64::MAX.to_string())]);
    let mut peer = setup.spawn("send", &e);
    let end = setup.end();
    let opts = end.opts(Kind::Stream, 4096, liveness);
    let mut ch = Channel::open(&end.region, "k", &opts).unwrap();
    ch.set_read_timeout(Some(BOUND));
    let mut buf = [0u8; 1000];
    let mut got = 0u64;
    while got < 200_000 {
        let n = ch.read(&mut buf).unwrap();
        assert_eq!(buf[..n], stream(77, got, n));
        got += n as u64;
    }
    peer.0.kill().unwrap();
    let killed = Instant::now();
    let err = loop {
        match ch.read(&mut buf) {
            Ok(0) => panic!("end-of-file from a killed sender"),
            Ok(n) => {
                assert_eq!(buf[..n], stream(77, got, n), "what arrived is a prefix");
                got += n as u64;
            }
            Err(e) => break e,
        }
    };
    let took = killed.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    assert!(matches!(
        ChannelError::of(&err),
        Some(ChannelError::PeerGone(_))
    ));
    assert!(took < liveness * 5, "detected after {took:?}");
    drop(peer);

    // A new sender; the survivor reopens and gets a fresh stream from its start.
    e.retain(|(k, _)| *k != "TOTAL");
    e.push(("TOTAL", "50000".into()));
    let peer = setup.spawn("send", &e);
    drop(ch);
    let mut ch = Channel::open(&end.region, "k", &opts).unwrap();
    ch.set_read_timeout(Some(BOUND));
    let mut all = Vec::new();
    ch.read_to_end(&mut all).unwrap();
    assert_eq!(all, stream(77, 0, 50_000));
    peer.expect_success(BOUND);
}

/// The receiver is killed: the blocked sender gets `BrokenPipe`.
#[test]
fn killed_receiver_breaks_the_senders_pipe() {
    let setup = Setup::new(1 << 20, WakerKind::Eventfd);
    let liveness = Duration::from_millis(1000);
    let mut e = env(
        &[("CAP", 1024), ("LIVENESS_MS", 1000), ("SEED", 5)],
        "k",
        "stream",
    );
    e.extend([("SEED_IN", "8".into()), ("TOTAL", "999999999".into())]);
    let mut peer = setup.spawn("recv", &e);
    let end = setup.end();
    let mut ch = Channel::open(&end.region, "k", &end.opts(Kind::Stream, 1024, liveness)).unwrap();
    ch.set_write_timeout(Some(BOUND));
    let mut sent = 0u64;
    while sent < 100_000 {
        let n = ch.write(&stream(8, sent, 700)).unwrap();
        sent += n as u64;
    }
    peer.0.kill().unwrap();
    let killed = Instant::now();
    let err = loop {
        match ch.write(&stream(8, sent, 700)) {
            Ok(n) => sent += n as u64,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    assert!(
        killed.elapsed() < liveness * 5,
        "took {:?}",
        killed.elapsed()
    );
}

/// A third thread scribbles random values over a control word during a transfer: both ends
/// stop with an error (corrupt, or the peer gone), never a panic, a hang, or bad bytes.
#[test]
fn scribbled_control_words_end_the_transfer() {
    // Offsets in the blocks (`conn_layout.rs`): the sender's (the opener's) state word and
    // producer index, and the receiver's (the joiner's) consumer index for the sender's ring.
    for (what, joiner, off) in [
        ("state", false, 0x00u64),
        ("producer", false, 0x80),
        ("consumer", true, 0xc0),
    ] {
        let setup = Setup::new(1 << 20, WakerKind::Spin);
        let mut e = env(
            &[("CAP", 1024), ("LIVENESS_MS", 2000), ("SEED", 6)],
            "x",
            "stream",
        );
        e.extend([("SEED_IN", "3".into()), ("TOTAL", "999999999".into())]);
        let end = setup.end();
        let opts = end.opts(Kind::Stream, 1024, Duration::from_secs(2));
        let mut ch = Channel::open(&end.region, "x", &opts).unwrap();
        let peer = setup.spawn("recv", &e);
        ch.set_write_timeout(Some(BOUND));
        ch.wait_peer().unwrap();
        let info = channel::list(&end.region).unwrap().remove(0);
        let block = if joiner {
            info.joiner.expect("joined")
        } else {
            info.offset
        };
        let stop = Arc::new(AtomicBool::new(false));
        let scribbler = {
            let (region, stop) = (end.region.clone(), stop.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut rng = Rng(off);
                // SAFETY: The word is inside the region and 8-aligned; every access to it
                // is atomic.
                let w = unsafe {
                    AtomicU64::from_ptr(region.as_ptr().add((block + off) as usize).cast())
                };
                while !stop.load(Ordering::Relaxed) {
                    w.store(rng.next() | 1 << 63, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let start = Instant::now();
        let mut sent = 0u64;
        let err = loop {
            match ch.write(&stream(3, sent, 500)) {
                Ok(n) => sent += n as u64,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::BrokenPipe
            ),
            "{what}: {err}"
        );
        drop(ch);
        let (status, msg) = peer.wait(BOUND);
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
        assert_eq!(
            status.code(),
            Some(2),
            "{what}: the receiver fails cleanly: {msg}"
        );
        assert!(
            msg.contains("corrupt") || msg.contains("peer gone"),
            "{what}: {msg}"
        );
        assert!(start.elapsed() < BOUND);
    }
}

/// Signals our own child, which is alive (it is reaped only in `wait`).
fn signal(peer: &Peer, sig: Signal) {
    os::kill(peer.0.id(), sig).expect("kill");
}

/// The stale end of issue 18: a receiver with a full ring is stopped (as a paused VM) past the
/// liveness bound, its sender declares it dead and leaves, a new sender and receiver stream
/// through the channel, and the old receiver is resumed in the middle of that. It must take
/// none of the new session's bytes (what it got is a prefix of its own sender's stream, which
/// `recv_all` checks chunk by chunk) and fail with "detached"; the new session arrives exact.
#[test]
fn a_resumed_stale_receiver_leaves_the_new_session_alone() {
    for round in 0..3u64 {
        let setup = Setup::new(1 << 20, WakerKind::Spin);
        let common = [("CAP", 65536), ("LIVENESS_MS", 200), ("SEED", 40 + round)];
        let mut old = env(&common, "s", "stream");
        old.extend([("SEED_IN", "11".into()), ("TOTAL", u64::MAX.to_string())]);
        let end = setup.end();
        let opts = end.opts(Kind::Stream, 65536, Duration::from_millis(200));
        let mut ch = Channel::open(&end.region, "s", &opts).unwrap();
        ch.set_write_timeout(Some(BOUND));
        let stale = setup.spawn("recv", &old);
        ch.wait_peer().unwrap();
        let mut sent = 0u64;
        let mut stopped = false;
        let err = loop {
            match ch.write(&stream(11, sent, 5000)) {
                Ok(n) => sent += n as u64,
                Err(e) => break e,
            }
            if !stopped && sent > 1 << 20 {
                signal(&stale, Signal::STOP);
                stopped = true;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        drop(ch);

        let mut new = env(&common, "s", "stream");
        new.extend([
            ("SEED_OUT", "12".into()),
            ("SEED_IN", "12".into()),
            ("TOTAL", (64u64 << 20).to_string()),
        ]);
        let sender = setup.spawn("send", &new);
        let receiver = setup.spawn("recv", &new);
        // Resume the stale end once the new session is under way (its ring is refilled at
        // the old end's read position many times over within a second): the new pair has
        // joined (the old pair's blocks were freed when the sender left).
        let t = Instant::now();
        while !channel::list(&end.region)
            .unwrap()
            .iter()
            .any(|c| c.joiner.is_some())
        {
            assert!(t.elapsed() < BOUND, "no new session");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        signal(&stale, Signal::CONT);
        let (status, msg) = stale.wait(BOUND);
        assert_eq!(
            status.code(),
            Some(2),
            "round {round}: the stale end fails cleanly: {msg}"
        );
        assert!(
            msg.contains("detached from session"),
            "round {round}: {msg}"
        );
        sender.expect_success(BOUND);
        receiver.expect_success(BOUND);
    }
}

/// An end opened in a forked child beats (the child starts its own heartbeat thread; the
/// parent's did not survive the fork): its peer, blocked on it for four liveness timeouts,
/// reads what it sends instead of declaring it dead.
#[test]
fn an_end_opened_after_fork_has_a_heartbeat() {
    let setup = Setup::new(1 << 20, WakerKind::Spin);
    let mut e = env(
        &[("CAP", 4096), ("LIVENESS_MS", 200), ("SEED", 9)],
        "first",
        "stream",
    );
    e.push(("NAME2", "forked".into()));
    let peer = setup.spawn("fork", &e);
    let end = setup.end();
    let opts = end.opts(Kind::Stream, 4096, Duration::from_millis(200));
    let mut ch = Channel::open(&end.region, "forked", &opts).unwrap();
    ch.set_read_timeout(Some(BOUND));
    let mut got = Vec::new();
    ch.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"alive");
    peer.expect_success(BOUND);
}
