//! The raw system calls ivshmem-check makes, with the constants they take: its own, not the
//! library's typed wrappers (`ivshmem::os`), because its checks pass the driver bad flags,
//! offsets, lengths and pointers on purpose and look for the errno each gets.
//!
//! Values are Linux's on x86-64 and aarch64 (the generic ABI both use).

use std::ffi::{c_int, c_long, c_uint, c_ulong, c_void};

pub const PROT_READ: c_int = 1;
pub const PROT_WRITE: c_int = 2;
pub const PROT_EXEC: c_int = 4;
pub const MAP_SHARED: c_int = 0x01;
pub const MAP_PRIVATE: c_int = 0x02;
pub const MAP_FAILED: *mut c_void = !0usize as *mut c_void;
pub const MREMAP_MAYMOVE: c_int = 1;
pub const MADV_DONTNEED: c_int = 4;
/// `poll` event: data to read.
pub const POLLIN: i16 = 1;
pub const SIGBUS: c_int = 7;
pub const SIGSEGV: c_int = 11;
/// `signal` handler value: the default action.
pub const SIG_DFL: usize = 0;

/// `struct pollfd`.
#[repr(C)]
#[derive(Debug)]
pub struct PollFd {
    pub fd: c_int,
    pub events: i16,
    pub revents: i16,
}

/// `struct timespec`.
#[repr(C)]
pub struct Timespec {
    pub tv_sec: c_long,
    pub tv_nsec: c_long,
}

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
    pub fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
    pub fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    pub fn eventfd(initval: c_uint, flags: c_int) -> c_int;
    pub fn poll(fds: *mut PollFd, nfds: c_ulong, timeout: c_int) -> c_int;
    pub fn ppoll(
        fds: *mut PollFd,
        nfds: c_ulong,
        timeout: *const Timespec,
        sigmask: *const c_void,
    ) -> c_int;
    /// `handler` is a `sighandler_t`: [`SIG_DFL`] or an `extern "C" fn(c_int)` as `usize`.
    pub fn signal(sig: c_int, handler: usize) -> usize;
    pub fn fork() -> c_int;
    pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    pub fn _exit(code: c_int) -> !;
}
