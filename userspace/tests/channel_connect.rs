//! Connections (layout version 2): `Listener::bind`/`accept` and `Channel::connect`, in one
//! process and between processes on one file (this binary runs itself as the other process,
//! `child_entry` with `CONNECT_CHILD` set). Every wait is bounded.

use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ivshmem::channel::{self, Channel, ChannelError, Kind, Listener, Options, Region};

fn opts() -> Options {
    Options::new()
        .capacity(4096)
        .liveness_timeout(Duration::from_millis(300))
        .open_timeout(Duration::from_secs(20))
}

fn kind_of(e: &ChannelError) -> io::ErrorKind {
    e.kind()
}

/// The bytes of stream `seed` at `pos..pos + len`.
fn pattern(seed: u64, pos: u64, len: usize) -> Vec<u8> {
    (pos..pos + len as u64)
        .map(|p| {
            let mut z = seed ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            (z >> 29) as u8
        })
        .collect()
}

/// A server thread: accepts `n` connections, each echoed by a thread of its own.
fn echo_server(listener: Listener, n: usize) -> std::thread::JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..n {
            let mut c = listener.accept()?;
            workers.push(std::thread::spawn(move || -> io::Result<()> {
                let mut buf = vec![0u8; 1500];
                loop {
                    let k = c.read(&mut buf)?;
                    if k == 0 {
                        return Ok(());
                    }
                    c.write_all(&buf[..k])?;
                }
            }));
        }
        for w in workers {
            w.join().unwrap()?;
        }
        Ok(())
    })
}

/// Writes `len` bytes of `seed` on a connection and checks that they come back exact.
fn echo_client(region: &Region, service: &str, seed: u64, len: usize) -> io::Result<()> {
    let c = Channel::connect(region, service, &opts())?;
    let (mut w, mut r) = c.split();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        let mut pos = 0;
        while pos < len {
            let k = 1000.min(len - pos);
            w.write_all(&pattern(seed, pos as u64, k))?;
            pos += k;
        }
        w.close_write()
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got)?;
    writer.join().unwrap()?;
    assert_eq!(got.len(), len, "connection {seed}: length");
    assert!(
        got == pattern(seed, 0, len),
        "connection {seed}: bytes differ"
    );
    Ok(())
}

#[test]
fn concurrent_connections_to_two_services_carry_exact_bytes() {
    let region = Region::anonymous(4 << 20).unwrap();
    let a = Listener::bind(&region, "alpha", &opts()).unwrap();
    let b = Listener::bind(&region, "beta", &opts()).unwrap();
    let servers = [echo_server(a, 6), echo_server(b, 6)];
    let clients: Vec<_> = (0..12u64)
        .map(|i| {
            let region = region.clone();
            std::thread::spawn(move || {
                let service = if i % 2 == 0 { "alpha" } else { "beta" };
                echo_client(&region, service, i, 200_000 + 7 * i as usize)
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap().unwrap();
    }
    for s in servers {
        s.join().unwrap().unwrap();
    }
    let u = channel::usage(&region).unwrap();
    assert_eq!(u.ends, 0, "every connection's block was freed: {u:?}");
    assert!(u.listeners.is_empty(), "{u:?}");
    assert_eq!(u.pages_used, 0, "{u:?}");
}

#[test]
fn a_small_region_serves_thousands_of_connections() {
    // Room for the listener and three connections of two 2-page blocks at a time.
    let region = Region::anonymous(0x1000 + 0x1000 + 13 * 4096).unwrap();
    let listener = Listener::bind(&region, "svc", &opts()).unwrap();
    let n = 3000;
    let server = echo_server(listener, n);
    for i in 0..n as u64 {
        echo_client(&region, "svc", i, 100 + (i as usize % 3000)).unwrap();
    }
    server.join().unwrap().unwrap();
    assert_eq!(channel::usage(&region).unwrap().pages_used, 0);
}

#[test]
fn ten_thousand_connections_open_and_close_on_one_4_mib_region() {
    // Four clients at a time, each connection carrying one small message each way.
    let region = Region::anonymous(4 << 20).unwrap();
    let o = opts().kind(Kind::Messages);
    let l = Listener::bind(&region, "svc", &o).unwrap();
    let n = 10_000;
    let server = std::thread::spawn(move || -> io::Result<()> {
        for _ in 0..n {
            let mut c = l.accept()?;
            let mut m = Vec::new();
            c.recv(&mut m)?;
            c.send(&m)?;
        }
        Ok(())
    });
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let region = region.clone();
            let o = o.clone();
            std::thread::spawn(move || -> io::Result<()> {
                for i in 0..n as u64 / 4 {
                    let mut c = Channel::connect(&region, "svc", &o)?;
                    let msg = (t << 32 | i).to_le_bytes();
                    c.send(&msg)?;
                    let mut back = Vec::new();
                    assert_eq!(c.recv(&mut back)?, Some(8));
                    assert_eq!(back, msg, "client {t}, connection {i}");
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap().unwrap();
    }
    server.join().unwrap().unwrap();
    assert_eq!(channel::usage(&region).unwrap().pages_used, 0);
}

#[test]
fn messages_services_keep_boundaries() {
    let region = Region::anonymous(1 << 20).unwrap();
    let o = opts().kind(Kind::Messages);
    let l = Listener::bind(&region, "rpc", &o).unwrap();
    let client = std::thread::spawn({
        let region = region.clone();
        let o = o.clone();
        move || -> io::Result<Vec<Vec<u8>>> {
            let mut c = Channel::connect(&region, "rpc", &o)?;
            let mut got = Vec::new();
            for i in 0..100u64 {
                c.send(&pattern(i, 0, i as usize * 13))?;
                let mut m = Vec::new();
                c.recv(&mut m)?;
                got.push(m);
            }
            Ok(got)
        }
    });
    let mut s = l.accept().unwrap();
    let mut m = Vec::new();
    while let Some(n) = s.recv(&mut m).unwrap() {
        assert_eq!(m.len(), n);
        m.reverse();
        s.send(&m).unwrap();
    }
    for (i, m) in client.join().unwrap().unwrap().into_iter().enumerate() {
        let mut want = pattern(i as u64, 0, i * 13);
        want.reverse();
        assert_eq!(m, want, "message {i}");
    }
}

/// Writes a header of layout version 1 (named channels of an older ivshmem-rs: magic "IVCH",
/// version 1, ring space at 0x3000, 64 slots of 128 bytes, the region size, the allocation
/// pointer) into the zeroed region `r`, as such a library left it.
fn write_v1_header(r: &Region) {
    let mut h = Vec::new();
    h.extend_from_slice(b"IVCH");
    for v in [1u32, 0x3000, 64, 128, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h.extend_from_slice(&(r.len() as u64).to_le_bytes());
    h.extend_from_slice(&0x3000u64.to_le_bytes());
    assert!(h.len() <= r.len());
    // SAFETY: `h` fits in the region (asserted), which nothing else uses yet.
    unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), r.as_ptr(), h.len()) };
}

#[test]
fn refusals_and_wrong_layouts_are_clear_errors() {
    let region = Region::anonymous(1 << 20).unwrap();
    let e = Channel::connect(&region, "nobody", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::ConnectionRefused, "{e}");
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    let e = Listener::bind(&region, "svc", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::AddrInUse, "{e}");
    let e = Channel::connect(&region, "svc", &opts().kind(Kind::Messages)).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::InvalidInput, "{e}");
    let e = Channel::connect(&region, "svc", &opts().capacity(1000)).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::InvalidInput, "{e}");
    for bad in ["", "this service name is longer than 32 bytes"] {
        let e = Listener::bind(&region, bad, &opts()).unwrap_err();
        assert_eq!(kind_of(&e), io::ErrorKind::InvalidInput, "{e}");
    }
    // Named channels and connections share one region (layout version 2 for both): a pipe
    // beside the listener, and a connection beside the pipe, each carrying its own bytes.
    let mut p = Channel::open(&region, "pipe", &opts()).unwrap();
    let mut q = Channel::open(&region, "pipe", &opts()).unwrap();
    let client = std::thread::spawn({
        let region = region.clone();
        move || -> io::Result<Vec<u8>> {
            let mut c = Channel::connect(&region, "svc", &opts())?;
            c.write_all(b"to the service")?;
            c.close_write()?;
            let mut back = Vec::new();
            c.read_to_end(&mut back)?;
            Ok(back)
        }
    });
    let mut s = l.accept().unwrap();
    p.write_all(b"through the pipe").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "to the service");
    let mut piped = [0u8; 16];
    q.read_exact(&mut piped).unwrap();
    assert_eq!(&piped, b"through the pipe");
    s.write_all(b"answer").unwrap();
    s.close_write().unwrap();
    assert_eq!(client.join().unwrap().unwrap(), b"answer");
    let names: Vec<String> = channel::list(&region)
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["pipe"]);
    let u = channel::usage(&region).unwrap();
    assert_eq!(u.listeners, ["svc"], "{u:?}");
    // The pipe's two blocks and the connection's two: the client left, but its block is
    // freed only once the accepted end `s` leaves too.
    assert_eq!((u.ends, u.connections), (4, 1), "{u:?}");
    drop((p, q, s, l));
    let u = channel::usage(&region).unwrap();
    assert_eq!((u.ends, u.pages_used), (0, 0), "all freed: {u:?}");
    // A region that holds layout version 1 is refused by bind, connect and open alike, with
    // a message that names the version and the way out; nothing is written into it.
    let v1 = Region::anonymous(1 << 20).unwrap();
    write_v1_header(&v1);
    let before = channel_header(&v1);
    let errors = [
        Listener::bind(&v1, "svc", &opts()).unwrap_err(),
        Channel::connect(&v1, "svc", &opts()).unwrap_err(),
        Channel::open(&v1, "pipe", &opts()).unwrap_err(),
        channel::list(&v1).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, ChannelError::BadLayout(_)), "{e}");
        assert_eq!(kind_of(&e), io::ErrorKind::InvalidData, "{e}");
        let m = e.to_string();
        assert!(m.contains("layout version 1"), "{m}");
        assert!(m.contains("zero the region"), "{m}");
    }
    assert_eq!(
        channel_header(&v1),
        before,
        "the version 1 header was left alone"
    );
    // Layout version 2 (the same arena, messages published by the index alone) does not mix
    // with version 3's in-band commit: refused, named, with the way out.
    let v2 = Region::anonymous(1 << 20).unwrap();
    drop(Listener::bind(&v2, "svc", &opts()).unwrap());
    // SAFETY: The version word lies in the header; no end uses the region now.
    unsafe { (v2.as_ptr().add(4) as *mut u32).write_unaligned(2u32.to_le()) };
    for e in [
        Listener::bind(&v2, "svc", &opts()).unwrap_err(),
        Channel::connect(&v2, "svc", &opts()).unwrap_err(),
        Channel::open(&v2, "pipe", &opts()).unwrap_err(),
    ] {
        assert_eq!(kind_of(&e), io::ErrorKind::InvalidData, "{e}");
        let m = e.to_string();
        assert!(
            m.contains("layout version 2, this library speaks version 3"),
            "{m}"
        );
        assert!(m.contains("zero the region"), "{m}");
    }
    let tiny = Region::anonymous(0x2000).unwrap();
    let e = Listener::bind(&tiny, "svc", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::InvalidInput, "{e}");
}

/// The first 0x40 bytes of `r`.
fn channel_header(r: &Region) -> Vec<u8> {
    let mut h = vec![0u8; 0x40];
    // SAFETY: The region has more than 0x40 bytes; no end uses it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(r.as_ptr(), h.as_mut_ptr(), h.len()) };
    h
}

#[test]
fn a_full_region_is_no_space_and_recovers() {
    // Room for the listener and two connections of two 2-page blocks.
    let region = Region::anonymous(0x1000 + 0x1000 + 9 * 4096).unwrap();
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    let keep: Vec<_> = (0..2)
        .map(|_| {
            let region = region.clone();
            std::thread::spawn(move || Channel::connect(&region, "svc", &opts()))
        })
        .collect();
    let accepted: Vec<_> = (0..2).map(|_| l.accept().unwrap()).collect();
    let clients: Vec<_> = keep
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let e = Channel::connect(&region, "svc", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::StorageFull, "{e}");
    drop(clients);
    drop(accepted);
    let again = std::thread::spawn({
        let region = region.clone();
        move || Channel::connect(&region, "svc", &opts())
    });
    drop(l.accept().unwrap());
    again.join().unwrap().unwrap();
}

#[test]
fn a_pending_connect_fails_fast_when_the_listener_closes() {
    let region = Region::anonymous(1 << 20).unwrap();
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(l);
    });
    let t = Instant::now();
    let e = Channel::connect(&region, "svc", &opts()).unwrap_err();
    let took = t.elapsed();
    closer.join().unwrap();
    assert_eq!(kind_of(&e), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    assert_eq!(channel::usage(&region).unwrap().pages_used, 0);
}

#[test]
fn accept_times_out_and_would_block() {
    let region = Region::anonymous(1 << 20).unwrap();
    let mut l = Listener::bind(&region, "svc", &opts()).unwrap();
    l.set_accept_timeout(Some(Duration::from_millis(50)));
    assert_eq!(kind_of(&l.accept().unwrap_err()), io::ErrorKind::TimedOut);
    l.set_nonblocking(true);
    assert_eq!(kind_of(&l.accept().unwrap_err()), io::ErrorKind::WouldBlock);
    let e = Channel::connect(
        &region,
        "svc",
        &opts().open_timeout(Duration::from_millis(100)),
    )
    .unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::TimedOut, "{e}");
    // The connector withdrew: nothing is pending, its block is gone.
    assert_eq!(kind_of(&l.accept().unwrap_err()), io::ErrorKind::WouldBlock);
    assert_eq!(channel::usage(&region).unwrap().ends, 0);
}

#[test]
fn a_closed_connection_is_end_of_file_then_broken_pipe() {
    let region = Region::anonymous(1 << 20).unwrap();
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    let h = std::thread::spawn({
        let region = region.clone();
        move || -> io::Result<()> {
            let mut c = Channel::connect(&region, "svc", &opts())?;
            c.write_all(b"last words")?;
            Ok(())
        }
    });
    let mut s = l.accept().unwrap();
    h.join().unwrap().unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "last words");
    let e = s.write_all(b"x").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    drop(s);
    assert_eq!(channel::usage(&region).unwrap().ends, 0);
}

// Between processes.

fn shm_file(len: u64) -> (std::path::PathBuf, Region) {
    let path = std::env::temp_dir().join(format!(
        "connect-test-{}-{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_seed()
    ));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.set_len(len).unwrap();
    let r = Region::map_file(&f).unwrap();
    (path, r)
}

fn rand_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs `what` in a child process on `path`.
fn child(path: &std::path::Path, what: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("CONNECT_CHILD", format!("{what},{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for a line on the child's stdout that starts with `ready`.
fn wait_ready(c: &mut Child) {
    let mut out = c.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        assert_eq!(
            out.read(&mut b).unwrap(),
            1,
            "child ended before it was ready"
        );
        seen.push(b[0]);
    }
    std::mem::forget(out);
}

#[test]
fn child_entry() {
    let Ok(arg) = std::env::var("CONNECT_CHILD") else {
        return;
    };
    let (what, path) = arg.split_once(',').unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let region = Region::map_file(&f).unwrap();
    match what {
        "listen" => {
            let _l = Listener::bind(&region, "svc", &opts()).unwrap();
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        "hold" => {
            // Two connections that it never closes, then it waits to be killed.
            let held: Vec<_> = (0..2)
                .map(|_| Channel::connect(&region, "svc", &opts()).unwrap())
                .collect();
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
            drop(held);
        }
        "stale-reader" => {
            // Reads pattern 11 until the channel fails: exit 2 for `BrokenPipe`, 3 for bytes
            // that are not its own stream's.
            let mut c = Channel::connect(&region, "svc", &opts().capacity(65536)).unwrap();
            println!("ready");
            let mut pos = 0u64;
            let mut buf = vec![0u8; 4096];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => std::process::exit(4),
                    Ok(n) => {
                        if buf[..n] != pattern(11, pos, n)[..] {
                            eprintln!("foreign bytes at {pos}");
                            std::process::exit(3);
                        }
                        pos += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        eprintln!("{e}");
                        std::process::exit(2);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        std::process::exit(5);
                    }
                }
            }
        }
        w => panic!("unknown child {w}"),
    }
}

#[test]
fn a_killed_listener_is_taken_over_and_refuses_pending_connects() {
    let (path, region) = shm_file(1 << 20);
    let mut c = child(&path, "listen");
    wait_ready(&mut c);
    let e = Listener::bind(&region, "svc", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::AddrInUse, "{e}");
    let pending = std::thread::spawn({
        let region = region.clone();
        move || {
            let t = Instant::now();
            (Channel::connect(&region, "svc", &opts()), t.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    c.kill().unwrap();
    c.wait().unwrap();
    let (r, took) = pending.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains("died"), "{e}");
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
    // The name is free again once its listener is seen dead.
    let t = Instant::now();
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let h = std::thread::spawn({
        let region = region.clone();
        move || echo_client(&region, "svc", 7, 10_000)
    });
    drop(echo_server(l, 1).join().unwrap());
    h.join().unwrap().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_killed_clients_connections_are_reclaimed() {
    // Room for the listener and two connections: the killed client holds both.
    let (path, region) = shm_file(0x1000 + 0x1000 + 9 * 4096);
    let l = Arc::new(Listener::bind(&region, "svc", &opts()).unwrap());
    let mut c = child(&path, "hold");
    let accepted: Vec<_> = (0..2).map(|_| l.accept().unwrap()).collect();
    wait_ready(&mut c);
    let e = Channel::connect(&region, "svc", &opts()).unwrap_err();
    assert_eq!(kind_of(&e), io::ErrorKind::StorageFull, "{e}");
    c.kill().unwrap();
    c.wait().unwrap();
    // The server sees its peers die and drops them: their blocks go with them.
    for mut a in accepted {
        let mut buf = [0u8; 8];
        let e = a.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }
    assert_eq!(channel::usage(&region).unwrap().ends, 0);
    let h = std::thread::spawn({
        let region = region.clone();
        move || echo_client(&region, "svc", 3, 50_000)
    });
    let mut s = l.accept().unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        s.write_all(&buf[..k]).unwrap();
    }
    drop(s);
    h.join().unwrap().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn blocks_of_dead_ends_nobody_holds_are_swept_by_the_listener() {
    // The killed client holds both connections, and so does nobody on the server side:
    // the listener's own sweep frees them.
    let (path, region) = shm_file(0x1000 + 0x1000 + 9 * 4096);
    let l = Listener::bind(&region, "svc", &opts()).unwrap();
    let mut c = child(&path, "hold");
    drop(l.accept().unwrap());
    // The second connection is accepted and then left to the sweep: its acceptor is dropped
    // too, but with the connector alive it cannot be freed yet.
    drop(l.accept().unwrap());
    wait_ready(&mut c);
    assert_eq!(channel::usage(&region).unwrap().connections, 2);
    c.kill().unwrap();
    c.wait().unwrap();
    let mut l = l;
    l.set_accept_timeout(Some(Duration::from_millis(100)));
    let t = Instant::now();
    while channel::usage(&region).unwrap().ends > 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "not swept");
        assert_eq!(kind_of(&l.accept().unwrap_err()), io::ErrorKind::TimedOut);
    }
    std::fs::remove_file(&path).unwrap();
}

/// The stale end, on connections whose memory is reused: a reader stopped (as a paused
/// VM) past the bound is declared dead, its connection's block freed and taken by the next
/// connection (the region has room for one); resumed, it fails with "detached" and reads
/// nothing of the new connection, which arrives exact.
#[test]
fn a_resumed_stale_reader_leaves_the_connection_that_reuses_its_memory_alone() {
    use std::os::unix::process::ExitStatusExt;
    for round in 0..3 {
        // The map's page, the listener's, and one connection: two blocks of 17 pages.
        let (path, region) = shm_file(0x1000 + 36 * 4096);
        let o = opts().capacity(65536);
        let l = Listener::bind(&region, "svc", &o).unwrap();
        let mut c = child(&path, "stale-reader");
        let mut s = l.accept().unwrap();
        wait_ready(&mut c);
        s.set_write_timeout(Some(Duration::from_secs(20)));
        let pid = c.id() as i32;
        let mut sent = 0u64;
        let mut stopped = false;
        let err = loop {
            match s.write(&pattern(11, sent, 5000)) {
                Ok(n) => sent += n as u64,
                Err(e) => break e,
            }
            if !stopped && sent > 1 << 20 {
                // SAFETY: A plain syscall on our own child.
                assert_eq!(unsafe { libc_kill(pid, 19) }, 0, "SIGSTOP");
                stopped = true;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        drop(s);
        assert_eq!(channel::usage(&region).unwrap().ends, 0, "freed");
        // The next connection takes the same pages.
        let reader = std::thread::spawn({
            let region = region.clone();
            let o = o.clone();
            move || -> io::Result<u64> {
                let mut c = Channel::connect(&region, "svc", &o)?;
                let mut pos = 0u64;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = c.read(&mut buf)?;
                    if n == 0 {
                        return Ok(pos);
                    }
                    assert!(
                        buf[..n] == pattern(12, pos, n)[..],
                        "new stream differs at {pos}"
                    );
                    pos += n as u64;
                }
            }
        });
        let mut s = l.accept().unwrap();
        // SAFETY: As above.
        assert_eq!(unsafe { libc_kill(pid, 18) }, 0, "SIGCONT");
        let total = 16u64 << 20;
        let mut pos = 0u64;
        while pos < total {
            let k = 60_000.min(total - pos) as usize;
            s.write_all(&pattern(12, pos, k)).unwrap();
            pos += k as u64;
        }
        s.close_write().unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), total);
        let st = c.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(2),
            "round {round}: the stale end fails cleanly (status {st:?}, signal {:?})",
            st.signal()
        );
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
