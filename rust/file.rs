// SPDX-License-Identifier: GPL-2.0

//! `/dev/ivshmemN`: the misc device node, its open files, `mmap` and the ioctls.

use kernel::{
    fs::File,
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    mm::virt::VmaNew,
    prelude::*,
    sync::{
        atomic::{
            ordering::Relaxed,
            Atomic, //
        },
        Arc, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

use crate::{
    doorbell::Seen,
    file_mappings::FileMappings,
    file_pins::FilePins,
    mem_region::CacheMode,
    shared::Shared,
    slots::Slot,
    uapi, //
};

/// The registration of one `/dev/ivshmemN`, with the device state its files need.
///
/// # Invariants
///
/// Every `MiscDeviceRegistration<IvshmemFile>` is the `reg` field of a `DeviceNode`.
///
/// Fields drop in declaration order: the node is deregistered first, which waits for every
/// `open` in flight (`misc_open` runs under the lock `misc_deregister` takes), and only then is
/// `shared` put and the number, whose name the registration points to, given back.
#[pin_data]
pub(crate) struct DeviceNode {
    #[pin]
    reg: MiscDeviceRegistration<IvshmemFile>,
    shared: Arc<Shared>,
    slot: Slot,
}

impl DeviceNode {
    /// Registers the node named after `slot` for `shared`. The node can be opened as soon as
    /// it exists, so `shared` is in place first.
    pub(crate) fn new(shared: Arc<Shared>, slot: Slot) -> impl PinInit<Self, Error> {
        let name: *const CStr = slot.name();
        // SAFETY: The name is a heap buffer owned by `slot`, which does not move it; `slot`
        // becomes a field of the node and is dropped after `reg` (field order), so the name
        // outlives the registration that keeps a pointer to it.
        let name: &'static CStr = unsafe { &*name };
        // INVARIANT: the only place a registration of `IvshmemFile` is created.
        try_pin_init!(Self {
            shared,
            slot,
            reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
        })
    }

    fn from_registration(reg: &MiscDeviceRegistration<IvshmemFile>) -> &Self {
        let reg: *const _ = reg;
        // SAFETY: By the type invariant `reg` is the `reg` field of a `DeviceNode`, which lives
        // at least as long as the borrow of `reg`.
        unsafe { &*kernel::container_of!(reg, Self, reg) }
    }
}

/// An open file of `/dev/ivshmemN`.
#[pin_data(PinnedDrop)]
pub(crate) struct IvshmemFile {
    shared: Arc<Shared>,
    /// `uapi::IVSHMEM_CACHE_*` for the next mmap.
    cache: Atomic<u32>,
    /// Interrupt counts this file has seen, per vector.
    seen: Seen,
}

impl IvshmemFile {
    fn id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    fn cache_mode(&self) -> CacheMode {
        match self.cache.load(Relaxed) {
            uapi::IVSHMEM_CACHE_WC => CacheMode::WriteCombining,
            uapi::IVSHMEM_CACHE_UC => CacheMode::Uncached,
            _ => CacheMode::WriteBack,
        }
    }
}

#[pinned_drop]
impl PinnedDrop for IvshmemFile {
    fn drop(self: Pin<&mut Self>) {
        self.shared.doorbell.release_file(self.id());
        self.shared.remove_file(self.id());
    }
}

#[vtable]
impl MiscDevice for IvshmemFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        let shared = DeviceNode::from_registration(misc).shared.clone();
        shared.check_alive()?;
        let this = KBox::pin_init(
            pin_init!(Self {
                seen: shared.doorbell.seen_now(),
                shared,
                cache: Atomic::new(uapi::IVSHMEM_CACHE_WB),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: The entry is removed in `drop`, which runs when the file is released.
        let mappings = unsafe { FileMappings::new(file)? };
        this.shared.add_file(this.id(), mappings)?;
        FilePins::pin(file)?;
        Ok(this)
    }

    fn mmap(this: Pin<&Self>, _file: &File, vma: &VmaNew) -> Result {
        // A private (copy-on-write) copy of shared memory silently stops being shared.
        if vma.flags() & crate::compat::MAYSHARE == 0 {
            return Err(EINVAL);
        }
        // Memory another guest (or the host) can write never becomes executable: `PROT_EXEC`
        // fails with `EPERM` here, and a later `mprotect(PROT_EXEC)` with `EACCES`.
        if vma.executable() {
            return Err(EPERM);
        }
        vma.try_clear_mayexec()?;
        this.shared.map(vma, this.cache_mode())?;
        // Fault injection for the VM suite (`make module-race`): widen the window between
        // installing the VMA and the kernel linking it into the file's mapping, the window
        // `Shared::revoke` has to close.
        #[cfg(ivshmem_race_delay)]
        kernel::time::delay::fsleep(kernel::time::Delta::from_millis(50));
        Ok(())
    }

    fn ioctl(this: Pin<&Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = UserPtr::from_addr(arg);
        match cmd {
            uapi::IVSHMEM_GET_SIZE => {
                this.shared.check_alive()?;
                let size: u64 = this.shared.desc.size;
                UserSlice::new(user, size_of::<u64>())
                    .writer()
                    .write(&size)?;
            }
            uapi::IVSHMEM_GET_INFO => {
                let info = this.shared.info(this.cache_mode())?;
                UserSlice::new(user, size_of::<uapi::IvshmemInfo>())
                    .writer()
                    .write(&info)?;
            }
            uapi::IVSHMEM_SET_CACHE => {
                this.shared.check_alive()?;
                let mode: u32 = UserSlice::new(user, size_of::<u32>()).reader().read()?;
                if !matches!(
                    mode,
                    uapi::IVSHMEM_CACHE_WB | uapi::IVSHMEM_CACHE_WC | uapi::IVSHMEM_CACHE_UC
                ) {
                    return Err(EINVAL);
                }
                this.cache.store(mode, Relaxed);
            }
            uapi::IVSHMEM_RING => {
                this.shared.check_alive()?;
                let ring: uapi::IvshmemRing = UserSlice::new(user, size_of::<uapi::IvshmemRing>())
                    .reader()
                    .read()?;
                this.shared.doorbell.ring(ring.peer, ring.vector)?;
            }
            uapi::IVSHMEM_WAIT => {
                let (mut reader, mut writer) =
                    UserSlice::new(user, size_of::<uapi::IvshmemWait>()).reader_writer();
                let mut wait: uapi::IvshmemWait = reader.read()?;
                wait.count = this
                    .shared
                    .doorbell
                    .wait(&this.seen, wait.vector, wait.timeout_ms)?;
                writer.write(&wait)?;
            }
            uapi::IVSHMEM_SET_EVENTFD => {
                this.shared.check_alive()?;
                let efd: uapi::IvshmemEventfd =
                    UserSlice::new(user, size_of::<uapi::IvshmemEventfd>())
                        .reader()
                        .read()?;
                this.shared
                    .doorbell
                    .set_eventfd(this.id(), efd.vector, efd.fd)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}
