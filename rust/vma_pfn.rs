// SPDX-License-Identifier: GPL-2.0

//! Mapping a claimed physical range (a PCI BAR) into user VMAs at fault time, with huge entries.
//!
//! The driver's side of PFN mappings, on the would-be `kernel` crate abstractions of
//! `vma_pfnmap.rs` and `vm_ops.rs`, in the shape of VFIO's BAR mappings
//! (`vfio_pci_mmap_huge_fault()`): `mmap` inserts nothing, so it
//! costs the same for any size; a fault inserts a 2 MiB (PMD) entry where the user address, the
//! physical address and the VMA allow it, a 4 KiB entry elsewhere. Only a
//! range the driver has claimed ([`MemRegion`]) can be mapped, and only inside its bounds: safe
//! code cannot map arbitrary physical memory.
//!
//! The cache type of an entry is the VMA's page protection, except on x86 with PAT, where
//! `vmf_insert_pfn*()` take it from PAT's record of the physical range
//! ([`MemRegion::set_cache_mode`]).

use kernel::{
    bindings,
    mm::virt::{
        VmaNew,
        VmaRef, //
    },
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
};

use core::marker::PhantomData;

use crate::{
    mem_region::{
        CacheMode,
        MemRegion, //
    },
    vm_ops::{
        VmFault,
        VmOperations,
        VmaNewOps, //
    },
    vma_pfnmap::{
        VmaNewPfn,
        VmaPfnMap,
        VmaRefPgoff, //
    },
};

/// `PMD_ORDER`. bindgen finds it where `PMD_SHIFT` is a number (x86), not on arm64, where
/// `PMD_SHIFT` is `ARM64_HW_PGTABLE_LEVEL_SHIFT(2)`: `PAGE_SHIFT - 3` bits above `PAGE_SHIFT`
/// (`helpers.c` checks it at build time).
#[cfg(CONFIG_ARM64)]
const PMD_ORDER: u32 = PAGE_SHIFT as u32 - 3;
#[cfg(not(CONFIG_ARM64))]
const PMD_ORDER: u32 = bindings::PMD_ORDER;

/// The owner of the memory that fault-mapped VMAs show: the driver's per-device state.
///
/// Each VMA holds a reference to its source ([`Arc`]) from [`install`] until the VMA is closed.
pub(crate) trait PfnSource: Send + Sync + Sized + 'static {
    /// Calls `insert` with the region to map, under whatever keeps the region and its record
    /// of mappings stable meanwhile; `None` if there is nothing to map any more (the device is
    /// gone), and the access raises `SIGBUS`.
    fn with_region<R>(&self, insert: impl FnOnce(&MemRegion) -> R) -> Option<R>;

    /// A VMA that maps `self` was created by copying another (fork, split, mremap). [`install`]
    /// does not call this: the mmap that installs a VMA counts it itself.
    fn vma_opened(&self, vma: &VmaRef);

    /// A VMA that maps `self` goes away (munmap, exit).
    fn vma_closed(&self);
}

/// Makes `vma` a view of `source`'s region from `vm_pgoff` on, mapped at fault time with
/// `mode`. Fails with `EINVAL` if the VMA could become a private copy (which PFN mappings
/// cannot be); the caller checks the bounds against its region first, and counts the VMA as
/// opened once this succeeds. Nothing is inserted yet.
///
/// This is the last fallible step of an `mmap`: should `mmap` fail after it, the kernel frees
/// the VMA without calling `close`, and the VMA's reference to `source` would leak.
pub(crate) fn install<T: PfnSource>(vma: &VmaNew, source: Arc<T>, mode: CacheMode) -> Result {
    vma.set_pfnmap()?;
    match mode {
        CacheMode::WriteBack => {}
        CacheMode::WriteCombining => vma.set_writecombine(),
        CacheMode::Uncached => vma.set_uncached(),
    }
    vma.set_vm_ops::<Ops<T>>(source);
    Ok(())
}

/// The entry of some order that maps a faulting address.
struct Entry {
    /// Offset of the entry in the region, in pages.
    page: usize,
}

impl Entry {
    /// The entry of `order` that maps `address` in the VMA `[start, end)` that shows the region
    /// from page `pgoff` on, if the entry fits the VMA: it must neither start before the VMA
    /// nor end after it.
    fn new(start: usize, end: usize, pgoff: usize, address: usize, order: u32) -> Option<Self> {
        let size = PAGE_SIZE << order;
        let first = address & !(size - 1);
        if first < start || first.checked_add(size)? > end {
            return None;
        }
        let page = pgoff.checked_add((first - start) >> PAGE_SHIFT)?;
        Some(Self { page })
    }

    /// The entry's first PFN in `region`, if the entry lies inside it and the PFN is aligned
    /// for `order`.
    fn pfn(&self, region: &MemRegion, order: u32) -> Option<usize> {
        self.pfn_in(region.start(), region.len(), order)
    }

    /// The entry's first PFN in the physical range `[start, start + len)`, if the entry lies
    /// inside it and the PFN is aligned for `order`.
    fn pfn_in(&self, start: u64, len: u64, order: u32) -> Option<usize> {
        let pages = usize::try_from(len >> PAGE_SHIFT).ok()?;
        if self.page.checked_add(1 << order)? > pages {
            return None;
        }
        let pfn = usize::try_from(start >> PAGE_SHIFT)
            .ok()?
            .checked_add(self.page)?;
        (pfn & ((1 << order) - 1) == 0).then_some(pfn)
    }
}

/// The entry arithmetic, run by KUnit when the module is loaded on a kernel with
/// `CONFIG_KUNIT=y` (the lab's debug kernel; the VM suite checks the results in dmesg).
#[kernel::macros::kunit_tests(ivshmem_vma_pfn)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    /// A VMA of 8 MiB at a 2 MiB-aligned address, showing the region from page 0.
    const START: usize = 0x7f00_0000_0000;
    const END: usize = START + 8 * MIB;

    #[test]
    fn a_page_entry_maps_its_page_of_the_region() {
        let e = Entry::new(START, END, 3, START + 5 * PAGE_SIZE + 17, 0).unwrap();
        assert_eq!(e.page, 3 + 5);
        // A region at 4 GiB: its PFN 0x100000.
        assert_eq!(e.pfn_in(1 << 32, 64 << 20, 0), Some((1 << 20) + 8));
    }

    #[test]
    fn a_pmd_entry_must_fit_the_vma_and_be_aligned_in_the_region() {
        let two_mib = (2 * MIB / PAGE_SIZE).trailing_zeros();
        let e = Entry::new(START, END, 0, START + 3 * MIB + 5, two_mib).unwrap();
        assert_eq!(e.page, 2 * MIB / PAGE_SIZE);
        assert_eq!(e.pfn_in(1 << 32, 64 << 20, two_mib), Some((1 << 20) + 512));
        // A region that starts 4 KiB off 2 MiB: no PFN aligned for the entry.
        assert_eq!(e.pfn_in((1 << 32) + 4096, 64 << 20, two_mib), None);
        // A VMA that starts 4 KiB off 2 MiB: the entry would start before it.
        assert!(Entry::new(START + PAGE_SIZE, END, 0, START + PAGE_SIZE, two_mib).is_none());
        // Nor may it end after the VMA.
        assert!(Entry::new(START, START + 3 * MIB, 0, START + 2 * MIB, two_mib).is_none());
    }

    #[test]
    fn an_entry_beyond_the_region_or_overflowing_has_no_pfn() {
        let e = Entry::new(START, END, 16383, START, 0).unwrap();
        assert_eq!(e.pfn_in(0, 64 << 20, 0), Some(16383));
        let past = Entry::new(START, END, 16384, START, 0).unwrap();
        assert_eq!(past.pfn_in(0, 64 << 20, 0), None);
        assert!(Entry::new(START, END, usize::MAX, START + PAGE_SIZE, 0).is_none());
    }
}

/// The operations of the VMAs of a `T`.
struct Ops<T>(PhantomData<T>);

#[vtable]
impl<T: PfnSource> VmOperations for Ops<T> {
    type Data = Arc<T>;

    fn open(source: ArcBorrow<'_, T>, vma: &VmaRef) -> Arc<T> {
        source.vma_opened(vma);
        source.into()
    }

    fn close(source: Arc<T>) {
        source.vma_closed();
    }

    /// Inserts the entry of `order` (0 or PMD) that maps the faulting address, or asks the
    /// kernel to fall back to a smaller one.
    ///
    /// 1 GiB (PUD) entries are refused: on 7.3.4, splitting a VMA inside one (a partial munmap,
    /// mprotect or mlock at an address that is not 2 MiB-aligned) oopses in
    /// `split_huge_pmd_locked()`, because `mm_find_pmd()` reads a PUD leaf as a page table
    /// (found by `ivshmem-fuzz`). 2 MiB entries already keep the page tables of any size small.
    fn huge_fault(source: ArcBorrow<'_, T>, vmf: &VmFault, order: u32) -> bindings::vm_fault_t {
        const FALLBACK: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_FALLBACK;
        const SIGBUS: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_SIGBUS;
        // `install` made every VMA of `Ops` a shared PFN map.
        let Some(vma) = VmaPfnMap::from_vma(vmf.vma()) else {
            return SIGBUS;
        };
        let huge = match order {
            0 => false,
            #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
            PMD_ORDER => true,
            _ => return FALLBACK,
        };
        let address = vmf.address();
        let Some(entry) = Entry::new(vma.start(), vma.end(), vma.pgoff(), address, order) else {
            return if huge { FALLBACK } else { SIGBUS };
        };
        source
            .with_region(|region| {
                let Some(pfn) = entry.pfn(region, order) else {
                    // Outside the region (it cannot be: mmap checked the bounds) or, for a
                    // huge entry, a physical address that is not aligned for it.
                    return if huge { FALLBACK } else { SIGBUS };
                };
                match order {
                    // SAFETY: `pfn` lies inside the region `source` claimed (checked by
                    // `Entry::pfn`), which stays claimed until `revoke` zapped every entry;
                    // the faulting VMA is locked for the call.
                    0 => unsafe { vma.insert_pfn(address, pfn) },
                    // SAFETY: As above; the PMD-sized entry lies inside the VMA and the region
                    // and starts at a PMD-aligned PFN (checked by `Entry`).
                    #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
                    PMD_ORDER => unsafe { vma.insert_pfn_pmd(vmf, pfn, vmf.is_write()) },
                    _ => FALLBACK,
                }
            })
            .unwrap_or(SIGBUS)
    }
}
