//! `ivshmem-socket` between two processes on a file standing in for the shared memory: TCP and
//! UNIX sockets of ordinary programs (here: this test's threads) carried exact both ways, many
//! connections at once, half-closes, a refused service, a killed server side.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET: &str = env!("CARGO_BIN_EXE_ivshmem-socket");

/// A zeroed 8 MiB file in /dev/shm, removed on drop.
struct Shm(PathBuf);

impl Shm {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/dev/shm/ivshmem-socket-test-{tag}-{}",
            std::process::id()
        ));
        File::create(&p).unwrap().set_len(8 << 20).unwrap();
        Self(p)
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A child killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(shm: &Path, args: &[&str]) -> Proc {
    Proc(
        Command::new(SOCKET)
            .args(args)
            .arg("-d")
            .arg(shm)
            .args(["--liveness", "0.5"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ivshmem::pattern::fill(seed, 0, &mut v);
    v
}

/// A TCP echo server on a free port, one thread per connection; its address.
fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                // Half-close seen: answer the end of stream with one.
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Connects to `addr` until it accepts (the tool is starting).
fn dial(addr: &str) -> TcpStream {
    let t = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(_) if t.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{addr}: {e}"),
        }
    }
}

/// Sends `len` bytes of `seed` through `s`, half-closes, and checks the echo.
fn round_trip<S: Read + Write + Send + TryCloneStream + 'static>(
    mut s: S,
    shut: impl FnOnce(&S) + Send + 'static,
    seed: u64,
    len: usize,
) {
    let mut w = s.clone_stream();
    let writer = std::thread::spawn(move || {
        w.write_all(&data(seed, len)).unwrap();
        shut(&w);
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), len, "connection {seed}");
    assert!(got == data(seed, len), "connection {seed}: bytes differ");
}

trait TryCloneStream: Sized {
    fn clone_stream(&self) -> Self;
}

impl TryCloneStream for TcpStream {
    fn clone_stream(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl TryCloneStream for UnixStream {
    fn clone_stream(&self) -> Self {
        self.try_clone().unwrap()
    }
}

#[test]
fn tcp_connections_are_carried_exact_both_ways() {
    let shm = Shm::new("tcp");
    let target = echo_server();
    let local = free_port();
    let _server = tool(
        &shm.0,
        &["serve", "--service", "echo", "--connect", &target],
    );
    let _client = tool(
        &shm.0,
        &["forward", "--listen", &local, "--service", "echo"],
    );
    let first = dial(&local);
    round_trip(first, |s| s.shutdown(Shutdown::Write).unwrap(), 0, 3 << 20);
    let many: Vec<_> = (1..=8u64)
        .map(|i| {
            let local = local.clone();
            std::thread::spawn(move || {
                let s = dial(&local);
                round_trip(
                    s,
                    |s| s.shutdown(Shutdown::Write).unwrap(),
                    i,
                    100_000 * i as usize,
                );
            })
        })
        .collect();
    for t in many {
        t.join().unwrap();
    }
    // More short connections than the region (8 MiB, 256 KiB rings) holds at a time: 15.
    for i in 0..200u64 {
        let s = dial(&local);
        round_trip(s, |s| s.shutdown(Shutdown::Write).unwrap(), 100 + i, 1000);
    }
    // Both tools let go of every connection's block (the last may still be closing).
    let t = Instant::now();
    loop {
        let u = ivshmem::channel::usage(&region(&shm.0)).unwrap();
        assert_eq!(u.listeners, ["echo"], "{u:?}");
        if u.ends == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{u:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn region(p: &Path) -> ivshmem::channel::Region {
    let f = File::options().read(true).write(true).open(p).unwrap();
    ivshmem::channel::Region::map_file(&f).unwrap()
}

#[test]
fn unix_sockets_on_either_side() {
    let shm = Shm::new("unix");
    let dir = std::env::temp_dir().join(format!("socket-tool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("target.sock");
    let local = dir.join("local.sock");
    let l = std::os::unix::net::UnixListener::bind(&target).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all.reverse();
            s.write_all(&all).unwrap();
        }
    });
    let t = format!("unix:{}", target.display());
    let c = format!("unix:{}", local.display());
    let _server = tool(&shm.0, &["serve", "--service", "rev", "--connect", &t]);
    let _client = tool(&shm.0, &["forward", "--listen", &c, "--service", "rev"]);
    let start = Instant::now();
    let mut s = loop {
        match UnixStream::connect(&local) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    };
    let msg = data(9, 500_000);
    s.write_all(&msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let mut want = msg;
    want.reverse();
    assert!(got == want, "{} bytes back", got.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_server_side_is_a_closed_connection_and_a_killed_one_cuts_it() {
    let shm = Shm::new("refused");
    let local = free_port();
    let _client = tool(
        &shm.0,
        &["forward", "--listen", &local, "--service", "echo"],
    );
    // Nobody serves 'echo' yet: the local connection is closed at once.
    let mut s = dial(&local);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
    let target = echo_server();
    let mut server = tool(
        &shm.0,
        &["serve", "--service", "echo", "--connect", &target],
    );
    let t = Instant::now();
    let mut s = loop {
        let mut s = dial(&local);
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        if s.read(&mut b).unwrap_or(0) == 1 {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server side never served"
        );
    };
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    // Its death reaches the local program as a cut connection (reset or end of stream)
    // within the liveness bound.
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cut after {:?}: {r:?}",
        t.elapsed()
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["bogus"][..],
        &["serve", "--service", "svc"],
        &["serve", "--connect", "tcp:127.0.0.1:1"],
        &["serve", "--service", "svc", "--listen", "tcp:127.0.0.1:1"],
        &["forward", "--service", "svc", "--listen", "nowhere"],
        &["forward", "--service", "", "--listen", "tcp:127.0.0.1:1"],
        &["forward", "--service", "svc", "--listen", "unix:"],
        &[
            "serve",
            "--service",
            "svc",
            "--connect",
            "127.0.0.1:1",
            "--capacity",
            "1000",
        ],
        &[
            "serve",
            "--service",
            "svc",
            "--connect",
            "127.0.0.1:1",
            "extra",
        ],
    ] {
        let out = Command::new(SOCKET).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    // A region an older ivshmem-rs laid out (layout version 1: magic "IVCH", version 1).
    let shm = Shm::new("v1");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&shm.0)
            .unwrap();
        f.write_all_at(b"IVCH\x01\0\0\0", 0).unwrap();
    }
    let out = Command::new(SOCKET)
        .args([
            "serve",
            "--service",
            "svc",
            "--connect",
            "tcp:127.0.0.1:1",
            "-d",
        ])
        .arg(&shm.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("layout version 1"), "{err}");
}

/// The isolated topology: the serving side writes only its file, the forwarding side only
/// its own, each mapping the other's read-only.
#[test]
fn connections_across_a_pair_are_carried_exact() {
    let (a, b) = (Shm::new("pair-a"), Shm::new("pair-b"));
    let target = echo_server();
    let local = free_port();
    let peer_b = b.0.to_str().unwrap();
    let peer_a = a.0.to_str().unwrap();
    let _server = tool(
        &a.0,
        &[
            "serve",
            "--service",
            "echo",
            "--connect",
            &target,
            "--peer-device",
            peer_b,
        ],
    );
    let _client = tool(
        &b.0,
        &[
            "forward",
            "--listen",
            &local,
            "--service",
            "echo",
            "--peer-device",
            peer_a,
        ],
    );
    // Connections made before the serving side listens are refused (and cut): wait for it.
    let t = Instant::now();
    while !ivshmem::channel::is_connections(&region(&a.0))
        || ivshmem::channel::usage(&region(&a.0)).unwrap().listeners != ["echo"]
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the serving side never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let many: Vec<_> = (1..=4u64)
        .map(|i| {
            let local = local.clone();
            std::thread::spawn(move || {
                let s = dial(&local);
                round_trip(s, |s| s.shutdown(Shutdown::Write).unwrap(), i, 500_000);
            })
        })
        .collect();
    for t in many {
        t.join().unwrap();
    }
    for i in 0..100u64 {
        let s = dial(&local);
        round_trip(s, |s| s.shutdown(Shutdown::Write).unwrap(), 100 + i, 1000);
    }
    // The serving side's listener sweeps its own memory: every accepted end's block goes.
    let t = Instant::now();
    loop {
        let u = ivshmem::channel::usage(&region(&a.0)).unwrap();
        assert_eq!(u.listeners, ["echo"], "{u:?}");
        if u.ends == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{u:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The forwarding side frees its ends when it connects again: one may wait for that.
    let u = ivshmem::channel::usage(&region(&b.0)).unwrap();
    assert!(u.ends <= 1 && u.listeners.is_empty(), "{u:?}");
}
