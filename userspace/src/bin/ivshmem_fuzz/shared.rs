//! The state every thread shares: the stop flag, the table of open device files (where "close
//! while in use" happens), the counters the summary prints, and the record of impossible outcomes.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

use crate::ops::OP_NAMES;
use crate::{ERRNO_MAX, FD_SLOTS, MAX_REPORTS, MAX_THREADS};

pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) fresh: bool,
    /// Region sizes of the devices found at the start.
    pub(crate) sizes: Vec<u64>,
    pub(crate) fds: [AtomicI32; FD_SLOTS],
    pub(crate) calls: AtomicU64,
    /// Failed calls per op kind and errno.
    pub(crate) errnos: [[AtomicU64; ERRNO_MAX]; OP_NAMES.len()],
    pub(crate) ops: [AtomicU64; OP_NAMES.len()],
    pub(crate) forks: AtomicU64,
    pub(crate) child_sigbus: AtomicU64,
    pub(crate) child_sigsegv: AtomicU64,
    pub(crate) rebinds: AtomicU64,
    pub(crate) rebind_errors: AtomicU64,
    pub(crate) max_wait: AtomicU64,
    pub(crate) poisoned: AtomicU64,
    /// Mappings made where the driver can use 2 MiB entries, and of them the 1 GiB-aligned: [2 MiB, 1 GiB].
    pub(crate) huge_capable: [AtomicU64; 2],
    /// pthread ids of the workers (0 before they start), to interrupt blocked calls at the end.
    pub(crate) threads: [AtomicU64; MAX_THREADS],
    /// How many outcomes that must never happen there were (see [`Shared::impossible`]).
    pub(crate) impossibles: AtomicU64,
}

impl Shared {
    /// Records (and prints, up to [`MAX_REPORTS`]) an outcome that must never happen.
    pub(crate) fn impossible(&self, what: String) {
        if self.impossibles.fetch_add(1, SeqCst) < MAX_REPORTS {
            eprintln!("fuzz: IMPOSSIBLE: {what}");
        }
    }

    pub(crate) fn count_errno(&self, kind: usize, errno: i32) {
        let i = usize::try_from(errno).unwrap_or(0).min(ERRNO_MAX - 1);
        self.errnos[kind][i].fetch_add(1, Relaxed);
    }
}
