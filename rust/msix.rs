// SPDX-License-Identifier: GPL-2.0

//! The MSI-X vectors of a doorbell device and the handlers that deliver them to its
//! [`Doorbell`](crate::doorbell::Doorbell).

use kernel::{
    device::Bound,
    irq::IrqReturn,
    pci,
    prelude::*,
    sync::Arc, //
};

use crate::{
    compat::{
        IrqHandler,
        IrqRegistration,
        MsixVectors, //
    },
    shared::Shared,
    uapi, //
};

/// The interrupt handler of one vector.
struct VectorHandler {
    shared: Arc<Shared>,
    vector: usize,
}

impl IrqHandler for VectorHandler {
    fn handle(&self) -> IrqReturn {
        self.shared.doorbell.interrupt(self.vector);
        IrqReturn::Handled
    }
}

/// MSI-X vectors allocated for a device, before their handlers exist.
pub(crate) struct Vectors<'bound>(MsixVectors<'bound>);

impl<'bound> Vectors<'bound> {
    /// Allocates as many MSI-X vectors as the device has, up to `IVSHMEM_MAX_VECTORS`.
    pub(crate) fn alloc(pdev: &'bound pci::Device<Bound>) -> Result<Self> {
        Ok(Self(MsixVectors::alloc(pdev, uapi::IVSHMEM_MAX_VECTORS)?))
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
    _handlers: KVec<Pin<KBox<IrqRegistration<'bound, VectorHandler>>>>,
    _vectors: MsixVectors<'bound>,
}

impl<'bound> Interrupts<'bound> {
    /// Requests one handler per vector, delivering to `shared`'s doorbell.
    pub(crate) fn request(vectors: Vectors<'bound>, shared: &Arc<Shared>) -> Result<Self> {
        let vectors = vectors.0;
        let mut handlers = KVec::new();
        for vector in 0..vectors.len() {
            let handler = VectorHandler {
                shared: shared.clone(),
                vector,
            };
            // SAFETY: The registration is kept in `handlers`, dropped (never forgotten) before
            // the vectors: field order of `Self`; on an error, `handlers` is dropped here
            // before `vectors` (reverse declaration order of the locals).
            let reg = unsafe { vectors.register(vector, handler) }?;
            handlers.push(KBox::pin_init(reg, GFP_KERNEL)?, GFP_KERNEL)?;
        }
        Ok(Self {
            _handlers: handlers,
            _vectors: vectors,
        })
    }
}
