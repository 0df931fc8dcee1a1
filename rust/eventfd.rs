// SPDX-License-Identifier: GPL-2.0

//! A counted reference to a user's eventfd, signalled from interrupt context.

use kernel::{
    bindings,
    error::from_err_ptr,
    prelude::*, //
};

use core::ptr::NonNull;

/// An eventfd context taken from a file descriptor of the calling process.
///
/// # Invariants
///
/// `0` is a valid `eventfd_ctx` on which this value holds one reference.
pub(crate) struct EventFd(NonNull<bindings::eventfd_ctx>);

// SAFETY: An `eventfd_ctx` is reference counted and locks itself; any thread may signal or put it.
unsafe impl Send for EventFd {}
// SAFETY: `signal` may run concurrently on several CPUs (the context has its own lock).
unsafe impl Sync for EventFd {}

impl EventFd {
    /// Takes a reference to the eventfd behind `fd`; fails with `EBADF` or `EINVAL`.
    pub(crate) fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: Looks `fd` up in the current process's table; any value is safe to pass.
        let ctx = from_err_ptr(unsafe { bindings::eventfd_ctx_fdget(fd) })?;
        // INVARIANT: `eventfd_ctx_fdget` returned a context with a reference for us.
        NonNull::new(ctx).map(Self).ok_or(EINVAL)
    }

    /// Adds 1 to the eventfd's counter and wakes its pollers. Callable from hard IRQ context.
    pub(crate) fn signal(&self) {
        // SAFETY: By the type invariant the context is alive.
        unsafe { bindings::eventfd_signal_mask(self.0.as_ptr(), 0) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we hold one reference, given back here once.
        unsafe { bindings::eventfd_ctx_put(self.0.as_ptr()) };
    }
}
