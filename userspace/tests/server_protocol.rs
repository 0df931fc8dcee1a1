//! The ivshmem server speaks QEMU's protocol: checked with fake QEMU clients on a real socket.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::server::{recv_msg, Server, DEFAULT_WRITE_TIMEOUT, MAX_VECTORS};

const VECTORS: u32 = 3;
/// A unix socket holds about 280 of the server's messages: a few joins at 64 vectors fill it.
const MANY: u32 = MAX_VECTORS;

/// The tests count this process's descriptors: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(
    tag: &str,
) -> (
    Arc<Server>,
    String,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    start_with(tag, VECTORS, DEFAULT_WRITE_TIMEOUT)
}

fn start_with(
    tag: &str,
    vectors: u32,
    write_timeout: Duration,
) -> (
    Arc<Server>,
    String,
    Arc<AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let dir = std::env::temp_dir();
    let sock = dir.join(format!("ivshmem-test-{tag}-{}.sock", std::process::id()));
    let shm_path = dir.join(format!("ivshmem-test-{tag}-{}.shm", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let shm = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&shm_path)
        .unwrap();
    shm.set_len(1 << 20).unwrap();
    std::fs::remove_file(&shm_path).unwrap();
    let server = Server::with_write_timeout(shm, vectors, false, write_timeout).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (server.clone(), stop.clone());
    let handle = std::thread::spawn(move || s.serve(listener, &st).unwrap());
    (server, sock.to_string_lossy().into_owned(), stop, handle)
}

fn recv(c: &UnixStream) -> (i64, Option<OwnedFd>) {
    recv_within(c, Duration::from_secs(5))
}

fn recv_within(c: &UnixStream, timeout: Duration) -> (i64, Option<OwnedFd>) {
    c.set_read_timeout(Some(timeout)).unwrap();
    recv_msg(c).unwrap().expect("server closed the connection")
}

/// Connects like QEMU and checks the greeting; returns the stream and the peer id.
fn join(sock: &str, others: &[i64]) -> (UnixStream, i64) {
    join_with(sock, others, VECTORS, Duration::from_secs(5))
}

/// `join` for a server with `vectors` vectors, waiting up to `timeout` for each message.
fn join_with(sock: &str, others: &[i64], vectors: u32, timeout: Duration) -> (UnixStream, i64) {
    let recv = |c: &UnixStream| recv_within(c, timeout);
    let c = UnixStream::connect(sock).unwrap();
    let (v, fd) = recv(&c);
    assert_eq!((v, fd.is_none()), (0, true), "protocol version");
    let (id, fd) = recv(&c);
    assert!(id >= 0 && fd.is_none(), "peer id");
    let (v, fd) = recv(&c);
    assert_eq!(v, -1, "shared memory message");
    let shm = std::fs::File::from(fd.expect("shared memory fd"));
    assert_eq!(shm.metadata().unwrap().len(), 1 << 20);
    for &other in others {
        for _ in 0..vectors {
            let (v, fd) = recv(&c);
            assert_eq!(v, other, "eventfds of existing peers, in id order");
            assert!(fd.is_some());
        }
    }
    for _ in 0..vectors {
        let (v, fd) = recv(&c);
        assert_eq!(v, id, "own eventfds");
        assert!(fd.is_some());
    }
    (c, id)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn fd_list() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn join_announce_leave_and_rejoin() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, sock, stop, handle) = start("proto");
    let (a, ida) = join(&sock, &[]);
    let (b, idb) = join(&sock, &[ida]);
    // a learns about b: one message per vector with b's id and an eventfd.
    for _ in 0..VECTORS {
        let (v, fd) = recv(&a);
        assert_eq!(v, idb);
        assert!(fd.is_some());
    }
    let (c, idc) = join(&sock, &[ida, idb]);
    assert_eq!(server.peer_ids().len(), 3);
    for s in [&a, &b] {
        for _ in 0..VECTORS {
            assert_eq!(recv(s).0, idc);
        }
    }
    // b leaves: a and c are told, with no fd.
    drop(b);
    for s in [&a, &c] {
        let (v, fd) = recv(s);
        assert_eq!((v, fd.is_none()), (idb, true));
    }
    wait_for("two peers", || server.peer_ids().len() == 2);
    // A newcomer gets a fresh id, not b's.
    let (d, idd) = join(&sock, &[ida, idc]);
    assert!(idd != idb && idd != ida && idd != idc);
    drop((a, c, d));
    wait_for("no peers", || server.peer_ids().is_empty());
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

#[test]
fn bad_clients_do_not_hurt_and_nothing_leaks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, sock, stop, handle) = start("bad");
    let (good, idg) = join(&sock, &[]);
    // The server registers a peer (and clones its socket) after greeting it: count after that.
    wait_for("the good peer registered", || {
        server.peer_ids() == vec![idg as u16]
    });
    let before = open_fds();
    let before_list = fd_list();
    for _ in 0..20 {
        // Connects and hangs up at once, or writes garbage and hangs up.
        let c = UnixStream::connect(&sock).unwrap();
        use std::io::Write;
        let _ = (&c).write_all(b"garbage that QEMU would never send");
        drop(c);
    }
    // The good peer hears of each departed newcomer (join + leave), and keeps working.
    let mut departed = Vec::new();
    while departed.len() < 20 {
        match recv(&good) {
            (id, None) => departed.push(id),
            (id, Some(_)) => assert!(!departed.contains(&id), "join of {id} after it left"),
        }
    }
    assert_eq!(server.peer_ids(), vec![idg as u16]);
    let (late, _) = join(&sock, &[idg]);
    drop(late);
    wait_for("only the good peer", || {
        server.peer_ids() == vec![idg as u16]
    });
    // Drain what `good` was sent; the server is fine and has no leaked descriptors.
    good.set_nonblocking(true).unwrap();
    while let Ok(Some(_)) = recv_msg(&good) {}
    let t = Instant::now();
    while open_fds() > before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "descriptors: {before_list:?} before, {:?} now",
            fd_list()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

/// Reads `n` join messages (peer `id` with an eventfd) from `c`.
fn expect_joins(c: &UnixStream, id: i64, n: u32) {
    for _ in 0..n {
        let (v, fd) = recv(c);
        assert_eq!((v, fd.is_some()), (id, true), "join of peer {id}");
    }
}

/// Reads the departure of peer `id` (its id with no fd) from `c`, waiting up to 10 s.
fn expect_departure(c: &UnixStream, id: i64) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match recv_msg(c) {
        Ok(Some((v, fd))) => assert_eq!((v, fd.is_none()), (id, true), "departure of {id}"),
        Ok(None) => panic!("server hung up instead of announcing that peer {id} left"),
        Err(e) => panic!("never told that peer {id} left: {e}"),
    }
}

/// Reads what the server queued on `c` and then its end of stream, as a client it dropped does.
fn expect_hangup(c: &UnixStream) -> Vec<i64> {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    loop {
        match recv_msg(c) {
            Ok(Some((v, _))) => got.push(v),
            Ok(None) => return got,
            Err(e) => panic!("the server keeps the connection open after {got:?}: {e}"),
        }
    }
}

/// Bytes waiting unread in `c`'s receive queue (FIONREAD).
fn unread_bytes(c: &UnixStream) -> usize {
    ivshmem::os::bytes_to_read(c.as_fd()).expect("FIONREAD")
}

/// A newcomer that never reads its greeting is dropped, and the peers it was announced to are
/// told it left: none of them keeps a peer that does not exist.
#[test]
fn stalled_newcomer_is_announced_as_departed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server, sock, stop, handle) = start_with("stalled-new", MANY, Duration::from_millis(300));
    let mut peers: Vec<(UnixStream, i64)> = Vec::new();
    for _ in 0..8 {
        let ids: Vec<i64> = peers.iter().map(|p| p.1).collect();
        let (c, id) = join_with(&sock, &ids, MANY, Duration::from_secs(5));
        for (p, _) in &peers {
            expect_joins(p, id, MANY);
        }
        peers.push((c, id));
    }
    // Its greeting (3 + 9 * 64 messages) does not fit in the socket: the server must give up.
    let newcomer = UnixStream::connect(&sock).unwrap();
    let (first, _) = recv(&peers[0].0);
    assert!(peers.iter().all(|p| p.1 != first), "a new id");
    expect_joins(&peers[0].0, first, MANY - 1);
    for (p, _) in &peers[1..] {
        expect_joins(p, first, MANY);
    }
    for (p, _) in &peers {
        expect_departure(p, first);
    }
    let ids: Vec<u16> = peers.iter().map(|p| p.1 as u16).collect();
    wait_for("only the readers", || server.peer_ids() == ids);
    let got = expect_hangup(&newcomer);
    assert_eq!(got[..3], [0, first, -1], "the greeting it never read");
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

/// A client that stops reading delays nobody: with its socket full, others join and leave at
/// once, not after the server's write timeout.
#[test]
fn stalled_client_does_not_delay_joins_or_leaves() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = Duration::from_secs(20);
    let prompt = timeout / 4;
    let (server, sock, stop, handle) = start_with("stalled-old", MANY, timeout);
    let stalled = UnixStream::connect(&sock).unwrap();
    wait_for("the stalled client registered", || {
        server.peer_ids().len() == 1
    });
    let sid = i64::from(server.peer_ids()[0]);
    let (good, gid) = join_with(&sock, &[sid], MANY, 2 * timeout);
    // The stalled client is owed its greeting and the good peer's join so far.
    let mut owed = 3 + 2 * MANY as usize;
    let mut slowest = Duration::ZERO;
    let mut cycle = |what: &str| {
        let t = Instant::now();
        let (h, hid) = join_with(&sock, &[sid, gid], MANY, 2 * timeout);
        let joined = t.elapsed();
        assert!(
            joined < prompt,
            "{what}: join took {joined:?} with a {timeout:?} write timeout"
        );
        expect_joins(&good, hid, MANY);
        let t = Instant::now();
        drop(h);
        expect_departure(&good, hid);
        let left = t.elapsed();
        owed += MANY as usize + 1;
        eprintln!("{what}: join {joined:?}, leave {left:?}");
        assert!(
            left < prompt,
            "{what}: leave took {left:?} with a {timeout:?} write timeout"
        );
        slowest = slowest.max(joined).max(left);
    };
    for _ in 0..4 {
        cycle("filling the stalled socket");
    }
    // The stalled socket is full: it holds less than it is owed, and no more arrives.
    let mut unread = unread_bytes(&stalled);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = unread_bytes(&stalled);
        if now == unread {
            break;
        }
        unread = now;
    }
    cycle("with the stalled socket full");
    assert!(unread < 8 * owed, "{unread} bytes unread of {}", 8 * owed);
    assert_eq!(unread_bytes(&stalled), unread, "the socket stayed full");
    eprintln!("slowest join or leave: {slowest:?}");
    assert!(
        server.peer_ids().contains(&(sid as u16)),
        "not yet timed out"
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

/// Stopping the server hangs up on every client, stalled ones included, and no descriptor of
/// the server (sockets, eventfds, queued fds, the shared memory) outlives it.
#[test]
fn stop_hangs_up_and_nothing_leaks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = open_fds();
    let before_list = fd_list();
    let (server, sock, stop, handle) = start_with("stop", MANY, Duration::from_millis(300));
    let (a, ida) = join_with(&sock, &[], MANY, Duration::from_secs(5));
    // A client that never reads is dropped once its socket is full.
    let stalled = UnixStream::connect(&sock).unwrap();
    let (sid, _) = recv(&a);
    expect_joins(&a, sid, MANY - 1);
    let t = Instant::now();
    let mut dropped = false;
    while !dropped {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "stalled client never dropped"
        );
        // h takes its whole greeting (the stalled client may or may not be in it yet).
        let (h, hid) = {
            let c = UnixStream::connect(&sock).unwrap();
            assert_eq!(recv(&c).0, 0);
            let (hid, _) = recv(&c);
            let mut own = 0;
            while own < MANY {
                own += u32::from(recv(&c).0 == hid);
            }
            (c, hid)
        };
        drop(h);
        // a hears of h (join, leave), and of the stalled client's departure somewhere between.
        let mut seen_h_leave = false;
        while !seen_h_leave {
            let (v, fd) = recv(&a);
            match (v, fd.is_some()) {
                (v, true) if v == hid => {}
                (v, false) if v == hid => seen_h_leave = true,
                (v, false) if v == sid => dropped = true,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
    drop(stalled);
    // Another client that never reads, its greeting (eventfds included) queued in its socket.
    let unread = UnixStream::connect(&sock).unwrap();
    let (tid, _) = recv(&a);
    expect_joins(&a, tid, MANY - 1);
    let greeting = 3 + 2 * MANY as usize;
    wait_for("its greeting delivered", || {
        unread_bytes(&unread) == 8 * greeting
    });
    assert_eq!(server.peer_ids(), [ida as u16, tid as u16]);
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert_eq!(expect_hangup(&a), Vec::<i64>::new());
    let got = expect_hangup(&unread);
    assert_eq!(
        got.len(),
        greeting,
        "version, id, memory, a's and own eventfds"
    );
    drop((a, unread, server));
    assert_eq!(
        open_fds(),
        before,
        "descriptors: {before_list:?} before, {:?} after",
        fd_list()
    );
}
