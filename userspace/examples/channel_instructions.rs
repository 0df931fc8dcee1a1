//! Instructions per 64-byte message, counted rather than timed: one thread sends a message on
//! one end of a channel and receives it on the other, `N` times (both ends spin, so nothing
//! sleeps). Run under callgrind twice and take the difference, which cancels start-up:
//!
//! ```text
//! cargo build --release --example channel_instructions
//! for n in 100000 200000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/channel_instructions $n 2>&1 | grep refs
//! done   # (refs(200000) - refs(100000)) / 100000 = instructions per send + recv
//! ```
//!
//! A second argument `connection` counts a connection (`Listener::accept` and
//! `Channel::connect`, layout version 2) instead of a named channel (`Channel::open`).
//!
//! `stream` counts streaming instead: `N` times one 64 KiB `write_all` on a stream channel
//! (256 KiB ring) and one `read_exact` of it, so the difference divided by 64 × 100,000 is
//! instructions per KiB streamed; `stream-bare` the same copies into and out of a plain
//! 256 KiB buffer: the floor of any ring that copies in and out.

use std::io::{Read, Write};

use ivshmem::channel::{Channel, Kind, Listener, Options, Region};

/// The chunk `stream` and `stream-bare` move per round.
const CHUNK: usize = 64 << 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let connection = match std::env::args().nth(2).as_deref() {
        None | Some("pipe") => false,
        Some("connection") => true,
        Some("stream") => return stream(n),
        Some("stream-bare") => return stream_bare(n),
        Some(x) => {
            return Err(format!("pipe, connection, stream or stream-bare, not '{x}'").into())
        }
    };
    let region = Region::anonymous(1 << 20)?;
    let opts = Options::new().kind(Kind::Messages).capacity(64 << 10);
    let (mut a, mut b) = if connection {
        let l = Listener::bind(&region, "count", &opts)?;
        let client = std::thread::spawn({
            let (region, opts) = (region.clone(), opts.clone());
            move || Channel::connect(&region, "count", &opts)
        });
        let server = l.accept()?;
        (client.join().expect("connect thread")?, server)
    } else {
        (
            Channel::open(&region, "count", &opts)?,
            Channel::open(&region, "count", &opts)?,
        )
    };
    let msg = [7u8; 64];
    let mut buf = Vec::with_capacity(64);
    for _ in 0..n {
        a.send(&msg)?;
        b.recv(&mut buf)?;
    }
    assert_eq!(buf, msg);
    Ok(())
}

fn stream(n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let region = Region::anonymous(1 << 20)?;
    let opts = Options::new().kind(Kind::Stream).capacity(256 << 10);
    let mut a = Channel::open(&region, "count", &opts)?;
    let mut b = Channel::open(&region, "count", &opts)?;
    let src = vec![7u8; CHUNK];
    let mut dst = vec![0u8; CHUNK];
    for _ in 0..n {
        a.write_all(&src)?;
        b.read_exact(&mut dst)?;
    }
    assert_eq!(dst, src);
    Ok(())
}

fn stream_bare(n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut ring = vec![0u8; 256 << 10];
    let src = vec![7u8; CHUNK];
    let mut dst = vec![0u8; CHUNK];
    let mut pos = 0;
    for _ in 0..n {
        let at = pos % ring.len();
        ring[at..at + CHUNK].copy_from_slice(std::hint::black_box(&src));
        dst.copy_from_slice(std::hint::black_box(&ring[at..at + CHUNK]));
        pos += CHUNK;
    }
    assert_eq!(dst, src);
    Ok(())
}
