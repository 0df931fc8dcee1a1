//! A device mapping at an address the tool picks: `address ≡ offset + skew (mod align)`.
//!
//! The driver maps with 2 MiB entries only where the user address is congruent to
//! the file offset modulo that size, and the kernel does not pick such addresses for a misc
//! device. The tests need both kinds on purpose (skew 0 allows huge entries, a skew of 4 KiB
//! forbids them), whatever address `Device::map` would choose: so the tool places the mapping
//! with the library's own mechanism (`sys::map_placed`) and its own alignment and skew.

use std::io;
use std::ptr::NonNull;

use ivshmem::sys;

pub const PAGE: usize = 4096;
pub const HUGE_2M: usize = 2 << 20;
pub const HUGE_1G: usize = 1 << 30;

/// The first address at or above `base` that is congruent to `offset + skew` modulo `align`
/// (a power of two).
pub fn place(base: usize, offset: u64, skew: usize, align: usize) -> usize {
    let want = (offset as usize).wrapping_add(skew) & (align - 1);
    base + (want.wrapping_sub(base) & (align - 1))
}

/// The alignment the library uses for `len` bytes (`sys::map_align`): 1 GiB from 1 GiB on,
/// 2 MiB from 2 MiB on, else a page.
pub fn natural_align(len: usize) -> usize {
    sys::map_align(len).max(PAGE)
}

/// The symbolic name of an error's errno (`EBUSY`), or its text.
pub fn errno_name(e: &io::Error) -> String {
    e.raw_os_error()
        .and_then(sys::errno::name)
        .map_or_else(|| e.to_string(), str::to_string)
}

/// A shared mapping placed by [`Aligned::map`], unmapped on drop.
#[derive(Debug)]
pub struct Aligned {
    ptr: NonNull<u8>,
    len: usize,
}

impl Aligned {
    /// Maps `len` bytes (a positive multiple of the page size) of `fd` from `offset`, shared,
    /// with `prot`, at an address `a` with `a % align == (offset + skew) % align`; `align` is a
    /// power of two, at least a page, and `skew` a multiple of the page size.
    pub fn map(
        fd: i32,
        offset: u64,
        len: usize,
        prot: i32,
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
        let ptr = sys::map_placed(fd, len, offset, prot, align, skew)?;
        Ok(Self { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
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
        // SAFETY: in bounds (checked); `buf` is a distinct buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `at`.
    pub fn write(&self, at: usize, data: &[u8]) -> io::Result<()> {
        self.check(at, data.len())?;
        // SAFETY: in bounds (checked); `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(at), data.len()) };
        Ok(())
    }

    /// A volatile read of the 32-bit word at `at` (rounded down to 4 bytes).
    pub fn load_u32(&self, at: usize) -> io::Result<u32> {
        let at = at & !3;
        self.check(at, 4)?;
        // SAFETY: in bounds and aligned.
        Ok(unsafe { std::ptr::read_volatile(self.as_ptr().add(at).cast::<u32>()) })
    }

    /// A volatile write of the 32-bit word at `at` (rounded down to 4 bytes).
    pub fn store_u32(&self, at: usize, v: u32) -> io::Result<()> {
        let at = at & !3;
        self.check(at, 4)?;
        // SAFETY: in bounds and aligned.
        unsafe { std::ptr::write_volatile(self.as_ptr().add(at).cast::<u32>(), v) };
        Ok(())
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping made by `map`, not unmapped since.
        unsafe { sys::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn place_is_congruent_and_within_one_alignment() {
        for (base, off, skew, align) in [
            (0x7f00_0000_1000usize, 0u64, 0usize, HUGE_2M),
            (0x7f00_0000_1000, 3 << 30, 0, HUGE_1G),
            (0x7f00_4000_0000, (1 << 30) - 4096, 4096, HUGE_1G),
            (0x7f00_0020_0000, 12288, 0, HUGE_2M),
            (0x1000, 8192, 0, PAGE),
        ] {
            let a = place(base, off, skew, align);
            assert!(a >= base && a - base < align, "{a:#x} {base:#x}");
            assert_eq!(a % align, (off as usize + skew) % align, "{a:#x}");
        }
    }

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
        let path = std::env::temp_dir().join(format!("aligned-test-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        let rw = sys::PROT_READ | sys::PROT_WRITE;
        for skew in [0, PAGE] {
            let m = Aligned::map(f.as_raw_fd(), 2 << 20, 4 << 20, rw, HUGE_2M, skew).unwrap();
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
        let e = Aligned::map(f.as_raw_fd(), 0, 100, rw, HUGE_2M, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = Aligned::map(-1, 0, PAGE, rw, HUGE_2M, 0).unwrap_err();
        assert_eq!(errno_name(&e), "EBADF");
    }
}
