// SPDX-License-Identifier: GPL-2.0

//! PFN mappings: user mappings of memory that has no `struct page` (a PCI BAR), whose entries
//! are inserted at fault time.
//!
//! What `kernel::mm::virt` lacks for them, written as it would be there (the patch to the mm
//! maintainers would move these methods onto `VmaNew` and `VmaRef`). `VmaNew::set_mixedmap`
//! notes that the crate "doesn't yet provide a way to set `VM_PFNMAP`"; this is that way, with
//! the same shape: [`VmaNewPfn::set_pfnmap`] returns a [`VmaPfnMap`], whose invariant makes
//! the inserts valid. Inserting a PFN stays `unsafe`: which physical memory user space may see
//! is the caller's to guarantee.

use core::ops::Deref;

use kernel::{
    bindings,
    mm::virt::{
        flags,
        VmaNew,
        VmaRef, //
    },
    prelude::*,
};

use crate::{
    compat::MAYSHARE,
    vm_ops::VmFault, //
};

extern "C" {
    /// `pgprot_noncached()`, from `helpers.c`.
    fn ivshmem_pgprot_noncached(prot: bindings::pgprot_t) -> bindings::pgprot_t;
    /// `pgprot_writecombine()`, from `helpers.c`.
    fn ivshmem_pgprot_writecombine(prot: bindings::pgprot_t) -> bindings::pgprot_t;
}

/// What [`VmaRef`] would gain: the mapping's offset.
pub(crate) trait VmaRefPgoff {
    /// The offset in the mapped object, in pages (`vm_pgoff`): the mmap offset.
    fn pgoff(&self) -> usize;
}

impl VmaRefPgoff for VmaRef {
    fn pgoff(&self) -> usize {
        // SAFETY: By `VmaRef`'s invariants the VMA is valid and its mmap or VMA lock is held;
        // `vm_pgoff` changes only with the mmap lock held for writing (mremap, a split).
        unsafe { (*self.as_ptr()).vm_pgoff }
    }
}

/// What [`VmaNew`] would gain: PFN mappings and their page protection.
pub(crate) trait VmaNewPfn {
    /// Makes the VMA a shared PFN mapping: `VM_PFNMAP`, with `VM_IO`, `VM_DONTEXPAND` and
    /// `VM_DONTDUMP` as `remap_pfn_range()` sets them. `EINVAL` if the VMA may become a private
    /// copy (no `VM_MAYSHARE`: copy-on-write PFN mappings are what `vmf_insert_pfn*()` refuse
    /// with `BUG()`) or is a mixed map already.
    fn set_pfnmap(&self) -> Result<&VmaPfnMap>;

    /// Makes the VMA's entries write-combining (`pgprot_writecombine()`).
    fn set_writecombine(&self);

    /// Makes the VMA's entries uncached (`pgprot_noncached()`, UC- on x86).
    fn set_uncached(&self);
}

impl VmaNewPfn for VmaNew {
    fn set_pfnmap(&self) -> Result<&VmaPfnMap> {
        if self.flags() & MAYSHARE == 0 || self.flags() & flags::MIXEDMAP != 0 {
            return Err(EINVAL);
        }
        self.set_io();
        self.set_dontexpand();
        self.set_dontdump();
        // SAFETY: A `VmaNew` is under setup with the mmap lock held for writing and not yet
        // visible to anyone else, so its flags may be written.
        unsafe { (*self.as_ptr()).__bindgen_anon_2.vm_flags |= flags::PFNMAP };
        VmaPfnMap::from_vma(self).ok_or(EINVAL)
    }

    fn set_writecombine(&self) {
        // SAFETY: `pgprot_writecombine()` computes a value (a C wrapper: a macro on arm64).
        set_page_prot(self, |prot| unsafe { ivshmem_pgprot_writecombine(prot) });
    }

    fn set_uncached(&self) {
        // SAFETY: `pgprot_noncached()` computes a value (a C wrapper around the macro).
        set_page_prot(self, |prot| unsafe { ivshmem_pgprot_noncached(prot) });
    }
}

/// Rewrites the page protection of a VMA under setup.
fn set_page_prot(vma: &VmaNew, f: impl FnOnce(bindings::pgprot_t) -> bindings::pgprot_t) {
    let raw = vma.as_ptr();
    // SAFETY: A `VmaNew` is valid and under setup with the mmap lock held for writing, so
    // `vm_page_prot` may be read and rewritten, as C drivers do before remapping.
    unsafe { (*raw).vm_page_prot = f((*raw).vm_page_prot) };
}

/// A shared PFN mapping.
///
/// # Invariants
///
/// The VMA has `VM_PFNMAP` and `VM_MAYSHARE` set and `VM_MIXEDMAP` clear: `vmf_insert_pfn*()`
/// accept it.
#[repr(transparent)]
pub(crate) struct VmaPfnMap {
    vma: VmaRef,
}

impl Deref for VmaPfnMap {
    type Target = VmaRef;

    fn deref(&self) -> &VmaRef {
        &self.vma
    }
}

impl VmaPfnMap {
    /// `vma` as a shared PFN mapping, if it is one.
    pub(crate) fn from_vma(vma: &VmaRef) -> Option<&Self> {
        let f = vma.flags();
        if f & flags::PFNMAP == 0 || f & MAYSHARE == 0 || f & flags::MIXEDMAP != 0 {
            return None;
        }
        // INVARIANT: The flags were checked above; they change only under the mmap lock held
        // for writing, which excludes the holder of `vma`'s lock.
        // SAFETY: `VmaPfnMap` is a transparent wrapper of `VmaRef`.
        Some(unsafe { &*core::ptr::from_ref(vma).cast::<Self>() })
    }

    /// Inserts a 4 KiB entry that maps `pfn` at `address` (`vmf_insert_pfn()`); the fault's
    /// result.
    ///
    /// # Safety
    ///
    /// `pfn` is memory that user space may access through this mapping: device memory the
    /// caller has claimed and keeps claimed until every entry that maps it is zapped. The
    /// caller holds this VMA's mmap or VMA lock, as a fault handler does.
    pub(crate) unsafe fn insert_pfn(&self, address: usize, pfn: usize) -> bindings::vm_fault_t {
        // SAFETY: The VMA is a shared PFN map (type invariant) and locked; the PFN is the
        // caller's to map (function contract); an address outside the VMA is refused.
        unsafe { bindings::vmf_insert_pfn(self.as_ptr(), address, pfn) }
    }

    /// Inserts the 2 MiB (PMD) entry that maps `pfn` at the address of `vmf`, a fault of this
    /// VMA (`vmf_insert_pfn_pmd()`); the fault's result.
    ///
    /// # Safety
    ///
    /// As [`insert_pfn`](Self::insert_pfn), for the `PMD_SIZE` bytes from `pfn`; `vmf` is a
    /// fault of this VMA and the entry lies inside the VMA.
    #[cfg(CONFIG_ARCH_SUPPORTS_PMD_PFNMAP)]
    pub(crate) unsafe fn insert_pfn_pmd(
        &self,
        vmf: &VmFault,
        pfn: usize,
        write: bool,
    ) -> bindings::vm_fault_t {
        // SAFETY: As in `insert_pfn`; `vmf` is this VMA's fault (function contract).
        unsafe { bindings::vmf_insert_pfn_pmd(vmf.as_ptr(), pfn, write) }
    }
}
