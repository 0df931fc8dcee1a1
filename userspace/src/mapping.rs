//! A mapping of shared memory, unmapped on drop.
//!
//! Another VM may write the same bytes at any time, so this type hands out no `&[u8]` into the
//! mapping: copies in and out (`read`, `write`) and single volatile words are the safe surface;
//! the raw pointer is there for experts.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use crate::device::Device;
use crate::{sys, Error, Result};

/// A shared mapping of part of the ivshmem region.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    offset: u64,
    path: String,
}

// SAFETY: The mapping is plain shared memory; every access goes through raw pointers.
unsafe impl Send for Mapping {}
// SAFETY: As above: `&Mapping` methods only do raw, bounds-checked copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn new(dev: &Device, offset: u64, len: usize) -> Result<Self> {
        let ptr = sys::map_shared(dev.as_raw_fd(), len, offset)
            .map_err(|e| Error::new(dev.path(), "mmap", e))?;
        Ok(Self {
            ptr,
            len,
            offset,
            path: dev.path().to_string(),
        })
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the mapping in the shared memory.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The start of the mapping. Other VMs may change the memory at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, at: usize, len: usize, op: &'static str) -> Result<()> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::invalid(
                &self.path,
                op,
                format!("{len} bytes at {at} exceed the {}-byte mapping", self.len),
            )),
        }
    }

    /// Copies `buf.len()` bytes from the mapping at `at` into `buf`.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<()> {
        self.check(at, buf.len(), "read")?;
        // SAFETY: The range is inside the mapping (checked) and `buf` is a distinct buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into the mapping at `at`.
    pub fn write(&self, at: usize, data: &[u8]) -> Result<()> {
        self.check(at, data.len(), "write")?;
        // SAFETY: The range is inside the mapping (checked) and `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(at), data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `at` to `byte`.
    pub fn fill(&self, at: usize, len: usize, byte: u8) -> Result<()> {
        self.check(at, len, "fill")?;
        // SAFETY: The range is inside the mapping (checked).
        unsafe { std::ptr::write_bytes(self.as_ptr().add(at), byte, len) };
        Ok(())
    }

    /// Reads the 32-bit word at `at` (4-byte aligned) with a volatile load, then an acquire
    /// fence: what a flag or header word written by another VM needs.
    pub fn load_u32(&self, at: usize) -> Result<u32> {
        self.check_word(at, "load")?;
        // SAFETY: In bounds and aligned (checked).
        let v = unsafe { std::ptr::read_volatile(self.as_ptr().add(at).cast::<u32>()) };
        fence(Ordering::Acquire);
        Ok(v)
    }

    /// Writes the 32-bit word at `at` (4-byte aligned) after a release fence, with a volatile
    /// store: everything written before is visible to a reader that sees this word.
    pub fn store_u32(&self, at: usize, v: u32) -> Result<()> {
        self.check_word(at, "store")?;
        fence(Ordering::Release);
        // SAFETY: In bounds and aligned (checked).
        unsafe { std::ptr::write_volatile(self.as_ptr().add(at).cast::<u32>(), v) };
        Ok(())
    }

    fn check_word(&self, at: usize, op: &'static str) -> Result<()> {
        self.check(at, 4, op)?;
        if !at.is_multiple_of(4) {
            return Err(Error::invalid(
                &self.path,
                op,
                format!("offset {at} is not 4-byte aligned"),
            ));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping made by `new` and not unmapped since.
        unsafe { sys::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
