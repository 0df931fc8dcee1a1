//! `ivshmem-pipe` between two processes on a regular file standing in for the shared memory
//! (the host's side of ivshmem): exact bytes in both start orders, exit statuses, a killed
//! sender, layouts of other versions, a region shared with connections.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ivshmem::pattern;

const PIPE: &str = env!("CARGO_BIN_EXE_ivshmem-pipe");

/// A zeroed 8 MiB file in /dev/shm (tmpfs), removed on drop.
struct Shm(PathBuf);

impl Shm {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/dev/shm/ivshmem-pipe-test-{tag}-{}",
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

fn pipe(dir: &str, shm: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(PIPE);
    c.arg(dir).arg("-d").arg(shm).args(extra);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts a sender of `data`; its stdin is written from a thread, then closed.
fn sender(shm: &Path, data: Vec<u8>, extra: &[&str]) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = pipe("send", shm, extra).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    (child, feeder)
}

fn receiver(shm: &Path, extra: &[&str]) -> Child {
    let mut c = pipe("recv", shm, extra).spawn().unwrap();
    drop(c.stdin.take());
    c
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    pattern::fill(seed, 0, &mut v);
    v
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bytes_arrive_exactly_whoever_starts_first() {
    for receiver_first in [true, false] {
        let shm = Shm::new(if receiver_first { "rf" } else { "sf" });
        // More than the 64 KiB ring: wrap-around and a full ring on the way.
        let sent = data(1, 3 << 20);
        let (rx, (tx, feeder)) = if receiver_first {
            let rx = receiver(&shm.0, &["--capacity", "64K"]);
            std::thread::sleep(Duration::from_millis(200));
            (rx, sender(&shm.0, sent.clone(), &["--capacity", "64K"]))
        } else {
            let tx = sender(&shm.0, sent.clone(), &["--capacity", "64K"]);
            std::thread::sleep(Duration::from_millis(200));
            (receiver(&shm.0, &["--capacity", "64K"]), tx)
        };
        let got = rx.wait_with_output().unwrap();
        feeder.join().unwrap();
        let sent_out = tx.wait_with_output().unwrap();
        assert!(got.status.success(), "recv: {}", text(&got));
        assert!(sent_out.status.success(), "send: {}", text(&sent_out));
        assert!(
            got.stdout == sent,
            "received bytes differ from the sent ones"
        );
    }
}

#[test]
fn empty_input_waits_for_the_receiver_which_gets_eof() {
    let shm = Shm::new("empty");
    let (tx, feeder) = sender(&shm.0, Vec::new(), &[]);
    std::thread::sleep(Duration::from_millis(500));
    let mut tx = tx;
    assert!(
        tx.try_wait().unwrap().is_none(),
        "the sender left before any receiver came"
    );
    let got = receiver(&shm.0, &[]).wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        got.status.success() && got.stdout.is_empty(),
        "{}",
        text(&got)
    );
    assert!(tx.wait().unwrap().success());
}

#[test]
fn killed_sender_ends_the_receiver_with_status_1_and_a_prefix() {
    let shm = Shm::new("kill");
    let mut tx = pipe("send", &shm.0, &["--liveness", "1"]).spawn().unwrap();
    let mut stdin = tx.stdin.take().unwrap();
    stdin.write_all(&data(2, 100_000)).unwrap();
    let mut rx = receiver(&shm.0, &["--liveness", "1"]);
    let mut out = rx.stdout.take().unwrap();
    let mut first = [0u8; 1000];
    out.read_exact(&mut first).unwrap(); // data flows
    tx.kill().unwrap();
    tx.wait().unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    let status = rx.wait().unwrap();
    let mut err = String::new();
    rx.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("ivshmem-pipe: recv: peer gone"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut got = first.to_vec();
    got.extend(rest);
    assert_eq!(got, data(2, 100_000)[..got.len()], "not a prefix");
}

#[test]
fn receiver_gone_fails_the_sender() {
    let shm = Shm::new("rxgone");
    let (mut tx, feeder) = sender(
        &shm.0,
        data(3, 4 << 20),
        &["--liveness", "1", "--capacity", "64K"],
    );
    let mut rx = receiver(&shm.0, &["--liveness", "1", "--capacity", "64K"]);
    std::thread::sleep(Duration::from_millis(300));
    rx.kill().unwrap();
    rx.wait().unwrap();
    let status = tx.wait().unwrap();
    feeder.join().unwrap();
    let mut err = String::new();
    tx.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("ivshmem-pipe: send:"), "{err}");
}

#[test]
fn usage_and_layout_errors() {
    let shm = Shm::new("errors");
    let run = |args: &[&str]| {
        Command::new(PIPE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let p = shm.0.to_str().unwrap();
    for (args, code, says) in [
        (&["bogus"][..], 2, "unknown command 'bogus'"),
        (&["send", "--capacity", "1000"][..], 2, "not a power of two"),
        (
            &["send", "--wait", "sometimes"][..],
            2,
            "auto, spin or doorbell",
        ),
        (
            &["send", "-d", p, "--wait", "doorbell"][..],
            1,
            "no doorbell",
        ),
        (&["send", "-d", "/nonexistent/shm"][..], 1, "No such file"),
        (
            &["send", "-d", p, "--channel", &"x".repeat(33)][..],
            1,
            "name",
        ),
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    // A layout of another version (this layout's magic "IVC2", version 99), and the header
    // layout version 1 left ("IVCH", version 1): clear errors, quickly, for either direction.
    for (header, says) in [
        (&b"IVC2\x63\0\0\0"[..], "channel layout version 99"),
        (&b"IVCH\x01\0\0\0"[..], "layout version 1"),
    ] {
        let mut f = File::options().write(true).open(&shm.0).unwrap();
        f.write_all(header).unwrap();
        drop(f);
        for dir in ["send", "recv"] {
            let t = Instant::now();
            let o = run(&[dir, "-d", p]);
            assert_eq!(o.status.code(), Some(1), "{dir}: {}", text(&o));
            assert!(text(&o).contains(says), "{dir}: {}", text(&o));
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }
}

/// One layout serves named channels and connections: a pipe works on a region where a
/// listener and a connection live, and leaves them alone.
#[test]
fn a_pipe_shares_the_region_with_connections() {
    use ivshmem::channel::{self, Channel, Listener, Options, Region};
    let shm = Shm::new("mixed");
    let f = File::options().read(true).write(true).open(&shm.0).unwrap();
    let region = Region::map_file(&f).unwrap();
    let o = Options::new().capacity(4096);
    let l = Listener::bind(&region, "svc", &o).unwrap();
    let client = std::thread::spawn({
        let region = region.clone();
        let o = o.clone();
        move || Channel::connect(&region, "svc", &o).unwrap()
    });
    let mut s = l.accept().unwrap();
    let mut c = client.join().unwrap();
    let sent = data(4, 300_000);
    let (tx, feeder) = sender(&shm.0, sent.clone(), &["--capacity", "64K"]);
    let got = receiver(&shm.0, &["--capacity", "64K"])
        .wait_with_output()
        .unwrap();
    feeder.join().unwrap();
    let tx = tx.wait_with_output().unwrap();
    assert!(got.status.success(), "recv: {}", text(&got));
    assert!(tx.status.success(), "send: {}", text(&tx));
    assert!(
        got.stdout == sent,
        "received bytes differ from the sent ones"
    );
    // The connection still carries its bytes, and the pipe's blocks are gone.
    c.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    let u = channel::usage(&region).unwrap();
    assert_eq!((u.listeners.len(), u.ends), (1, 2), "{u:?}");
    assert!(channel::list(&region).unwrap().is_empty());
}
