// SPDX-License-Identifier: GPL-2.0

//! Mapping a claimed physical range (a PCI BAR) into user VMAs at fault time, with huge entries.
//!
//! The `kernel` crate's `VmaNew` can insert pages but not PFNs of device memory, and has no
//! `vm_operations_struct`. This is the safe wrapper the driver needs, kept in one place, in the
//! shape of VFIO's BAR mappings (`vfio_pci_mmap_huge_fault()`): `mmap` inserts nothing, so it
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
    ffi::{
        c_uint,
        c_void, //
    },
    mm::virt::{
        flags,
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

use crate::mem_region::{
    CacheMode,
    MemRegion, //
};

/// `PMD_ORDER`. bindgen finds it where `PMD_SHIFT` is a number (x86), not on arm64, where
/// `PMD_SHIFT` is `ARM64_HW_PGTABLE_LEVEL_SHIFT(2)`: `PAGE_SHIFT - 3` bits above `PAGE_SHIFT`
/// (`helpers.c` checks it at build time).
#[cfg(CONFIG_ARM64)]
const PMD_ORDER: c_uint = PAGE_SHIFT as c_uint - 3;
#[cfg(not(CONFIG_ARM64))]
const PMD_ORDER: c_uint = bindings::PMD_ORDER;

extern "C" {
    /// `pgprot_noncached()`, from `helpers.c`.
    fn ivshmem_pgprot_noncached(prot: bindings::pgprot_t) -> bindings::pgprot_t;
    /// `pgprot_writecombine()`, from `helpers.c`.
    fn ivshmem_pgprot_writecombine(prot: bindings::pgprot_t) -> bindings::pgprot_t;
}

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

/// Page offset (`vm_pgoff`) the user asked for: the mmap offset in pages.
pub(crate) fn vma_pgoff(vma: &VmaNew) -> usize {
    // SAFETY: `vma` is valid while it is being set up; `vm_pgoff` is plain data fixed by mmap.
    unsafe { (*vma.as_ptr()).vm_pgoff }
}

/// Sets the cache type of the entries `vma` will get.
fn set_cache_mode(vma: &VmaNew, mode: CacheMode) {
    let raw = vma.as_ptr();
    // SAFETY: `vma` is being set up by `mmap`, so it is valid.
    let prot = unsafe { (*raw).vm_page_prot };
    let prot = match mode {
        CacheMode::WriteBack => prot,
        // SAFETY: Computes a protection value; no memory is touched (a C wrapper around
        // `pgprot_writecombine()`, a macro on arm64).
        CacheMode::WriteCombining => unsafe { ivshmem_pgprot_writecombine(prot) },
        // SAFETY: As above (a C wrapper around the `pgprot_noncached()` macro).
        CacheMode::Uncached => unsafe { ivshmem_pgprot_noncached(prot) },
    };
    // SAFETY: `vma` is being set up with the mmap lock held for writing, so `vm_page_prot` may
    // be rewritten, exactly as C drivers do before remapping.
    unsafe { (*raw).vm_page_prot = prot };
}

/// Makes `vma` a view of `source`'s region from `vm_pgoff` on, mapped at fault time with
/// `mode`. Fails with `EINVAL` if the VMA could become a private copy (which PFN mappings
/// cannot be); the caller checks the bounds against its region first, and counts the VMA as
/// opened once this succeeds. Nothing is inserted yet.
///
/// This is the last fallible step of an `mmap`: should `mmap` fail after it, the kernel frees
/// the VMA without calling `close`, and the VMA's reference to `source` would leak.
pub(crate) fn install<T: PfnSource>(vma: &VmaNew, source: Arc<T>, mode: CacheMode) -> Result {
    // A copy-on-write PFN mapping is what `vmf_insert_pfn*()` refuse with BUG(): shared only.
    if vma.flags() & crate::compat::MAYSHARE == 0 {
        return Err(EINVAL);
    }
    vma.set_io();
    vma.set_dontexpand();
    vma.set_dontdump();
    let raw = vma.as_ptr();
    // SAFETY: `vma` is under setup with the mmap lock held for writing and not yet visible to
    // anyone else, so its flags may be written. `VM_PFNMAP` is valid here: `VmaNew` offers no
    // way to set `VM_MIXEDMAP` besides `set_mixedmap`, which we do not call, and the mapping is
    // shared (checked above).
    unsafe { (*raw).__bindgen_anon_2.vm_flags |= flags::PFNMAP };
    set_cache_mode(vma, mode);
    let source = Arc::into_raw(source).cast_mut().cast::<c_void>();
    // SAFETY: As above, `vm_private_data` of a VMA under setup is ours to set. The reference
    // moved into it is given back in `Ops::close`.
    unsafe { (*raw).vm_private_data = source };
    // SAFETY: As above, for `vm_ops`; `VTABLE` is a promoted constant, so it lives forever.
    unsafe { (*raw).vm_ops = &Ops::<T>::VTABLE };
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
        let pages = usize::try_from(region.len() >> PAGE_SHIFT).ok()?;
        if self.page.checked_add(1 << order)? > pages {
            return None;
        }
        let pfn = usize::try_from(region.start() >> PAGE_SHIFT)
            .ok()?
            .checked_add(self.page)?;
        (pfn & ((1 << order) - 1) == 0).then_some(pfn)
    }
}

/// The `vm_operations_struct` of the VMAs of a `T`.
struct Ops<T>(PhantomData<T>);

impl<T: PfnSource> Ops<T> {
    const VTABLE: bindings::vm_operations_struct = bindings::vm_operations_struct {
        open: Some(Self::open),
        close: Some(Self::close),
        fault: Some(Self::fault),
        huge_fault: Some(Self::huge_fault),
        ..pin_init::zeroed()
    };

    /// The source of a VMA set up by [`install`].
    ///
    /// # Safety
    ///
    /// `vma` must be a valid VMA whose `vm_ops` are `Self::VTABLE`, and the returned reference
    /// must not outlive the VMA.
    unsafe fn source<'a>(vma: *mut bindings::vm_area_struct) -> &'a T {
        // SAFETY: `install` set `vm_private_data` with `Arc::into_raw`, and the reference is
        // released only in `close`, the last callback of the VMA.
        unsafe { &*(*vma).vm_private_data.cast::<T>() }
    }

    /// # Safety
    ///
    /// Called by the kernel with a valid VMA that was copied from one of `Self`.
    unsafe extern "C" fn open(vma: *mut bindings::vm_area_struct) {
        // SAFETY: The copy's `vm_private_data` and `vm_ops` are the original's (see `install`).
        let source = unsafe { Self::source(vma) };
        // SAFETY: The original VMA holds a reference for as long as this call runs.
        let copy: Arc<T> = unsafe { ArcBorrow::from_raw(source) }.into();
        // The copy's reference, released in `close`.
        let _ = Arc::into_raw(copy);
        // SAFETY: The kernel copies VMAs with the mmap lock held for writing.
        source.vma_opened(unsafe { VmaRef::from_raw(vma) });
    }

    /// # Safety
    ///
    /// Called by the kernel, once, with a valid VMA of `Self` that goes away.
    unsafe extern "C" fn close(vma: *mut bindings::vm_area_struct) {
        // SAFETY: The reference taken by `install` or `open` for this VMA, released only here.
        let source = unsafe { Arc::from_raw((*vma).vm_private_data.cast::<T>().cast_const()) };
        source.vma_closed();
    }

    /// # Safety
    ///
    /// Called by the kernel with a valid `vm_fault` of a VMA of `Self`.
    unsafe extern "C" fn fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
        // SAFETY: Same contract.
        unsafe { Self::huge_fault(vmf, 0) }
    }

    /// Inserts the entry of `order` (0 or PMD) that maps the faulting address, or asks the
    /// kernel to fall back to a smaller one.
    ///
    /// 1 GiB (PUD) entries are refused: on 7.3.4, splitting a VMA inside one (a partial munmap,
    /// mprotect or mlock at an address that is not 2 MiB-aligned) oopses in
    /// `split_huge_pmd_locked()`, because `mm_find_pmd()` reads a PUD leaf as a page table
    /// (found by `ivshmem-fuzz`). 2 MiB entries already keep the page tables of any size small.
    ///
    /// # Safety
    ///
    /// Called by the kernel with a valid `vm_fault` of a VMA of `Self`, with that VMA locked
    /// (mmap lock or per-VMA lock) for the duration of the call.
    unsafe extern "C" fn huge_fault(
        vmf: *mut bindings::vm_fault,
        order: c_uint,
    ) -> bindings::vm_fault_t {
        const FALLBACK: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_FALLBACK;
        const SIGBUS: bindings::vm_fault_t = bindings::vm_fault_reason_VM_FAULT_SIGBUS;
        // SAFETY: `vmf` is valid for the call (function contract); these fields are fixed.
        let (vma, address, write) = unsafe {
            (
                (*vmf).__bindgen_anon_1.vma,
                (*vmf).__bindgen_anon_1.address,
                (*vmf).flags & bindings::fault_flag_FAULT_FLAG_WRITE != 0,
            )
        };
        // SAFETY: The faulting VMA is valid and locked (mmap or per-VMA lock) for the call.
        let locked = unsafe { VmaRef::from_raw(vma) };
        let (start, end) = (locked.start(), locked.end());
        // SAFETY: As above; `vm_pgoff` does not change while the VMA is locked.
        let pgoff = unsafe { (*vma).vm_pgoff };
        let huge = match order {
            0 => false,
            #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
            PMD_ORDER => true,
            _ => return FALLBACK,
        };
        let Some(entry) = Entry::new(start, end, pgoff, address, order) else {
            return if huge { FALLBACK } else { SIGBUS };
        };
        // SAFETY: `vma` is a VMA of `Self`; `source` is not kept beyond this call.
        let source = unsafe { Self::source(vma) };
        source
            .with_region(|region| {
                let Some(pfn) = entry.pfn(region, order) else {
                    // Outside the region (it cannot be: mmap checked the bounds) or, for a
                    // huge entry, a physical address that is not aligned for it.
                    return if huge { FALLBACK } else { SIGBUS };
                };
                match order {
                    // SAFETY: `vma` is the faulting VMA, a shared `VM_PFNMAP` one (`install`);
                    // `pfn` lies inside the claimed region (checked by `Entry::pfn`).
                    0 => unsafe { bindings::vmf_insert_pfn(vma, address, pfn) },
                    // SAFETY: As above; the PMD-sized entry lies inside the VMA and the region
                    // and starts at a PMD-aligned PFN (checked by `Entry`).
                    #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
                    PMD_ORDER => unsafe { bindings::vmf_insert_pfn_pmd(vmf, pfn, write) },
                    _ => FALLBACK,
                }
            })
            .unwrap_or(SIGBUS)
    }
}
