// SPDX-License-Identifier: GPL-2.0

//! Whether an address space has exited, without taking a reference to its users: what
//! `kernel::mm::Mm` would gain ([`MmExited::has_exited`]).
//!
//! `Mm::mmget_not_zero()` answers the same question but hands out a user reference whose drop
//! may be the last one and tear the address space down (`__mmput`, which takes that mm's mmap
//! lock): not something to do while holding another mm's mmap lock or a driver lock that mmap
//! takes. Reading `mm_users` is what C does for the same purpose (`mmget_still_valid()`-style
//! checks).

use kernel::{
    mm::Mm,
    sync::atomic::{
        ordering::Relaxed,
        Atomic, //
    },
};

/// What [`Mm`] would gain.
pub(crate) trait MmExited {
    /// Whether the address space has no users left. Once true it stays true: `mm_users` never
    /// rises from zero, so such an address space can have no mmap in flight and no VMA will be
    /// added to it.
    fn has_exited(&self) -> bool;
}

impl MmExited for Mm {
    fn has_exited(&self) -> bool {
        let raw = self.as_raw();
        // SAFETY: `self` is a valid `mm_struct` (the `Mm` borrow holds at least an `mm_count`
        // reference), so taking the address of its `mm_users` field is in bounds.
        let users = unsafe { &raw mut (*raw).__bindgen_anon_1.mm_users.counter };
        // SAFETY: `users` is valid for the borrow of `self`; the kernel only accesses
        // `mm_users` atomically, so an atomic load cannot race.
        unsafe { Atomic::<i32>::from_ptr(users) }.load(Relaxed) == 0
    }
}
