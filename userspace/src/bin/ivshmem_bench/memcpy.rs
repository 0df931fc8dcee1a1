//! `memcpy`: this machine's copy bandwidth, the reference of the stream figures.

use std::time::{Duration, Instant};

use crate::figures::mbps;

/// Size of the destination the copies walk through, as a ring of the default capacity.
const MEMCPY_DEST: usize = 2 << 20;

pub(crate) fn memcpy(sizes: &[usize], secs: f64) {
    let max = *sizes.iter().max().unwrap_or(&64);
    let src: Vec<u8> = (0..max).map(|i| i as u8).collect();
    let mut dst = vec![0u8; MEMCPY_DEST.max(max)];
    let limit = Duration::from_secs_f64(secs);
    for &size in sizes {
        let batch = ((256 << 10) / size).max(1);
        let mut at = 0;
        let mut bytes = 0u64;
        let start = Instant::now();
        loop {
            for _ in 0..batch {
                if at + size > dst.len() {
                    at = 0;
                }
                dst[at..at + size].copy_from_slice(&src[..size]);
                at += size;
            }
            std::hint::black_box(&mut dst);
            bytes += (batch * size) as u64;
            if start.elapsed() >= limit {
                break;
            }
        }
        let t = start.elapsed().as_secs_f64();
        println!(
            "memcpy size={size} bytes={bytes} secs={t:.6} mbps={:.1}",
            mbps(bytes, t)
        );
    }
}
