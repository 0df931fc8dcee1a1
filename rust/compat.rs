// SPDX-License-Identifier: GPL-2.0

//! What differs in the `kernel` crate between the kernel series the driver builds against.
//!
//! The driver is written against 7.3. Kbuild sets `--cfg ivshmem_kernel_7_2` when the kernel is
//! 7.2, and each item here gives the driver one spelling for both series: the PCI table macro,
//! probe's `id_info`, `VM_MAYSHARE`, open files pinning the module, BAR0 kept past probe, the
//! lock of the interrupt path, `EOPNOTSUPP`, and MSI-X vectors with their handlers.
//!
//! # Interrupt context
//!
//! 7.3 has `SpinLockIrq`, so the handlers run in hard interrupt context and take the doorbell's
//! lock there. 7.2's `kernel` crate has no interrupt-disabling lock; a plain spinlock taken in a
//! hard handler could deadlock against the same CPU in process context, so on 7.2 the handlers
//! are threaded (the hard half only wakes the thread) and [`IrqLock`] is a plain spinlock,
//! never taken in hard interrupt context.

use kernel::{
    irq::{
        self,
        IrqReturn, //
    },
    pci,
    prelude::*, //
};

/// Declares the PCI device table `$table` of driver `$driver` (7.2's `pci_device_table!` takes
/// the name of the modpost alias, `$alias`; 7.3's makes it up).
#[cfg(not(ivshmem_kernel_7_2))]
macro_rules! pci_table {
    ($table:ident, $alias:ident, $driver:ident, [$($data:tt)*]) => {
        kernel::pci_device_table!(
            $table,
            <$driver as kernel::pci::Driver>::IdInfo,
            [$($data)*]
        );
    };
}

/// Declares the PCI device table `$table` of driver `$driver` (7.2's `pci_device_table!` takes
/// the name of the modpost alias, `$alias`; 7.3's makes it up).
#[cfg(ivshmem_kernel_7_2)]
macro_rules! pci_table {
    ($table:ident, $alias:ident, $driver:ident, [$($data:tt)*]) => {
        kernel::pci_device_table!(
            $table,
            $alias,
            <$driver as kernel::pci::Driver>::IdInfo,
            [$($data)*]
        );
    };
}

pub(crate) use pci_table;

/// The type of `pci::Driver::probe`'s `id_info` argument for a driver whose `IdInfo` is `T`
/// (7.2 passes it always, 7.3 only when the device matched an ID table).
#[cfg(not(ivshmem_kernel_7_2))]
pub(crate) type ProbeIdInfo<'a, T> = Option<&'a T>;

/// The type of `pci::Driver::probe`'s `id_info` argument for a driver whose `IdInfo` is `T`
/// (7.2 passes it always, 7.3 only when the device matched an ID table).
#[cfg(ivshmem_kernel_7_2)]
pub(crate) type ProbeIdInfo<'a, T> = &'a T;

/// `VM_MAYSHARE`: set on a VMA that may be shared, i.e. not a private copy-on-write mapping.
#[cfg(not(ivshmem_kernel_7_2))]
pub(crate) use kernel::mm::virt::flags::MAYSHARE;

/// `VM_MAYSHARE`: set on a VMA that may be shared, i.e. not a private copy-on-write mapping.
///
/// 7.2's `kernel::mm::virt::flags::MAYSHARE` is `VM_MAYEXEC` (its `bindings_helper.h` defines
/// `RUST_CONST_HELPER_VM_MAYSHARE = VM_MAYEXEC`; 7.3 fixed it), so it is made from the bit
/// number here, as `include/linux/mm.h` makes it.
#[cfg(ivshmem_kernel_7_2)]
pub(crate) const MAYSHARE: kernel::mm::virt::vm_flags_t = 1 << kernel::bindings::VMA_MAYSHARE_BIT;

/// Makes an open file keep the module loaded, as the VFS does for a `file_operations` whose
/// `owner` is the module: 7.3's `MiscDeviceRegistration` sets `owner`, 7.2's leaves it unset,
/// so there `rmmod` would succeed with a file open and free the code its operations point to.
///
/// On 7.2, [`FilePins::pin`] (called from `open`) switches the file to a copy of its operations
/// whose `owner` is this module, taking the module reference the VFS drops after `release`
/// (`misc_open`'s `replace_fops` pattern). The copy is made once and freed when the module
/// goes, when no file can use it any more (each one pins the module). On 7.3 both do nothing.
///
/// # Invariants
///
/// On 7.2, [`OWNED_FOPS`] is null or a `KBox<file_operations>` leaked by [`FilePins::pin`],
/// whose `owner` is this module; only the module's one `FilePins` frees it.
pub(crate) struct FilePins(());

#[cfg(ivshmem_kernel_7_2)]
static OWNED_FOPS: kernel::sync::atomic::Atomic<*mut kernel::bindings::file_operations> =
    kernel::sync::atomic::Atomic::new(core::ptr::null_mut());

#[cfg(ivshmem_kernel_7_2)]
extern "C" {
    /// `try_module_get()`, from `helpers.c` (a `struct module *`, opaque here).
    fn ivshmem_try_module_get(module: *mut core::ffi::c_void) -> bool;
}

impl FilePins {
    /// The module's one instance, dropped when the module is unloaded.
    pub(crate) fn new() -> Self {
        Self(())
    }

    /// Pins the module for as long as `file`, which is being opened, stays open.
    #[cfg(not(ivshmem_kernel_7_2))]
    pub(crate) fn pin(_file: &kernel::fs::File) -> Result {
        Ok(())
    }

    /// Pins the module for as long as `file`, which is being opened, stays open.
    #[cfg(ivshmem_kernel_7_2)]
    pub(crate) fn pin(file: &kernel::fs::File) -> Result {
        use kernel::sync::atomic::ordering::{
            Acquire,
            Full, //
        };
        let raw = file.as_ptr();
        let owner = crate::THIS_MODULE.as_ptr();
        let mut fops = OWNED_FOPS.load(Acquire);
        if fops.is_null() {
            // SAFETY: the file is being opened by `misc_open`, which set `f_op` to the
            // registration's operations, a constant of this module.
            let mut copy = unsafe { (*raw).f_op.read() };
            copy.owner = owner;
            let new = KBox::into_raw(KBox::new(copy, GFP_KERNEL)?);
            fops = match OWNED_FOPS.cmpxchg(core::ptr::null_mut(), new, Full) {
                Ok(_) => new,
                Err(winner) => {
                    // SAFETY: `new` came from `KBox::into_raw` above and was never shared.
                    drop(unsafe { KBox::from_raw(new) });
                    winner
                }
            };
        }
        // SAFETY: `owner` is this module, which is live: its code is running.
        if !unsafe { ivshmem_try_module_get(owner.cast()) } {
            return Err(ENODEV);
        }
        // SAFETY: in `open` the file's operations may be replaced (`replace_fops`). The old ones
        // have no owner, so there is no reference to put; the reference taken above is the
        // one the VFS puts for the new ones (`fops->owner`) after `release`. `fops` stays
        // valid while the file is open (type invariant: freed only at unload).
        unsafe { (*raw).f_op = fops.cast_const() };
        Ok(())
    }
}

#[cfg(ivshmem_kernel_7_2)]
impl Drop for FilePins {
    fn drop(&mut self) {
        use kernel::sync::atomic::ordering::Full;
        let fops = OWNED_FOPS.xchg(core::ptr::null_mut(), Full);
        if !fops.is_null() {
            // SAFETY: by the type invariant `fops` came from `KBox::into_raw`; the module is
            // being unloaded, so no file is open with these operations (each pins the module).
            drop(unsafe { KBox::from_raw(fops) });
        }
    }
}

/// A mapped BAR that outlives probe: revoked by the driver core when the device is unbound.
#[cfg(not(ivshmem_kernel_7_2))]
pub(crate) type DevresBar<const SIZE: usize> = pci::DevresBar<SIZE>;

/// A mapped BAR that outlives probe: revoked by the driver core when the device is unbound.
#[cfg(ivshmem_kernel_7_2)]
pub(crate) type DevresBar<const SIZE: usize> = kernel::devres::Devres<pci::Bar<'static, SIZE>>;

/// The lock the interrupt path takes (see "Interrupt context" above) and its initialiser.
#[cfg(not(ivshmem_kernel_7_2))]
pub(crate) use kernel::{
    new_spinlock_irq as new_irq_lock,
    sync::SpinLockIrq as IrqLock, //
};

/// The lock the interrupt path takes (see "Interrupt context" above) and its initialiser.
#[cfg(ivshmem_kernel_7_2)]
pub(crate) use kernel::{
    new_spinlock as new_irq_lock,
    sync::SpinLock as IrqLock, //
};

/// `EOPNOTSUPP` (7.2's `kernel::error::code` does not declare it).
pub(crate) fn eopnotsupp() -> Error {
    #[cfg(not(ivshmem_kernel_7_2))]
    return EOPNOTSUPP;
    #[cfg(ivshmem_kernel_7_2)]
    return Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32));
}

/// The handler of one interrupt vector, called in the context "Interrupt context" describes.
pub(crate) trait IrqHandler: Sync + Send + 'static {
    /// Handles one interrupt.
    fn handle(&self) -> IrqReturn;
}

/// Adapts an [`IrqHandler`] to the kernel's handler trait.
struct Handler<T>(T);

#[cfg(not(ivshmem_kernel_7_2))]
impl<T: IrqHandler> irq::Handler for Handler<T> {
    fn handle(&self) -> IrqReturn {
        self.0.handle()
    }
}

#[cfg(ivshmem_kernel_7_2)]
impl<T: IrqHandler> irq::ThreadedHandler for Handler<T> {
    fn handle(
        &self,
        _dev: &kernel::device::Device<kernel::device::Bound>,
    ) -> irq::ThreadedIrqReturn {
        irq::ThreadedIrqReturn::WakeThread
    }

    fn handle_threaded(&self, _dev: &kernel::device::Device<kernel::device::Bound>) -> IrqReturn {
        self.0.handle()
    }
}

#[cfg(not(ivshmem_kernel_7_2))]
mod msix {
    use super::*;

    /// MSI-X vectors allocated for a device, before their handlers exist.
    pub(crate) struct MsixVectors<'bound>(KBox<pci::IrqVectorRegistration<'bound>>);

    impl<'bound> MsixVectors<'bound> {
        /// Allocates MSI-X vectors: as many as the device has, from 1 up to `max`.
        pub(crate) fn alloc(
            pdev: &'bound pci::Device<kernel::device::Bound>,
            max: u32,
        ) -> Result<Self> {
            let types = pci::IrqTypes::default().with(pci::IrqType::MsiX);
            let vectors = pdev.alloc_irq_vectors(1, max, types)?;
            Ok(Self(KBox::new(vectors, GFP_KERNEL)?))
        }

        /// How many were allocated.
        pub(crate) fn len(&self) -> usize {
            self.0.len()
        }
    }

    /// MSI-X vectors with one handler each.
    pub(crate) struct MsixHandlers<'bound, T: IrqHandler> {
        // Declared (so dropped) before `_vectors`: the handlers use the vectors' IRQ numbers.
        _handlers: KVec<Pin<KBox<irq::Registration<'bound, Handler<T>>>>>,
        _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
    }

    impl<'bound, T: IrqHandler> MsixHandlers<'bound, T> {
        /// Requests a handler for each vector: `handler(i)` for vector `i`.
        pub(crate) fn request(
            vectors: MsixVectors<'bound>,
            mut handler: impl FnMut(usize) -> T,
        ) -> Result<Self> {
            let vectors = vectors.0;
            // SAFETY: the registration lives in a box whose address does not change, and it is
            // dropped after every handler that borrows it (field order of `Self`), so extending
            // the borrow to `'bound` never lets a handler outlive the vectors.
            let vref: &'bound pci::IrqVectorRegistration<'bound> =
                unsafe { &*core::ptr::from_ref(&*vectors) };
            let mut handlers = KVec::new();
            for i in 0..vref.len() {
                // SAFETY: the registration is kept in `handlers` and dropped normally, never
                // forgotten.
                let reg = unsafe {
                    irq::Registration::new(
                        vref.index(i)?.into(),
                        irq::Flags::TRIGGER_NONE,
                        c"ivshmem",
                        Ok::<_, Error>(Handler(handler(i))),
                    )
                };
                handlers.push(KBox::pin_init(reg, GFP_KERNEL)?, GFP_KERNEL)?;
            }
            Ok(Self {
                _handlers: handlers,
                _vectors: vectors,
            })
        }
    }
}

#[cfg(ivshmem_kernel_7_2)]
mod msix {
    use super::*;
    use kernel::device::Bound;

    /// MSI-X vectors allocated for a device, before their handlers exist. 7.2 frees them
    /// through devres when the device is unbound, after the handlers (registered later).
    ///
    /// 7.2's allocation gives out its first and last vector only (`RangeInclusive` of a type
    /// that cannot step), so at most two vectors are allocated there.
    pub(crate) struct MsixVectors<'bound> {
        pdev: &'bound pci::Device<Bound>,
        vectors: KVec<pci::IrqVector<'bound>>,
    }

    impl<'bound> MsixVectors<'bound> {
        /// Allocates MSI-X vectors: two if the device has them and `max` allows, else one.
        pub(crate) fn alloc(pdev: &'bound pci::Device<Bound>, max: u32) -> Result<Self> {
            let types = pci::IrqTypes::default().with(pci::IrqType::MsiX);
            let mut vectors = KVec::new();
            let two = if max >= 2 {
                pdev.alloc_irq_vectors(2, 2, types).ok()
            } else {
                None
            };
            if let Some(range) = two {
                let (first, last) = range.into_inner();
                vectors.push(first, GFP_KERNEL)?;
                vectors.push(last, GFP_KERNEL)?;
            } else {
                let range = pdev.alloc_irq_vectors(1, 1, types)?;
                vectors.push(*range.start(), GFP_KERNEL)?;
            }
            Ok(Self { pdev, vectors })
        }

        /// How many were allocated.
        pub(crate) fn len(&self) -> usize {
            self.vectors.len()
        }
    }

    /// MSI-X vectors with one handler each (`'bound` as on 7.3, where they borrow the device).
    pub(crate) struct MsixHandlers<'bound, T: IrqHandler> {
        _handlers: KVec<Pin<KBox<irq::ThreadedRegistration<Handler<T>>>>>,
        _bound: core::marker::PhantomData<&'bound ()>,
    }

    impl<'bound, T: IrqHandler> MsixHandlers<'bound, T> {
        /// Requests a handler for each vector: `handler(i)` for vector `i`.
        pub(crate) fn request(
            vectors: MsixVectors<'bound>,
            mut handler: impl FnMut(usize) -> T,
        ) -> Result<Self> {
            let mut handlers = KVec::new();
            for (i, vector) in vectors.vectors.iter().enumerate() {
                let reg = vectors.pdev.request_threaded_irq(
                    *vector,
                    irq::Flags::TRIGGER_NONE,
                    c"ivshmem",
                    Ok::<_, Error>(Handler(handler(i))),
                );
                handlers.push(KBox::pin_init(reg, GFP_KERNEL)?, GFP_KERNEL)?;
            }
            Ok(Self {
                _handlers: handlers,
                _bound: core::marker::PhantomData,
            })
        }
    }
}

pub(crate) use msix::{
    MsixHandlers,
    MsixVectors, //
};
