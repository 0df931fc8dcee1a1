//! A shared mapping at an address the caller picks: `address ≡ offset + skew (mod align)`.
//!
//! The driver maps with 2 MiB entries only where the user address is congruent to
//! the file offset modulo that size, and the kernel does not pick such addresses for a misc
//! device. [`crate::Device::map`] always places a mapping where huge entries can go; tests and
//! tools that need both kinds on purpose (skew 0 allows huge entries, a skew of 4 KiB forbids
//! them) place it themselves, with the same mechanism ([`sys::map_placed`]) and their own
//! alignment and skew. Programs that just want the memory use [`crate::Device::map`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use crate::sys;

const PAGE: usize = 4096;

/// The alignment the library uses for `len` bytes ([`sys::map_align`]): 1 GiB from 1 GiB on,
/// 2 MiB from 2 MiB on, else a page.
pub fn natural_align(len: usize) -> usize {
    sys::map_align(len).max(PAGE)
}

/// The symbolic name of an error's errno (`EBUSY`), or its text: how the tools name what made
/// a [`PlacedMapping::new`] fail.
pub fn errno_name(e: &io::Error) -> String {
    e.raw_os_error()
        .and_then(sys::errno::name)
        .map_or_else(|| e.to_string(), str::to_string)
}

/// A shared, read-write mapping placed by [`PlacedMapping::new`], unmapped on drop.
///
/// As with [`crate::Mapping`], other processes or VMs may write the memory at any time, so
/// this type hands out no references into it: copies in and out and single volatile words.
#[derive(Debug)]
pub struct PlacedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl PlacedMapping {
    /// Maps `len` bytes (a positive multiple of the page size) of `fd` from `offset`, shared
    /// and read-write, at an address `a` with `a % align == (offset + skew) % align`; `align`
    /// is a power of two, at least a page, and `skew` a multiple of the page size.
    pub fn new(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        align: usize,
        skew: usize,
    ) -> io::Result<Self> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if len == 0 || !len.is_multiple_of(PAGE) || !skew.is_multiple_of(PAGE) {
            return Err(bad(
                "length and skew must be multiples of 4096, length not 0",
            ));
        }
        if !align.is_power_of_two() || align < PAGE {
            return Err(bad("alignment must be a power of two of at least 4096"));
        }
        let prot = sys::PROT_READ | sys::PROT_WRITE;
        let ptr = sys::map_placed(fd.as_raw_fd(), len, offset, prot, align, skew)?;
        Ok(Self { ptr, len })
    }

    /// The start of the mapping. Other processes or VMs may change the memory at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: [`PlacedMapping::new`] refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, at: usize, len: usize) -> io::Result<()> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at {at} exceed the {}-byte mapping", self.len),
            )),
        }
    }

    /// Copies `buf.len()` bytes from the mapping at `at`.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> io::Result<()> {
        self.check(at, buf.len())?;
        // SAFETY: In bounds (checked); `buf` is a distinct buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `at`.
    pub fn write(&self, at: usize, data: &[u8]) -> io::Result<()> {
        self.check(at, data.len())?;
        // SAFETY: In bounds (checked); `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(at), data.len()) };
        Ok(())
    }

    /// A volatile read of the 32-bit word at `at` (rounded down to 4 bytes), without a fence.
    pub fn load_u32(&self, at: usize) -> io::Result<u32> {
        let at = at & !3;
        self.check(at, 4)?;
        // SAFETY: In bounds and aligned.
        Ok(unsafe { std::ptr::read_volatile(self.as_ptr().add(at).cast::<u32>()) })
    }

    /// A volatile write of the 32-bit word at `at` (rounded down to 4 bytes), without a fence.
    pub fn store_u32(&self, at: usize, v: u32) -> io::Result<()> {
        let at = at & !3;
        self.check(at, 4)?;
        // SAFETY: In bounds and aligned.
        unsafe { std::ptr::write_volatile(self.as_ptr().add(at).cast::<u32>(), v) };
        Ok(())
    }
}

impl Drop for PlacedMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping made by `new`, not unmapped since.
        unsafe { sys::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsFd;

    const HUGE_2M: usize = 2 << 20;
    const HUGE_1G: usize = 1 << 30;

    #[test]
    fn natural_alignment_follows_the_length() {
        assert_eq!(natural_align(4096), PAGE);
        assert_eq!(natural_align(HUGE_2M - PAGE), PAGE);
        assert_eq!(natural_align(HUGE_2M), HUGE_2M);
        assert_eq!(natural_align(HUGE_1G - PAGE), HUGE_2M);
        assert_eq!(natural_align(4 << 30), HUGE_1G);
    }

    #[test]
    fn maps_a_file_where_asked_and_shares_its_bytes() {
        let path = std::env::temp_dir().join(format!("placed-test-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        for skew in [0, PAGE] {
            let m = PlacedMapping::new(f.as_fd(), 2 << 20, 4 << 20, HUGE_2M, skew).unwrap();
            assert_eq!(m.as_ptr() as usize % HUGE_2M, skew);
            assert_eq!(m.len(), 4 << 20);
            m.write(HUGE_2M - 3, b"across").unwrap();
            let mut back = [0u8; 6];
            f.seek(SeekFrom::Start((4 << 20) - 3)).unwrap();
            f.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"across");
            f.seek(SeekFrom::Start(2 << 20)).unwrap();
            f.write_all(&skew.to_le_bytes()[..4]).unwrap();
            assert_eq!(m.load_u32(0).unwrap(), skew as u32);
            assert!(m.read(4 << 20, &mut back).is_err());
        }
        let e = PlacedMapping::new(f.as_fd(), 0, 100, HUGE_2M, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = PlacedMapping::new(f.as_fd(), 0, PAGE, 3 << 20, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // A file open read-only refuses the read-write shared mapping.
        let ro = std::fs::File::open("/proc/self/exe").unwrap();
        let e = PlacedMapping::new(ro.as_fd(), 0, PAGE, HUGE_2M, 0).unwrap_err();
        assert_eq!(errno_name(&e), "EACCES");
        assert_eq!(errno_name(&io::Error::other("no errno")), "no errno");
    }
}
