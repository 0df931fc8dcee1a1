//! The system calls the tools make beyond std, in rustix's shape: flags and signals as types,
//! descriptors as [`BorrowedFd`]/[`OwnedFd`], results as [`io::Result`]. Safe where a call
//! cannot break memory safety; `unsafe` where it maps or unmaps memory, installs a signal
//! handler or forks. The raw calls stay private to the library (and to `ivshmem-fuzz` and
//! `ivshmem-check`, which call the kernel with hostile arguments on purpose and declare their
//! own).

use std::ffi::{c_int, c_long, c_void, CStr, CString};
use std::io;
use std::marker::PhantomData;
use std::ops::BitOr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::time::Duration;

use crate::sys;

/// The result of a call that returns 0 or -1 with `errno`.
fn check(r: c_int) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of this process's page tables (`VmPTE` of /proc/self/status), in kB: what a
/// mapping's huge entries save.
pub fn vm_pte_kb() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmPTE in /proc/self/status"))
}

/// Makes the named pipe (FIFO) `path`, readable and writable by its owner only.
pub fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    check(unsafe { sys::mkfifo(c.as_ptr(), 0o600) })
}

/// Memory protection of a mapping (`PROT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtFlags(c_int);

impl ProtFlags {
    pub const NONE: Self = Self(sys::PROT_NONE);
    pub const READ: Self = Self(sys::PROT_READ);
    pub const WRITE: Self = Self(sys::PROT_WRITE);
}

impl BitOr for ProtFlags {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// How a mapping is made (`MAP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFlags(c_int);

impl MapFlags {
    pub const SHARED: Self = Self(sys::MAP_SHARED);
    pub const PRIVATE: Self = Self(sys::MAP_PRIVATE);
    /// No swap or commit charge: for reservations of address space.
    pub const NORESERVE: Self = Self(sys::MAP_NORESERVE);
    /// At the address given or not at all (`EEXIST`), never replacing a mapping.
    pub const FIXED_NOREPLACE: Self = Self(sys::MAP_FIXED_NOREPLACE);
}

impl BitOr for MapFlags {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Maps `len` bytes: of `fd` from `offset`, or anonymous memory without `fd`. `addr` is a hint,
/// or with [`MapFlags::FIXED_NOREPLACE`] the address.
///
/// # Safety
///
/// The caller owns what it maps and must not let Rust references outlive the mapping; a
/// shared mapping's bytes may change under it (another process or VM writes them).
pub unsafe fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
    fd: Option<BorrowedFd<'_>>,
    offset: u64,
) -> io::Result<NonNull<c_void>> {
    let offset = i64::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mmap offset too large"))?;
    let (fd, anon) = match fd {
        Some(fd) => (fd.as_raw_fd(), 0),
        None => (-1, sys::MAP_ANONYMOUS),
    };
    // SAFETY: The caller's contract: no MAP_FIXED (the type has none), so nothing existing is
    // replaced; the rest is the caller's.
    let p = unsafe { sys::mmap(addr, len, prot.0, flags.0 | anon, fd, offset) };
    if p == sys::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p).ok_or_else(|| io::Error::other("mmap gave NULL"))
}

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
///
/// Nothing may use the range afterwards: the caller made it with [`mmap`] and holds no
/// reference into it.
pub unsafe fn munmap(addr: NonNull<c_void>, len: usize) -> io::Result<()> {
    // SAFETY: The caller's contract.
    check(unsafe { sys::munmap(addr.as_ptr(), len) })
}

/// Maps `len` bytes of `fd` from `offset` shared and read-write where huge entries fit (the
/// library's own mapping call: see `Device::map`). The caller unmaps it.
pub fn map_shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<NonNull<u8>> {
    sys::map_shared(fd.as_raw_fd(), len, offset)
}

/// An anonymous memory file (`memfd_create`, close-on-exec).
pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = unsafe { sys::memfd_create(name.as_ptr(), sys::MFD_CLOEXEC) };
    check(fd)?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The bytes waiting in a socket's receive queue (`FIONREAD`).
pub fn bytes_to_read(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    check(unsafe { sys::ioctl(fd.as_raw_fd(), sys::FIONREAD, &mut n as *mut c_int) })?;
    usize::try_from(n).map_err(|_| io::Error::other("FIONREAD gave a negative count"))
}

/// A signal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(c_int);

impl Signal {
    pub const INT: Self = Self(sys::SIGINT);
    pub const USR1: Self = Self(sys::SIGUSR1);
    pub const PIPE: Self = Self(sys::SIGPIPE);
    pub const TERM: Self = Self(sys::SIGTERM);
    pub const KILL: Self = Self(9);
    pub const CONT: Self = Self(18);
    pub const STOP: Self = Self(19);

    /// Its number.
    pub fn number(self) -> c_int {
        self.0
    }
}

/// Ignores `sig` from now on.
pub fn ignore_signal(sig: Signal) {
    // SAFETY: Sets the action of one signal to "ignore"; no handler runs.
    unsafe { sys::signal(sig.0, sys::SIG_IGN) };
}

/// Runs `handler` when `sig` arrives.
///
/// # Safety
///
/// `handler` runs in a signal context, between any two instructions of any thread: it may
/// only do what is async-signal-safe (store to an atomic, `write`, `_exit`).
pub unsafe fn set_signal_handler(sig: Signal, handler: extern "C" fn(c_int)) {
    // SAFETY: The caller's contract on what the handler does.
    unsafe { sys::signal(sig.0, handler as usize) };
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = c_int::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: Plain system call on integers.
    check(unsafe { sys::kill(pid, sig.0) })
}

/// What [`fork`] returns in each process.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// In the child.
    Child,
    /// In the parent, with the child's pid.
    Parent(u32),
}

/// Forks this process.
///
/// # Safety
///
/// Only the calling thread exists in the child: until it execs or exits, the child may only
/// do what is async-signal-safe unless the process had no other thread.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: The caller's contract.
    match unsafe { sys::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// Starts a new session with this process as its leader (`setsid`).
pub fn setsid() -> io::Result<()> {
    // SAFETY: Plain system call.
    check(unsafe { sys::setsid() })
}

/// Makes descriptor `to` a copy of `from` (`dup2`), closing what `to` was.
///
/// # Safety
///
/// `to` must not be a descriptor some owner (a `File`, an `OwnedFd`) still uses for what it
/// was; standard input, output and error are the usual targets.
pub unsafe fn dup2(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    // SAFETY: The caller's contract.
    check(unsafe { sys::dup2(from.as_raw_fd(), to) })
}

/// Clears close-on-exec on `fd`, so that a program this process execs inherits it; for
/// `Command::pre_exec`, between fork and exec (async-signal-safe).
pub fn set_inheritable(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD with 0 only clears the descriptor's flags.
    check(unsafe { sys::fcntl(fd.as_raw_fd(), sys::F_SETFD, 0) })
}

/// A descriptor [`poll`] watches for input (`struct pollfd`).
#[repr(C)]
#[derive(Debug)]
pub struct PollFd<'fd> {
    fd: c_int,
    events: i16,
    revents: i16,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl<'fd> PollFd<'fd> {
    /// Watches `fd` for input, or for nothing (a place holder) without `input`.
    pub fn new(fd: BorrowedFd<'fd>, input: bool) -> Self {
        Self {
            fd: fd.as_raw_fd(),
            events: if input { sys::POLLIN } else { 0 },
            revents: 0,
            _fd: PhantomData,
        }
    }

    /// Whether the last [`poll`] found input.
    pub fn readable(&self) -> bool {
        self.revents & sys::POLLIN != 0
    }
}

/// Waits at most `timeout` until one of `fds` has input; how many have (0: the time ran out).
pub fn poll(fds: &mut [PollFd<'_>], timeout: Duration) -> io::Result<usize> {
    let ts = sys::Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(c_long::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: `PollFd` has `struct pollfd`'s layout (the marker takes no room); `fds` and `ts`
    // outlive the call; no signal mask.
    let n = unsafe {
        sys::ppoll(
            fds.as_mut_ptr().cast(),
            fds.len() as _,
            &ts,
            std::ptr::null(),
        )
    };
    check(n)?;
    Ok(n as usize)
}
