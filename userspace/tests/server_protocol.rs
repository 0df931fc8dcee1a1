//! The ivshmem server speaks QEMU's protocol: checked with fake QEMU clients on a real socket.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::server::{recv_msg, Server};

const VECTORS: u32 = 3;

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
    let server = Server::new(shm, VECTORS, false).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (server.clone(), stop.clone());
    let handle = std::thread::spawn(move || s.serve(listener, &st).unwrap());
    (server, sock.to_string_lossy().into_owned(), stop, handle)
}

fn recv(c: &UnixStream) -> (i64, Option<OwnedFd>) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    recv_msg(c).unwrap().expect("server closed the connection")
}

/// Connects like QEMU and checks the greeting; returns the stream and the peer id.
fn join(sock: &str, others: &[i64]) -> (UnixStream, i64) {
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
        for _ in 0..VECTORS {
            let (v, fd) = recv(&c);
            assert_eq!(v, other, "eventfds of existing peers, in id order");
            assert!(fd.is_some());
        }
    }
    for _ in 0..VECTORS {
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
    wait_for("only the good peer", || {
        server.peer_ids() == vec![idg as u16]
    });
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
