//! The few libc calls std does not wrap: ioctl, mmap, munmap, mremap. Public for tests and
//! experts; [`crate::Device`] and [`crate::Mapping`] are the safe surface.

use std::ffi::{c_int, c_long, c_ulong, c_void};

pub const PROT_READ: c_int = 1;
pub const PROT_WRITE: c_int = 2;
pub const MAP_SHARED: c_int = 0x01;
pub const MAP_PRIVATE: c_int = 0x02;
pub const MREMAP_MAYMOVE: c_int = 1;
pub const MAP_FAILED: *mut c_void = !0usize as *mut c_void;

extern "C" {
    pub fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    pub fn mmap(
        addr: *mut c_void,
        len: usize,
        prot: c_int,
        flags: c_int,
        fd: c_int,
        offset: c_long,
    ) -> *mut c_void;
    pub fn munmap(addr: *mut c_void, len: usize) -> c_int;
    pub fn mremap(
        old: *mut c_void,
        old_len: usize,
        new_len: usize,
        flags: c_int,
        ...
    ) -> *mut c_void;
}
