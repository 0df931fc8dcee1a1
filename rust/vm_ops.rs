// SPDX-License-Identifier: GPL-2.0

//! `vm_operations_struct` for VMAs set up in Rust: the callbacks of a mapping whose entries a
//! driver inserts at fault time, and the data it keeps with each VMA.
//!
//! What the `kernel` crate lacks for it, written as it would be there: a `#[vtable]` trait
//! ([`VmOperations`]) and its table ([`VmOpsVTable`]) as `miscdevice.rs` builds
//! `MiscdeviceVTable<T>`, [`VmFault`] for `struct vm_fault`, and [`VmaNewOps::set_vm_ops`]
//! for `VmaNew`. Each VMA owns one `T::Data` (in `vm_private_data`): the mmap that installs the
//! operations gives it, `open` makes the one of a copied VMA, `close` gets it back.

use core::marker::PhantomData;

use kernel::{
    bindings,
    error::VTABLE_DEFAULT_ERROR,
    ffi::c_uint,
    mm::virt::{
        VmaNew,
        VmaRef, //
    },
    prelude::*,
    types::{
        ForeignOwnable,
        Opaque, //
    },
};

/// A fault on a VMA (`struct vm_fault`), for the duration of the handler.
///
/// # Invariants
///
/// The fault is valid for the lifetime of the reference, and its VMA is locked (mmap or VMA
/// lock) meanwhile.
#[repr(transparent)]
pub(crate) struct VmFault(Opaque<bindings::vm_fault>);

impl VmFault {
    /// # Safety
    ///
    /// `vmf` is a valid fault whose VMA stays locked for `'a`, as in a fault handler.
    unsafe fn from_raw<'a>(vmf: *mut bindings::vm_fault) -> &'a Self {
        // SAFETY: `VmFault` is a transparent wrapper of the fault; the rest is the caller's.
        unsafe { &*vmf.cast::<Self>() }
    }

    /// The raw fault.
    pub(crate) fn as_ptr(&self) -> *mut bindings::vm_fault {
        self.0.get()
    }

    /// The faulting VMA.
    pub(crate) fn vma(&self) -> &VmaRef {
        // SAFETY: By the type invariant the fault and its locked VMA are valid for `&self`.
        unsafe { VmaRef::from_raw((*self.as_ptr()).__bindgen_anon_1.vma) }
    }

    /// The faulting address, rounded down to a page.
    pub(crate) fn address(&self) -> usize {
        // SAFETY: By the type invariant the fault is valid; the field is fixed for the fault.
        unsafe { (*self.as_ptr()).__bindgen_anon_1.address }
    }

    /// Whether the access is a write.
    pub(crate) fn is_write(&self) -> bool {
        // SAFETY: As above.
        unsafe { (*self.as_ptr()).flags & bindings::fault_flag_FAULT_FLAG_WRITE != 0 }
    }
}

/// The operations of VMAs set up with [`VmaNewOps::set_vm_ops`].
#[vtable]
pub(crate) trait VmOperations: Sized + 'static {
    /// What each VMA keeps: given by the mmap that installs the operations.
    type Data: ForeignOwnable + Send + Sync;

    /// A VMA was created by copying another (fork, split, mremap): the copy's data, from the
    /// original's. Called with the mmap lock held for writing.
    fn open(data: <Self::Data as ForeignOwnable>::Borrowed<'_>, vma: &VmaRef) -> Self::Data;

    /// A VMA goes away (munmap, exit): its data.
    fn close(data: Self::Data) {
        drop(data);
    }

    /// A fault needs an entry of `order` (0: a page); the fault's result, e.g.
    /// `VM_FAULT_NOPAGE` once an entry is inserted or `VM_FAULT_FALLBACK` for a smaller order.
    fn huge_fault(
        _data: <Self::Data as ForeignOwnable>::Borrowed<'_>,
        _vmf: &VmFault,
        _order: u32,
    ) -> bindings::vm_fault_t {
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// What [`VmaNew`] would gain: installing [`VmOperations`].
pub(crate) trait VmaNewOps {
    /// Gives the VMA `T`'s operations and `data`. Should the mmap fail after this, the kernel
    /// frees the VMA without `close` and `data` is leaked: call it last.
    fn set_vm_ops<T: VmOperations>(&self, data: T::Data);
}

impl VmaNewOps for VmaNew {
    fn set_vm_ops<T: VmOperations>(&self, data: T::Data) {
        let raw = self.as_ptr();
        let data = data.into_foreign();
        // SAFETY: A `VmaNew` is under setup with the mmap lock held for writing, so its
        // `vm_private_data` and `vm_ops` are the caller's to set. Data set before is leaked,
        // never freed twice. The operations read `vm_private_data` as `T::Data`, which is
        // what is stored.
        unsafe {
            (*raw).vm_private_data = data;
            (*raw).vm_ops = &VmOpsVTable::<T>::VTABLE;
        }
    }
}

/// The `vm_operations_struct` of a [`VmOperations`].
pub(crate) struct VmOpsVTable<T>(PhantomData<T>);

impl<T: VmOperations> VmOpsVTable<T> {
    const VTABLE: bindings::vm_operations_struct = bindings::vm_operations_struct {
        open: Some(Self::open),
        close: Some(Self::close),
        fault: if T::HAS_HUGE_FAULT {
            Some(Self::fault)
        } else {
            None
        },
        huge_fault: if T::HAS_HUGE_FAULT {
            Some(Self::huge_fault)
        } else {
            None
        },
        ..pin_init::zeroed()
    };

    /// # Safety
    ///
    /// Called by the kernel with a valid VMA copied from one of `T`, the mmap lock held for
    /// writing.
    unsafe extern "C" fn open(vma: *mut bindings::vm_area_struct) {
        // SAFETY: The copy's `vm_private_data` is the original's, a `T::Data` (`set_vm_ops`),
        // which the original keeps alive for this call.
        let original = unsafe { T::Data::borrow((*vma).vm_private_data) };
        // SAFETY: The VMA is valid and locked (function contract).
        let copy = T::open(original, unsafe { VmaRef::from_raw(vma) });
        // SAFETY: The copy is being created under the mmap lock held for writing: its
        // `vm_private_data` is ours to set, to its own data, given back in `close`.
        unsafe { (*vma).vm_private_data = copy.into_foreign() };
    }

    /// # Safety
    ///
    /// Called by the kernel, once, with a valid VMA of `T` that goes away.
    unsafe extern "C" fn close(vma: *mut bindings::vm_area_struct) {
        // SAFETY: The VMA's own data (`set_vm_ops` or `open`), given back only here.
        T::close(unsafe { T::Data::from_foreign((*vma).vm_private_data) });
    }

    /// # Safety
    ///
    /// Called by the kernel with a valid fault of a VMA of `T`, the VMA locked for the call.
    unsafe extern "C" fn fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
        // SAFETY: Same contract.
        unsafe { Self::huge_fault(vmf, 0) }
    }

    /// # Safety
    ///
    /// As [`Self::fault`].
    unsafe extern "C" fn huge_fault(
        vmf: *mut bindings::vm_fault,
        order: c_uint,
    ) -> bindings::vm_fault_t {
        // SAFETY: The fault is valid and its VMA locked for the call (function contract).
        let vmf = unsafe { VmFault::from_raw(vmf) };
        // SAFETY: The VMA is one of `T`, whose `vm_private_data` is its data, alive until
        // `close`, which cannot run during a fault.
        let data = unsafe { T::Data::borrow((*vmf.vma().as_ptr()).vm_private_data) };
        T::huge_fault(data, vmf, order)
    }
}
