// SPDX-License-Identifier: GPL-2.0

//! The uapi types as the kernel copies them to and from user space, and compile-time proof
//! that `uapi.rs` (shared with user space, which builds its ioctl numbers by hand) agrees with
//! the kernel's own `_IOR`/`_IOW`/`_IOWR` and with the sizes `include/ivshmem.h` declares.

use kernel::{
    ioctl::{
        _IOR,
        _IOW,
        _IOWR, //
    },
    transmute::{
        AsBytes,
        FromBytes, //
    },
};

use crate::uapi::{
    self,
    IvshmemEventfd,
    IvshmemInfo,
    IvshmemRing,
    IvshmemWait, //
};

// SAFETY: `IvshmemInfo` is `repr(C)` with integer fields only and no padding (8 + 4 * 4 + 16 +
// 2 * 4 + 16 bytes, checked below), so every byte of it is initialised.
unsafe impl AsBytes for IvshmemInfo {}
// SAFETY: Any bit pattern is a valid `IvshmemInfo`: it holds integers only.
unsafe impl FromBytes for IvshmemInfo {}
// SAFETY: `repr(C)`, two `u32`: no padding, and any bit pattern is valid.
unsafe impl FromBytes for IvshmemRing {}
// SAFETY: `repr(C)`, `u32`, `i32`, `u64`: no padding, and any bit pattern is valid.
unsafe impl FromBytes for IvshmemWait {}
// SAFETY: As above: every byte is initialised.
unsafe impl AsBytes for IvshmemWait {}
// SAFETY: `repr(C)`, `u32` and `i32`: no padding, and any bit pattern is valid.
unsafe impl FromBytes for IvshmemEventfd {}

const MAGIC: u32 = uapi::IVSHMEM_IOCTL_MAGIC;

// The sizes of the ABI structs: `userspace/tests/c_header.rs` checks the C header has them too.
const _: () = assert!(size_of::<IvshmemInfo>() == 64);
const _: () = assert!(size_of::<IvshmemRing>() == 8);
const _: () = assert!(size_of::<IvshmemWait>() == 16);
const _: () = assert!(size_of::<IvshmemEventfd>() == 8);

// Every ioctl number is the kernel's own encoding of its argument type.
const _: () = assert!(uapi::IVSHMEM_GET_SIZE == _IOR::<u64>(MAGIC, 0));
const _: () = assert!(uapi::IVSHMEM_GET_INFO == _IOR::<IvshmemInfo>(MAGIC, 1));
const _: () = assert!(uapi::IVSHMEM_SET_CACHE == _IOW::<u32>(MAGIC, 2));
const _: () = assert!(uapi::IVSHMEM_RING == _IOW::<IvshmemRing>(MAGIC, 3));
const _: () = assert!(uapi::IVSHMEM_WAIT == _IOWR::<IvshmemWait>(MAGIC, 4));
const _: () = assert!(uapi::IVSHMEM_SET_EVENTFD == _IOW::<IvshmemEventfd>(MAGIC, 5));
const _: () = assert!(uapi::IVSHMEM_MAX_PEER == (1 << 16) - 1); // the doorbell's peer field
