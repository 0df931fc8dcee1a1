//! `pause`: the cost of the CPU pause hint in a spin loop, with and without it.

use std::time::Instant;

/// Nanoseconds per round of a spin loop that loads a word (as a spin on a ring index does),
/// with or without the pause hint.
fn spin_rounds(rounds: u64, hint: bool) -> f64 {
    let word = std::sync::atomic::AtomicU64::new(0);
    let start = Instant::now();
    for _ in 0..rounds {
        if std::hint::black_box(&word).load(std::sync::atomic::Ordering::Acquire) == u64::MAX {
            break;
        }
        if hint {
            std::hint::spin_loop();
        }
    }
    start.elapsed().as_nanos() as f64 / rounds as f64
}

pub(crate) fn pause(rounds: u64) {
    // Alternate, so that a change in the host's load hits both alike; keep the best of three.
    let (mut plain, mut hint) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        plain = plain.min(spin_rounds(rounds, false));
        hint = hint.min(spin_rounds(rounds, true));
    }
    println!("pause rounds={rounds} plain_ns={plain:.2} hint_ns={hint:.2}");
}
