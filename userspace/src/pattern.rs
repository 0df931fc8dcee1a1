//! A reproducible byte pattern: byte `i` of pattern `seed` depends only on `(seed, i)`, so a
//! writer and a checker (another guest, or the host's test suite in Python) agree without
//! exchanging data. Python twin: `scripts/lab.py: pattern()`.

/// Byte `i` of pattern `seed`.
pub fn byte(seed: u64, i: u64) -> u8 {
    // splitmix64 of (seed, i / 8), one byte of the word per position.
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i / 8)
        .wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> ((i % 8) * 8)) as u8
}

/// Fills `buf` with pattern `seed` starting at position `start`.
pub fn fill(seed: u64, start: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = byte(seed, start + k as u64);
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
    fn seeds_differ_and_mismatch_is_found() {
        let mut a = vec![0u8; 4096];
        fill(7, 100, &mut a);
        assert_eq!(first_mismatch(7, 100, &a), None);
        assert!(first_mismatch(8, 100, &a).is_some());
        a[1234] ^= 1;
        assert_eq!(first_mismatch(7, 100, &a), Some(1234));
    }
}
