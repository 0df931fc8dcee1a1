// SPDX-License-Identifier: GPL-2.0

//! Open files keep the module loaded.
//!
//! The VFS takes a reference on a `file_operations`' `owner` for each open file and drops it
//! after `release`. 7.3's `MiscDeviceRegistration` sets `owner` to the module; 7.2's leaves it
//! unset, so there `rmmod` would succeed with a file open and free the code its operations
//! point to. [`FilePins::pin`] looks at what the kernel did, not at its version: a file whose
//! operations have no owner is switched to a copy of them whose `owner` is this module, with
//! the reference the VFS drops after `release` (`misc_open`'s `replace_fops` pattern).

use kernel::{
    fs::File,
    prelude::*,
    sync::atomic::{
        ordering::{
            Acquire,
            Full, //
        },
        Atomic, //
    }, //
};

/// The copy of the operations with an owner, made at the first open that needs it.
static OWNED_FOPS: Atomic<*mut kernel::bindings::file_operations> =
    Atomic::new(core::ptr::null_mut());

extern "C" {
    /// `try_module_get()`, from `helpers.c` (a `struct module *`, opaque here).
    fn ivshmem_try_module_get(module: *mut core::ffi::c_void) -> bool;
}

/// The module's one pinning of open files.
///
/// # Invariants
///
/// [`OWNED_FOPS`] is null or a `KBox<file_operations>` leaked by [`FilePins::pin`], whose
/// `owner` is this module; only the module's one `FilePins` frees it, when the module goes and
/// no file can use it any more (each one pins the module).
pub(crate) struct FilePins(());

impl FilePins {
    /// The module's one instance, dropped when the module is unloaded.
    pub(crate) fn new() -> Self {
        Self(())
    }

    /// Pins the module for as long as `file`, which is being opened, stays open.
    pub(crate) fn pin(file: &File) -> Result {
        let raw = file.as_ptr();
        let owner = crate::compat::this_module();
        // SAFETY: The file is being opened by `misc_open`, which set `f_op` to the
        // registration's operations, a constant of this module.
        let ops = unsafe { (*raw).f_op };
        // SAFETY: As above, `ops` points to valid operations.
        if !unsafe { (*ops).owner }.is_null() {
            // The VFS pins the owner itself.
            return Ok(());
        }
        let mut fops = OWNED_FOPS.load(Acquire);
        if fops.is_null() {
            // SAFETY: As above, `ops` points to valid operations.
            let mut copy = unsafe { ops.read() };
            copy.owner = owner;
            let new = KBox::into_raw(KBox::new(copy, GFP_KERNEL)?);
            fops = match OWNED_FOPS.cmpxchg(core::ptr::null_mut(), new, Full) {
                Ok(_) => new,
                Err(winner) => {
                    // SAFETY: `new` came from `KBox::into_raw` above and was never shared.
                    drop(unsafe { KBox::from_raw(new) });
                    winner
                }
            };
        }
        // SAFETY: `owner` is this module, which is live: its code is running.
        if !unsafe { ivshmem_try_module_get(owner.cast()) } {
            return Err(ENODEV);
        }
        // SAFETY: In `open` the file's operations may be replaced (`replace_fops`). The old ones
        // have no owner, so there is no reference to put; the reference taken above is the
        // one the VFS puts for the new ones (`fops->owner`) after `release`. `fops` stays
        // valid while the file is open (type invariant: freed only at unload).
        unsafe { (*raw).f_op = fops.cast_const() };
        Ok(())
    }
}

impl Drop for FilePins {
    fn drop(&mut self) {
        let fops = OWNED_FOPS.xchg(core::ptr::null_mut(), Full);
        if !fops.is_null() {
            // SAFETY: By the type invariant `fops` came from `KBox::into_raw`; the module is
            // being unloaded, so no file is open with these operations (each pins the module).
            drop(unsafe { KBox::from_raw(fops) });
        }
    }
}
