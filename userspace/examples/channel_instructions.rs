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

use ivshmem::channel::{Channel, Kind, Listener, Options, Region};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let connection = match std::env::args().nth(2).as_deref() {
        None | Some("pipe") => false,
        Some("connection") => true,
        Some(x) => return Err(format!("pipe or connection, not '{x}'").into()),
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
