// SPDX-License-Identifier: GPL-2.0

//! Per-device state that open files and mappings share, and its revocation on removal.
//!
//! The PCI device can go away (unbind, hot-unplug) while files are open and the shared memory
//! is mapped. Open files hold an `Arc<Shared>`, which outlives the device; it records the files
//! and address spaces so that removal can take every user mapping down.
//!
//! # Device gone
//!
//! Removal is decided in one place, [`Shared::revoke`], called from the PCI `unbind` callback.
//! It takes the shared-memory region out of [`State`]: from then on every file operation finds
//! `State::region` empty and fails with `ENODEV`, and no new mapping can be made. In the same
//! call it tells the doorbell (waiters wake with `ENODEV`, eventfds are dropped), then zaps
//! every user mapping, then releases the region. BAR0 is a `Devres` that the driver core revokes
//! after `unbind` returns; it cannot outlive the device either.
//!
//! # Locking
//!
//! - `Shared::state` (a mutex) protects the region, the open files and the address spaces that
//!   mapped the device. `mmap` takes it with the caller's mmap lock held for writing, so the
//!   order is *mmap lock, then `state`*. Nothing may take an mmap lock while holding `state`:
//!   [`Shared::revoke`] takes each recorded mm's mmap lock only after dropping `state`, and the
//!   exited address spaces that `state` forgets are dropped with `mmdrop` semantics only (an
//!   `ARef<Mm>` holds `mm_count`, not `mm_users`), which takes no mmap lock.
//! - The doorbell's `events` spinlock (IRQ-safe) is innermost: it is taken from interrupt
//!   context and never held across anything that sleeps or takes `state`.

use kernel::{
    mm::{
        virt::{
            VmaNew,
            VmaRef, //
        },
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
    file_mappings::FileMappings,
    mem_region::{
        CacheMode,
        Granted,
        MemRegion, //
    },
    mm_users::MmExited,
    uapi,
    vma_pfn::{
        self,
        PfnSource, //
    },
    vma_pfnmap::VmaRefPgoff,
};

/// What stays fixed for the life of a device.
pub(crate) struct DeviceDesc {
    /// Index N of `/dev/ivshmemN`.
    pub(crate) index: usize,
    /// Size of BAR2 in bytes.
    pub(crate) size: u64,
    /// IVPosition, or `uapi::IVSHMEM_NO_PEER`.
    pub(crate) peer_id: u32,
    /// The PCI device name, NUL-padded.
    pub(crate) pci_name: [u8; 16],
}

/// An open file, as the device knows it.
struct OpenFile {
    /// Identity of the file's state (its address; stable, since the state is pinned).
    id: usize,
    mappings: FileMappings,
}

/// What `Shared::state` protects.
struct State {
    /// The shared memory (BAR2) while the device is bound; `None` once it is gone.
    region: Option<MemRegion>,
    files: KVec<OpenFile>,
    /// Address spaces that hold a VMA of the device and have not exited (no duplicates).
    /// `revoke` needs them to wait for an mmap or a fork in flight; see there.
    mms: KVec<ARef<Mm>>,
    /// VMAs of the device, in any process. While there are any, the region's cache type
    /// stays: each was installed with it.
    vmas: usize,
}

impl State {
    /// Records that `mm` holds a VMA of the device.
    fn remember_mm(&mut self, mm: &Mm) -> Result {
        if !self.mms.iter().any(|m| core::ptr::eq(&**m, mm)) {
            forget_exited(&mut self.mms);
            self.mms.push(ARef::from(mm), GFP_KERNEL)?;
        }
        Ok(())
    }
}

/// Forgets the address spaces in `mms` that have exited. An exited address space has no mmap in
/// flight and never gets a new one, so `revoke` has nothing to wait for there. This bounds the
/// list by the number of live processes that mapped the device, however many come and go while
/// a file stays open.
fn forget_exited(mms: &mut KVec<ARef<Mm>>) {
    mms.retain(|mm| !mm.has_exited());
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
    /// Creates the state of a live device: its shared memory `region`, and `vectors` MSI-X
    /// vectors with handlers (0 without doorbell).
    pub(crate) fn new(
        desc: DeviceDesc,
        region: MemRegion,
        regs: Regs,
        vectors: u32,
    ) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                desc,
                doorbell <- Doorbell::new(regs, vectors),
                state <- kernel::new_mutex!(State {
                    region: Some(region),
                    files: KVec::new(),
                    mms: KVec::new(),
                    vmas: 0,
                }, "ivshmem::Shared::state"),
            }),
            GFP_KERNEL,
        )
    }

    /// Fails with `ENODEV` once the device is gone.
    pub(crate) fn check_alive(&self) -> Result {
        if self.state.lock().region.is_some() {
            Ok(())
        } else {
            Err(ENODEV)
        }
    }

    /// Records an open file, so that removal can revoke its mappings.
    pub(crate) fn add_file(&self, id: usize, mappings: FileMappings) -> Result {
        let mut state = self.state.lock();
        if state.region.is_none() {
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
        if state.files.is_empty() {
            // A mapping keeps its file open, so with no file open nothing is mapped any more.
            state.mms.clear();
        } else {
            // The last file of an exiting process is released after its address space is torn
            // down: a good moment to forget it.
            forget_exited(&mut state.mms);
        }
    }

    /// Maps BAR2 into `vma` with `mode`, or fails with `ENODEV` if the device is gone,
    /// `ENXIO` if the offset lies beyond BAR2, `EINVAL` if the length does not fit and `EBUSY`
    /// if the device is mapped with another cache type right now (PAT keeps one type per
    /// physical range, so the device has one at a time). Entries are inserted at fault time.
    pub(crate) fn map(self: &Arc<Self>, vma: &VmaNew, mode: CacheMode) -> Result {
        let size = self.desc.size;
        let offset = (vma.pgoff() as u64)
            .checked_mul(kernel::page::PAGE_SIZE as u64)
            .ok_or(ENXIO)?;
        if offset >= size {
            return Err(ENXIO);
        }
        let len = (vma.end() - vma.start()) as u64;
        if len > size - offset {
            return Err(EINVAL);
        }

        let mut guard = self.state.lock();
        let state = &mut *guard;
        let region = state.region.as_mut().ok_or(ENODEV)?;
        if region.cache_mode() != Some(mode) {
            if state.vmas > 0 {
                return Err(EBUSY);
            }
            region.set_cache_mode(mode)?;
        }
        state.remember_mm(vma.mm())?;
        // Under the lock: `revoke` cannot slip in between the checks and the installation.
        vma_pfn::install(vma, self.clone(), mode)?;
        // INVARIANT: the VMA is installed with the region's cache type.
        state.vmas += 1;
        Ok(())
    }

    /// Marks the device gone, wakes doorbell waiters (`ENODEV`), takes down every user mapping
    /// of it and releases the region. Accesses through a revoked mapping raise `SIGBUS`.
    pub(crate) fn revoke(&self) {
        let (region, mms) = {
            let mut state = self.state.lock();
            // Taken, not copied: no allocation, so no address space can be skipped.
            (state.region.take(), core::mem::take(&mut state.mms))
        };
        self.doorbell.revoke();
        // Faults insert entries only while the region is there (`with_region`), so after the
        // zap below no new entry appears. What the zap cannot see is a VMA not yet linked into
        // the file's mapping: a fork copies the parent's entries into the child's VMA after
        // linking it, under both mms' mmap locks held for writing, and an mmap links its VMA
        // after our `mmap` returns, under the same lock. Taking each mm's lock once waits for
        // those to finish, so the zap sees every entry. Our own lock is not held here: mmap
        // and the VMA callbacks take it under an mm's lock.
        for mm in mms.iter() {
            if let Some(mm) = mm.mmget_not_zero() {
                drop(mm.mmap_read_lock());
            }
        }
        drop(mms);
        {
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
        // No user mapping of the region is left: give it back.
        drop(region);
    }

    /// What `IVSHMEM_GET_INFO` reports for a file whose next mmap uses `mode`, or `ENODEV`
    /// once the device is gone.
    pub(crate) fn info(&self, mode: CacheMode) -> Result<uapi::IvshmemInfo> {
        let granted = self
            .state
            .lock()
            .region
            .as_ref()
            .ok_or(ENODEV)?
            .granted(mode);
        let vectors = self.doorbell.vectors();
        // A doorbell is what the vectors actually set up make of the device.
        let mut flags = if vectors > 0 {
            uapi::IVSHMEM_FLAG_DOORBELL
        } else {
            0
        };
        if granted.is_some() {
            flags |= uapi::IVSHMEM_FLAG_GRANTED;
        }
        Ok(uapi::IvshmemInfo {
            size: self.desc.size,
            peer_id: self.desc.peer_id,
            vectors,
            flags,
            cache: match mode {
                CacheMode::WriteBack => uapi::IVSHMEM_CACHE_WB,
                CacheMode::WriteCombining => uapi::IVSHMEM_CACHE_WC,
                CacheMode::Uncached => uapi::IVSHMEM_CACHE_UC,
            },
            pci_name: self.desc.pci_name,
            granted: match granted {
                None | Some(Granted::WriteBack) => uapi::IVSHMEM_CACHE_WB,
                Some(Granted::WriteCombining) => uapi::IVSHMEM_CACHE_WC,
                Some(Granted::UncachedMinus) => uapi::IVSHMEM_CACHE_UC,
                Some(Granted::Uncached) => uapi::IVSHMEM_CACHE_UC_STRONG,
                Some(Granted::WriteThrough) => uapi::IVSHMEM_CACHE_WT,
                Some(Granted::WriteProtect) => uapi::IVSHMEM_CACHE_WP,
            },
            reserved0: 0,
            reserved: [0; 2],
        })
    }
}

impl PfnSource for Shared {
    fn with_region<R>(&self, insert: impl FnOnce(&MemRegion) -> R) -> Option<R> {
        // Inserting under the lock: `revoke` takes the region under it, then zaps.
        let state = self.state.lock();
        let region = state.region.as_ref()?;
        // Every VMA was installed with the region's type, which stays while VMAs exist, so a
        // VMA being faulted implies a type on record (checked anyway: never insert with UC-
        // by default).
        region.cache_mode()?;
        Some(insert(region))
    }

    fn vma_opened(&self, vma: &VmaRef) {
        let mut state = self.state.lock();
        state.vmas += 1;
        // A child of a fork is recorded so that `revoke` waits for its own forks. Should the
        // allocation fail, only that wait is lost; the mapping itself still works and is
        // revoked like any other.
        let _ = state.remember_mm(vma.mm());
    }

    fn vma_closed(&self) {
        let mut state = self.state.lock();
        state.vmas = state.vmas.saturating_sub(1);
    }
}
