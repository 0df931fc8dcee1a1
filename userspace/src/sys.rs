//! Every libc call of the library that std does not wrap, with the constants they take: private
//! to it. [`crate::Device`] and [`crate::Mapping`] are the safe surface, [`crate::os`] the
//! typed wrappers the tools use; `ivshmem-fuzz` and `ivshmem-check`, which call the kernel with
//! hostile arguments on purpose, declare their own raw calls.
//!
//! Values are Linux's on x86-64 and aarch64 (the generic ABI both use).

use std::ffi::{c_int, c_long, c_uint, c_ulong, c_void};

pub const PROT_READ: c_int = 1;
pub const PROT_WRITE: c_int = 2;
pub const PROT_NONE: c_int = 0;
pub const MAP_SHARED: c_int = 0x01;
pub const MAP_PRIVATE: c_int = 0x02;
pub const MAP_ANONYMOUS: c_int = 0x20;
/// Map at the address given, replacing what is there.
pub const MAP_FIXED: c_int = 0x10;
/// No swap or commit charge: for reservations of address space.
pub const MAP_NORESERVE: c_int = 0x4000;
/// Map at the address given or fail (`EEXIST`); older kernels take it as a hint.
pub const MAP_FIXED_NOREPLACE: c_int = 0x10_0000;
pub const MAP_FAILED: *mut c_void = !0usize as *mut c_void;

/// `poll` event: data to read.
pub const POLLIN: i16 = 1;

pub const SIGUSR1: c_int = 10;
/// `signal` handler value: the default action.
pub const SIG_DFL: usize = 0;
/// `signal` handler value: ignore the signal.
pub const SIG_IGN: usize = 1;
/// Written to a pipe or socket nobody reads any more.
pub const SIGPIPE: c_int = 13;

/// Error numbers, as `io::Error::raw_os_error` and [`crate::Error::errno`] report them.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const ENXIO: i32 = 6;
    pub const E2BIG: i32 = 7;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOTTY: i32 = 25;
    pub const ENOSPC: i32 = 28;
    pub const EPIPE: i32 = 32;
    pub const ENAMETOOLONG: i32 = 36;
    pub const EPROTO: i32 = 71;
    pub const EBADMSG: i32 = 74;
    pub const EMSGSIZE: i32 = 90;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EADDRINUSE: i32 = 98;
    pub const ECONNREFUSED: i32 = 111;
    pub const ETIMEDOUT: i32 = 110;

    /// The symbolic name of `errno`, e.g. `"EAGAIN"`, if it is one of the above.
    pub fn name(errno: i32) -> Option<&'static str> {
        Some(match errno {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            EINTR => "EINTR",
            EIO => "EIO",
            ENXIO => "ENXIO",
            E2BIG => "E2BIG",
            EBADF => "EBADF",
            EAGAIN => "EAGAIN",
            ENOMEM => "ENOMEM",
            EACCES => "EACCES",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            ENODEV => "ENODEV",
            EINVAL => "EINVAL",
            ENOTTY => "ENOTTY",
            ENOSPC => "ENOSPC",
            EPIPE => "EPIPE",
            ENAMETOOLONG => "ENAMETOOLONG",
            EPROTO => "EPROTO",
            EBADMSG => "EBADMSG",
            EMSGSIZE => "EMSGSIZE",
            EOPNOTSUPP => "EOPNOTSUPP",
            ETIMEDOUT => "ETIMEDOUT",
            _ => return None,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::io;

        #[test]
        fn values_are_the_kernels() {
            // std's messages come from libc: each must match its constant.
            for (n, text) in [
                (ENOENT, "No such file or directory"),
                (EAGAIN, "Resource temporarily unavailable"),
                (ENOTTY, "Inappropriate ioctl for device"),
                (EOPNOTSUPP, "Operation not supported"),
                (ETIMEDOUT, "Connection timed out"),
                (ENODEV, "No such device"),
                (EPIPE, "Broken pipe"),
                (EPROTO, "Protocol error"),
                (EBADMSG, "Bad message"),
                (EMSGSIZE, "Message too long"),
                (ENAMETOOLONG, "File name too long"),
                (ENOSPC, "No space left on device"),
            ] {
                let e = io::Error::from_raw_os_error(n).to_string();
                assert!(e.starts_with(text), "{n}: {e}");
            }
            let kind = |n| io::Error::from_raw_os_error(n).kind();
            assert_eq!(kind(EINTR), io::ErrorKind::Interrupted);
            assert_eq!(kind(EACCES), io::ErrorKind::PermissionDenied);
            assert_eq!(kind(EINVAL), io::ErrorKind::InvalidInput);
        }

        #[test]
        fn names() {
            assert_eq!(name(EAGAIN), Some("EAGAIN"));
            assert_eq!(name(ETIMEDOUT), Some("ETIMEDOUT"));
            assert_eq!(name(EINVAL), Some("EINVAL"));
            assert_eq!(name(12345), None);
        }
    }
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Debug)]
pub struct PollFd {
    pub fd: c_int,
    pub events: i16,
    pub revents: i16,
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
    /// For the tests (a region made read-only under a channel).
    #[cfg(test)]
    pub fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int;
    pub fn eventfd(initval: c_uint, flags: c_int) -> c_int;
    /// `handler` is a `sighandler_t`: [`SIG_DFL`] or an `extern "C" fn(c_int)` as `usize`.
    pub fn signal(sig: c_int, handler: usize) -> usize;
    pub fn fork() -> c_int;
    pub fn _exit(code: c_int) -> !;
}

/// Maps `len` bytes of `fd` at `offset` shared and read-write, at an address where the kernel
/// can map huge pages: the one mmap call of the library (device mappings and channel regions).
///
/// The driver inserts 1 GiB or 2 MiB entries only where the user address is congruent to the
/// file offset modulo that size, and a misc device cannot choose the address itself (no
/// `get_unmapped_area` in 7.3), so this does: it reserves `len` + [`map_align`]`(len)` bytes of
/// address space (`PROT_NONE`, no memory), maps the file with `MAP_FIXED` at the address in it
/// that is congruent to `offset`, and unmaps the unused head and tail. On any error nothing
/// stays mapped.
pub fn map_shared(fd: c_int, len: usize, offset: u64) -> std::io::Result<std::ptr::NonNull<u8>> {
    map_placed(fd, len, offset, PROT_READ | PROT_WRITE, map_align(len), 0)
}

/// Maps `len` bytes of `fd` at `offset` shared with `prot`, at an address `a` with
/// `a % align == (offset + skew) % align`, as [`map_shared`] describes; `align` is a power of
/// two (up to a page: the kernel's choice) and `skew` a multiple of the page size. Tools use
/// it to place a mapping on purpose (a skew of a page forbids huge entries).
pub fn map_placed(
    fd: c_int,
    len: usize,
    offset: u64,
    prot: c_int,
    align: usize,
    skew: usize,
) -> std::io::Result<std::ptr::NonNull<u8>> {
    let off = c_long::try_from(offset).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "mmap offset too large")
    })?;
    if align <= page_size() {
        // SAFETY: A fresh shared mapping chosen by the kernel (no address hint, no MAP_FIXED):
        // no existing memory is touched; a bad `fd`, length or offset only makes the call fail.
        let ptr = unsafe { mmap(std::ptr::null_mut(), len, prot, MAP_SHARED, fd, off) };
        return mapped(ptr);
    }
    // The mapping covers whole pages: the tail to unmap starts at the next page boundary.
    let whole = len.checked_next_multiple_of(page_size());
    let Some((whole, span)) = whole.and_then(|w| Some((w, w.checked_add(align)?))) else {
        // What the kernel says to a length beyond the address space.
        return Err(std::io::Error::from_raw_os_error(errno::ENOMEM));
    };
    let base = reserve(span)?;
    // Both terms are below `align`, so the sums cannot overflow; `head < align`, so [addr,
    // addr + whole) lies inside the reservation.
    let want = ((offset % align as u64) as usize + skew % align) % align;
    let head = (want + align - base % align) % align;
    let addr = base + head;
    // SAFETY: [addr, addr + len) lies inside the reservation made above, which this function
    // owns and nothing else uses: MAP_FIXED replaces only it.
    let ptr = unsafe {
        mmap(
            addr as *mut c_void,
            len,
            prot,
            MAP_SHARED | MAP_FIXED,
            fd,
            off,
        )
    };
    // On an error, unmap what is still this function's: from `from` to the reservation's end
    // (a failed MAP_FIXED may have left a hole; a mapping whose trim failed is given up).
    let undo = |from: usize, e: std::io::Error| {
        let _ = unmap(from, base + span - from);
        Err(e)
    };
    let p = match mapped(ptr) {
        Ok(p) => p,
        Err(e) => return undo(base, e),
    };
    if let Err(e) = unmap(base, head) {
        return undo(base, e);
    }
    let tail = addr + whole;
    if let Err(e) = unmap(tail, base + span - tail) {
        return undo(addr, e);
    }
    Ok(p)
}

/// Maps two files side by side in one range of address space: `own_len` bytes of `own`
/// shared and read-write, then, right after them, `peer_len` bytes of `peer` shared and
/// read-only (`peer` may be open read-only). The isolated channel topology maps an end's own
/// device and its peer's so, and addresses both from one base. The range starts at the
/// alignment [`map_align`] gives `own_len`, so that both parts can get huge entries when
/// `own_len` is a multiple of that size; `own_len` must be a multiple of the page size. On
/// any error nothing stays mapped.
pub fn map_pair(
    own: c_int,
    own_len: usize,
    peer: c_int,
    peer_len: usize,
) -> std::io::Result<std::ptr::NonNull<u8>> {
    let page = page_size();
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    if own_len == 0 || peer_len == 0 || !own_len.is_multiple_of(page) {
        return Err(invalid(
            "a pair of mappings needs two non-empty parts, the first of whole pages",
        ));
    }
    let align = map_align(own_len).max(page);
    let Some((whole, span)) = own_len
        .checked_add(peer_len)
        .and_then(|t| t.checked_next_multiple_of(page))
        .and_then(|w| Some((w, w.checked_add(align)?)))
    else {
        return Err(std::io::Error::from_raw_os_error(errno::ENOMEM));
    };
    let base = reserve(span)?;
    // `base` is page-aligned, so `addr - base < align` and [addr, addr + whole) lies inside
    // the reservation.
    let addr = base.next_multiple_of(align);
    let undo = |e: std::io::Error| {
        let _ = unmap(base, span);
        Err(e)
    };
    for (at, len, prot, fd) in [
        (addr, own_len, PROT_READ | PROT_WRITE, own),
        (addr + own_len, peer_len, PROT_READ, peer),
    ] {
        // SAFETY: [at, at + len) lies inside the reservation made above, which this function
        // owns and nothing else uses: MAP_FIXED replaces only it.
        let ptr = unsafe { mmap(at as *mut c_void, len, prot, MAP_SHARED | MAP_FIXED, fd, 0) };
        if let Err(e) = mapped(ptr) {
            return undo(e);
        }
    }
    let tail = addr + whole;
    if let Err(e) = unmap(base, addr - base).and_then(|()| unmap(tail, base + span - tail)) {
        return undo(e);
    }
    std::ptr::NonNull::new(addr as *mut u8).ok_or_else(|| std::io::Error::other("mmap gave NULL"))
}

/// Reserves `span` bytes of address space (no memory) for the callers above to place
/// mappings in with `MAP_FIXED`; its start is page-aligned.
fn reserve(span: usize) -> std::io::Result<usize> {
    // SAFETY: A fresh private anonymous mapping chosen by the kernel: no existing memory is
    // touched. PROT_NONE and MAP_NORESERVE: it takes address space only.
    let reserved = unsafe {
        mmap(
            std::ptr::null_mut(),
            span,
            PROT_NONE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
            -1,
            0,
        )
    };
    mapped(reserved).map(|p| p.as_ptr() as usize)
}

/// The alignment [`map_shared`] gives the address of a mapping of `len` bytes: the largest
/// huge-page size (1 GiB, 2 MiB) the mapping spans, else 1 (none: the kernel's choice).
pub fn map_align(len: usize) -> usize {
    const GIB: usize = 1 << 30;
    const MIB2: usize = 2 << 20;
    if len >= GIB {
        GIB
    } else if len >= MIB2 {
        MIB2
    } else {
        1
    }
}

/// The system's page size.
pub fn page_size() -> usize {
    // SAFETY: `sysconf` only reads the value.
    let n = unsafe { sysconf(SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// The result of an mmap call: its address, or the errno it failed with.
fn mapped(ptr: *mut c_void) -> std::io::Result<std::ptr::NonNull<u8>> {
    if ptr == MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap gave NULL"))
}

/// Unmaps [at, at + len) of a reservation of [`map_shared`]; nothing if `len` is 0.
fn unmap(at: usize, len: usize) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: Callers pass a part of their own reservation that holds nothing handed out.
    if unsafe { munmap(at as *mut c_void, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `sysconf` name of the page size (glibc's value on Linux).
pub const SC_PAGESIZE: c_int = 30;

extern "C" {
    pub fn sysconf(name: c_int) -> c_long;
}

/// `eventfd` flags.
pub const EFD_NONBLOCK: c_int = 0o4000;
pub const EFD_CLOEXEC: c_int = 0o2000000;

extern "C" {
    pub fn pthread_sigmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
}

/// glibc's `sigset_t`: 1024 bits.
#[repr(C)]
pub struct SigSet(pub [u64; 16]);

/// `pthread_sigmask` how: add the set to the mask.
pub const SIG_BLOCK: c_int = 0;

/// `struct iovec`.
#[repr(C)]
pub struct IoVec {
    pub base: *mut c_void,
    pub len: usize,
}

/// `struct msghdr` (64-bit Linux).
#[repr(C)]
pub struct MsgHdr {
    pub name: *mut c_void,
    pub namelen: u32,
    pub iov: *mut IoVec,
    pub iovlen: usize,
    pub control: *mut c_void,
    pub controllen: usize,
    pub flags: c_int,
}

// Sockets and processes: what `ivshmem-server` and its tests use.
pub const SIGTERM: c_int = 15;
pub const SIGINT: c_int = 2;
/// `ioctl` request: bytes waiting in a socket's receive queue.
pub const FIONREAD: c_ulong = 0x541B;

extern "C" {
    pub fn sendmsg(fd: c_int, msg: *const MsgHdr, flags: c_int) -> isize;
    pub fn recvmsg(fd: c_int, msg: *mut MsgHdr, flags: c_int) -> isize;
    pub fn setsid() -> c_int;
    pub fn memfd_create(name: *const std::ffi::c_char, flags: c_uint) -> c_int;
    pub fn mkfifo(path: *const std::ffi::c_char, mode: c_uint) -> c_int;
    pub fn dup2(old: c_int, new: c_int) -> c_int;
    pub fn kill(pid: c_int, sig: c_int) -> c_int;
}

// Channels (wait.rs) and their tests: waiting on eventfds, memfds inherited by child processes.
/// `memfd_create` flag.
pub const MFD_CLOEXEC: c_uint = 1;
/// `fcntl` command: set the descriptor flags (`FD_CLOEXEC`).
pub const F_SETFD: c_int = 2;

/// `struct timespec`.
#[repr(C)]
pub struct Timespec {
    pub tv_sec: c_long,
    pub tv_nsec: c_long,
}

extern "C" {
    pub fn ppoll(
        fds: *mut PollFd,
        nfds: c_ulong,
        timeout: *const Timespec,
        sigmask: *const c_void,
    ) -> c_int;
    pub fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
}
