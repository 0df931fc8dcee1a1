//! `ivshmem-check scribble DEVICE GO-FILE`: a hostile process. It maps all of DEVICE
//! read-write and stores random words at random places of it until GO-FILE exists, reading
//! each one back: a store that reads back is one that stuck. On a device the hypervisor maps
//! read-only (`readonly=on`, another guest's own device in the isolated topology) none
//! sticks; on a shared device nearly all do (a peer may overwrite one meanwhile).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ivshmem::Device;

/// Stores between looks for GO-FILE.
const BATCH: u64 = 1 << 16;

pub fn run(dev: &str, go: &str) -> i32 {
    let map = match Device::open(dev).and_then(|d| d.map_all()) {
        Ok(m) => m,
        Err(e) => {
            println!("FAIL scribble: {e}");
            return 1;
        }
    };
    let words = (map.len() / 8) as u64;
    println!("scribbling over {} bytes of {dev}", map.len());
    let (mut x, mut stores, mut stuck) = (u64::from(std::process::id()), 0u64, 0u64);
    while !Path::new(go).exists() {
        for _ in 0..BATCH {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16) % words;
            // SAFETY: `at < words`, so the 8-aligned word lies inside the mapping, which lives
            // as long as `map`; the memory is only ever accessed as atomics here.
            let w = unsafe { AtomicU64::from_ptr(map.as_ptr().add(8 * at as usize).cast()) };
            w.store(x, Relaxed);
            stuck += u64::from(w.load(Relaxed) == x);
        }
        stores += BATCH;
    }
    println!("{stores} stores, {stuck} stuck");
    0
}
