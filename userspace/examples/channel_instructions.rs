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

use ivshmem::channel::{Channel, Kind, Options, Region};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let region = Region::anonymous(1 << 20)?;
    let opts = Options::new().kind(Kind::Messages).capacity(64 << 10);
    let mut a = Channel::open(&region, "count", &opts)?;
    let mut b = Channel::open(&region, "count", &opts)?;
    let msg = [7u8; 64];
    let mut buf = Vec::with_capacity(64);
    for _ in 0..n {
        a.send(&msg)?;
        b.recv(&mut buf)?;
    }
    assert_eq!(buf, msg);
    Ok(())
}
