// SPDX-License-Identifier: GPL-2.0

//! Device numbering: `/dev/ivshmemN` takes the lowest free N and frees it on removal.

use kernel::{
    prelude::*,
    sync::atomic::{
        ordering::Full,
        Atomic, //
    },
};

/// How many ivshmem devices one guest can have.
pub(crate) const MAX_DEVICES: usize = 16;

/// Misc device names need `'static` strings: one per slot.
static NAMES: [&CStr; MAX_DEVICES] = [
    c"ivshmem0",
    c"ivshmem1",
    c"ivshmem2",
    c"ivshmem3",
    c"ivshmem4",
    c"ivshmem5",
    c"ivshmem6",
    c"ivshmem7",
    c"ivshmem8",
    c"ivshmem9",
    c"ivshmem10",
    c"ivshmem11",
    c"ivshmem12",
    c"ivshmem13",
    c"ivshmem14",
    c"ivshmem15",
];

/// Bit N set: `/dev/ivshmemN` is taken.
static TAKEN: Atomic<u32> = Atomic::new(0);

/// A taken device number.
///
/// # Invariants
///
/// Bit `self.0` of `TAKEN` is set by this value and cleared when it is dropped.
pub(crate) struct Slot(usize);

impl Slot {
    /// Takes the lowest free number, or fails with `ENOSPC`.
    pub(crate) fn take() -> Result<Self> {
        let mut cur = TAKEN.load(kernel::sync::atomic::ordering::Relaxed);
        loop {
            let index = cur.trailing_ones() as usize;
            if index >= MAX_DEVICES {
                return Err(ENOSPC);
            }
            match TAKEN.cmpxchg(cur, cur | (1 << index), Full) {
                // INVARIANT: we set the bit.
                Ok(_) => return Ok(Self(index)),
                Err(now) => cur = now,
            }
        }
    }

    /// The number N.
    pub(crate) fn index(&self) -> usize {
        self.0
    }

    /// `ivshmemN`.
    pub(crate) fn name(&self) -> &'static CStr {
        NAMES[self.0]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut cur = TAKEN.load(kernel::sync::atomic::ordering::Relaxed);
        while let Err(now) = TAKEN.cmpxchg(cur, cur & !(1 << self.0), Full) {
            cur = now;
        }
    }
}
