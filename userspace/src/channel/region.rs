//! The shared memory a layout lives in: a raw range, kept alive by reference counting, with
//! bounds-checked atomic words and copies for the (cold) layout code.

use std::alloc::{self, Layout as AllocLayout};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use super::reclaim::Sightings;
use super::ChannelError;
use crate::sys;

/// A range of shared memory that holds a channel layout.
///
/// Cheap to clone; the memory stays mapped until the last clone and the last channel opened on
/// it are dropped. Nothing here hands out `&[u8]` into the region: the peer may write any byte
/// at any time.
#[derive(Clone)]
pub struct Region {
    pub(crate) mem: Arc<Mem>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.mem.base)
            .field("len", &self.mem.len)
            .finish()
    }
}

/// How the memory of a [`Region`] goes away.
enum Owner {
    /// The caller of [`Region::from_raw`] keeps it.
    Borrowed,
    /// A zeroed heap block from [`Region::anonymous`].
    Heap(AllocLayout),
    /// A mapping made by [`Region::map_file`].
    Mmap,
    /// Something that unmaps on drop, such as a [`crate::Mapping`].
    Keep(#[allow(dead_code)] Box<dyn Send + Sync>),
}

/// The memory behind a region.
///
/// # Invariants
///
/// `base` is 8-byte aligned and valid for reads and writes of `len` bytes for as long as this
/// value lives; all Rust accesses to it are atomics on aligned words or raw copies.
pub(crate) struct Mem {
    base: NonNull<u8>,
    len: usize,
    owner: Owner,
    /// Where the peer's part starts in a pair ([`Region::map_pair`]): `[0, peer_at)` is this
    /// end's own memory, `[peer_at, len)` its peer's, mapped read-only. `None`: one region
    /// that both ends write.
    pub(crate) peer_at: Option<usize>,
    /// What this process saw of the region's arena over time (layout version 3).
    pub(crate) sightings: Mutex<Sightings>,
}

// SAFETY: `Mem` is a pointer to shared memory that every user accesses through atomics and raw
// copies only (see the invariants); no thread-local state is involved.
unsafe impl Send for Mem {}
// SAFETY: As above: `&Mem` only gives atomics and bounds-checked raw copies.
unsafe impl Sync for Mem {}

impl Drop for Mem {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Heap(layout) => {
                // SAFETY: `base` came from `alloc_zeroed(layout)` in `Region::anonymous`.
                unsafe { alloc::dealloc(self.base.as_ptr(), *layout) }
            }
            Owner::Mmap => {
                // SAFETY: `base`/`len` describe the mapping made in `Region::map_file`.
                unsafe { sys::munmap(self.base.as_ptr().cast(), self.len) };
            }
            Owner::Borrowed | Owner::Keep(_) => {}
        }
    }
}

impl Region {
    /// A zeroed, page-aligned block of private heap memory: two channel ends in one process
    /// (tests, examples) or a layout prepared before it is copied elsewhere.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        let layout = AllocLayout::from_size_align(len.max(1), 4096)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region size too large"))?;
        // SAFETY: The layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self::with(base, len, Owner::Heap(layout)))
    }

    /// Maps all of `file` shared, read-write: a memfd, a file in `/dev/shm` (the host side of
    /// ivshmem), or a `/dev/ivshmemN` node whose size the file reports.
    pub fn map_file(file: &File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty file",
            ));
        }
        let base = sys::map_shared(file.as_raw_fd(), len, 0)?;
        Ok(Self::with(base, len, Owner::Mmap))
    }

    /// Maps two files as one region for the isolated topology (README, "Isolation"): all of
    /// `own` read-write, then all of `peer` read-only. Each end of a channel writes only its
    /// own memory and reads its peer's; the other end passes the same two files the other way
    /// round. `peer` may be open read-only. Each is a regular file (its size) or an ivshmem
    /// device node (its shared memory). Fails if both are the same file, or if `own`'s size is
    /// not a whole number of pages.
    pub fn map_pair(own: &File, peer: &File) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let (mo, mp) = (own.metadata()?, peer.metadata()?);
        let id = |m: &std::fs::Metadata| (m.dev(), m.ino(), m.rdev());
        if id(&mo) == id(&mp) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the peer's memory is this end's own: give each end its own device and the \
                 other's as its peer",
            ));
        }
        let (own_len, peer_len) = (len_of(own, &mo)?, len_of(peer, &mp)?);
        let base = sys::map_pair(own.as_raw_fd(), own_len, peer.as_raw_fd(), peer_len)?;
        let mut r = Self::with(base, own_len + peer_len, Owner::Mmap);
        Arc::get_mut(&mut r.mem).expect("a new region").peer_at = Some(own_len);
        Ok(r)
    }

    /// Whether the region is a pair ([`Region::map_pair`]): this end's own memory and its
    /// peer's, read-only.
    pub fn is_pair(&self) -> bool {
        self.mem.peer_at.is_some()
    }

    /// Takes over a device mapping; it is unmapped when the region and its channels are gone.
    pub fn from_mapping(map: crate::Mapping) -> Self {
        let base = NonNull::new(map.as_ptr()).expect("a mapping is never at NULL");
        let len = map.len();
        Self::with(base, len, Owner::Keep(Box::new(map)))
    }

    /// A region over memory the caller manages.
    ///
    /// Fails if `ptr` is NULL or not 8-byte aligned (64 is best: the layout puts each index on
    /// its own cache line relative to the base).
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes until the last clone of the
    /// region and the last channel opened on it are dropped, and no Rust reference to those
    /// bytes may exist meanwhile (other processes or VMs may of course write them).
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Result<Self, ChannelError> {
        let base = NonNull::new(ptr)
            .ok_or_else(|| ChannelError::Invalid("region pointer is NULL".into()))?;
        if !(ptr as usize).is_multiple_of(8) {
            return Err(ChannelError::Invalid(format!(
                "region pointer {ptr:p} is not 8-byte aligned"
            )));
        }
        Ok(Self::with(base, len, Owner::Borrowed))
    }

    fn with(base: NonNull<u8>, len: usize, owner: Owner) -> Self {
        Self {
            mem: Arc::new(Mem {
                base,
                len,
                owner,
                peer_at: None,
                sightings: Mutex::new(Sightings::default()),
            }),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len
    }

    /// Whether the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }

    /// The start of the region. Other processes or VMs may change its bytes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mem.base.as_ptr()
    }
}

/// The bytes to map of `file`: a regular file's size, or an ivshmem device's shared memory.
fn len_of(file: &File, m: &std::fs::Metadata) -> io::Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    let len = if m.file_type().is_char_device() {
        crate::device::shared_size(file.as_fd())?
    } else {
        m.len()
    };
    usize::try_from(len)
        .ok()
        .filter(|&l| l > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty or too large to map"))
}

impl Mem {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Checks that `len` bytes at `off` are inside the region and `off` is `align`-aligned.
    pub(crate) fn check(&self, off: u64, len: u64, align: u64) -> Result<usize, ChannelError> {
        match off.checked_add(len) {
            Some(end) if end <= self.len as u64 && off.is_multiple_of(align) => Ok(off as usize),
            _ => Err(ChannelError::Corrupt(format!(
                "{len} bytes at offset {off:#x} (alignment {align}) are outside the \
                 {}-byte region",
                self.len
            ))),
        }
    }

    /// The 32-bit word at `off`.
    pub(crate) fn u32_at(&self, off: u64) -> Result<&AtomicU32, ChannelError> {
        let off = self.check(off, 4, 4)?;
        // SAFETY: The word is inside the region and 4-aligned (checked, base is 8-aligned); the
        // region outlives `&self`, and its words are only ever accessed as atomics of this size
        // or copied raw under the layout's protocol.
        Ok(unsafe { AtomicU32::from_ptr(self.base().add(off).cast()) })
    }

    /// The 64-bit word at `off`.
    pub(crate) fn u64_at(&self, off: u64) -> Result<&AtomicU64, ChannelError> {
        let off = self.check(off, 8, 8)?;
        // SAFETY: As in `u32_at`, with 8-byte alignment checked.
        Ok(unsafe { AtomicU64::from_ptr(self.base().add(off).cast()) })
    }

    /// Copies `buf.len()` bytes at `off` into `buf`.
    pub(crate) fn copy_out(&self, off: u64, buf: &mut [u8]) -> Result<(), ChannelError> {
        let off = self.check(off, buf.len() as u64, 1)?;
        // SAFETY: The range is inside the region (checked) and `buf` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(self.base().add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to `off`.
    pub(crate) fn copy_in(&self, off: u64, data: &[u8]) -> Result<(), ChannelError> {
        let off = self.check(off, data.len() as u64, 1)?;
        // SAFETY: The range is inside the region (checked) and `data` is private memory.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base().add(off), data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `off` to zero.
    pub(crate) fn zero(&self, off: u64, len: u64) -> Result<(), ChannelError> {
        let off = self.check(off, len, 1)?;
        // SAFETY: The range is inside the region (checked).
        unsafe { std::ptr::write_bytes(self.base().add(off), 0, len as usize) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_copies_are_bounds_checked() {
        let r = Region::anonymous(64).unwrap();
        assert!(r.mem.u64_at(56).is_ok());
        assert!(matches!(r.mem.u64_at(60), Err(ChannelError::Corrupt(_))));
        assert!(matches!(r.mem.u64_at(4), Err(ChannelError::Corrupt(_))));
        assert!(matches!(
            r.mem.u32_at(u64::MAX - 1),
            Err(ChannelError::Corrupt(_))
        ));
        r.mem.copy_in(60, b"abcd").unwrap();
        assert!(r.mem.copy_in(61, b"abcd").is_err());
        let mut b = [0u8; 4];
        r.mem.copy_out(60, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        r.mem.zero(60, 4).unwrap();
        r.mem.copy_out(60, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn from_raw_refuses_null_and_misaligned() {
        // SAFETY: Both calls fail before the pointer is used.
        unsafe {
            assert!(Region::from_raw(std::ptr::null_mut(), 8).is_err());
            assert!(Region::from_raw(4 as *mut u8, 8).is_err());
        }
    }
}
