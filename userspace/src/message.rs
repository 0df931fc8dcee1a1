//! The message format of `read_write`: a 16-byte header, then the text.
//!
//! ```text
//! 0  magic  u32 LE  "IVMS" (0x534d5649 read as LE bytes "IVMS")
//! 4  len    u32 LE  length of the text in bytes
//! 8  sum    u32 LE  FNV-1a of the text
//! 12 zero   u32
//! 16 text
//! ```
//! The writer stores the text and the rest of the header first and the magic last (release);
//! the reader checks the magic (acquire), the length and the checksum, so stale or torn bytes
//! are never taken for a message.

use crate::Mapping;

/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// `"IVMS"` as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"IVMS");

/// What the region at an offset holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// No magic: free for a new message.
    Empty,
    /// A complete message.
    Message(String),
    /// The magic is there but the header or text is inconsistent.
    Corrupt(String),
}

/// FNV-1a, 32 bits: small, dependency-free, good enough to catch torn or stale text.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Encodes `text` as header + text, with `magic` in place (for tests and the host).
pub fn encode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + text.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(text.as_bytes()).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// Decodes a header and the bytes after it; `avail` is how many text bytes the region has.
pub fn decode(
    header: &[u8; HEADER_LEN],
    avail: usize,
    text: impl FnOnce(usize) -> Vec<u8>,
) -> Slot {
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    if word(0) != MAGIC {
        return Slot::Empty;
    }
    let len = word(4) as usize;
    if len > avail {
        return Slot::Corrupt(format!("length {len} exceeds the {avail} bytes available"));
    }
    let bytes = text(len);
    if checksum(&bytes) != word(8) {
        return Slot::Corrupt("checksum mismatch".to_string());
    }
    match String::from_utf8(bytes) {
        Ok(s) => Slot::Message(s),
        Err(_) => Slot::Corrupt("text is not UTF-8".to_string()),
    }
}

/// Reads the slot at `at` of `map`.
pub fn read(map: &Mapping, at: usize) -> crate::Result<Slot> {
    let mut header = [0u8; HEADER_LEN];
    let magic = map.load_u32(at)?;
    if magic != MAGIC {
        return Ok(Slot::Empty);
    }
    map.read(at, &mut header)?;
    let avail = map.len().saturating_sub(at + HEADER_LEN);
    let mut err = None;
    let slot = decode(&header, avail, |len| {
        let mut buf = vec![0u8; len];
        if let Err(e) = map.read(at + HEADER_LEN, &mut buf) {
            err = Some(e);
        }
        buf
    });
    match err {
        Some(e) => Err(e),
        None => Ok(slot),
    }
}

/// Writes `text` at `at`, magic last. Fails if it does not fit.
pub fn write(map: &Mapping, at: usize, text: &str) -> crate::Result<()> {
    let bytes = encode(text);
    // Everything but the magic, then the magic with a release store.
    map.write(at + 4, &bytes[4..])?;
    map.store_u32(at, MAGIC)
}

/// Clears the slot at `at` (the magic word only).
pub fn clear(map: &Mapping, at: usize) -> crate::Result<()> {
    map.store_u32(at, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytes(b: &[u8]) -> Slot {
        let header: [u8; HEADER_LEN] = b[..HEADER_LEN].try_into().unwrap();
        let rest = &b[HEADER_LEN..];
        decode(&header, rest.len(), |len| rest[..len].to_vec())
    }

    #[test]
    fn round_trip_keeps_every_character() {
        let text = "Other VM says hello world!";
        assert_eq!(decode_bytes(&encode(text)), Slot::Message(text.to_string()));
    }

    #[test]
    fn zeroes_and_stale_bytes_are_empty() {
        assert_eq!(decode_bytes(&[0u8; 64]), Slot::Empty);
        let mut stale = vec![0x41u8; 64];
        stale[0] = b'X';
        assert_eq!(decode_bytes(&stale), Slot::Empty);
    }

    #[test]
    fn length_beyond_region_is_corrupt() {
        let mut b = encode("hi");
        b[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decode_bytes(&b), Slot::Corrupt(m) if m.contains("exceeds")));
    }

    #[test]
    fn torn_text_is_corrupt() {
        let mut b = encode("hello");
        b[HEADER_LEN] = b'j';
        assert_eq!(
            decode_bytes(&b),
            Slot::Corrupt("checksum mismatch".to_string())
        );
    }

    #[test]
    fn empty_message_round_trips() {
        assert_eq!(decode_bytes(&encode("")), Slot::Message(String::new()));
    }
}
