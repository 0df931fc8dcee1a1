// SPDX-License-Identifier: GPL-2.0

//! The MSI-X vectors of a doorbell device and the handlers that deliver them to its
//! [`Doorbell`](crate::doorbell::Doorbell).

use kernel::{
    device::Bound,
    irq::{
        self,
        IrqReturn, //
    },
    pci,
    prelude::*,
    sync::Arc, //
};

use crate::{
    shared::Shared,
    uapi, //
};

/// The interrupt handler of one vector.
struct VectorHandler {
    shared: Arc<Shared>,
    vector: usize,
}

impl irq::Handler for VectorHandler {
    fn handle(&self) -> IrqReturn {
        self.shared.doorbell.interrupt(self.vector);
        IrqReturn::Handled
    }
}

/// MSI-X vectors allocated for a device, before their handlers exist.
pub(crate) struct Vectors<'bound>(KBox<pci::IrqVectorRegistration<'bound>>);

impl<'bound> Vectors<'bound> {
    /// Allocates as many MSI-X vectors as the device has, up to `IVSHMEM_MAX_VECTORS`.
    pub(crate) fn alloc(pdev: &'bound pci::Device<Bound>) -> Result<Self> {
        let types = pci::IrqTypes::default().with(pci::IrqType::MsiX);
        let vectors = pdev.alloc_irq_vectors(1, uapi::IVSHMEM_MAX_VECTORS, types)?;
        Ok(Self(KBox::new(vectors, GFP_KERNEL)?))
    }

    /// How many were allocated.
    pub(crate) fn len(&self) -> u32 {
        // CAST: at most `IVSHMEM_MAX_VECTORS` were asked for.
        self.0.len() as u32
    }
}

/// The MSI-X vectors of a bound doorbell device and their handlers.
pub(crate) struct Interrupts<'bound> {
    // Declared (so dropped) before `_vectors`: the handlers use the vectors' IRQ numbers.
    _handlers: KVec<Pin<KBox<irq::Registration<'bound, VectorHandler>>>>,
    _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
}

impl<'bound> Interrupts<'bound> {
    /// Requests one handler per vector, delivering to `shared`'s doorbell.
    pub(crate) fn request(vectors: Vectors<'bound>, shared: &Arc<Shared>) -> Result<Self> {
        let vectors = vectors.0;
        // SAFETY: the registration lives in a box whose address does not change, and it is
        // dropped after every handler that borrows it (field order of `Self`), so extending
        // the borrow to `'bound` never lets a handler outlive the vectors.
        let vref: &'bound pci::IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref(&*vectors) };
        let mut handlers = KVec::new();
        for i in 0..vref.len() {
            let handler = VectorHandler {
                shared: shared.clone(),
                vector: i,
            };
            // SAFETY: the registration is kept in `handlers` and dropped normally, never
            // forgotten.
            let reg = unsafe {
                irq::Registration::new(
                    vref.index(i)?.into(),
                    irq::Flags::TRIGGER_NONE,
                    c"ivshmem",
                    Ok::<_, Error>(handler),
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
