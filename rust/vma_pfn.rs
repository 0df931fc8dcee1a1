// SPDX-License-Identifier: GPL-2.0

//! Mapping a physical range (a PCI BAR) into a user VMA, and revoking such mappings.
//!
//! The `kernel` crate's `VmaNew` can insert pages but not PFNs of device memory, and it cannot
//! choose a cache type. These are the few safe wrappers the driver needs, kept in one place.

use kernel::{
    bindings,
    error::to_result,
    fs::File,
    mm::virt::VmaNew,
    prelude::*, //
};

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

extern "C" {
    /// `pgprot_noncached()`, from `pgprot.c`.
    fn ivshmem_pgprot_noncached(prot: bindings::pgprot_t) -> bindings::pgprot_t;
}

/// Page offset (`vm_pgoff`) the user asked for: the mmap offset in pages.
pub(crate) fn vma_pgoff(vma: &VmaNew) -> usize {
    // SAFETY: `vma` is valid while it is being set up; `vm_pgoff` is plain data fixed by mmap.
    unsafe { (*vma.as_ptr()).vm_pgoff }
}

/// Maps the physical range `[phys, phys + len)` into `vma`, starting `vm_pgoff` pages into it.
///
/// The whole VMA is populated now (`vm_iomap_memory()`), which also registers the range with
/// x86 PAT under `mode`, so `/sys/kernel/debug/x86/pat_memtype_list` shows the type in use. The
/// VMA cannot grow, is not dumped and is marked as I/O memory (no `get_user_pages()`).
/// Fails with `EINVAL` if the VMA does not fit inside the range.
pub(crate) fn map_phys_range(vma: &VmaNew, phys: u64, len: u64, mode: CacheMode) -> Result {
    vma.set_io();
    vma.set_dontexpand();
    vma.set_dontdump();

    let raw = vma.as_ptr();
    // SAFETY: `vma` is being set up by `mmap` with the mmap lock held for writing, so
    // `vm_page_prot` may be rewritten, exactly as C drivers do before remapping.
    unsafe {
        let prot = (*raw).vm_page_prot;
        (*raw).vm_page_prot = match mode {
            CacheMode::WriteBack => prot,
            CacheMode::WriteCombining => bindings::pgprot_writecombine(prot),
            CacheMode::Uncached => ivshmem_pgprot_noncached(prot),
        };
    }
    let len = usize::try_from(len).map_err(|_| EINVAL)?;
    // SAFETY: `raw` is a VMA under setup (see above); `vm_iomap_memory` checks that the VMA plus
    // `vm_pgoff` lies inside `[phys, phys + len)`, and the caller owns that range.
    to_result(unsafe { bindings::vm_iomap_memory(raw, phys, len) })
}

/// The page-cache mapping of an open file's inode: the index of every VMA that maps the file.
///
/// # Invariants
///
/// `0` is the `f_mapping` of a file that stays open for as long as this value exists.
pub(crate) struct FileMappings(NonNull<bindings::address_space>);

// SAFETY: an `address_space` may be used from any thread; `unmap_mapping_range` locks it.
unsafe impl Send for FileMappings {}
// SAFETY: the only operation, `zap_all`, takes the `address_space`'s own locks.
unsafe impl Sync for FileMappings {}

impl FileMappings {
    /// Remembers where `file`'s mappings are indexed.
    ///
    /// # Safety
    ///
    /// The returned value must be dropped before `file` is released.
    pub(crate) unsafe fn new(file: &File) -> Result<Self> {
        // SAFETY: `file` is a valid open file; `f_mapping` is set before `open` is called.
        let mapping = unsafe { (*file.as_ptr()).f_mapping };
        // INVARIANT: the caller keeps `file` open while `Self` lives.
        NonNull::new(mapping).map(Self).ok_or(EINVAL)
    }

    /// Whether `self` and `other` are the same mapping.
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    /// Removes every page-table entry of every user mapping of the file. A PFN mapping has no
    /// `fault` handler, so a later access raises `SIGBUS` instead of reaching stale memory.
    pub(crate) fn zap_all(&self) {
        // SAFETY: by the type invariant the mapping is alive; a length of 0 means "to the end".
        unsafe { bindings::unmap_mapping_range(self.0.as_ptr(), 0, 0, 1) };
    }
}
