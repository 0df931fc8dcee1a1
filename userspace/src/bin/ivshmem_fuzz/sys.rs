//! The raw system calls the fuzzer makes, with the constants they take: its own, not the
//! library's typed wrappers (`ivshmem::os`), because it calls the kernel with hostile
//! arguments on purpose (random flags, descriptors that are closed or not the device's,
//! addresses it does not own) and must reach the kernel with exactly those.
//!
//! Values are Linux's on x86-64 and aarch64 (the generic ABI both use).

use std::ffi::{c_int, c_long, c_uint, c_ulong, c_void};

pub const PROT_NONE: c_int = 0;
pub const PROT_READ: c_int = 1;
pub const PROT_WRITE: c_int = 2;
/// Never generated (executable device memory is no case of ours): the tests check that.
#[cfg(test)]
pub const PROT_EXEC: c_int = 4;
pub const MAP_SHARED: c_int = 0x01;
pub const MAP_PRIVATE: c_int = 0x02;
pub const MAP_SHARED_VALIDATE: c_int = 0x03;
pub const MAP_FIXED: c_int = 0x10;
pub const MAP_ANONYMOUS: c_int = 0x20;
pub const MAP_32BIT: c_int = 0x40;
pub const MAP_LOCKED: c_int = 0x2000;
pub const MAP_NORESERVE: c_int = 0x4000;
pub const MAP_POPULATE: c_int = 0x8000;
pub const MAP_NONBLOCK: c_int = 0x10000;
pub const MAP_STACK: c_int = 0x20000;
pub const MAP_SYNC: c_int = 0x80000;
pub const MAP_FIXED_NOREPLACE: c_int = 0x10_0000;
pub const MAP_FAILED: *mut c_void = !0usize as *mut c_void;
pub const MREMAP_MAYMOVE: c_int = 1;
pub const MREMAP_FIXED: c_int = 2;
pub const MREMAP_DONTUNMAP: c_int = 4;
pub const MADV_WILLNEED: c_int = 3;
pub const MADV_DONTNEED: c_int = 4;
pub const MADV_HWPOISON: c_int = 100;
pub const MADV_SOFT_OFFLINE: c_int = 101;
pub const MS_ASYNC: c_int = 1;
pub const EFD_NONBLOCK: c_int = 0o4000;
pub const EFD_CLOEXEC: c_int = 0o2000000;
pub const O_NONBLOCK: c_int = 0o4000;
pub const O_PATH: c_int = 0o10000000;
pub const SIGBUS: c_int = 7;
pub const SIGUSR1: c_int = 10;
pub const SIGSEGV: c_int = 11;
/// `sigaction` handler value: the default action.
pub const SIG_DFL: usize = 0;
pub const SA_SIGINFO: c_int = 4;

/// glibc's `struct sigaction` on x86-64 (the libc function converts it to the kernel's layout).
#[repr(C)]
pub struct SigAction {
    /// `sa_handler`, or `sa_sigaction` with [`SA_SIGINFO`].
    pub handler: usize,
    pub mask: [u64; 16],
    pub flags: c_int,
    pub restorer: usize,
}

/// Offset of `si_addr` in `siginfo_t` for SIGBUS and SIGSEGV on 64-bit Linux.
pub const SIGINFO_ADDR_OFFSET: usize = 16;

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
    pub fn msync(addr: *mut c_void, len: usize, flags: c_int) -> c_int;
    pub fn eventfd(initval: c_uint, flags: c_int) -> c_int;
    pub fn close(fd: c_int) -> c_int;
    pub fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    pub fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    pub fn sigaction(sig: c_int, act: *const SigAction, old: *mut SigAction) -> c_int;
    pub fn pthread_kill(thread: c_ulong, sig: c_int) -> c_int;
    pub fn pthread_self() -> c_ulong;
    pub fn fork() -> c_int;
    pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    pub fn _exit(code: c_int) -> !;
}
