//! The C API (src/capi.rs, include/ivshmem_channel.h) from C: the header against the Rust
//! layout, the errno contract, and the C example `ivshmem-pipe-c` against the Rust
//! `ivshmem-pipe` on a file in /dev/shm (both ends spin).
//!
//! The libraries are built once per run by a nested `cargo rustc` into their own target
//! directory (a cdylib cannot be part of the tools' crt-static build, see the Makefile).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ivshmem::capi::{self, IvshmemChannelOptions};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const RUST_PIPE: &str = env!("CARGO_BIN_EXE_ivshmem-pipe");
/// Bound on any process of these tests.
const BOUND: Duration = Duration::from_secs(60);

/// Where the libraries are, built on first use.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi");
        let out = Command::new(env!("CARGO"))
            .args(["rustc", "--quiet", "--locked", "--lib"])
            .args(["--crate-type", "staticlib", "--crate-type", "cdylib"])
            .arg("--manifest-path")
            .arg(Path::new(MANIFEST).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("running cargo");
        assert!(
            out.status.success(),
            "building libivshmem: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug")
    })
}

/// Compiles C source `src` into executable `name`: against the shared library, or the static
/// one linked in.
fn compile(name: &str, src: &Path, static_lib: bool) -> PathBuf {
    let lib = lib_dir();
    let exe = lib.join(name);
    let mut cc = Command::new("cc");
    cc.args([
        "-std=c99",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
    ])
    .arg("-I")
    .arg(Path::new(MANIFEST).join("include"))
    .arg("-o")
    .arg(&exe)
    .arg(src);
    if static_lib {
        cc.arg(lib.join("libivshmem.a"))
            .args(["-lpthread", "-ldl", "-lm"]);
    } else {
        cc.arg("-L")
            .arg(lib)
            .arg("-livshmem")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let out = cc
        .output()
        .expect("a C compiler (cc) is needed for this test");
    assert!(
        out.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The C example, linked against libivshmem.so.
fn c_pipe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = Path::new(MANIFEST).join("examples/c/ivshmem_pipe.c");
        compile("ivshmem-pipe-c", &src, false)
    })
}

/// A fresh, zeroed file in /dev/shm for one test, removed on drop.
struct ShmFile(PathBuf);

impl ShmFile {
    fn new(tag: &str, len: u64) -> Self {
        let p = PathBuf::from(format!(
            "/dev/shm/ivshmem-capi-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        Self(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `len` pseudo-random bytes (splitmix64 of `seed`).
fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Waits for `child` at most `bound`; kills it (by its pid) and fails the test on expiry.
fn wait_bounded(child: &mut Child, what: &str, bound: Duration) -> ExitStatus {
    let end = Instant::now() + bound;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pipe end (`send` or `recv`) on `dev`: the Rust tool or the C example.
fn pipe(c: bool, dir: &str, dev: &str, extra: &[&str]) -> Child {
    let exe: &Path = if c { c_pipe() } else { Path::new(RUST_PIPE) };
    Command::new(exe)
        .args([dir, "-d", dev])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Everything `child` writes to its stdout and stderr, collected by threads.
fn collect(child: &mut Child) -> [std::thread::JoinHandle<Vec<u8>>; 2] {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    [
        std::thread::spawn(move || {
            let mut v = Vec::new();
            out.read_to_end(&mut v).unwrap();
            v
        }),
        std::thread::spawn(move || {
            let mut v = Vec::new();
            err.read_to_end(&mut v).unwrap();
            v
        }),
    ]
}

/// `data` from a sender to a receiver (`c_sends`: C sends, Rust receives; else the reverse),
/// the receiver started first: exact bytes, both exit 0. With `pair`, in the isolated
/// topology: each end writes its own file and maps the other's read-only.
fn transfer(tag: &str, c_sends: bool, seed: u64, pair: bool) {
    let shm = ShmFile::new(tag, 8 << 20);
    let other = ShmFile::new(&format!("{tag}-peer"), 8 << 20);
    let (rx_args, tx_args) = match pair {
        true => (
            ["--peer-device", other.path()],
            ["--peer-device", shm.path()],
        ),
        false => ([""; 2], [""; 2]),
    };
    let (rx_args, tx_args) = (&rx_args[..2 * pair as usize], &tx_args[..2 * pair as usize]);
    let data = random(seed, (3 << 20) + 12_345);
    let mut rx = pipe(!c_sends, "recv", shm.path(), rx_args);
    let [rx_out, rx_err] = collect(&mut rx);
    let tx_dev = if pair { other.path() } else { shm.path() };
    let mut tx = pipe(c_sends, "send", tx_dev, tx_args);
    let [_, tx_err] = collect(&mut tx);
    let mut stdin = tx.stdin.take().unwrap();
    let feed = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let tx_st = wait_bounded(&mut tx, "sender", BOUND);
    let rx_st = wait_bounded(&mut rx, "receiver", BOUND);
    feed.join().unwrap().unwrap();
    let tx_err = String::from_utf8_lossy(&tx_err.join().unwrap()).into_owned();
    let rx_err = String::from_utf8_lossy(&rx_err.join().unwrap()).into_owned();
    assert_eq!(tx_st.code(), Some(0), "sender: {tx_err}");
    assert_eq!(rx_st.code(), Some(0), "receiver: {rx_err}");
    let got = rx_out.join().unwrap();
    assert_eq!(got.len(), data.len(), "bytes received");
    assert!(got == data, "the received bytes differ from the sent ones");
}

#[test]
fn c_send_to_rust_recv() {
    transfer("c2r", true, 1, false);
}

#[test]
fn rust_send_to_c_recv() {
    transfer("r2c", false, 2, false);
}

#[test]
fn c_send_to_rust_recv_across_a_pair() {
    transfer("c2r-pair", true, 3, true);
}

#[test]
fn rust_send_to_c_recv_across_a_pair() {
    transfer("r2c-pair", false, 4, true);
}

/// The Rust sender is killed mid-stream: the C receiver exits 1 with a message within about
/// the liveness timeout, and what it wrote is a prefix of what was sent.
#[test]
fn c_recv_of_killed_sender_exits_1() {
    let shm = ShmFile::new("kill", 4 << 20);
    let live = ["--liveness", "2"];
    let data = random(3, 200_000);
    let mut rx = pipe(true, "recv", shm.path(), &live);
    let mut rx_out = rx.stdout.take().unwrap();
    let mut tx = pipe(false, "send", shm.path(), &live);
    // The stdin pipe stays open: the sender waits for more after these bytes.
    tx.stdin.as_mut().unwrap().write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    rx_out.read_exact(&mut got).unwrap();
    assert!(got == data, "bytes before the kill differ");
    tx.kill().unwrap();
    tx.wait().unwrap();
    let killed = Instant::now();
    let st = wait_bounded(
        &mut rx,
        "receiver of a dead sender",
        Duration::from_secs(20),
    );
    let waited = killed.elapsed();
    let mut rest = Vec::new();
    rx_out.read_to_end(&mut rest).unwrap();
    let mut err = String::new();
    rx.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(st.code(), Some(1), "receiver status; stderr: {err}");
    assert!(rest.is_empty(), "{} bytes after the kill", rest.len());
    assert!(
        err.starts_with("ivshmem-pipe-c: recv: peer gone"),
        "message: {err}"
    );
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["sideways"],
        &["send", "--bogus"],
        &["recv", "--capacity", "1000"],
        &["recv", "--liveness", "0"],
        &["send", "--wait", "often"],
        &["send", "a", "b"],
    ] {
        let out = Command::new(c_pipe()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("ivshmem-pipe-c: "), "{args:?}: {err}");
    }
}

/// The header's options struct and constants against the Rust definitions.
#[test]
fn header_matches_rust() {
    let dir = lib_dir().join("header");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "ivshmem_channel.h"
#define OFF(f) offsetof(struct ivshmem_channel_options, f)
struct align { char c; struct ivshmem_channel_options o; };
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct ivshmem_channel_options),
           offsetof(struct align, o), OFF(size), OFF(kind), OFF(capacity),
           OFF(wait), OFF(spin_rounds), OFF(liveness_timeout_ms), OFF(open_timeout_ms),
           OFF(peer_path), OFF(doorbell_path));
    printf("%d %d %d %d %d %d\n", IVSHMEM_CHANNEL_STREAM, IVSHMEM_CHANNEL_MESSAGES,
           IVSHMEM_CHANNEL_WAIT_AUTO, IVSHMEM_CHANNEL_WAIT_SPIN, IVSHMEM_CHANNEL_WAIT_DOORBELL,
           IVSHMEM_CHANNEL_MAX_NAME);
    struct ivshmem_channel_options o = IVSHMEM_CHANNEL_OPTIONS_INIT;
    printf("%u\n", o.size);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("layout");
    let st = Command::new("cc")
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(Path::new(MANIFEST).join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(st.success(), "ivshmem_channel.h does not compile");
    let text = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
    let mut lines = text.lines();
    use std::mem::{align_of, offset_of, size_of};
    type O = IvshmemChannelOptions;
    let want = format!(
        "{} {} {} {} {} {} {} {} {} {} {}",
        size_of::<O>(),
        align_of::<O>(),
        offset_of!(O, size),
        offset_of!(O, kind),
        offset_of!(O, capacity),
        offset_of!(O, wait),
        offset_of!(O, spin_rounds),
        offset_of!(O, liveness_timeout_ms),
        offset_of!(O, open_timeout_ms),
        offset_of!(O, peer_path),
        offset_of!(O, doorbell_path),
    );
    assert_eq!(lines.next(), Some(want.as_str()), "options layout");
    let want = format!(
        "{} {} {} {} {} {}",
        capi::IVSHMEM_CHANNEL_STREAM,
        capi::IVSHMEM_CHANNEL_MESSAGES,
        capi::IVSHMEM_CHANNEL_WAIT_AUTO,
        capi::IVSHMEM_CHANNEL_WAIT_SPIN,
        capi::IVSHMEM_CHANNEL_WAIT_DOORBELL,
        capi::IVSHMEM_CHANNEL_MAX_NAME,
    );
    assert_eq!(lines.next(), Some(want.as_str()), "constants");
    assert_eq!(
        lines.next(),
        Some(size_of::<O>().to_string().as_str()),
        "IVSHMEM_CHANNEL_OPTIONS_INIT"
    );
}

/// The errno contract, checked from C against <errno.h> (so the Rust side's errno numbers are
/// the C library's): the C program prints one line per check, "ok" or what went wrong.
#[test]
fn errno_contract() {
    let dir = lib_dir().join("errno");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("errno.c");
    std::fs::write(&src, ERRNO_C).unwrap();
    let exe = compile("errno-check", &src, true);
    let shm = ShmFile::new("errno", 1 << 20);
    let small = ShmFile::new("small", 4096);
    let bad = ShmFile::new("badver", 1 << 20);
    let conn = ShmFile::new("conn", 1 << 20);
    let v1 = ShmFile::new("v1", 1 << 20);
    let (pair_a, pair_b) = (
        ShmFile::new("pair-a", 1 << 20),
        ShmFile::new("pair-b", 1 << 20),
    );
    // A ready header of this layout ("IVC2") of version 99.
    let mut hdr = b"IVC2".to_vec();
    hdr.extend_from_slice(&99u32.to_le_bytes());
    std::fs::write(&bad.0, &hdr).unwrap();
    set_len(&bad.0, 1 << 20);
    // The header layout version 1 (named channels of an older library) left: magic "IVCH",
    // version 1, ring space at 0x3000, 64 slots of 128 bytes, the region size, the allocation
    // pointer.
    let mut hdr = b"IVCH".to_vec();
    for v in [1u32, 0x3000, 64, 128, 0] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    hdr.extend_from_slice(&(1u64 << 20).to_le_bytes());
    hdr.extend_from_slice(&0x3000u64.to_le_bytes());
    std::fs::write(&v1.0, &hdr).unwrap();
    set_len(&v1.0, 1 << 20);
    let mut child = Command::new(&exe)
        .args([
            shm.path(),
            small.path(),
            bad.path(),
            conn.path(),
            v1.path(),
            pair_a.path(),
            pair_b.path(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let [out, err] = collect(&mut child);
    let st = wait_bounded(&mut child, "errno checks", BOUND);
    let out = String::from_utf8(out.join().unwrap()).unwrap();
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(st.success(), "status {st}: {out}{err}");
    let failed: Vec<&str> = out.lines().filter(|l| !l.ends_with(": ok")).collect();
    assert!(failed.is_empty(), "failed checks:\n{}", failed.join("\n"));
    assert_eq!(out.lines().count(), 86, "checks run:\n{out}");
}

fn set_len(p: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(len)
        .unwrap();
}

const ERRNO_C: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "ivshmem_channel.h"

static const char *conn;

static void *connector(void *opts)
{
	return ivshmem_channel_connect(conn, "svc", opts);
}

static void *connector_pair(void *opts)
{
	return ivshmem_channel_connect(conn, "psvc", opts);
}

/* One line per check: "label: ok", or what happened instead. */
#define CHECK(label, call, want_rc, want_errno) do { \
	errno = 0; \
	long rc_ = (long)(call); \
	int e_ = errno; \
	if (rc_ == (long)(want_rc) && e_ == (want_errno)) \
		printf("%s: ok\n", label); \
	else \
		printf("%s: rc %ld errno %d (%s), want rc %ld errno %d: %s\n", label, rc_, e_, \
		       strerror(e_), (long)(want_rc), (want_errno), ivshmem_channel_last_error()); \
} while (0)
#define FAILS_OPEN(label, path, name, opts, want_errno) \
	CHECK(label, ivshmem_channel_open(path, name, opts) != NULL, 0, want_errno)

int main(int argc, char **argv)
{
	const char *shm = argv[1], *small = argv[2], *badver = argv[3], *v1 = argv[5];
	const char *pair_a = argv[6], *pair_b = argv[7];
	conn = argv[4];
	struct ivshmem_channel_options o = IVSHMEM_CHANNEL_OPTIONS_INIT;
	struct { struct ivshmem_channel_options o; unsigned char more[8]; } big;
	char buf[256];
	size_t len = 12345;

	if (argc != 8)
		return 2;
	FAILS_OPEN("NULL path", NULL, "c", NULL, EINVAL);
	FAILS_OPEN("NULL name", shm, NULL, NULL, EINVAL);
	FAILS_OPEN("empty name", shm, "", NULL, EINVAL);
	FAILS_OPEN("long name", shm, "0123456789abcdef0123456789abcdefX", NULL, ENAMETOOLONG);
	FAILS_OPEN("missing file", "/nonexistent/ivshmem", "c", NULL, ENOENT);
	FAILS_OPEN("too small file", small, "c", NULL, EINVAL);
	FAILS_OPEN("layout version 99", badver, "c", NULL, EBADMSG);
	CHECK("last_error names version 99", strstr(ivshmem_channel_last_error(), "version 99") != NULL,
	      1, 0);
	o.size = 4;
	FAILS_OPEN("options.size 4", shm, "c", &o, EINVAL);
	memset(&big, 0, sizeof(big));
	big.o.size = sizeof(big);
	big.more[3] = 1;
	FAILS_OPEN("unknown option set", shm, "c", &big.o, E2BIG);
	o.size = sizeof(o);
	o.kind = 7;
	FAILS_OPEN("bad kind", shm, "c", &o, EINVAL);
	o.kind = 0;
	o.wait = IVSHMEM_CHANNEL_WAIT_DOORBELL;
	FAILS_OPEN("doorbell on a file", shm, "c", &o, EINVAL);
	o.wait = IVSHMEM_CHANNEL_WAIT_SPIN;
	o.capacity = 1000;
	FAILS_OPEN("capacity not a power of two", shm, "c", &o, EINVAL);
	CHECK("last_error says why", strstr(ivshmem_channel_last_error(), "1000") != NULL, 1, 0);

	/* Two ends of a message channel in this process. */
	big.more[3] = 0;
	big.o.kind = IVSHMEM_CHANNEL_MESSAGES;
	big.o.capacity = 1024;
	struct ivshmem_channel *a = ivshmem_channel_open(shm, "msgs", &big.o);
	struct ivshmem_channel *b = ivshmem_channel_open(shm, "msgs", &big.o);
	if (!a || !b) {
		printf("open: %s\n", ivshmem_channel_last_error());
		return 1;
	}
	CHECK("write on NULL", ivshmem_channel_write(NULL, "x", 1), -1, EINVAL);
	CHECK("wait_peer on NULL", ivshmem_channel_wait_peer(NULL), -1, EINVAL);
	CHECK("wait_peer with a peer", ivshmem_channel_wait_peer(a), 0, 0);
	CHECK("read on messages", ivshmem_channel_read(a, buf, 1), -1, EINVAL);
	CHECK("send NULL buffer", ivshmem_channel_send(a, NULL, 5), -1, EINVAL);
	CHECK("max_message", ivshmem_channel_max_message(a), 1008, 0);
	CHECK("send too large", ivshmem_channel_send(a, buf, 1009), -1, EMSGSIZE);
	CHECK("fd of a spinning channel", ivshmem_channel_fd(a), -1, EOPNOTSUPP);
	CHECK("nonblocking", ivshmem_channel_set_nonblocking(b, 1), 0, 0);
	CHECK("recv on empty", ivshmem_channel_recv(b, buf, sizeof(buf), &len), -1, EAGAIN);
	CHECK("blocking again", ivshmem_channel_set_nonblocking(b, 0), 0, 0);
	CHECK("timeouts", ivshmem_channel_set_timeouts(b, 30, -1), 0, 0);
	CHECK("recv times out", ivshmem_channel_recv(b, buf, sizeof(buf), &len), -1, ETIMEDOUT);
	CHECK("send 10 bytes", ivshmem_channel_send(a, "0123456789", 10), 0, 0);
	CHECK("recv into 4 bytes", ivshmem_channel_recv(b, buf, 4, &len) == -1 && len == 10, 1, EMSGSIZE);
	CHECK("recv the same one", ivshmem_channel_recv(b, buf, sizeof(buf), &len) == 1 && len == 10 &&
	      !memcmp(buf, "0123456789", 10), 1, 0);
	CHECK("send empty", ivshmem_channel_send(a, NULL, 0), 0, 0);
	CHECK("close_write", ivshmem_channel_close_write(a), 0, 0);
	CHECK("recv empty", ivshmem_channel_recv(b, NULL, 0, &len) == 1 && len == 0, 1, 0);
	CHECK("recv EOF", ivshmem_channel_recv(b, buf, sizeof(buf), &len), 0, 0);
	ivshmem_channel_close(a);
	ivshmem_channel_close(b);
	ivshmem_channel_close(NULL);

	/* A split end: the writing half and the reading half take only their own calls. */
	struct ivshmem_channel *c = ivshmem_channel_open(shm, "split", &big.o);
	struct ivshmem_channel *d = ivshmem_channel_open(shm, "split", &big.o);
	struct ivshmem_channel *cr = NULL;
	if (!c || !d) {
		printf("open: %s\n", ivshmem_channel_last_error());
		return 1;
	}
	CHECK("split NULL reader", ivshmem_channel_split(c, NULL), -1, EINVAL);
	CHECK("split", ivshmem_channel_split(c, &cr) == 0 && cr != NULL, 1, 0);
	CHECK("split a half", ivshmem_channel_split(c, &cr), -1, EBADF);
	CHECK("recv on the writing half", ivshmem_channel_recv(c, buf, sizeof(buf), &len), -1, EBADF);
	CHECK("send on the reading half", ivshmem_channel_send(cr, "x", 1), -1, EBADF);
	CHECK("send on the writing half", ivshmem_channel_send(c, "ab", 2), 0, 0);
	CHECK("peer gets it", ivshmem_channel_recv(d, buf, sizeof(buf), &len) == 1 && len == 2, 1, 0);
	CHECK("peer answers", ivshmem_channel_send(d, "xyz", 3), 0, 0);
	CHECK("reading half gets it", ivshmem_channel_recv(cr, buf, sizeof(buf), &len) == 1 &&
	      len == 3 && !memcmp(buf, "xyz", 3), 1, 0);
	CHECK("poll interval of a spinning peer", ivshmem_channel_poll_interval_ms(cr), 20, 0);
	CHECK("poll interval of NULL", ivshmem_channel_poll_interval_ms(NULL), -1, EINVAL);
	ivshmem_channel_close(c);
	CHECK("EOF after the writing half closed", ivshmem_channel_recv(d, buf, sizeof(buf), &len), 0, 0);
	ivshmem_channel_close(cr);
	ivshmem_channel_close(d);

	/* Connections (big.o: messages, 1 KiB rings, spinning), on a region that holds named
	 * channels too: one layout (version 2) serves both. */
	CHECK("connect without a listener", ivshmem_channel_connect(conn, "svc", &big.o) != NULL, 0,
	      ECONNREFUSED);
	CHECK("bind NULL service", ivshmem_listener_bind(conn, NULL, &big.o) != NULL, 0, EINVAL);
	CHECK("bind long service", ivshmem_listener_bind(conn, "0123456789abcdef0123456789abcdefX",
	      &big.o) != NULL, 0, ENAMETOOLONG);
	struct ivshmem_channel *n1 = ivshmem_channel_open(conn, "named", &big.o);
	CHECK("open on the region connect laid out", n1 != NULL, 1, 0);
	struct ivshmem_listener *l = ivshmem_listener_bind(conn, "svc", &big.o);
	if (!l || !n1) {
		printf("bind beside a named channel: %s\n", ivshmem_channel_last_error());
		return 1;
	}
	CHECK("bind a live name", ivshmem_listener_bind(conn, "svc", &big.o) != NULL, 0, EADDRINUSE);
	struct ivshmem_channel *n2 = ivshmem_channel_open(conn, "named", &big.o);
	CHECK("join a named channel beside a listener", n2 != NULL, 1, 0);
	if (!n2)
		return 1;
	CHECK("send on the named channel", ivshmem_channel_send(n1, "abc", 3), 0, 0);
	CHECK("its peer gets it", ivshmem_channel_recv(n2, buf, sizeof(buf), &len) == 1 && len == 3 &&
	      !memcmp(buf, "abc", 3), 1, 0);
	ivshmem_channel_close(n1);
	ivshmem_channel_close(n2);
	struct ivshmem_listener *l2 = ivshmem_listener_bind(shm, "svc", &big.o);
	CHECK("bind on a region of named channels", l2 != NULL, 1, 0);
	ivshmem_listener_close(l2);
	/* A region that holds layout version 1 (an older library's named channels). */
	FAILS_OPEN("open on layout version 1", v1, "c", &big.o, EBADMSG);
	CHECK("last_error names version 1", strstr(ivshmem_channel_last_error(), "layout version 1") !=
	      NULL, 1, 0);
	CHECK("bind on layout version 1", ivshmem_listener_bind(v1, "svc", &big.o) != NULL, 0, EBADMSG);
	CHECK("connect on layout version 1", ivshmem_channel_connect(v1, "svc", &big.o) != NULL, 0,
	      EBADMSG);
	CHECK("accept with none pending", ivshmem_listener_accept(l, 0) != NULL, 0, EAGAIN);
	CHECK("accept times out", ivshmem_listener_accept(l, 30) != NULL, 0, ETIMEDOUT);
	CHECK("accept timeout -2", ivshmem_listener_accept(l, -2) != NULL, 0, EINVAL);
	CHECK("accept on NULL", ivshmem_listener_accept(NULL, 0) != NULL, 0, EINVAL);
	CHECK("fd of a spinning listener", ivshmem_listener_fd(l), -1, EOPNOTSUPP);
	o.kind = IVSHMEM_CHANNEL_STREAM;
	o.capacity = 0;
	CHECK("connect of the other kind", ivshmem_channel_connect(conn, "svc", &o) != NULL, 0, EINVAL);
	pthread_t t;
	void *cc = NULL;
	CHECK("connector thread", pthread_create(&t, NULL, connector, &big.o), 0, 0);
	struct ivshmem_channel *sv = ivshmem_listener_accept(l, -1);
	pthread_join(t, &cc);
	CHECK("accept and connect", sv != NULL && cc != NULL, 1, 0);
	if (!sv || !cc)
		return 1;
	CHECK("send on the connection", ivshmem_channel_send(cc, "hey", 3), 0, 0);
	CHECK("the accepted end gets it", ivshmem_channel_recv(sv, buf, sizeof(buf), &len) == 1 &&
	      len == 3 && !memcmp(buf, "hey", 3), 1, 0);
	ivshmem_channel_close(cc);
	CHECK("EOF once the connector closed", ivshmem_channel_recv(sv, buf, sizeof(buf), &len), 0, 0);
	ivshmem_channel_close(sv);
	ivshmem_listener_close(l);
	ivshmem_listener_close(NULL);
	CHECK("connect once the listener closed", ivshmem_channel_connect(conn, "svc", &big.o) != NULL,
	      0, ECONNREFUSED);

	/* A caller compiled against the first version of the options (32 bytes). */
	struct ivshmem_channel_options o1 = IVSHMEM_CHANNEL_OPTIONS_INIT;
	o1.size = 32;
	o1.wait = IVSHMEM_CHANNEL_WAIT_SPIN;
	struct ivshmem_channel *old = ivshmem_channel_open(shm, "v1opts", &o1);
	CHECK("options of the first version", old != NULL, 1, 0);
	ivshmem_channel_close(old);

	/* The isolated topology: each end writes its own file and maps its peer's read-only. */
	struct ivshmem_channel_options pa = big.o, pb = big.o;
	pa.size = pb.size = sizeof(pa);
	pa.peer_path = pair_b;
	pb.peer_path = pair_a;
	o1.size = sizeof(o1);
	o1.doorbell_path = shm;
	FAILS_OPEN("doorbell_path without peer_path", shm, "c", &o1, EINVAL);
	o1.doorbell_path = NULL;
	o1.peer_path = pair_a;
	FAILS_OPEN("peer_path the own file", pair_a, "c", &o1, EINVAL);
	o1.peer_path = "/nonexistent/peer";
	FAILS_OPEN("missing peer", pair_a, "c", &o1, ENOENT);
	struct ivshmem_channel *ea = ivshmem_channel_open(pair_a, "pp", &pa);
	struct ivshmem_channel *eb = ivshmem_channel_open(pair_b, "pp", &pb);
	CHECK("open both sides of a pair", ea != NULL && eb != NULL, 1, 0);
	if (!ea || !eb)
		return 1;
	CHECK("send across the pair", ivshmem_channel_send(ea, "isolated", 8), 0, 0);
	CHECK("the other side gets it", ivshmem_channel_recv(eb, buf, sizeof(buf), &len) == 1 &&
	      len == 8 && !memcmp(buf, "isolated", 8), 1, 0);
	CHECK("and answers", ivshmem_channel_send(eb, "ok", 2), 0, 0);
	CHECK("which arrives", ivshmem_channel_recv(ea, buf, sizeof(buf), &len) == 1 && len == 2, 1, 0);
	ivshmem_channel_close(ea);
	ivshmem_channel_close(eb);
	struct ivshmem_listener *lp = ivshmem_listener_bind(pair_a, "psvc", &pa);
	CHECK("bind on a pair", lp != NULL, 1, 0);
	if (!lp)
		return 1;
	CHECK("connect from the same side", ivshmem_channel_connect(pair_a, "psvc", &pa) != NULL, 0,
	      ECONNREFUSED);
	conn = pair_b;
	CHECK("connector thread on the other side", pthread_create(&t, NULL, connector_pair, &pb), 0, 0);
	sv = ivshmem_listener_accept(lp, -1);
	pthread_join(t, &cc);
	CHECK("accept and connect across the pair", sv != NULL && cc != NULL, 1, 0);
	if (!sv || !cc)
		return 1;
	CHECK("send on the pair's connection", ivshmem_channel_send(sv, "hi", 2), 0, 0);
	CHECK("the connector gets it", ivshmem_channel_recv(cc, buf, sizeof(buf), &len) == 1 &&
	      len == 2 && !memcmp(buf, "hi", 2), 1, 0);
	ivshmem_channel_close(cc);
	ivshmem_channel_close(sv);
	ivshmem_listener_close(lp);
	return 0;
}
"#;
