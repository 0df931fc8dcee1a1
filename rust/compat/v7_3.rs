// SPDX-License-Identifier: GPL-2.0

//! The `kernel` crate of 7.3, the series the driver is written against: its own spellings.

use kernel::{
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
            <$driver as kernel::pci::Driver>::IdInfo,
            [$($data)*]
        );
    };
}

pub(crate) use pci_table;

/// The type of `pci::Driver::probe`'s `id_info` argument for a driver whose `IdInfo` is `T`
/// (7.3 passes it only when the device matched an ID table).
pub(crate) type ProbeIdInfo<'a, T> = Option<&'a T>;

/// `VM_MAYSHARE`: set on a VMA that may be shared, i.e. not a private copy-on-write mapping.
pub(crate) use kernel::mm::virt::flags::MAYSHARE;

/// A mapped BAR that outlives probe: revoked by the driver core when the device is unbound.
pub(crate) type DevresBar<const SIZE: usize> = pci::DevresBar<SIZE>;

/// The lock the interrupt path takes (see "Interrupt context" in `compat.rs`) and its
/// initialiser: interrupts disabled, so the hard handler may take it.
pub(crate) use kernel::{
    new_spinlock_irq as new_irq_lock,
    sync::SpinLockIrq as IrqLock, //
};

/// `EOPNOTSUPP`.
pub(crate) fn eopnotsupp() -> Error {
    EOPNOTSUPP
}

/// This module (`struct module *`): the `module!` macro's `THIS_MODULE` constant.
pub(crate) fn this_module() -> *mut kernel::bindings::module {
    <crate::LocalModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr()
}

/// In hard interrupt context.
impl<T: IrqHandler> irq::Handler for Handler<T> {
    fn handle(&self) -> IrqReturn {
        self.0.handle()
    }
}

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

/// The registration of one handler on one vector.
pub(crate) type IrqRegistration<'bound, T> = irq::Registration<'bound, Handler<T>>;

impl<'bound> MsixVectors<'bound> {
    /// The registration of `handler` on vector `i`, to be pinned.
    ///
    /// # Safety
    ///
    /// The registration is dropped, never forgotten, before these vectors are: it uses their
    /// IRQ number. (The vectors may move meanwhile: they live in a box.)
    pub(crate) unsafe fn register<T: IrqHandler>(
        &self,
        i: usize,
        handler: T,
    ) -> Result<impl PinInit<IrqRegistration<'bound, T>, Error> + 'bound> {
        // SAFETY: The registration lives in a box whose address does not change, and the
        // caller drops every handler before it (function contract), so extending the borrow
        // to `'bound` never lets a handler outlive the vectors.
        let vectors: &'bound pci::IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref(&*self.0) };
        let irq = vectors.index(i)?.into();
        // SAFETY: The registration is dropped normally, never forgotten (function contract).
        Ok(unsafe {
            irq::Registration::new(
                irq,
                irq::Flags::TRIGGER_NONE,
                c"ivshmem",
                Ok::<_, Error>(Handler(handler)),
            )
        })
    }
}
