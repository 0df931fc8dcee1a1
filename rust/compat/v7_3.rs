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
        // SAFETY: The registration lives in a box whose address does not change, and it is
        // dropped after every handler that borrows it (field order of `Self`), so extending
        // the borrow to `'bound` never lets a handler outlive the vectors.
        let vref: &'bound pci::IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref(&*vectors) };
        let mut handlers = KVec::new();
        for i in 0..vref.len() {
            // SAFETY: The registration is kept in `handlers` and dropped normally, never
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
