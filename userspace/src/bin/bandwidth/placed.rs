//! Private memory placed relative to the shared mapping, so that a private copy differs from a
//! shared one in the memory only, not in address layout.
//!
//! How fast a large memcpy runs depends on where its source and destination lie relative to
//! each other, not only on the memory: cache sets, 4 KiB aliasing and, under QEMU's TCG, the
//! direct-mapped software TLB (up to 2^22 entries of 4 KiB) are indexed by address. In the lab
//! a 4 KiB change in the distance between source and shared mapping alone made writes to
//! shared memory three times slower. So the private twin of the mapping lies a multiple of
//! [`STRIDE`] away from it, where all of these index alike, and the buffer both copy from or to
//! lies [`GAP`] away from both, where none of them puts its pages and theirs in one slot.

use std::io;
use std::ptr::NonNull;

use ivshmem::os::{self, MapFlags, ProtFlags};

/// A multiple of the span of every address-indexed structure above (16 GiB).
pub const STRIDE: usize = 1 << 34;

/// About a third of every power of two from 8 KiB to 16 GiB away from a multiple of it.
pub const GAP: usize = 0x1_5555_5000;

/// Private anonymous memory, zero-filled, unmapped on drop.
#[derive(Debug)]
pub struct Anon {
    ptr: NonNull<u8>,
    len: usize,
}

impl Anon {
    /// `len` bytes anywhere (page-aligned).
    pub fn new(len: usize) -> io::Result<Self> {
        Self::map(std::ptr::null_mut(), len, MapFlags::PRIVATE)
    }

    /// `len` bytes at `addr` exactly, if that range is free.
    fn at(addr: usize, len: usize) -> Option<Self> {
        let m = Self::map(
            addr as *mut u8,
            len,
            MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
        )
        .ok()?;
        // A kernel without MAP_FIXED_NOREPLACE takes the address as a hint only.
        (m.ptr.as_ptr() as usize == addr).then_some(m)
    }

    fn map(addr: *mut u8, len: usize, flags: MapFlags) -> io::Result<Self> {
        let rw = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: A fresh private anonymous mapping, which only this value reaches;
        // MAP_FIXED_NOREPLACE never replaces one.
        let p = unsafe { os::mmap(addr.cast(), len, rw, flags, None, 0) }?;
        Ok(Self { ptr: p.cast(), len })
    }

    /// `len` bytes at `like` plus or minus `gap` plus a multiple of [`STRIDE`], the nearest
    /// free one; `None` if none of the candidates is free.
    pub fn placed(like: *const u8, gap: usize, len: usize) -> Option<Self> {
        let like = like as usize;
        (0..=8usize)
            .filter_map(|k| k.checked_mul(STRIDE)?.checked_add(gap))
            .flat_map(|d| [like.checked_sub(d), like.checked_add(d)])
            .flatten()
            .filter(|&addr| addr != like)
            .find_map(|addr| Self::at(addr, len))
    }
}

impl std::ops::Deref for Anon {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` is a live private mapping that only this value reaches.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Anon {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: As in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is the mapping made by `map`, not unmapped since, and no
        // reference into it outlives `self`.
        let _ = unsafe { os::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anywhere_is_page_aligned_zeroed_and_writable() {
        let mut a = Anon::new(3 * 4096 + 5).unwrap();
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        assert_eq!(a.len(), 3 * 4096 + 5);
        assert!(a.iter().all(|&b| b == 0));
        a[3 * 4096 + 4] = 9;
        assert_eq!(a[3 * 4096 + 4], 9);
    }

    #[test]
    fn placed_at_the_gap_plus_a_multiple_of_the_stride() {
        let like = Anon::new(1 << 20).unwrap();
        let a = like.as_ptr() as usize;
        let mut twin = Anon::placed(like.as_ptr(), 0, 1 << 20).expect("no free candidate");
        let b = twin.as_ptr() as usize;
        assert_ne!(a, b);
        assert_eq!(a.abs_diff(b) % STRIDE, 0, "{a:#x} {b:#x}");
        twin[0] = 1;
        assert_eq!(like[0], 0, "the twin is its own memory");
        let buf = Anon::placed(like.as_ptr(), GAP, 1 << 20).expect("no free candidate");
        let d = buf.as_ptr() as usize;
        assert!(
            [GAP, STRIDE - GAP].contains(&(a.abs_diff(d) % STRIDE)),
            "{a:#x} {d:#x}"
        );
        // The buffer is as far from the twin as from the mapping, modulo the stride.
        assert_eq!(d.wrapping_sub(a) % STRIDE, d.wrapping_sub(b) % STRIDE);
    }

    #[test]
    fn gap_is_far_from_every_power_of_two() {
        for k in 13..=34 {
            let m = GAP % (1usize << k);
            let dist = m.min((1 << k) - m);
            assert!(dist >= (1 << k) / 4, "2^{k}: {m:#x}");
        }
    }

    #[test]
    fn an_occupied_address_is_refused() {
        let a = Anon::new(8192).unwrap();
        assert!(Anon::at(a.as_ptr() as usize, 8192).is_none());
    }
}
