// SPDX-License-Identifier: GPL-2.0

//! The `kernel` crate of 7.2: the spellings of what 7.3 has and the driver uses.

use kernel::{
    device::Bound,
    irq::{
        self,
        IrqReturn, //
    },
    pci,
    prelude::*, //
};

use super::{
    Handler,
    IrqHandler, //
};

/// Declares the PCI device table `$table` of driver `$driver` (7.2's `pci_device_table!` takes
/// the name of the modpost alias, `$alias`; 7.3's makes it up).
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
/// (7.2 passes it always).
pub(crate) type ProbeIdInfo<'a, T> = &'a T;

/// `VM_MAYSHARE`: set on a VMA that may be shared, i.e. not a private copy-on-write mapping.
///
/// 7.2's `kernel::mm::virt::flags::MAYSHARE` is `VM_MAYEXEC` (its `bindings_helper.h` defines
/// `RUST_CONST_HELPER_VM_MAYSHARE = VM_MAYEXEC`; 7.3 fixed it), so it is made from the bit
/// number here, as `include/linux/mm.h` makes it.
pub(crate) const MAYSHARE: kernel::mm::virt::vm_flags_t = 1 << kernel::bindings::VMA_MAYSHARE_BIT;

/// A mapped BAR that outlives probe: revoked by the driver core when the device is unbound.
pub(crate) type DevresBar<const SIZE: usize> = kernel::devres::Devres<pci::Bar<'static, SIZE>>;

/// The lock the interrupt path takes (see "Interrupt context" in `compat.rs`) and its
/// initialiser: a plain spinlock, never taken in hard interrupt context (the handlers are
/// threaded).
pub(crate) use kernel::{
    new_spinlock as new_irq_lock,
    sync::SpinLock as IrqLock, //
};

/// `EOPNOTSUPP` (7.2's `kernel::error::code` does not declare it).
pub(crate) fn eopnotsupp() -> Error {
    Error::from_errno(-(kernel::bindings::EOPNOTSUPP as i32))
}

/// This module (`struct module *`): the `module!` macro's `THIS_MODULE` static.
pub(crate) fn this_module() -> *mut kernel::bindings::module {
    crate::THIS_MODULE.as_ptr()
}

/// Threaded: the hard half only wakes the thread, which handles the interrupt.
impl<T: IrqHandler> irq::ThreadedHandler for Handler<T> {
    fn handle(&self, _dev: &kernel::device::Device<Bound>) -> irq::ThreadedIrqReturn {
        irq::ThreadedIrqReturn::WakeThread
    }

    fn handle_threaded(&self, _dev: &kernel::device::Device<Bound>) -> IrqReturn {
        self.0.handle()
    }
}

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

/// The registration of one handler on one vector.
pub(crate) type IrqRegistration<'bound, T> = irq::ThreadedRegistration<Handler<T>>;

impl<'bound> MsixVectors<'bound> {
    /// The registration of `handler` on vector `i`, to be pinned.
    ///
    /// # Safety
    ///
    /// As on 7.3 (`compat/v7_3.rs`): the registration is dropped before these vectors. Here
    /// devres frees the vectors after the handlers anyway.
    pub(crate) unsafe fn register<T: IrqHandler>(
        &self,
        i: usize,
        handler: T,
    ) -> Result<impl PinInit<IrqRegistration<'bound, T>, Error> + 'bound> {
        let vector = *self.vectors.get(i).ok_or(EINVAL)?;
        Ok(self.pdev.request_threaded_irq(
            vector,
            irq::Flags::TRIGGER_NONE,
            c"ivshmem",
            Ok::<_, Error>(Handler(handler)),
        ))
    }
}
