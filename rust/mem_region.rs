// SPDX-License-Identifier: GPL-2.0

//! Claiming a physical memory range without mapping it into the kernel.
//!
//! `pci::Bar` requests *and* ioremaps a BAR. The shared-memory BAR of ivshmem can be many GiB
//! and is only ever mapped to user space, so it is claimed with this instead: the same
//! `request_mem_region()` that `pci_request_region()` performs for a memory BAR.

use kernel::{
    bindings,
    prelude::*, //
};

/// A busy region of `iomem_resource`, named after its owner in `/proc/iomem`.
///
/// # Invariants
///
/// `[start, start + len)` was claimed with `request_mem_region()` by [`MemRegion::request`] and
/// is released exactly once, when the value is dropped.
pub(crate) struct MemRegion {
    start: u64,
    len: u64,
}

impl MemRegion {
    /// Claims `[start, start + len)` for `name`; fails with `EBUSY` if any part is claimed.
    pub(crate) fn request(start: u64, len: u64, name: &'static CStr) -> Result<Self> {
        if len == 0 {
            return Err(ENODEV);
        }
        // SAFETY: `name` is a NUL-terminated string that lives forever, as required since the
        // resource tree keeps the pointer; the range is plain data checked by the callee.
        let res = unsafe { bindings::request_mem_region(start, len, name.as_char_ptr()) };
        if res.is_null() {
            return Err(EBUSY);
        }
        // INVARIANT: the region was just claimed.
        Ok(Self { start, len })
    }

    /// First physical address of the region.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Length of the region in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the range was claimed by `request` and not yet released.
        unsafe { bindings::release_mem_region(self.start, self.len) };
    }
}
