// SPDX-License-Identifier: GPL-2.0

//! The ioctl ABI of `/dev/ivshmemN`: the one source of truth.
//!
//! This file is compiled into the kernel module and into the userspace crate, so it only uses
//! `core`. `userspace/include/ivshmem.h` mirrors it for C programs; a userspace test checks that
//! the two agree.

/// The ioctl "type" byte. `Documentation/userspace-api/ioctl/ioctl-number.rst` lists no user of
/// 0xB9.
pub const IVSHMEM_IOCTL_MAGIC: u32 = 0xB9;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Builds an ioctl number like the C `_IOC` macro (x86, arm64, riscv layout).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT)
        | (IVSHMEM_IOCTL_MAGIC << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IOR(0xB9, 0, __u64)`: writes the size of the shared memory (BAR2) in bytes.
pub const IVSHMEM_GET_SIZE: u32 = ioc(IOC_READ, 0, core::mem::size_of::<u64>());

/// `_IOR(0xB9, 1, struct ivshmem_info)`: writes an [`IvshmemInfo`].
pub const IVSHMEM_GET_INFO: u32 = ioc(IOC_READ, 1, core::mem::size_of::<IvshmemInfo>());

/// `_IOW(0xB9, 2, __u32)`: selects the cache type (`IVSHMEM_CACHE_*`) of this file's later
/// mmaps. Mappings made before keep their type.
pub const IVSHMEM_SET_CACHE: u32 = ioc(IOC_WRITE, 2, core::mem::size_of::<u32>());

/// `_IOW(0xB9, 3, struct ivshmem_ring)`: rings `vector` of peer `peer` (doorbell devices).
pub const IVSHMEM_RING: u32 = ioc(IOC_WRITE, 3, core::mem::size_of::<IvshmemRing>());

/// `_IOWR(0xB9, 4, struct ivshmem_wait)`: waits for an interrupt on a vector of this device.
pub const IVSHMEM_WAIT: u32 = ioc(IOC_READ | IOC_WRITE, 4, core::mem::size_of::<IvshmemWait>());

/// `_IOW(0xB9, 5, struct ivshmem_eventfd)`: signals an eventfd on each interrupt of a vector.
pub const IVSHMEM_SET_EVENTFD: u32 = ioc(IOC_WRITE, 5, core::mem::size_of::<IvshmemEventfd>());

/// Most MSI-X vectors the driver uses per device (QEMU's server allows 64).
pub const IVSHMEM_MAX_VECTORS: u32 = 64;

/// Highest peer id: the doorbell register holds it in 16 bits.
pub const IVSHMEM_MAX_PEER: u32 = 0xffff;

/// Cache type: write-back, the default. BAR2 is ordinary host RAM.
pub const IVSHMEM_CACHE_WB: u32 = 0;
/// Cache type: write-combining.
pub const IVSHMEM_CACHE_WC: u32 = 1;
/// Cache type: uncached (UC-), as the sysfs `resource2` path maps it.
pub const IVSHMEM_CACHE_UC: u32 = 2;
/// Granted cache type only (not a request): uncached (strong UC).
pub const IVSHMEM_CACHE_UC_STRONG: u32 = 3;
/// Granted cache type only: write-through.
pub const IVSHMEM_CACHE_WT: u32 = 4;
/// Granted cache type only: write-protect.
pub const IVSHMEM_CACHE_WP: u32 = 5;

/// [`IvshmemInfo::flags`]: the device has a doorbell (BAR1 with MSI-X: `ivshmem-doorbell`).
pub const IVSHMEM_FLAG_DOORBELL: u32 = 1 << 0;
/// [`IvshmemInfo::flags`]: [`IvshmemInfo::granted`] is known (older drivers leave the flag clear).
pub const IVSHMEM_FLAG_GRANTED: u32 = 1 << 1;

/// [`IvshmemInfo::peer_id`] when the device has no peer id (`ivshmem-plain`).
pub const IVSHMEM_NO_PEER: u32 = u32::MAX;

/// What `IVSHMEM_GET_INFO` returns. 64 bytes; new fields take from `reserved`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IvshmemInfo {
    /// Size of the shared memory (BAR2) in bytes.
    pub size: u64,
    /// This guest's peer id (the IVPosition register), or [`IVSHMEM_NO_PEER`].
    pub peer_id: u32,
    /// Number of MSI-X vectors the driver set up (0 on `ivshmem-plain`).
    pub vectors: u32,
    /// `IVSHMEM_FLAG_*`.
    pub flags: u32,
    /// The cache type (`IVSHMEM_CACHE_*`) this file's next mmap will use.
    pub cache: u32,
    /// PCI address of the device (`0000:00:04.0`), NUL-padded: which node is which device.
    pub pci_name: [u8; 16],
    /// The cache type (`IVSHMEM_CACHE_*`) that mmap really gets, with
    /// [`IVSHMEM_FLAG_GRANTED`]: on x86 the type PAT granted `cache` (write-back becomes UC-
    /// where the MTRRs make BAR2's range uncachable), elsewhere `cache`.
    pub granted: u32,
    /// Zero.
    pub reserved0: u32,
    /// Zero; room to grow without changing the ioctl number.
    pub reserved: [u64; 2],
}

/// Argument of `IVSHMEM_RING`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IvshmemRing {
    /// Target peer id (0..=`IVSHMEM_MAX_PEER`). QEMU drops rings to peers it does not know.
    pub peer: u32,
    /// Target vector; must be below this device's vector count (all peers share the count).
    pub vector: u32,
}

/// Argument of `IVSHMEM_WAIT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IvshmemWait {
    /// Vector to wait on.
    pub vector: u32,
    /// Milliseconds to wait: 0 does not block (`EAGAIN`), negative waits without limit.
    /// Expiry gives `ETIMEDOUT`, a signal `EINTR`, removal of the device `ENODEV`.
    pub timeout_ms: i32,
    /// Out: interrupts on `vector` since this file last saw one (at least 1). Interrupts that
    /// arrive between two waits are counted, never lost.
    pub count: u64,
}

/// Argument of `IVSHMEM_SET_EVENTFD`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IvshmemEventfd {
    /// Vector whose interrupts signal the eventfd.
    pub vector: u32,
    /// An eventfd, or -1 to remove this file's eventfd from the vector. One eventfd per vector
    /// and device (`EBUSY` if another file set one); it is removed when its file is closed.
    pub fd: i32,
}
