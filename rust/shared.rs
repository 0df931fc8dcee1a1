// SPDX-License-Identifier: GPL-2.0

//! Per-device state that open files and mappings share, and its revocation on removal.
//!
//! The PCI device can go away (unbind, hot-unplug, rmmod) while files are open and the shared
//! memory is mapped. Open files hold an `Arc<Shared>`, which outlives the device; it records the
//! files and address spaces so that removal can take every user mapping down.

use kernel::{
    mm::{
        virt::VmaNew,
        Mm, //
    },
    prelude::*,
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
};

use crate::{
    doorbell::{
        Doorbell,
        Regs, //
    },
    uapi,
    vma_pfn::{
        self,
        vma_pgoff,
        CacheMode,
        FileMappings, //
    },
};

/// What stays fixed for the life of a device.
pub(crate) struct DeviceDesc {
    /// Index N of `/dev/ivshmemN`.
    pub(crate) index: usize,
    /// Physical address of BAR2.
    pub(crate) phys: u64,
    /// Size of BAR2 in bytes.
    pub(crate) size: u64,
    /// IVPosition, or `uapi::IVSHMEM_NO_PEER`.
    pub(crate) peer_id: u32,
    /// Whether the device has a doorbell (BAR1 with MSI-X).
    pub(crate) doorbell: bool,
    /// The PCI device name, NUL-padded.
    pub(crate) pci_name: [u8; 16],
}

/// An open file, as the device knows it.
struct OpenFile {
    /// Identity of the file's state (its address; stable, since the state is pinned).
    id: usize,
    mappings: FileMappings,
}

struct State {
    /// Cleared once, on removal. Afterwards ioctls and mmaps fail with `ENODEV`.
    alive: bool,
    files: KVec<OpenFile>,
    /// Every address space that mapped the device while a file was open (no duplicates).
    mms: KVec<ARef<Mm>>,
}

/// State shared by the PCI driver and the device's open files.
#[pin_data]
pub(crate) struct Shared {
    pub(crate) desc: DeviceDesc,
    #[pin]
    pub(crate) doorbell: Doorbell,
    #[pin]
    state: Mutex<State>,
}

impl Shared {
    /// Creates the state of a live device with `vectors` MSI-X vectors (0 without doorbell).
    pub(crate) fn new(desc: DeviceDesc, regs: Regs, vectors: u32) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                desc,
                doorbell <- Doorbell::new(regs, vectors),
                state <- kernel::new_mutex!(State {
                    alive: true,
                    files: KVec::new(),
                    mms: KVec::new(),
                }),
            }),
            GFP_KERNEL,
        )
    }

    /// Fails with `ENODEV` once the device is gone.
    pub(crate) fn check_alive(&self) -> Result {
        if self.state.lock().alive {
            Ok(())
        } else {
            Err(ENODEV)
        }
    }

    /// Records an open file, so that removal can revoke its mappings.
    pub(crate) fn add_file(&self, id: usize, mappings: FileMappings) -> Result {
        let mut state = self.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
        state.files.push(OpenFile { id, mappings }, GFP_KERNEL)?;
        Ok(())
    }

    /// Forgets an open file; called when it is released.
    pub(crate) fn remove_file(&self, id: usize) {
        let mut state = self.state.lock();
        if let Some(pos) = state.files.iter().position(|f| f.id == id) {
            // `pos` is in bounds: it was just found.
            let _ = state.files.remove(pos);
        }
        // A mapping keeps its file open, so with no file open nothing is mapped any more.
        if state.files.is_empty() {
            state.mms.clear();
        }
    }

    /// Maps BAR2 into `vma` with `mode`, or fails with `ENODEV` if the device is gone,
    /// `ENXIO` if the offset lies beyond BAR2 and `EINVAL` if the length does not fit.
    pub(crate) fn map(&self, vma: &VmaNew, mode: CacheMode) -> Result {
        let size = self.desc.size;
        let offset = (vma_pgoff(vma) as u64)
            .checked_mul(kernel::page::PAGE_SIZE as u64)
            .ok_or(ENXIO)?;
        if offset >= size {
            return Err(ENXIO);
        }
        let len = (vma.end() - vma.start()) as u64;
        if len > size - offset {
            return Err(EINVAL);
        }

        let mut state = self.state.lock();
        if !state.alive {
            return Err(ENODEV);
        }
        let mm = vma.mm();
        if !state.mms.iter().any(|m| core::ptr::eq(&**m, &**mm)) {
            state.mms.push(ARef::from(&**mm), GFP_KERNEL)?;
        }
        // Mapping under the lock: `revoke` cannot slip in between the check and the mapping.
        vma_pfn::map_phys_range(vma, self.desc.phys, size, mode)
    }

    /// Marks the device gone, wakes doorbell waiters (`ENODEV`) and takes down every user
    /// mapping of it. Accesses through a revoked mapping raise `SIGBUS`.
    pub(crate) fn revoke(&self) {
        self.doorbell.revoke();
        let mms = {
            let mut state = self.state.lock();
            state.alive = false;
            let mut mms = KVec::new();
            for mm in state.mms.iter() {
                // Best effort on allocation failure: the mm lock pass below only closes a
                // race with an mmap in flight.
                let _ = mms.push(mm.clone(), GFP_KERNEL);
            }
            mms
        };
        // An mmap that passed the `alive` check has populated its VMA, but the VMA is linked
        // into the file's mapping only after our `mmap` returns, under the mm's mmap lock held
        // for writing. Taking each mm's lock once waits for such an mmap to finish, so the zap
        // below sees its VMA. Our own lock is not held here: mmap takes it under the mm lock.
        for mm in mms.iter() {
            if let Some(mm) = mm.mmget_not_zero() {
                drop(mm.mmap_read_lock());
            }
        }
        let state = self.state.lock();
        for (i, file) in state.files.iter().enumerate() {
            // Files opened through the same inode share one mapping: zap it once.
            if !state.files[..i]
                .iter()
                .any(|f| f.mappings.same(&file.mappings))
            {
                file.mappings.zap_all();
            }
        }
    }

    /// What `IVSHMEM_GET_INFO` reports for a file whose next mmap uses `cache`.
    pub(crate) fn info(&self, cache: u32) -> uapi::IvshmemInfo {
        uapi::IvshmemInfo {
            size: self.desc.size,
            peer_id: self.desc.peer_id,
            vectors: self.doorbell.vectors(),
            flags: if self.desc.doorbell {
                uapi::IVSHMEM_FLAG_DOORBELL
            } else {
                0
            },
            cache,
            pci_name: self.desc.pci_name,
            reserved: [0; 3],
        }
    }
}
