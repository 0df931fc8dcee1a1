// SPDX-License-Identifier: GPL-2.0

//! Device numbering: `/dev/ivshmemN` takes the lowest free N and frees it on removal.
//!
//! There is no fixed limit: the pool of numbers grows as devices come.

use kernel::{
    id_pool::IdPool,
    prelude::*,
    str::CString, //
};

kernel::sync::global_lock! {
    // SAFETY: Initialised by `init`, which the module calls before registering the driver.
    unsafe(uninit) static NUMBERS: Mutex<Option<IdPool>> = None;
}

/// Prepares the pool's lock.
///
/// # Safety
///
/// Called exactly once, before any [`Slot::take`].
pub(crate) unsafe fn init() {
    // SAFETY: The caller calls this once, before any other use of `NUMBERS`.
    unsafe { NUMBERS.init() };
}

/// A taken device number and the device's node name.
///
/// # Invariants
///
/// `index` is acquired in `NUMBERS` by this value and released when it is dropped.
pub(crate) struct Slot {
    index: usize,
    name: CString,
}

impl Slot {
    /// Takes the lowest free number; fails with `ENOMEM` (or `ENOSPC` past the bitmap's limit).
    pub(crate) fn take() -> Result<Self> {
        let mut guard = NUMBERS.lock();
        let pool = guard.get_or_insert_with(IdPool::new);
        let index = loop {
            if let Some(id) = pool.find_unused_id(0) {
                break id.acquire();
            }
            let resizer = pool.grow_request().ok_or(ENOSPC)?.realloc(GFP_KERNEL)?;
            pool.grow(resizer);
        };
        match CString::try_from_fmt(fmt!("ivshmem{index}")) {
            // INVARIANT: `index` was just acquired.
            Ok(name) => Ok(Self { index, name }),
            Err(e) => {
                pool.release_id(index);
                Err(e)
            }
        }
    }

    /// The number N.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// `ivshmemN`.
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = NUMBERS.lock().as_mut() {
            pool.release_id(self.index);
        }
    }
}
