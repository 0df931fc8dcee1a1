//! The isolated topology on the host: each end maps its own file read-write and its peer's
//! read-only (`Region::map_pair`), so every store the library makes into the peer's memory
//! would kill the process with SIGSEGV. Named channels, connections, reclamation and a killed
//! peer, between threads and between processes (this binary runs itself as the other process,
//! `child_entry` with `PAIR_CHILD` set). Every wait is bounded.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ivshmem::channel::{usage, Channel, Kind, Listener, Options, Region};

fn opts() -> Options {
    Options::new()
        .capacity(4096)
        .liveness_timeout(Duration::from_millis(300))
        .open_timeout(Duration::from_secs(20))
}

/// The bytes of stream `seed` at `pos..pos + len` (the crate's reproducible pattern).
fn pattern(seed: u64, pos: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ivshmem::pattern::fill(seed, pos, &mut v);
    v
}

/// Two zeroed files of `len` bytes in /dev/shm (removed when the test ends).
struct Files([PathBuf; 2]);

impl Files {
    fn new(tag: &str, len: u64) -> Self {
        let paths = ["a", "b"].map(|s| {
            let p = PathBuf::from(format!(
                "/dev/shm/ivshmem-pair-{tag}-{s}-{}",
                std::process::id()
            ));
            File::create(&p).unwrap().set_len(len).unwrap();
            p
        });
        Self(paths)
    }

    /// The region of side `i`: its own file read-write, the other read-only.
    fn side(&self, i: usize) -> Region {
        pair(&self.0[i], &self.0[1 - i])
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn pair(own: &Path, peer: &Path) -> Region {
    let own = OpenOptions::new().read(true).write(true).open(own).unwrap();
    let peer = File::open(peer).unwrap();
    Region::map_pair(&own, &peer).unwrap()
}

/// Writes `len` bytes of `seed` in chunks and closes.
fn send_all(c: &mut Channel, seed: u64, len: usize) -> io::Result<()> {
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(3001);
        c.write_all(&pattern(seed, pos as u64, n))?;
        pos += n;
    }
    c.close_write()
}

/// Reads to the end and checks every byte against `seed`.
fn recv_exact(c: &mut Channel, seed: u64, len: usize) -> io::Result<()> {
    let mut got = Vec::new();
    c.read_to_end(&mut got)?;
    assert_eq!(got.len(), len, "length");
    assert!(got == pattern(seed, 0, len), "bytes differ");
    Ok(())
}

#[test]
fn a_named_channel_across_a_pair_is_exact_both_ways_either_side_first() {
    let f = Files::new("named", 1 << 20);
    for first in 0..2 {
        let name = format!("p{first}");
        let (r0, r1) = (f.side(first), f.side(1 - first));
        let mut a = Channel::open(&r0, &name, &opts()).unwrap();
        let t = std::thread::spawn(move || {
            let mut b = Channel::open(&r1, &name, &opts()).unwrap();
            recv_exact(&mut b, 1, 1 << 20).unwrap();
            send_all(&mut b, 2, 1 << 20).unwrap();
        });
        send_all(&mut a, 1, 1 << 20).unwrap();
        recv_exact(&mut a, 2, 1 << 20).unwrap();
        drop(a);
        t.join().unwrap();
    }
    // Every block was freed by its own side: by the last end to leave, or, for an end that
    // left while its peer was still there, by the next open on its side (which sweeps).
    for i in 0..2 {
        drop(Channel::open(&f.side(i), "q", &opts()).unwrap());
        let u = usage(&f.side(i)).unwrap();
        assert_eq!(u.pages_used, 0, "side {i}: {u:?}");
    }
}

#[test]
fn connections_across_a_pair_carry_exact_bytes_and_leave_nothing_behind() {
    let f = Files::new("conn", 1 << 20);
    let (server, client) = (f.side(0), f.side(1));
    let listener = Listener::bind(&server, "echo", &opts()).unwrap();
    let n = 8;
    let srv = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..n {
            let mut c = listener.accept().unwrap();
            workers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 1500];
                loop {
                    let k = c.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    c.write_all(&buf[..k]).unwrap();
                }
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    let clients: Vec<_> = (0..n as u64)
        .map(|seed| {
            let r = client.clone();
            std::thread::spawn(move || {
                let mut c = Channel::connect(&r, "echo", &opts()).unwrap();
                let data = pattern(seed, 0, 64 << 10);
                let mut back = vec![0u8; data.len()];
                // Write and read in turns: the echo's ring is 4 KiB.
                for (w, r) in data.chunks(1024).zip(back.chunks_mut(1024)) {
                    c.write_all(w).unwrap();
                    c.read_exact(r).unwrap();
                }
                assert!(back == data, "connection {seed}: bytes differ");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    srv.join().unwrap();
    // A listener on the client's side is another service: connects from the server's side
    // find it, not the server's own.
    assert_eq!(
        Channel::connect(&server, "echo", &opts())
            .unwrap_err()
            .kind(),
        io::ErrorKind::ConnectionRefused,
        "the server's side finds no listener of 'echo' on the client's side"
    );
    // Each side freed its own blocks (the listener's went with it); whatever an end left
    // when its peer was still there is swept by its own side.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used: Vec<u32> = (0..2)
            .map(|i| usage(&f.side(i)).unwrap().pages_used)
            .collect();
        if used == [0, 0] {
            break;
        }
        assert!(Instant::now() < deadline, "pages left: {used:?}");
        // A bind sweeps (its allocation does when the region is full; a listener's accept
        // does every tenth of its bound).
        for i in 0..2 {
            let mut l = Listener::bind(&f.side(i), "sweeper", &opts()).unwrap();
            l.set_nonblocking(true);
            std::thread::sleep(Duration::from_millis(40));
            let _ = l.accept();
        }
    }
}

#[test]
fn a_small_pair_serves_thousands_of_connections() {
    let f = Files::new("many", 256 << 10);
    let (server, client) = (f.side(0), f.side(1));
    let listener = Listener::bind(&server, "s", &opts()).unwrap();
    let srv = std::thread::spawn(move || {
        for _ in 0..2000 {
            let mut c = listener.accept().unwrap();
            let mut b = [0u8; 8];
            c.read_exact(&mut b).unwrap();
            c.write_all(&b).unwrap();
        }
    });
    for i in 0u64..2000 {
        let mut c = Channel::connect(&client, "s", &opts()).unwrap();
        c.write_all(&i.to_le_bytes()).unwrap();
        let mut b = [0u8; 8];
        c.read_exact(&mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), i);
    }
    srv.join().unwrap();
}

#[test]
fn wrong_topologies_are_clear_errors() {
    let f = Files::new("wrong", 1 << 20);
    let own = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.0[0])
        .unwrap();
    let e = Region::map_pair(&own, &File::open(&f.0[0]).unwrap()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("own"), "{e}");
    // An own file opened read-only cannot be mapped for writing.
    let e =
        Region::map_pair(&File::open(&f.0[0]).unwrap(), &File::open(&f.0[1]).unwrap()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    // A peer part that is not a channel layout is refused, and left alone.
    OpenOptions::new()
        .write(true)
        .open(&f.0[1])
        .unwrap()
        .write_all(b"not a layout")
        .unwrap();
    let e = Channel::open(&f.side(0), "x", &opts()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("peer"), "{e}");
}

/// The child side: `PAIR_CHILD=own,peer,role` with role `write` (sends 4 MiB of seed 7 on
/// channel "k", then waits to be killed) or `spin` (opens "k" and writes for ever).
#[test]
fn child_entry() {
    let Ok(arg) = std::env::var("PAIR_CHILD") else {
        return;
    };
    let v: Vec<&str> = arg.split(',').collect();
    let r = pair(Path::new(v[0]), Path::new(v[1]));
    let mut c = Channel::open(&r, "k", &opts()).unwrap();
    println!("ready");
    match v[2] {
        "write" => {
            send_all(&mut c, 7, 4 << 20).unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => loop {
            let _ = c.write_all(&[1; 512]);
        },
    }
}

fn child(f: &Files, role: &str) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(
            "PAIR_CHILD",
            format!("{},{},{role}", f.0[1].display(), f.0[0].display()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"ready\n") {
        assert_eq!(
            out.read(&mut b).unwrap(),
            1,
            "child ended before it was ready"
        );
        line.push(b[0]);
    }
    c
}

#[test]
fn two_processes_on_a_pair_are_exact_and_a_killed_one_is_detected() {
    let f = Files::new("procs", 1 << 20);
    let mut writer = child(&f, "write");
    let mut c = Channel::open(&f.side(0), "k", &opts()).unwrap();
    let mut got = vec![0u8; 4 << 20];
    c.read_exact(&mut got).unwrap();
    assert!(got == pattern(7, 0, 4 << 20), "bytes differ");
    let mut b = [0u8; 1];
    assert_eq!(
        c.read(&mut b).unwrap(),
        0,
        "end of stream after close_write"
    );
    writer.kill().unwrap();
    writer.wait().unwrap();
    drop(c);

    // A writer killed mid-stream: the reader gets BrokenPipe within the bound.
    let mut spinner = child(&f, "spin");
    let mut c = Channel::open(&f.side(0), "k", &opts()).unwrap();
    let mut buf = vec![0u8; 4096];
    c.read_exact(&mut buf).unwrap();
    spinner.kill().unwrap();
    spinner.wait().unwrap();
    let killed = Instant::now();
    let e = loop {
        match c.read(&mut buf) {
            Ok(0) => panic!("end of stream from a killed writer"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn messages_across_a_pair_keep_boundaries() {
    let f = Files::new("msg", 1 << 20);
    let o = opts().kind(Kind::Messages);
    let mut a = Channel::open(&f.side(0), "m", &o).unwrap();
    let r1 = f.side(1);
    let t = std::thread::spawn(move || {
        let mut b = Channel::open(&r1, "m", &o).unwrap();
        let mut m = Vec::new();
        for i in 0..1000usize {
            assert_eq!(b.recv(&mut m).unwrap(), Some(i % 300));
            assert_eq!(m, pattern(i as u64, 0, i % 300));
        }
    });
    for i in 0..1000usize {
        a.send(&pattern(i as u64, 0, i % 300)).unwrap();
    }
    t.join().unwrap();
}

/// An opener that closed with bytes its joiner then read is not joinable again once the
/// joiner left: nobody gets those bytes twice (on a pair the joiner cannot free the opener's
/// block, which stays until the opener's side sweeps it).
#[test]
fn bytes_a_joiner_read_are_never_handed_out_again() {
    let f = Files::new("twice", 1 << 20);
    for round in 0..3 {
        let mut a = Channel::open(&f.side(0), "s", &opts()).unwrap();
        a.write_all(b"one").unwrap();
        let mut b = Channel::open(&f.side(1), "s", &opts()).unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one");
        drop(a);
        drop(b);
        let e = Channel::open(&f.side(1), "s", &opts().create(false)).map(|_| ());
        assert_eq!(
            e.unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "round {round}: a new end joined the closed opener whose bytes were read"
        );
    }
}

/// One session after another on one name, as a benchmark's phases: the listening side opens,
/// reads to the end and answers, the driving side opens, writes, closes and reads the answer;
/// every session pairs the two new ends, never an end of an earlier one.
#[test]
fn sessions_one_after_another_on_one_name_pair_afresh() {
    let f = Files::new("phases", 1 << 20);
    let (ra, rb) = (f.side(0), f.side(1));
    let n = 300u32;
    let listener = std::thread::spawn(move || {
        for i in 0..n {
            let mut c = Channel::open(&ra, "s", &opts()).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, i.to_le_bytes().repeat(100), "session {i}");
            c.write_all(&i.to_le_bytes()).unwrap();
        }
    });
    for i in 0..n {
        let mut c = Channel::open(&rb, "s", &opts()).unwrap();
        c.write_all(&i.to_le_bytes().repeat(100))
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        c.close_write().unwrap();
        let mut ack = [0u8; 4];
        c.read_exact(&mut ack)
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        assert_eq!(u32::from_le_bytes(ack), i);
    }
    listener.join().unwrap();
}
