//! A reproducible byte pattern: byte `i` of pattern `seed` depends only on `(seed, i)`, so a
//! writer and a checker (another guest, or the host's test suite in Python) agree without
//! exchanging data. Python twin: `scripts/lab.py: pattern()`.

/// SplitMix64's increment, the golden ratio in 64 bits.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a well-mixed 64-bit value of `z`.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Word `w` (bytes `8w .. 8w + 8`, little-endian) of pattern `seed`.
pub fn word(seed: u64, w: u64) -> u64 {
    mix(seed
        .wrapping_mul(GOLDEN)
        .wrapping_add(w)
        .wrapping_add(0x632b_e59b_d9b4_e019))
}

/// Byte `i` of pattern `seed`.
pub fn byte(seed: u64, i: u64) -> u8 {
    (word(seed, i / 8) >> ((i % 8) * 8)) as u8
}

/// Fills `buf` with pattern `seed` starting at position `start`, a word at a time.
pub fn fill(seed: u64, start: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let pos = start + i as u64;
        let bytes = word(seed, pos / 8).to_le_bytes();
        let from = (pos % 8) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[from..from + n]);
        i += n;
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, fast generator fully determined by its seed,
/// for tests and the fuzzer that must replay a run.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// The generator with state `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }
}

/// Position of the first byte of `buf` that differs from pattern `seed` at `start`.
pub fn first_mismatch(seed: u64, start: u64, buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .find(|(k, &b)| b != byte(seed, start + *k as u64))
        .map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_match_the_python_twin() {
        // The same values are asserted in scripts/lab.py's self-test.
        let v: Vec<u8> = (0..8).map(|i| byte(1, i)).collect();
        assert_eq!(v, [186, 2, 105, 119, 71, 5, 198, 92]);
    }

    #[test]
    fn word_fill_agrees_with_bytes_at_any_alignment() {
        for start in 0..17u64 {
            let mut a = vec![0u8; 45];
            fill(3, start, &mut a);
            let b: Vec<u8> = (0..45).map(|k| byte(3, start + k)).collect();
            assert_eq!(a, b, "start {start}");
        }
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (the reference implementation's).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn seeds_differ_and_mismatch_is_found() {
        let mut a = vec![0u8; 4096];
        fill(7, 100, &mut a);
        assert_eq!(first_mismatch(7, 100, &a), None);
        assert!(first_mismatch(8, 100, &a).is_some());
        a[1234] ^= 1;
        assert_eq!(first_mismatch(7, 100, &a), Some(1234));
    }
}
