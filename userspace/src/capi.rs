//! The C API of the channels library, declared in `include/ivshmem_channel.h`: an opaque
//! handle over a [`Channel`], failures as -1 (or NULL) with `errno` set and a thread-local
//! message. `make capi` builds it as `libivshmem.a` and `libivshmem.so`.
//!
//! C callers can pass anything: every pointer argument is checked for NULL (EINVAL) before it
//! is used, and every body runs under `catch_unwind`, so no panic crosses into C (a panic
//! becomes EIO with its message). The header documents each function's contract; what C
//! cannot check (a handle that was already closed, a buffer shorter than its length) stays the
//! caller's duty.

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use std::path::Path;

use crate::channel::{
    open_topology, Channel, ChannelError, Kind, Listener, Options, Region, Wait, MAX_NAME,
};
use crate::sys::errno::{
    E2BIG, EACCES, EADDRINUSE, EAGAIN, EBADF, EBADMSG, EBUSY, ECONNREFUSED, EINVAL, EIO, EMSGSIZE,
    ENAMETOOLONG, ENOENT, ENOMEM, ENOSPC, EOPNOTSUPP, EPIPE, EPROTO, ETIMEDOUT,
};

/// `kind`: a byte stream (the default, also for 0).
pub const IVSHMEM_CHANNEL_STREAM: u32 = 1;
/// `kind`: framed messages.
pub const IVSHMEM_CHANNEL_MESSAGES: u32 = 2;
/// `wait`: doorbell when the device has one, else spin (the default, 0).
pub const IVSHMEM_CHANNEL_WAIT_AUTO: u32 = 0;
/// `wait`: spin, then back off with short sleeps.
pub const IVSHMEM_CHANNEL_WAIT_SPIN: u32 = 1;
/// `wait`: sleep on the doorbell; opening fails without one.
pub const IVSHMEM_CHANNEL_WAIT_DOORBELL: u32 = 2;
/// Longest channel name in bytes.
pub const IVSHMEM_CHANNEL_MAX_NAME: usize = MAX_NAME;
/// Largest `size` of an options struct accepted (later versions only append fields).
const OPTIONS_MAX_SIZE: u32 = 4096;

/// `struct ivshmem_channel_options`. Zero in any field means its default; `size` comes first
/// so that later versions can append fields and still accept this one (and older, shorter
/// ones: their missing fields are zero).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IvshmemChannelOptions {
    /// `sizeof(struct ivshmem_channel_options)` as the caller compiled it.
    pub size: u32,
    /// `IVSHMEM_CHANNEL_STREAM` or `IVSHMEM_CHANNEL_MESSAGES`.
    pub kind: u32,
    /// Ring bytes per direction when this end creates the channel (a power of two).
    pub capacity: u64,
    /// `IVSHMEM_CHANNEL_WAIT_*`.
    pub wait: u32,
    /// Spin rounds before waiting.
    pub spin_rounds: u32,
    /// Milliseconds without a heartbeat before the peer counts as dead.
    pub liveness_timeout_ms: u32,
    /// Milliseconds opening may wait for the layout or a busy channel.
    pub open_timeout_ms: u32,
    /// The isolated topology: the peer's device (or file), mapped read-only; `path` is then
    /// this end's own. NULL: one device both ends write.
    pub peer_path: *const c_char,
    /// With `peer_path`: a device whose doorbell carries the wake-ups. NULL: none.
    pub doorbell_path: *const c_char,
}

/// The size of the first version of the options (up to `open_timeout_ms`), the smallest
/// accepted.
const OPTIONS_V1_SIZE: u32 = 32;

impl Default for IvshmemChannelOptions {
    fn default() -> Self {
        Self {
            size: std::mem::size_of::<Self>() as u32,
            kind: 0,
            capacity: 0,
            wait: 0,
            spin_rounds: 0,
            liveness_timeout_ms: 0,
            open_timeout_ms: 0,
            peer_path: std::ptr::null(),
            doorbell_path: std::ptr::null(),
        }
    }
}

/// `struct ivshmem_channel`: what C holds a pointer to.
pub struct IvshmemChannel {
    chan: Channel,
    /// The last message `recv` took from the ring.
    msg: Vec<u8>,
    /// Whether `msg` is still to be delivered (it did not fit the caller's buffer).
    pending: bool,
    /// Which calls this handle takes: both, or one direction after `ivshmem_channel_split`.
    reads: bool,
    writes: bool,
}

impl IvshmemChannel {
    fn new(chan: Channel, reads: bool, writes: bool) -> Self {
        Self {
            chan,
            msg: Vec::new(),
            pending: false,
            reads,
            writes,
        }
    }

    /// The channel, for a call that writes.
    fn writer(&mut self) -> Res<&mut Channel> {
        if !self.writes {
            return Err(Failure::new(
                EBADF,
                "this handle is the reading half of a split channel",
            ));
        }
        Ok(&mut self.chan)
    }

    /// The channel, for a call that reads.
    fn reader(&mut self) -> Res<&mut Channel> {
        if !self.reads {
            return Err(Failure::new(
                EBADF,
                "this handle is the writing half of a split channel",
            ));
        }
        Ok(&mut self.chan)
    }
}

/// Why a call failed: the errno and the message `last_error` returns.
struct Failure {
    errno: c_int,
    msg: String,
}

impl Failure {
    fn new(errno: c_int, msg: impl Into<String>) -> Self {
        Self {
            errno,
            msg: msg.into(),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::new(errno_of_io(&e), e.to_string())
    }
}

impl From<ChannelError> for Failure {
    fn from(e: ChannelError) -> Self {
        Self::new(errno_of_channel(&e), e.to_string())
    }
}

type Res<T> = Result<T, Failure>;

fn errno_of_io(e: &io::Error) -> c_int {
    if let Some(ce) = ChannelError::of(e) {
        return errno_of_channel(ce);
    }
    e.raw_os_error().unwrap_or_else(|| errno_of_kind(e.kind()))
}

/// Corruption by the peer is EPROTO; a region that never held a layout this library speaks
/// is EBADMSG; the rest is the kernel's errno, or follows the `io::ErrorKind` the channel
/// layer chose.
fn errno_of_channel(e: &ChannelError) -> c_int {
    match e {
        ChannelError::Corrupt(_) => EPROTO,
        ChannelError::BadLayout(_) | ChannelError::Version { .. } => EBADMSG,
        ChannelError::MessageTooLarge { .. } => EMSGSIZE,
        e => e.raw_os_error().unwrap_or_else(|| errno_of_kind(e.kind())),
    }
}

fn errno_of_kind(kind: io::ErrorKind) -> c_int {
    use io::ErrorKind as K;
    match kind {
        K::NotFound => ENOENT,
        K::PermissionDenied => EACCES,
        K::InvalidInput => EINVAL,
        K::InvalidData => EBADMSG,
        K::BrokenPipe | K::UnexpectedEof => EPIPE,
        K::WouldBlock => EAGAIN,
        K::TimedOut => ETIMEDOUT,
        K::ResourceBusy => EBUSY,
        K::StorageFull => ENOSPC,
        K::OutOfMemory => ENOMEM,
        K::ConnectionRefused => ECONNREFUSED,
        K::AddrInUse => EADDRINUSE,
        _ => EIO,
    }
}

thread_local! {
    /// The message of the last failure on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

extern "C" {
    /// glibc's and musl's `errno` location for the calling thread.
    fn __errno_location() -> *mut c_int;
}

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` has no preconditions and returns the calling thread's errno,
    // valid for writes for the thread's lifetime.
    let p = unsafe { __errno_location() };
    // SAFETY: `p` is the thread's errno (see above), an aligned, writable int.
    unsafe { *p = e };
}

fn record(f: Failure) {
    // A message with a NUL inside is cut there: C sees it up to that point anyway.
    let msg = f.msg.split('\0').next().unwrap_or_default();
    let msg = CString::new(msg).unwrap_or_default();
    // A thread being torn down has no slot: the errno alone has to do.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = msg);
    set_errno(f.errno);
}

/// Runs `body`; a failure or a panic sets errno and the message and gives `failed`.
fn guard<T>(failed: T, body: impl FnOnce() -> Res<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(f)) => {
            record(f);
            failed
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            record(Failure::new(EIO, format!("internal error (panic): {what}")));
            failed
        }
    }
}

fn einval(msg: impl Into<String>) -> Failure {
    Failure::new(EINVAL, msg)
}

/// The handle behind `ch`.
///
/// # Safety
///
/// `ch` is NULL or a handle from [`ivshmem_channel_open`] not yet closed, used by no other
/// thread during the call.
unsafe fn handle<'a>(ch: *mut IvshmemChannel) -> Res<&'a mut IvshmemChannel> {
    // SAFETY: By the caller's contract a non-NULL `ch` is a live, unshared `Box` allocation.
    unsafe { ch.as_mut() }.ok_or_else(|| einval("channel handle is NULL"))
}

/// A C string argument as UTF-8.
///
/// # Safety
///
/// `s` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(s: *const c_char, what: &str) -> Res<&'a str> {
    if s.is_null() {
        return Err(einval(format!("{what} is NULL")));
    }
    // SAFETY: Non-NULL and NUL-terminated by the caller's contract; not written during the call.
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str()
        .map_err(|_| einval(format!("{what} is not valid UTF-8")))
}

/// The `len` bytes at `buf` (none when `len` is 0, even at NULL).
///
/// # Safety
///
/// A non-NULL `buf` points to `len` initialised bytes that nobody writes during the call.
unsafe fn bytes<'a>(buf: *const c_void, len: usize) -> Res<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(einval(format!("buffer is NULL with length {len}")));
    }
    if len > isize::MAX as usize {
        return Err(einval(format!("length {len} exceeds SSIZE_MAX")));
    }
    // SAFETY: Non-NULL, `len` readable initialised bytes by the caller's contract, `len` at
    // most isize::MAX (checked), and u8 needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// A channel or service name argument: 1 to 32 bytes of UTF-8.
///
/// # Safety
///
/// `s` is NULL or points to a NUL-terminated string.
unsafe fn name_arg<'a>(s: *const c_char, what: &str) -> Res<&'a str> {
    // SAFETY: Forwarded from this function's contract.
    let name = unsafe { c_str(s, what) }?;
    if name.is_empty() {
        return Err(einval(format!("{what} is empty")));
    }
    if name.len() > MAX_NAME {
        return Err(Failure::new(
            ENAMETOOLONG,
            format!("{what} has {} bytes, at most {MAX_NAME} fit", name.len()),
        ));
    }
    Ok(name)
}

/// Reads the caller's options: `size` first, then as many fields as this version knows; bytes
/// beyond those (a newer caller) must be zero.
///
/// # Safety
///
/// A non-NULL `opts` points to `opts->size` readable bytes.
unsafe fn read_options(opts: *const IvshmemChannelOptions) -> Res<IvshmemChannelOptions> {
    if opts.is_null() {
        return Ok(IvshmemChannelOptions::default());
    }
    // SAFETY: Non-NULL; the caller's struct starts with the u32 `size` and is aligned for it.
    let size = unsafe { opts.cast::<u32>().read() };
    let ours = std::mem::size_of::<IvshmemChannelOptions>() as u32;
    if !(OPTIONS_V1_SIZE..=OPTIONS_MAX_SIZE).contains(&size) {
        return Err(einval(format!(
            "options.size is {size}: set it to sizeof(struct ivshmem_channel_options) ({ours})"
        )));
    }
    let mut o = IvshmemChannelOptions::default();
    let known = size.min(ours) as usize;
    // SAFETY: `size >= known` bytes are readable at `opts` by the contract, `o` is a plain
    // struct of `ours >= known` bytes whose fields take any bit pattern, and the two do not
    // overlap.
    unsafe { std::ptr::copy_nonoverlapping(opts.cast::<u8>(), (&raw mut o).cast::<u8>(), known) };
    // SAFETY: `size` bytes are readable by the contract, `known..size` lies inside them.
    let tail =
        unsafe { std::slice::from_raw_parts(opts.cast::<u8>().add(known), size as usize - known) };
    if tail.iter().any(|&b| b != 0) {
        return Err(Failure::new(
            E2BIG,
            "options set fields this library does not know (a newer header?)",
        ));
    }
    Ok(o)
}

fn options(o: &IvshmemChannelOptions) -> Res<Options> {
    let mut opts = Options::new();
    opts = match o.kind {
        0 | IVSHMEM_CHANNEL_STREAM => opts.kind(Kind::Stream),
        IVSHMEM_CHANNEL_MESSAGES => opts.kind(Kind::Messages),
        k => return Err(einval(format!("options.kind {k} is not a channel kind"))),
    };
    if o.capacity != 0 {
        opts = opts.capacity(o.capacity);
    }
    opts = opts.wait(match o.wait {
        IVSHMEM_CHANNEL_WAIT_AUTO => Wait::Auto,
        IVSHMEM_CHANNEL_WAIT_SPIN => Wait::Spin,
        IVSHMEM_CHANNEL_WAIT_DOORBELL => Wait::Doorbell,
        w => return Err(einval(format!("options.wait {w} is not a wait mode"))),
    });
    if o.spin_rounds != 0 {
        opts = opts.spin(o.spin_rounds);
    }
    if o.liveness_timeout_ms != 0 {
        opts = opts.liveness_timeout(Duration::from_millis(o.liveness_timeout_ms.into()));
    }
    if o.open_timeout_ms != 0 {
        opts = opts.open_timeout(Duration::from_millis(o.open_timeout_ms.into()));
    }
    Ok(opts)
}

/// The region at `path` for options `o`: one device, or `path` and `o.peer_path` as a pair
/// (the isolated topology) with `o.doorbell_path`'s doorbell.
///
/// # Safety
///
/// `o.peer_path` and `o.doorbell_path` are NULL or NUL-terminated strings.
unsafe fn region(path: &str, o: &IvshmemChannelOptions) -> Res<(Region, Options)> {
    let opts = options(o)?;
    let optional = |p: *const c_char, what| -> Res<Option<&Path>> {
        // SAFETY: `p` is NULL or a NUL-terminated string (this function's contract).
        Ok((!p.is_null())
            .then(|| unsafe { c_str(p, what) })
            .transpose()?
            .map(Path::new))
    };
    let peer = optional(o.peer_path, "options.peer_path")?;
    let doorbell = optional(o.doorbell_path, "options.doorbell_path")?;
    Ok(open_topology(path, peer, doorbell, &opts)?)
}

/// Opens (creating it if missing) channel `name` on `path`. See the header.
///
/// # Safety
///
/// `path` and `name` are NULL or NUL-terminated strings; a non-NULL `opts` points to
/// `opts->size` readable bytes, whose path fields are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_open(
    path: *const c_char,
    name: *const c_char,
    opts: *const IvshmemChannelOptions,
) -> *mut IvshmemChannel {
    guard(std::ptr::null_mut(), || {
        // SAFETY: Forwarded from this function's contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: As above.
        let name = unsafe { name_arg(name, "channel name") }?;
        // SAFETY: Forwarded from this function's contract.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: The options' paths are NULL or strings by this function's contract.
        let (region, opts) = unsafe { region(path, &o) }?;
        let chan = Channel::open(&region, name, &opts).map_err(|e| {
            let f = Failure::from(e);
            Failure::new(f.errno, format!("channel '{name}': {}", f.msg))
        })?;
        Ok(Box::into_raw(Box::new(IvshmemChannel::new(
            chan, true, true,
        ))))
    })
}

/// Leaves the channel cleanly and frees the handle; NULL is ignored.
///
/// # Safety
///
/// `ch` is NULL or an open handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_close(ch: *mut IvshmemChannel) {
    guard((), || {
        if !ch.is_null() {
            // SAFETY: A non-NULL `ch` came from `Box::into_raw` in `ivshmem_channel_open` and is
            // given back exactly once (the caller's contract).
            drop(unsafe { Box::from_raw(ch) });
        }
        Ok(())
    })
}

/// Leaves without closing the write side and frees the handle: the peer reads what was
/// published, then gets EPIPE instead of end-of-file. NULL is ignored.
///
/// # Safety
///
/// `ch` is NULL or an open handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_abort(ch: *mut IvshmemChannel) {
    guard((), || {
        if !ch.is_null() {
            // SAFETY: As in `ivshmem_channel_close`.
            let h = unsafe { Box::from_raw(ch) };
            h.chan.abort();
        }
        Ok(())
    })
}

/// Writes up to `len` bytes of a stream; returns how many (at least one) or -1.
///
/// # Safety
///
/// `ch` is NULL or an open handle; a non-NULL `buf` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_write(
    ch: *mut IvshmemChannel,
    buf: *const c_void,
    len: usize,
) -> isize {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        // A write may be partial: never more than SSIZE_MAX, so the count fits the return.
        // SAFETY: Forwarded; `len.min(..)` only shortens the range.
        let data = unsafe { bytes(buf, len.min(isize::MAX as usize)) }?;
        Ok(h.writer()?.write(data)? as isize)
    })
}

/// Reads up to `len` bytes of a stream; returns how many, 0 at the end of the stream, or -1.
///
/// # Safety
///
/// `ch` is NULL or an open handle; a non-NULL `buf` points to `len` writable bytes (they may
/// be uninitialised).
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_read(
    ch: *mut IvshmemChannel,
    buf: *mut c_void,
    len: usize,
) -> isize {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        if len == 0 {
            return Ok(0);
        }
        if buf.is_null() {
            return Err(einval(format!("buffer is NULL with length {len}")));
        }
        // Through the zero-copy view, so no Rust slice is made over the caller's buffer, which
        // may be uninitialised.
        let slice = h.reader()?.read_slice()?;
        let n = slice.len().min(len).min(isize::MAX as usize);
        // SAFETY: `slice.as_ptr()` is valid for `slice.len() >= n` bytes the protocol gives to
        // this end; `buf` is valid for `len >= n` writable bytes (contract); ring and caller
        // memory do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(slice.as_ptr(), buf.cast::<u8>(), n) };
        slice.release(n)?;
        Ok(n as isize)
    })
}

/// Ends this end's writing: the peer reads the rest, then end-of-file.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_close_write(ch: *mut IvshmemChannel) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        h.writer()?.close_write()?;
        Ok(0)
    })
}

/// Waits until the peer consumed everything this end wrote.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_flush(ch: *mut IvshmemChannel) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        h.writer()?.drain()?;
        Ok(0)
    })
}

/// Waits until a peer joined this end's session (it may have left since).
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_wait_peer(ch: *mut IvshmemChannel) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        h.writer()?.wait_peer()?;
        Ok(0)
    })
}

/// Sends one message of `len` bytes (0 is fine): whole or not at all.
///
/// # Safety
///
/// `ch` is NULL or an open handle; a non-NULL `msg` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_send(
    ch: *mut IvshmemChannel,
    msg: *const c_void,
    len: usize,
) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        let max = h.writer()?.max_message();
        if len > max {
            return Err(ChannelError::MessageTooLarge { len, max }.into());
        }
        // SAFETY: Forwarded from this function's contract.
        let data = unsafe { bytes(msg, len) }?;
        h.writer()?.send(data)?;
        Ok(0)
    })
}

/// Receives the next message into `buf`: 1 with `*len` its size, 0 at the end, -1 on error;
/// EMSGSIZE keeps the message for the next call and sets `*len` to its size.
///
/// # Safety
///
/// `ch` is NULL or an open handle; a non-NULL `buf` points to `cap` writable bytes; `len` is
/// NULL or points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_recv(
    ch: *mut IvshmemChannel,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        if buf.is_null() && cap != 0 {
            return Err(einval(format!("buffer is NULL with capacity {cap}")));
        }
        let set_len = |n: usize| {
            if !len.is_null() {
                // SAFETY: A non-NULL `len` is writable (contract).
                unsafe { len.write(n) };
            }
        };
        if !h.pending {
            h.reader()?;
            if h.chan.recv(&mut h.msg)?.is_none() {
                set_len(0);
                return Ok(0);
            }
            h.pending = true;
        }
        let n = h.msg.len();
        set_len(n);
        if n > cap {
            return Err(Failure::new(
                EMSGSIZE,
                format!("message of {n} bytes does not fit the {cap}-byte buffer; it stays next"),
            ));
        }
        if n > 0 {
            // SAFETY: `buf` is non-NULL (cap >= n > 0) and valid for `cap >= n` writable bytes
            // (contract); `msg` is private memory with `n` bytes.
            unsafe { std::ptr::copy_nonoverlapping(h.msg.as_ptr(), buf.cast::<u8>(), n) };
        }
        h.pending = false;
        Ok(1)
    })
}

/// The largest message `send` takes, or -1.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_max_message(ch: *mut IvshmemChannel) -> isize {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        Ok(h.chan.max_message().min(isize::MAX as usize) as isize)
    })
}

/// Non-blocking mode on (`on` != 0: EAGAIN instead of waiting) or off.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_set_nonblocking(
    ch: *mut IvshmemChannel,
    on: c_int,
) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        h.chan.set_nonblocking(on != 0);
        Ok(0)
    })
}

/// Timeouts of waiting reads and writes in milliseconds; negative waits forever.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_set_timeouts(
    ch: *mut IvshmemChannel,
    read_ms: c_int,
    write_ms: c_int,
) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        let t = |ms: c_int| u64::try_from(ms).ok().map(Duration::from_millis);
        h.chan.set_read_timeout(t(read_ms));
        h.chan.set_write_timeout(t(write_ms));
        Ok(0)
    })
}

/// A descriptor that becomes readable when the peer rings, or -1 (EOPNOTSUPP when the channel
/// spins and has none).
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_fd(ch: *mut IvshmemChannel) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        h.chan.as_raw_fd().ok_or_else(|| {
            Failure::new(
                EOPNOTSUPP,
                "this channel spins: it has no descriptor to poll",
            )
        })
    })
}

/// Splits `ch` for two threads: `ch` becomes the writing half and `*reader` a new handle for
/// the reading half (closed with `ivshmem_channel_close`; the end leaves when both are).
/// Returns 0 or -1.
///
/// # Safety
///
/// `ch` is NULL or an open handle that is not a half already; `reader` is NULL or points to
/// writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_split(
    ch: *mut IvshmemChannel,
    reader: *mut *mut IvshmemChannel,
) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        if reader.is_null() {
            return Err(einval("reader is NULL"));
        }
        if !(h.reads && h.writes) {
            return Err(Failure::new(EBADF, "this handle is a half already"));
        }
        if h.pending {
            return Err(einval("a received message is still pending on this handle"));
        }
        let half = h.chan.split_reader();
        h.reads = false;
        let r = Box::into_raw(Box::new(IvshmemChannel::new(half, true, false)));
        // SAFETY: Non-NULL (checked) and writable by the caller's contract.
        unsafe { reader.write(r) };
        Ok(0)
    })
}

/// How long to poll the descriptor of `ivshmem_channel_fd` before retrying, in milliseconds,
/// or -1.
///
/// # Safety
///
/// `ch` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_poll_interval_ms(ch: *mut IvshmemChannel) -> c_int {
    guard(-1, || {
        // SAFETY: Forwarded from this function's contract.
        let h = unsafe { handle(ch) }?;
        Ok(h.chan.poll_interval().as_millis().min(i32::MAX as u128) as c_int)
    })
}

/// The message of the last failure on the calling thread ("" if none); valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn ivshmem_channel_last_error() -> *const c_char {
    static NONE: &CStr = c"";
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(NONE.as_ptr())
}

/// `struct ivshmem_listener`: what C holds a pointer to.
pub struct IvshmemListener {
    listener: Listener,
}

/// Listens for connections to `service` on `path`. See the header.
///
/// # Safety
///
/// `path` and `service` are NULL or NUL-terminated strings; a non-NULL `opts` points to
/// `opts->size` readable bytes, whose path fields are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_listener_bind(
    path: *const c_char,
    service: *const c_char,
    opts: *const IvshmemChannelOptions,
) -> *mut IvshmemListener {
    guard(std::ptr::null_mut(), || {
        // SAFETY: Forwarded from this function's contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: As above.
        let service = unsafe { name_arg(service, "service name") }?;
        // SAFETY: As above.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: The options' paths are NULL or strings by this function's contract.
        let (region, opts) = unsafe { region(path, &o) }?;
        let listener = Listener::bind(&region, service, &opts).map_err(|e| {
            let f = Failure::from(e);
            Failure::new(f.errno, format!("service '{service}': {}", f.msg))
        })?;
        Ok(Box::into_raw(Box::new(IvshmemListener { listener })))
    })
}

/// The next connection: waits up to `timeout_ms` (-1: for ever, 0: not at all).
///
/// # Safety
///
/// `l` is NULL or an open listener handle, used by no other thread during the call.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_listener_accept(
    l: *mut IvshmemListener,
    timeout_ms: c_int,
) -> *mut IvshmemChannel {
    guard(std::ptr::null_mut(), || {
        // SAFETY: By the contract a non-NULL `l` is a live `Box` allocation nobody else uses.
        let h = unsafe { l.as_mut() }.ok_or_else(|| einval("listener handle is NULL"))?;
        if timeout_ms < -1 {
            return Err(einval(format!("timeout {timeout_ms} ms: -1, 0 or more")));
        }
        h.listener.set_nonblocking(timeout_ms == 0);
        h.listener
            .set_accept_timeout((timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)));
        let chan = h.listener.accept()?;
        Ok(Box::into_raw(Box::new(IvshmemChannel::new(
            chan, true, true,
        ))))
    })
}

/// A descriptor that becomes readable when a connector rings, or -1 (EOPNOTSUPP when the
/// listener spins).
///
/// # Safety
///
/// `l` is NULL or an open listener handle.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_listener_fd(l: *mut IvshmemListener) -> c_int {
    guard(-1, || {
        // SAFETY: As in `ivshmem_listener_accept`.
        let h = unsafe { l.as_mut() }.ok_or_else(|| einval("listener handle is NULL"))?;
        h.listener.as_raw_fd().ok_or_else(|| {
            Failure::new(
                EOPNOTSUPP,
                "this listener spins: it has no descriptor to poll",
            )
        })
    })
}

/// Stops listening and frees the handle; NULL is ignored. Connections it accepted go on.
///
/// # Safety
///
/// `l` is NULL or an open listener handle, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_listener_close(l: *mut IvshmemListener) {
    guard((), || {
        if !l.is_null() {
            // SAFETY: A non-NULL `l` came from `Box::into_raw` in `ivshmem_listener_bind` and
            // is given back exactly once (the caller's contract).
            drop(unsafe { Box::from_raw(l) });
        }
        Ok(())
    })
}

/// Connects to the listener of `service` on `path`; the channel once it accepted. See the
/// header.
///
/// # Safety
///
/// `path` and `service` are NULL or NUL-terminated strings; a non-NULL `opts` points to
/// `opts->size` readable bytes, whose path fields are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ivshmem_channel_connect(
    path: *const c_char,
    service: *const c_char,
    opts: *const IvshmemChannelOptions,
) -> *mut IvshmemChannel {
    guard(std::ptr::null_mut(), || {
        // SAFETY: Forwarded from this function's contract.
        let path = unsafe { c_str(path, "path") }?;
        // SAFETY: As above.
        let service = unsafe { name_arg(service, "service name") }?;
        // SAFETY: As above.
        let o = unsafe { read_options(opts) }?;
        // SAFETY: The options' paths are NULL or strings by this function's contract.
        let (region, opts) = unsafe { region(path, &o) }?;
        let chan = Channel::connect(&region, service, &opts).map_err(|e| {
            let f = Failure::from(e);
            Failure::new(f.errno, format!("service '{service}': {}", f.msg))
        })?;
        Ok(Box::into_raw(Box::new(IvshmemChannel::new(
            chan, true, true,
        ))))
    })
}
