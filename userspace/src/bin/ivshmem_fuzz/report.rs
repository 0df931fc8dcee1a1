//! The end of a run: the two summary lines (per-op counts with their errnos, then the totals)
//! and the exit status, an error if anything impossible happened.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use ivshmem::ToolError;

use crate::faults::{FIXED_SIGBUS, FIXED_SIGSEGV};
use crate::ops::OP_NAMES;
use crate::shared::Shared;
use crate::{ERRNO_MAX, MAX_REPORTS};

fn errno_name(e: usize) -> String {
    const NAMES: [(usize, &str); 27] = [
        (1, "EPERM"),
        (2, "ENOENT"),
        (4, "EINTR"),
        (5, "EIO"),
        (6, "ENXIO"),
        (9, "EBADF"),
        (11, "EAGAIN"),
        (12, "ENOMEM"),
        (13, "EACCES"),
        (14, "EFAULT"),
        (16, "EBUSY"),
        (17, "EEXIST"),
        (19, "ENODEV"),
        (20, "ENOTDIR"),
        (21, "EISDIR"),
        (22, "EINVAL"),
        (23, "ENFILE"),
        (24, "EMFILE"),
        (25, "ENOTTY"),
        (27, "EFBIG"),
        (28, "ENOSPC"),
        (29, "ESPIPE"),
        (34, "ERANGE"),
        (38, "ENOSYS"),
        (75, "EOVERFLOW"),
        (95, "EOPNOTSUPP"),
        (110, "ETIMEDOUT"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno{e}"), |(_, s)| s.to_string())
}

/// Prints the details and summary lines of a run that took `took`; an error (exit status 1)
/// if there were impossible outcomes.
pub(crate) fn summarize(sh: &Shared, seed: u64, took: Duration) -> Result<(), ToolError> {
    // "EINVAL 12, EFAULT 3", most frequent first.
    let by_errno = |counts: &[u64; ERRNO_MAX], most: usize| {
        let mut v: Vec<(u64, usize)> = counts
            .iter()
            .enumerate()
            .map(|(e, &n)| (n, e))
            .filter(|&(n, _)| n > 0)
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        let v: Vec<String> = v
            .iter()
            .take(most)
            .map(|&(n, e)| format!("{} {n}", errno_name(e)))
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let per_kind: Vec<[u64; ERRNO_MAX]> = sh
        .errnos
        .iter()
        .map(|k| std::array::from_fn(|e| k[e].load(SeqCst)))
        .collect();
    let total: [u64; ERRNO_MAX] = std::array::from_fn(|e| per_kind.iter().map(|k| k[e]).sum());
    let ops: Vec<String> = OP_NAMES
        .iter()
        .zip(&sh.ops)
        .zip(&per_kind)
        .map(|((name, n), errs)| format!("{name} {} ({})", n.load(SeqCst), by_errno(errs, 3)))
        .collect();
    println!(
        "fuzz: details: ops: {}; repaired faults: sigbus {}, sigsegv {}; forked children killed \
         by sigbus {}, sigsegv {}; rebind errors {}; longest WAIT {} ms; poisoned slots {}; \
         mappings that can hold 2 MiB entries {}, of them 1 GiB-aligned {}",
        ops.join(", "),
        FIXED_SIGBUS.load(SeqCst),
        FIXED_SIGSEGV.load(SeqCst),
        sh.child_sigbus.load(SeqCst),
        sh.child_sigsegv.load(SeqCst),
        sh.rebind_errors.load(SeqCst),
        sh.max_wait.load(SeqCst),
        sh.poisoned.load(SeqCst),
        sh.huge_capable[0].load(SeqCst),
        sh.huge_capable[1].load(SeqCst),
    );
    println!(
        "fuzz: seed {}, {} s, {} calls, {} rebinds, {} sigbus, {} forks, ERRORS by errno: {}",
        seed,
        took.as_secs(),
        sh.calls.load(SeqCst),
        sh.rebinds.load(SeqCst),
        FIXED_SIGBUS.load(SeqCst) + sh.child_sigbus.load(SeqCst),
        sh.forks.load(SeqCst),
        by_errno(&total, ERRNO_MAX)
    );
    let count = sh.impossibles.load(SeqCst);
    if count == 0 {
        Ok(())
    } else {
        Err(ToolError::Check(format!(
            "{count} impossible outcome(s) (the first {} above), replay with --seed {}",
            count.min(MAX_REPORTS),
            seed,
        )))
    }
}
