// SPDX-License-Identifier: GPL-2.0

//! Claiming a physical memory range, and the cache type x86 PAT records for it.
//!
//! `pci::Bar` requests *and* ioremaps a BAR with an uncached type. The shared-memory BAR of
//! ivshmem can be many GiB and is mapped to user space at fault time, where the kernel gives
//! each entry the type PAT has on record for the range (UC- when nothing is recorded). So the
//! region is claimed with the same `request_mem_region()` that `pci_request_region()` performs
//! for a memory BAR, and its type is recorded with a kernel mapping of the chosen type that the
//! driver never touches: with huge vmap (1 GiB or 2 MiB entries) it costs address space only.
//! Without PAT (arm64) the page protection of the user mapping alone gives the type: only the
//! chosen type is kept, for the same rules on switching it.
//!
//! PAT may grant another type than the one asked for: a write-back request where the MTRRs
//! make the range uncachable (the 32-bit PCI hole, under SeaBIOS) is recorded as UC-, and user
//! mappings then get UC-. The type each record got is read back from its kernel mapping
//! ([`Granted`]), so that the driver can say what mappings really get.

use kernel::{
    bindings,
    prelude::*, //
};

#[cfg(CONFIG_X86_PAT)]
use core::ptr::NonNull;

/// How the CPU caches a user mapping of the shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheMode {
    /// Write-back: the default. ivshmem's BAR2 is ordinary host RAM.
    WriteBack,
    /// Write-combining.
    WriteCombining,
    /// Uncached (UC-): what the sysfs `resource2` file gives.
    Uncached,
}

impl CacheMode {
    /// Every mode, in the order [`MemRegion::learn_cache_types`] records them: write-back
    /// last, the record probe leaves in place.
    const ALL: [CacheMode; 3] = [Self::WriteCombining, Self::Uncached, Self::WriteBack];

    fn index(self) -> usize {
        match self {
            Self::WriteBack => 0,
            Self::WriteCombining => 1,
            Self::Uncached => 2,
        }
    }
}

/// The cache type a user mapping of a [`MemRegion`] really gets for a requested
/// [`CacheMode`]: what PAT granted it on x86, the requested one elsewhere (nothing there
/// overrides the attribute the page protection selects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(CONFIG_X86_PAT), expect(dead_code))] // Only PAT grants another type.
pub(crate) enum Granted {
    WriteBack,
    WriteCombining,
    /// Uncached-minus: what PAT grants a write-back request the MTRRs refuse.
    UncachedMinus,
    /// Uncached (strong), write-through, write-protect: types only another record of the
    /// range could have left.
    Uncached,
    WriteThrough,
    WriteProtect,
}

impl From<CacheMode> for Granted {
    fn from(mode: CacheMode) -> Self {
        match mode {
            CacheMode::WriteBack => Self::WriteBack,
            CacheMode::WriteCombining => Self::WriteCombining,
            CacheMode::Uncached => Self::UncachedMinus,
        }
    }
}

impl Granted {
    /// The name `/sys/kernel/debug/x86/pat_memtype_list` gives the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::WriteBack => "write-back",
            Self::WriteCombining => "write-combining",
            Self::UncachedMinus => "uncached-minus",
            Self::Uncached => "uncached",
            Self::WriteThrough => "write-through",
            Self::WriteProtect => "write-protected",
        }
    }
}

/// The cache type of a whole [`MemRegion`] and, with PAT, the kernel mapping that records it.
struct CacheReservation {
    mode: CacheMode,
    #[cfg(CONFIG_X86_PAT)]
    _pat: PatRecord,
}

/// A kernel mapping of a whole [`MemRegion`], kept only so that PAT records its cache type.
///
/// # Invariants
///
/// `addr` was returned by an `ioremap*()` function for the region that owns this value, and is
/// unmapped exactly once, when the value is dropped.
#[cfg(CONFIG_X86_PAT)]
struct PatRecord {
    addr: NonNull<c_void>,
}

// SAFETY: The mapping is an address only; `iounmap()` may run on any thread.
#[cfg(CONFIG_X86_PAT)]
unsafe impl Send for PatRecord {}
// SAFETY: Nothing is done through a shared reference.
#[cfg(CONFIG_X86_PAT)]
unsafe impl Sync for PatRecord {}

#[cfg(CONFIG_X86_PAT)]
impl PatRecord {
    /// Maps `[start, start + len)`, which the caller has claimed, with `mode`; the mapping is
    /// only ever unmapped, never accessed. Fails with `ENOMEM` (no address space).
    fn new(start: u64, len: u64, mode: CacheMode) -> Result<Self> {
        let size = usize::try_from(len).map_err(|_| EINVAL)?;
        let addr = match mode {
            // SAFETY: The range is claimed by the caller; the mapping is never accessed.
            CacheMode::WriteBack => unsafe { bindings::ioremap_cache(start, size) },
            // SAFETY: As above.
            CacheMode::WriteCombining => unsafe { bindings::ioremap_wc(start, size) },
            // SAFETY: As above; `ioremap()` maps uncached-minus, the type of a sysfs
            // `resource` file.
            CacheMode::Uncached => unsafe { bindings::ioremap(start, size) },
        };
        // INVARIANT: `addr` was just returned by an `ioremap*()` function.
        Ok(Self {
            addr: NonNull::new(addr).ok_or(ENOMEM)?,
        })
    }
}

#[cfg(CONFIG_X86_PAT)]
extern "C" {
    /// `helpers.c`: the `enum page_cache_mode` of the kernel mapping at `addr`, or -1.
    fn ivshmem_kernel_cachemode(addr: *const c_void) -> c_int;
}

#[cfg(CONFIG_X86_PAT)]
impl PatRecord {
    /// The type PAT granted the record (its kernel mapping's type), if one the kernel names.
    fn granted(&self) -> Option<Granted> {
        // SAFETY: `addr` is a live kernel mapping (type invariant); the helper only walks the
        // kernel page tables to its entry and reads it.
        let mode = unsafe { ivshmem_kernel_cachemode(self.addr.as_ptr()) };
        let mode = u32::try_from(mode).ok()?;
        Some(match mode {
            bindings::page_cache_mode__PAGE_CACHE_MODE_WB => Granted::WriteBack,
            bindings::page_cache_mode__PAGE_CACHE_MODE_WC => Granted::WriteCombining,
            bindings::page_cache_mode__PAGE_CACHE_MODE_UC_MINUS => Granted::UncachedMinus,
            bindings::page_cache_mode__PAGE_CACHE_MODE_UC => Granted::Uncached,
            bindings::page_cache_mode__PAGE_CACHE_MODE_WT => Granted::WriteThrough,
            bindings::page_cache_mode__PAGE_CACHE_MODE_WP => Granted::WriteProtect,
            _ => return None,
        })
    }
}

#[cfg(CONFIG_X86_PAT)]
impl Drop for PatRecord {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `addr` came from `ioremap*()` and is unmapped only here.
        unsafe { bindings::iounmap(self.addr.as_ptr()) };
    }
}

/// A busy region of `iomem_resource`, named after its owner in `/proc/iomem`, and the cache
/// type PAT records for it.
///
/// # Invariants
///
/// `[start, start + len)` was claimed with `request_mem_region()` by [`MemRegion::request`] and
/// is released exactly once, when the value is dropped, after `cache` is unmapped.
pub(crate) struct MemRegion {
    cache: Option<CacheReservation>,
    /// What each mode's last record got, by [`CacheMode::index`].
    granted: [Option<Granted>; 3],
    start: u64,
    len: u64,
}

impl MemRegion {
    /// Claims `[start, start + len)` for `name`; fails with `EBUSY` if any part is claimed.
    pub(crate) fn request(start: u64, len: u64, name: &'static CStr) -> Result<Self> {
        if len == 0 {
            return Err(ENODEV);
        }
        // SAFETY: `name` is a NUL-terminated string that lives forever, as required since the
        // resource tree keeps the pointer; the range is plain data checked by the callee.
        let res = unsafe { bindings::request_mem_region(start, len, name.as_char_ptr()) };
        if res.is_null() {
            return Err(EBUSY);
        }
        // INVARIANT: the region was just claimed.
        Ok(Self {
            cache: None,
            granted: [None; 3],
            start,
            len,
        })
    }

    /// First physical address of the region.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Length of the region in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The cache type PAT has on record for the region, if any.
    pub(crate) fn cache_mode(&self) -> Option<CacheMode> {
        self.cache.as_ref().map(|c| c.mode)
    }

    /// Records `mode` as the region's cache type, replacing the previous record. Entries mapped
    /// from now on get what PAT grants `mode` ([`granted`](Self::granted)); entries mapped
    /// before keep theirs, so the caller switches only when nothing is mapped. On failure
    /// (`ENOMEM`: no address space) nothing is on record.
    pub(crate) fn set_cache_mode(&mut self, mode: CacheMode) -> Result {
        // PAT refuses two records of different types for one range: the old one goes first.
        self.cache = None;
        // The range is claimed by `self` (type invariant).
        #[cfg(CONFIG_X86_PAT)]
        let pat = PatRecord::new(self.start, self.len, mode)?;
        #[cfg(CONFIG_X86_PAT)]
        let granted = pat.granted();
        #[cfg(not(CONFIG_X86_PAT))]
        let granted = Some(Granted::from(mode));
        self.granted[mode.index()] = granted;
        self.cache = Some(CacheReservation {
            mode,
            #[cfg(CONFIG_X86_PAT)]
            _pat: pat,
        });
        Ok(())
    }

    /// Records each mode once to learn what PAT grants it, leaving write-back on record.
    pub(crate) fn learn_cache_types(&mut self) -> Result {
        for mode in CacheMode::ALL {
            self.set_cache_mode(mode)?;
        }
        Ok(())
    }

    /// What user mappings of `mode` get: known once a record of `mode` was made (all after
    /// [`learn_cache_types`](Self::learn_cache_types)).
    pub(crate) fn granted(&self, mode: CacheMode) -> Option<Granted> {
        self.granted[mode.index()]
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // The kernel mapping goes before the range is given back.
        self.cache = None;
        // SAFETY: By the type invariant the range was claimed by `request` and not yet released.
        unsafe { bindings::release_mem_region(self.start, self.len) };
    }
}
