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
        MsixHandlers,
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
    _handlers: MsixHandlers<'bound, VectorHandler>,
}

impl<'bound> Interrupts<'bound> {
    /// Requests one handler per vector, delivering to `shared`'s doorbell.
    pub(crate) fn request(vectors: Vectors<'bound>, shared: &Arc<Shared>) -> Result<Self> {
        let handlers = MsixHandlers::request(vectors.0, |vector| VectorHandler {
            shared: shared.clone(),
            vector,
        })?;
        Ok(Self {
            _handlers: handlers,
        })
    }
}
