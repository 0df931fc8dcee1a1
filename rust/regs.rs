// SPDX-License-Identifier: GPL-2.0

//! The ivshmem register block (BAR0) and the BARs of the device (QEMU `docs/specs/ivshmem-spec.rst`).

use kernel::io::register;

/// BAR holding the registers.
pub(crate) const REGS_BAR: u32 = 0;
/// BAR holding the MSI-X table: present on `ivshmem-doorbell` only.
pub(crate) const MSIX_BAR: u32 = 1;
/// BAR holding the shared memory.
pub(crate) const SHM_BAR: u32 = 2;

/// Size of BAR0: 256 bytes, of which the first 16 are registers.
pub(crate) const SIZE: usize = 0x100;

// IntrMask (0x0) and IntrStatus (0x4) only matter for INTx, which this driver does not use.
register! {
    /// This guest's peer id on a doorbell device (read-only).
    pub(crate) IV_POSITION(u32) @ 0x8 {
        /// Assigned by the ivshmem server; a valid id fits the doorbell's 16-bit peer field.
        31:0 position;
    }

    /// Writing it interrupts vector `vector` of peer `peer` (write-only).
    pub(crate) DOORBELL(u32) @ 0xc {
        /// The peer to interrupt.
        31:16 peer;
        /// Its MSI-X vector.
        15:0 vector;
    }
}
