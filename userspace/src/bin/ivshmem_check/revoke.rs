//! A mapping that outlives its device. `hold` maps all of DEVICE and waits for GO-FILE (on its
//! own it keeps a mapping of a given cache type alive for the PAT checks); `revoke` and
//! `revoke-huge` hold a mapping while the test removes the device, then check that ioctl and
//! mmap fail with ENODEV and that touching the old mapping kills the process with SIGBUS, also
//! through huge entries and on pages never touched before; `race` maps in a loop while the
//! device goes away, so that no mapping made around the removal escapes it. Once the driver
//! has let go of the device, no user mapping may reach its memory any more.

use std::os::fd::AsFd;
use std::path::Path;

use ivshmem::errno::ENODEV;
use ivshmem::placed::{self, PlacedMapping};
use ivshmem::{CacheType, Device, ToolError};

use crate::sys;

use crate::common::{open_or_report, wait_for_file, Checker, PAGE};

/// Opens and maps all of `path` with `cache`, touches the first page, says `mapped`, and
/// waits for `go` to exist (at most 120 s).
pub(crate) fn hold(
    path: &str,
    cache: CacheType,
    go: &str,
) -> Result<(Device, ivshmem::Mapping), ToolError> {
    let dev = Device::open(path)?;
    dev.set_cache(cache)?;
    let m = dev.map_all()?;
    let v = m.load_u32(0)?;
    m.store_u32(0, v)?;
    println!("mapped");
    if !wait_for_file(go) {
        return Err(ToolError::Check(format!("timeout waiting for {go}")));
    }
    Ok((dev, m))
}

pub(crate) fn revoke(path: &str, go: &str) -> i32 {
    let (dev, m) = match hold(path, CacheType::WriteBack, go) {
        Ok(x) => x,
        Err(e) => {
            println!("FAIL hold: {e}");
            return 1;
        }
    };
    if removed_enodev(&dev) > 0 {
        return 1;
    }
    println!("touching");
    // Must raise SIGBUS: the mapping was revoked.
    let v = m.load_u32(0).unwrap_or(0);
    println!("FAIL revoked-mapping-sigbus: read {v:#x} after removal");
    1
}

/// After the removal: ioctl and mmap on the open file fail with ENODEV. Returns the failures.
fn removed_enodev(dev: &Device) -> usize {
    let mut c = Checker { failed: 0 };
    let got = dev.size();
    c.check(
        "ioctl-after-removal-enodev",
        match got {
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            other => Err(ToolError::Check(format!("{other:?}"))),
        },
    );
    c.check(
        "mmap-after-removal-enodev",
        match dev.map(0, PAGE) {
            Err(e) if e.errno() == Some(ENODEV) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(ToolError::Check("mmap succeeded".into())),
        },
    );
    c.failed
}

/// `revoke` on a mapping the driver can fill with huge entries: `[offset, offset + len)` at an
/// address congruent to `offset` modulo 1 GiB or 2 MiB. A page never touched before the
/// removal must fault into SIGBUS as much as one whose huge entry was in place.
pub(crate) fn revoke_huge(path: &str, go: &str, offset: u64, len: usize, touched: bool) -> i32 {
    let run = || -> Result<i32, ToolError> {
        let dev = Device::open(path)?;
        let align = placed::natural_align(len);
        let m = PlacedMapping::new(dev.as_fd(), offset, len, align, 0)
            .map_err(|e| ToolError::sys(format!("{path}: mmap"), e))?;
        let at = if touched {
            let v = m.load_u32(0)?;
            m.store_u32(0, v)?;
            0
        } else {
            len / 2
        };
        println!(
            "mapped {len} bytes at {:#x} (offset {offset:#x}, aligned to {align:#x})",
            m.as_ptr() as usize
        );
        if !wait_for_file(go) {
            return Err(ToolError::Check(format!("timeout waiting for {go}")));
        }
        if removed_enodev(&dev) > 0 {
            return Ok(1);
        }
        println!("touching offset {:#x}", offset + at as u64);
        // SAFETY: The default action for SIGBUS (std's handler would call the fault a stack
        // overflow); this process is single-threaded.
        unsafe { sys::signal(sys::SIGBUS, sys::SIG_DFL) };
        // Must raise SIGBUS: the mapping was revoked.
        let v = m.load_u32(at)?;
        println!("FAIL revoked-mapping-sigbus: read {v:#x} after removal");
        Ok(1)
    };
    run().unwrap_or_else(|e| {
        println!("FAIL revoke-huge: {e}");
        1
    })
}

/// mmaps one page after another, from two threads, until the device is removed (ENODEV) or
/// GO-FILE appears; then, once GO-FILE exists (the remover is done), touches each mapping in a
/// child process: every one must die of SIGBUS. A mapping that still reads is a stale mapping
/// that escaped revocation, e.g. one whose mmap raced with the removal.
pub(crate) fn race(path: &str, go: &str) -> i32 {
    let Some(dev) = open_or_report(path) else {
        return 1;
    };
    println!("mapping");
    // Each thread keeps its latest 64 mappings: the ones made around the removal matter,
    // older ones were certainly in place before it.
    const KEEP: usize = 64;
    let maps = std::sync::Mutex::new(Vec::new());
    let other_errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut mine = std::collections::VecDeque::new();
                loop {
                    if Path::new(go).exists() {
                        break;
                    }
                    match dev.map(0, PAGE) {
                        Ok(m) => {
                            mine.push_back(m);
                            if mine.len() > KEEP {
                                mine.pop_front();
                            }
                        }
                        Err(e) if e.errno() == Some(ENODEV) => break,
                        Err(e) => {
                            other_errors.lock().unwrap().push(e.to_string());
                            break;
                        }
                    }
                }
                maps.lock().unwrap().extend(mine);
            });
        }
    });
    wait_for_file(go);
    let maps = maps.into_inner().unwrap();
    let (mut revoked, mut stale) = (0, 0);
    for m in &maps {
        // SAFETY: The process is single-threaded again (the scope joined its threads); the
        // child only reads one word and exits.
        let pid = unsafe { sys::fork() };
        if pid == 0 {
            // Default SIGBUS action: std's handler would report the fault as a stack overflow.
            // SAFETY: The default action for SIGBUS, in the single-threaded child.
            unsafe { sys::signal(sys::SIGBUS, sys::SIG_DFL) };
            let _ = m.load_u32(0);
            // SAFETY: Leave the child without running the parent's destructors.
            unsafe { sys::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: Waits for the child just forked.
        unsafe { sys::waitpid(pid, &mut status, 0) };
        // WIFSIGNALED && WTERMSIG == SIGBUS.
        if status & 0x7f == sys::SIGBUS {
            revoked += 1;
        } else {
            stale += 1;
        }
    }
    let errors = other_errors.into_inner().unwrap();
    println!(
        "mappings {}, revoked {revoked}, stale {stale}, other errors {errors:?}",
        maps.len()
    );
    i32::from(stale > 0 || maps.is_empty() || !errors.is_empty())
}
