//! The copies measured: between the shared mapping and a private buffer, and the same between
//! that buffer and its private twin, placed like the mapping (see `twin.rs`).

use ivshmem::{Mapping, ToolError};

use crate::measure::{Copier, Side};

/// One measured direction: copies to (write) or from (read) the shared memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    Write,
    Read,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::Write => "write",
            Dir::Read => "read",
        }
    }
}

fn copy_to(map: &Mapping, src: &[u8]) {
    assert!(src.len() <= map.len());
    // SAFETY: `map` holds at least `src.len()` bytes (asserted); `src` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), map.as_ptr(), src.len()) }
}

fn copy_from(map: &Mapping, dst: &mut [u8]) {
    assert!(dst.len() <= map.len());
    // SAFETY: `map` holds at least `dst.len()` bytes (asserted); `dst` is a distinct buffer.
    unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), dst.as_mut_ptr(), dst.len()) }
}

/// Where `a` and `b` first differ (memcmp speed when they are equal).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Write: `buf` to the mapping, and `buf` to `twin`. Read: the mapping to `buf`, and `twin` to
/// `buf`. `buf` holds the data to write; `twin` is where the mapping is, modulo the strides
/// that matter, so the two copies of a pair differ only in the memory.
pub struct MemCopies<'a> {
    dir: Dir,
    map: &'a Mapping,
    buf: &'a mut [u8],
    twin: &'a mut [u8],
}

impl<'a> MemCopies<'a> {
    /// For a read, first puts `buf`'s data in the mapping and the twin, the sources.
    pub fn new(dir: Dir, map: &'a Mapping, buf: &'a mut [u8], twin: &'a mut [u8]) -> Self {
        assert_eq!(buf.len(), twin.len());
        if dir == Dir::Read {
            copy_to(map, buf);
            twin.copy_from_slice(buf);
        }
        Self {
            dir,
            map,
            buf,
            twin,
        }
    }

    /// `buf` and `twin` must be equal.
    fn check(&self, what: &str) -> Result<(), ToolError> {
        match first_difference(self.buf, self.twin) {
            None => Ok(()),
            Some(at) => Err(ToolError::Check(format!(
                "verification failed: {what} differs at byte {at}"
            ))),
        }
    }
}

impl Copier for MemCopies<'_> {
    fn clear(&mut self, side: Side) -> Result<(), ToolError> {
        match (self.dir, side) {
            (Dir::Write, Side::Shared) => self.map.fill(0, self.buf.len(), 0)?,
            (Dir::Write, Side::Private) => self.twin.fill(0),
            (Dir::Read, _) => self.buf.fill(0),
        }
        Ok(())
    }

    fn copy(&mut self, side: Side) {
        match (self.dir, side) {
            (Dir::Write, Side::Shared) => copy_to(self.map, self.buf),
            (Dir::Write, Side::Private) => self.twin.copy_from_slice(self.buf),
            (Dir::Read, Side::Shared) => copy_from(self.map, self.buf),
            (Dir::Read, Side::Private) => self.buf.copy_from_slice(self.twin),
        }
    }

    fn verify(&mut self, side: Side) -> Result<(), ToolError> {
        match (self.dir, side) {
            (Dir::Write, Side::Shared) => {
                // The twin is scratch until the next private copy clears it.
                copy_from(self.map, self.twin);
                self.check("shared memory")
            }
            (Dir::Read, Side::Shared) => self.check("copy out"),
            (_, Side::Private) => self.check("private copy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::measure;
    use ivshmem::{pattern, Device};

    /// A shared mapping of /dev/zero stands in for the device: same mmap, no driver.
    fn zero_mapping(len: usize) -> Mapping {
        Device::open("/dev/zero").unwrap().map(0, len).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        pattern::fill(0xb4d, 0, &mut v);
        v
    }

    #[test]
    fn real_copies_arrive_in_both_directions() {
        let len = 256 << 10;
        let map = zero_mapping(len);
        let want = data(len);
        let mut buf = want.clone();
        let mut twin = vec![0u8; len];
        let t = measure(
            &mut MemCopies::new(Dir::Write, &map, &mut buf, &mut twin),
            3,
        )
        .unwrap();
        assert_eq!((t.shared.len(), t.private.len()), (3, 3));
        let mut back = vec![0u8; len];
        map.read(0, &mut back).unwrap();
        assert_eq!(back, want);
        assert_eq!(twin, want);
        map.fill(0, len, 0).unwrap();
        let t = measure(&mut MemCopies::new(Dir::Read, &map, &mut buf, &mut twin), 2).unwrap();
        assert_eq!((t.shared.len(), t.private.len()), (2, 2));
        assert_eq!(buf, want);
    }

    #[test]
    fn a_copy_that_did_not_happen_is_caught() {
        let len = 64 << 10;
        let map = zero_mapping(len);
        let mut buf = data(len);
        let first = buf.iter().position(|&b| b != 0).unwrap();
        let mut twin = vec![0u8; len];
        let mut c = MemCopies::new(Dir::Write, &map, &mut buf, &mut twin);
        c.clear(Side::Shared).unwrap();
        c.copy(Side::Shared);
        c.verify(Side::Shared).unwrap();
        // Cleared and not copied again: the bytes of the last copy must not pass for new ones.
        c.clear(Side::Shared).unwrap();
        let e = c.verify(Side::Shared).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("verification failed: shared memory differs at byte {first}")
        );
        c.clear(Side::Private).unwrap();
        let e = c.verify(Side::Private).unwrap_err().to_string();
        assert!(
            e.starts_with("verification failed: private copy differs"),
            "{e}"
        );
        let mut c = MemCopies::new(Dir::Read, &map, &mut buf, &mut twin);
        c.clear(Side::Shared).unwrap();
        let e = c.verify(Side::Shared).unwrap_err().to_string();
        assert!(
            e.starts_with("verification failed: copy out differs"),
            "{e}"
        );
    }

    #[test]
    fn first_difference_finds_the_byte() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"xbc", b"abc"), Some(0));
    }
}
