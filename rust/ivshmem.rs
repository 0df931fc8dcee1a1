// SPDX-License-Identifier: GPL-2.0

//! Driver for QEMU's inter-VM shared memory device (`ivshmem-plain`, `ivshmem-doorbell`).
//!
//! Every 1af4:1110 device becomes `/dev/ivshmemN`. User space maps the shared memory (BAR2) with
//! `mmap` and queries it with the ioctls of `uapi.rs`. BAR2 is never mapped into the kernel.

use kernel::{
    device::Core,
    io::Io,
    pci,
    prelude::*,
    sync::Arc, //
};

mod doorbell;
mod eventfd;
mod file;
mod mem_region;
mod shared;
mod slots;
pub mod uapi;
mod vma_pfn;

use doorbell::{
    Interrupts,
    Vectors, //
};
use file::DeviceNode;
use mem_region::MemRegion;
use shared::{
    DeviceDesc,
    Shared, //
};
use slots::Slot;

/// The ivshmem register block (BAR0): 256 bytes of 32-bit registers.
mod regs {
    /// Size of BAR0.
    pub(crate) const SIZE: usize = 0x100;
    // IntrMask (0x0) and IntrStatus (0x4) only matter for INTx, which this driver does not use.
    /// This guest's peer id (doorbell mode), read-only.
    pub(crate) const IV_POSITION: usize = 0x8;
    /// Doorbell: write `peer << 16 | vector` to interrupt a peer.
    pub(crate) const DOORBELL: usize = 0xc;
}

/// BAR holding the shared memory.
const SHM_BAR: u32 = 2;
/// BAR holding the MSI-X table: present on `ivshmem-doorbell` only.
const MSIX_BAR: u32 = 1;

const NAME: &CStr = c"ivshmem";

struct IvshmemDriver;

/// The PCI address (`0000:00:04.0`) NUL-padded to 16 bytes, for `IVSHMEM_GET_INFO`.
fn pci_name(pdev: &pci::Device<Core<'_>>) -> [u8; 16] {
    let mut out = [0u8; 16];
    let name = pdev.as_ref().name().to_bytes();
    let n = name.len().min(out.len() - 1);
    out[..n].copy_from_slice(&name[..n]);
    out
}

/// A bound ivshmem device. Fields drop in order: the node goes first, so nothing new can be
/// opened while the memory region and the device number are released.
#[pin_data]
struct IvshmemPci<'bound> {
    #[pin]
    node: DeviceNode,
    shared: Arc<Shared>,
    _shm: MemRegion,
    _irqs: Option<Interrupts<'bound>>,
    _slot: Slot,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <IvshmemDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT_QUMRANET, 0x1110),
        ()
    )]
);

impl pci::Driver for IvshmemDriver {
    type IdInfo = ();
    type Data<'bound> = IvshmemPci<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            pdev.enable_device_mem()?;
            pdev.set_master();

            let regs = pdev.iomap_region_sized::<{ regs::SIZE }>(0, NAME)?;
            let doorbell = pdev.resource_len(MSIX_BAR)? > 0;
            let peer_id = if doorbell {
                regs.read32(regs::IV_POSITION)
            } else {
                uapi::IVSHMEM_NO_PEER
            };
            let shm = MemRegion::request(
                pdev.resource_start(SHM_BAR)?,
                pdev.resource_len(SHM_BAR)?,
                NAME,
            )?;
            let slot = Slot::take()?;
            // Doorbell devices interrupt us through MSI-X; without it they work as plain ones.
            let vectors = if doorbell {
                Vectors::alloc(pdev)
                    .inspect_err(|e| {
                        dev_warn!(pdev, "no MSI-X vectors ({e:?}): doorbell unavailable\n")
                    })
                    .ok()
            } else {
                None
            };
            let shared = Shared::new(
                DeviceDesc {
                    index: slot.index(),
                    phys: shm.start(),
                    size: shm.len(),
                    peer_id,
                    doorbell,
                    pci_name: pci_name(pdev),
                },
                regs.into_devres()?,
                vectors.as_ref().map_or(0, Vectors::len),
            )?;
            let irqs = vectors
                .map(|v| Interrupts::request(v, &shared))
                .transpose()?;

            let (size, unit) = if shm.len() >= 1 << 20 {
                (shm.len() >> 20, "MiB")
            } else {
                (shm.len() >> 10, "KiB")
            };
            let name = slot.name().to_str().unwrap_or("?");
            if doorbell {
                dev_info!(
                    pdev,
                    "/dev/{name}: {size} {unit} shared memory at {:#x}, doorbell: peer id {peer_id}, {} MSI-X vectors\n",
                    shm.start(),
                    shared.doorbell.vectors()
                );
            } else {
                dev_info!(
                    pdev,
                    "/dev/{name}: {size} {unit} shared memory at {:#x}, plain\n",
                    shm.start()
                );
            }

            Ok(try_pin_init!(IvshmemPci {
                node <- DeviceNode::new(shared.clone(), slot.name()),
                shared,
                _shm: shm,
                _irqs: irqs,
                _slot: slot,
            }))
        })
    }

    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        this.shared.revoke();
        dev_info!(pdev, "/dev/ivshmem{} removed\n", this.shared.desc.index);
    }
}

kernel::module_pci_driver! {
    type: IvshmemDriver,
    name: "ivshmem",
    authors: ["ivshmem-rs developers"],
    description: "QEMU ivshmem shared memory: /dev/ivshmemN with mmap and ioctls",
    license: "GPL v2",
}
