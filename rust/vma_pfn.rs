// SPDX-License-Identifier: GPL-2.0

//! Mapping a claimed physical range (a PCI BAR) into a user VMA with a chosen cache type.
//!
//! The `kernel` crate's `VmaNew` can insert pages but not PFNs of device memory, and it cannot
//! choose a cache type. This is the safe wrapper the driver needs, kept in one place. Only a
//! range the driver has claimed ([`MemRegion`]) can be mapped: safe code cannot map arbitrary
//! physical memory.

use kernel::{
    bindings,
    error::to_result,
    mm::virt::VmaNew,
    prelude::*, //
};

use crate::mem_region::MemRegion;

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

/// Sets the cache type of the pages `vma` will map.
fn set_cache_mode(vma: &VmaNew, mode: CacheMode) {
    let raw = vma.as_ptr();
    // SAFETY: `vma` is being set up by `mmap`, so it is valid.
    let prot = unsafe { (*raw).vm_page_prot };
    let prot = match mode {
        CacheMode::WriteBack => prot,
        // SAFETY: computes a protection value; no memory is touched.
        CacheMode::WriteCombining => unsafe { bindings::pgprot_writecombine(prot) },
        // SAFETY: as above (a C wrapper around the `pgprot_noncached()` macro).
        CacheMode::Uncached => unsafe { ivshmem_pgprot_noncached(prot) },
    };
    // SAFETY: `vma` is being set up with the mmap lock held for writing, so `vm_page_prot` may
    // be rewritten, exactly as C drivers do before remapping.
    unsafe { (*raw).vm_page_prot = prot };
}

/// Maps `region` into `vma`, starting `vm_pgoff` pages into the region.
///
/// The whole VMA is populated now (`vm_iomap_memory()`), which also registers the range with
/// x86 PAT under `mode`, so `/sys/kernel/debug/x86/pat_memtype_list` shows the type in use. The
/// VMA cannot grow, is not dumped and is marked as I/O memory (no `get_user_pages()`).
/// Fails with `EINVAL` if the VMA does not fit inside the region.
pub(crate) fn map_region(vma: &VmaNew, region: &MemRegion, mode: CacheMode) -> Result {
    vma.set_io();
    vma.set_dontexpand();
    vma.set_dontdump();
    set_cache_mode(vma, mode);
    let len = usize::try_from(region.len()).map_err(|_| EINVAL)?;
    // SAFETY: `vma` is a VMA under setup (see above); `vm_iomap_memory` checks that the VMA plus
    // `vm_pgoff` lies inside `[start, start + len)`, a range the driver owns while `region`
    // lives (its type invariant).
    to_result(unsafe { bindings::vm_iomap_memory(vma.as_ptr(), region.start(), len) })
}
