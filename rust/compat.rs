// SPDX-License-Identifier: GPL-2.0

//! What differs in the `kernel` crate between the kernel series the driver builds against.
//!
//! The driver is written against 7.3. Kbuild sets `--cfg ivshmem_kernel_7_2` when the kernel is
//! 7.2; one file per series (`compat/v7_3.rs`, `compat/v7_2.rs`) gives the driver one API with
//! each series' spelling: the PCI table macro, probe's `id_info`, `VM_MAYSHARE`, BAR0 kept past
//! probe, the lock of the interrupt path, `EOPNOTSUPP`, the module's
//! `struct module`, and MSI-X vectors with their handlers.
//!
//! # Interrupt context
//!
//! 7.3 has `SpinLockIrq`, so the handlers run in hard interrupt context and take the doorbell's
//! lock there. 7.2's `kernel` crate has no interrupt-disabling lock; a plain spinlock taken in a
//! hard handler could deadlock against the same CPU in process context, so on 7.2 the handlers
//! are threaded (the hard half only wakes the thread) and [`IrqLock`] is a plain spinlock,
//! never taken in hard interrupt context.

use kernel::irq::IrqReturn;

#[cfg_attr(not(ivshmem_kernel_7_2), path = "compat/v7_3.rs")]
#[cfg_attr(ivshmem_kernel_7_2, path = "compat/v7_2.rs")]
mod series;

pub(crate) use series::{
    eopnotsupp,
    new_irq_lock,
    pci_table,
    this_module,
    DevresBar,
    IrqLock,
    IrqRegistration,
    MsixVectors,
    ProbeIdInfo,
    MAYSHARE, //
};

/// The handler of one interrupt vector, called in the context "Interrupt context" describes.
pub(crate) trait IrqHandler: Sync + Send + 'static {
    /// Handles one interrupt.
    fn handle(&self) -> IrqReturn;
}

/// Adapts an [`IrqHandler`] to the kernel's handler trait of the series.
pub(crate) struct Handler<T>(T);
