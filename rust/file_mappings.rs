// SPDX-License-Identifier: GPL-2.0

//! Revoking user mappings of a device file: the index of every VMA that maps an open file.

use kernel::{
    bindings,
    fs::File,
    prelude::*, //
};

use core::ptr::NonNull;

/// The page-cache mapping of an open file's inode, where the kernel indexes every VMA that maps
/// the file.
///
/// # Invariants
///
/// `0` is the `f_mapping` of a file that stays open for as long as this value exists.
pub(crate) struct FileMappings(NonNull<bindings::address_space>);

// SAFETY: An `address_space` may be used from any thread; `unmap_mapping_range` locks it.
unsafe impl Send for FileMappings {}
// SAFETY: The only operation, `zap_all`, takes the `address_space`'s own locks.
unsafe impl Sync for FileMappings {}

impl FileMappings {
    /// Remembers where `file`'s mappings are indexed.
    ///
    /// # Safety
    ///
    /// The returned value must be dropped before `file` is released.
    pub(crate) unsafe fn new(file: &File) -> Result<Self> {
        // SAFETY: `file` is a valid open file; `f_mapping` is set before `open` is called.
        let mapping = unsafe { (*file.as_ptr()).f_mapping };
        // INVARIANT: the caller keeps `file` open while `Self` lives.
        NonNull::new(mapping).map(Self).ok_or(EINVAL)
    }

    /// Whether `self` and `other` are the same mapping.
    pub(crate) fn same(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    /// Removes every page-table entry of every user mapping of the file. A PFN mapping has no
    /// `fault` handler, so a later access raises `SIGBUS` instead of reaching stale memory.
    pub(crate) fn zap_all(&self) {
        // SAFETY: By the type invariant the mapping is alive; a length of 0 means "to the end".
        unsafe { bindings::unmap_mapping_range(self.0.as_ptr(), 0, 0, 1) };
    }
}
