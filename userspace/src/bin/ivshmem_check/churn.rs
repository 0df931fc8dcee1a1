//! `ivshmem-check churn DEVICE N`: kernel memory kept per departed process. While this process
//! holds the device open, N children map it and exit; the drop of MemAvailable over them is
//! printed, and the test bounds it per child: a driver that kept each departed process's
//! address space until the last close (issue 8) cost about 5 kB per child.

use ivshmem::Device;

use crate::sys;

use crate::common::{open_or_report, PAGE};

/// `MemAvailable` from /proc/meminfo, in kB.
fn mem_available_kb() -> Option<i64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Forks `n` short-lived children that each map one page and exit, while this process keeps
/// the device open: half map through the inherited file, half open their own. Returns how many
/// did not exit 0.
fn churn_children(dev: &Device, path: &str, n: usize) -> usize {
    let mut bad = 0;
    for i in 0..n {
        // SAFETY: This process is single-threaded; the child maps, touches and `_exit`s.
        let pid = unsafe { sys::fork() };
        if pid == 0 {
            let own = if i % 2 == 0 {
                None
            } else {
                Device::open(path).ok()
            };
            let ok = own
                .as_ref()
                .unwrap_or(dev)
                .map(0, PAGE)
                .and_then(|m| m.store_u32(0, i as u32))
                .is_ok();
            // SAFETY: Leave the child without running the parent's destructors.
            unsafe { sys::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: Waits for the child just forked.
        if pid < 0 || unsafe { sys::waitpid(pid, &mut status, 0) } != pid || status != 0 {
            bad += 1;
        }
    }
    bad
}

/// Kernel memory kept per departed child while a file stays open: `n` children map the device
/// and exit, and the drop of `MemAvailable` over them is printed (after a warm-up round, so
/// that caches the first children fill do not count).
pub(crate) fn run(path: &str, n: usize) -> i32 {
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    let warm_bad = churn_children(&dev, path, n / 10 + 1);
    let before = mem_available_kb();
    let bad = churn_children(&dev, path, n);
    let after = mem_available_kb();
    let (Some(before), Some(after)) = (before, after) else {
        println!("FAIL churn: no MemAvailable in /proc/meminfo");
        return 1;
    };
    let drop_kb = before - after;
    println!(
        "churn: {n} children mapped and exited, MemAvailable dropped {drop_kb} kB ({} bytes per child)",
        drop_kb * 1024 / n.max(1) as i64
    );
    if warm_bad + bad > 0 {
        println!("FAIL churn: {} children failed to map", warm_bad + bad);
        return 1;
    }
    0
}
