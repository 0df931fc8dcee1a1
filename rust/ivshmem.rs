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

mod compat;
mod doorbell;
mod eventfd;
mod file;
mod file_mappings;
mod file_pins;
mod mem_region;
mod mm_users;
mod msix;
mod regs;
mod shared;
mod slots;
pub mod uapi;
mod uapi_abi;
mod vm_ops;
mod vma_pfn;
mod vma_pfnmap;

use file::DeviceNode;
use mem_region::{
    CacheMode,
    Granted,
    MemRegion, //
};
use msix::{
    Interrupts,
    Vectors, //
};
use regs::{
    MSIX_BAR,
    REGS_BAR,
    SHM_BAR, //
};
use shared::{
    DeviceDesc,
    Shared, //
};
use slots::Slot;

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
/// opened while the interrupts and the device number are released. The shared memory region
/// belongs to `shared`, which gives it back in `unbind` (`Shared::revoke`).
#[pin_data]
struct IvshmemPci<'bound> {
    #[pin]
    node: DeviceNode,
    shared: Arc<Shared>,
    _irqs: Option<Interrupts<'bound>>,
}

compat::pci_table!(
    PCI_TABLE,
    MODULE_PCI_TABLE,
    IvshmemDriver,
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
        _info: compat::ProbeIdInfo<'bound, Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        pin_init::pin_init_scope(move || {
            pdev.enable_device_mem()?;
            pdev.set_master();

            let regs = pdev.iomap_region_sized::<{ regs::SIZE }>(REGS_BAR, NAME)?;
            let doorbell = pdev.resource_len(MSIX_BAR)? > 0;
            let position = regs.read(regs::IV_POSITION).position().get();
            let peer_id = if doorbell && position <= uapi::IVSHMEM_MAX_PEER {
                position
            } else {
                uapi::IVSHMEM_NO_PEER
            };
            let mut shm = MemRegion::request(
                pdev.resource_start(SHM_BAR)?,
                pdev.resource_len(SHM_BAR)?,
                NAME,
            )?;
            // User mappings are write-back unless a file asks otherwise (`IVSHMEM_SET_CACHE`);
            // what PAT grants each type is learnt now, for `IVSHMEM_GET_INFO`.
            shm.learn_cache_types()
                .inspect_err(|e| dev_err!(pdev, "cannot record BAR2's cache type: {e:?}\n"))?;
            if let Some(got) = shm
                .granted(CacheMode::WriteBack)
                .filter(|&g| g != Granted::WriteBack)
            {
                dev_warn!(
                    pdev,
                    "BAR2 [mem {:#x}-{:#x}]: write-back mappings get {} (the MTRRs make the \
                     range uncachable): place BAR2 above 4 GiB (README: cache types)\n",
                    shm.start(),
                    shm.start() + shm.len() - 1,
                    got.name()
                );
            }
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
            let (start, len) = (shm.start(), shm.len());
            let shared = Shared::new(
                DeviceDesc {
                    index: slot.index(),
                    size: len,
                    peer_id,
                    pci_name: pci_name(pdev),
                },
                shm,
                regs.into_devres()?,
                vectors.as_ref().map_or(0, Vectors::len),
            )?;
            let irqs = vectors
                .map(|v| Interrupts::request(v, &shared))
                .transpose()?;

            let (size, unit) = if len >= 1 << 20 {
                (len >> 20, "MiB")
            } else {
                (len >> 10, "KiB")
            };
            let name = slot.name().to_str().unwrap_or("?");
            if shared.doorbell.vectors() > 0 {
                dev_info!(
                    pdev,
                    "/dev/{name}: {size} {unit} shared memory at {start:#x}, doorbell: peer id {peer_id}, {} MSI-X vectors\n",
                    shared.doorbell.vectors()
                );
            } else {
                dev_info!(
                    pdev,
                    "/dev/{name}: {size} {unit} shared memory at {start:#x}, plain\n"
                );
            }

            Ok(try_pin_init!(IvshmemPci {
                node <- DeviceNode::new(shared.clone(), slot),
                shared,
                _irqs: irqs,
            }))
        })
    }

    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        this.shared.revoke();
        dev_info!(pdev, "/dev/ivshmem{} removed\n", this.shared.desc.index);
    }
}

/// The module: the device numbers' lock, then the PCI driver; the pins of open files go last
/// (`file_pins::FilePins`: by then no file is open).
#[pin_data]
struct IvshmemModule {
    #[pin]
    _driver: kernel::driver::Registration<pci::Adapter<IvshmemDriver>>,
    _pins: file_pins::FilePins,
}

impl kernel::InPlaceModule for IvshmemModule {
    fn init(module: &'static kernel::ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: Module init runs once, before the driver is registered and can probe.
        unsafe { slots::init() };
        try_pin_init!(Self {
            _driver <- kernel::driver::Registration::new(
                <Self as kernel::ModuleMetadata>::NAME,
                module,
            ),
            _pins: file_pins::FilePins::new(),
        })
    }
}

module! {
    type: IvshmemModule,
    name: "ivshmem",
    authors: ["ivshmem-rs developers"],
    description: "QEMU ivshmem shared memory: /dev/ivshmemN with mmap and ioctls",
    license: "GPL v2",
}
