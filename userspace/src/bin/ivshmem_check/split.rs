//! `ivshmem-check split DEVICE OFFSET LEN`: cuts into huge entries. A munmap or mprotect of
//! one page inside a mapping the driver fills with 1 GiB or 2 MiB entries makes the kernel
//! split or zap them (madvise(MADV_DONTNEED) it refuses: VM_PFNMAP). Whatever it does, the
//! rest of the mapping must keep its bytes and stay writable, and the cut pages must fault.

use std::os::fd::AsFd;

use ivshmem::errno::EINVAL;
use ivshmem::placed::{self, PlacedMapping};
use ivshmem::{pattern, Device, ToolError};

use crate::sys;

use crate::common::{errno, expect_errno, Checker, PAGE};

/// Offsets (in the mapping) of `split`'s probe pages, of the page it unmaps, and of the page
/// it makes read-only.
fn split_pages(len: usize) -> (Vec<usize>, usize, usize) {
    let ro = len / 4 + 2 * PAGE;
    let probes = vec![
        0,
        len / 8 + (1 << 20),
        ro,
        len / 2,
        len / 2 + 2 * PAGE,
        len - PAGE,
    ];
    (probes, len / 2 + PAGE, ro)
}

/// Whether a child that reads (or, with `write`, writes) the word at `addr` dies of SIGSEGV.
fn child_segfaults(addr: *mut u8, write: bool) -> bool {
    // SAFETY: This process is single-threaded; the child does one access and `_exit`s.
    let pid = unsafe { sys::fork() };
    if pid == 0 {
        // SAFETY: The default action for SIGSEGV (std's handler would report a stack
        // overflow), in the single-threaded child.
        unsafe { sys::signal(sys::SIGSEGV, sys::SIG_DFL) };
        if write {
            // SAFETY: A page of the parent's mapping that must fault: that is the test. Had
            // it been writable, the word written is the child's to change.
            unsafe { std::ptr::write_volatile(addr.cast::<u32>(), 1) };
        } else {
            // SAFETY: As above, a read.
            unsafe { std::ptr::read_volatile(addr.cast::<u32>()) };
        }
        // SAFETY: Leave the child without running the parent's destructors.
        unsafe { sys::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: Waits for the child just forked.
    pid > 0 && unsafe { sys::waitpid(pid, &mut status, 0) } == pid && status & 0x7f == sys::SIGSEGV
}

/// Cuts into huge entries: munmap, mprotect and madvise of single pages inside a mapping the
/// driver fills with 1 GiB or 2 MiB entries (the kernel must split or zap them), then checks
/// that everything else still shows the right bytes. The host checks the pattern-242 pages.
pub(crate) fn run(path: &str, offset: u64, len: usize) -> i32 {
    let mut c = Checker { failed: 0 };
    let dev = match Device::open(path) {
        Ok(d) => d,
        Err(e) => {
            println!("FAIL open: {e}");
            return 1;
        }
    };
    let align = placed::natural_align(len);
    let m = match PlacedMapping::new(dev.as_fd(), offset, len, align, 0) {
        Ok(m) => m,
        Err(e) => {
            println!("FAIL mmap: {}: {e}", placed::errno_name(&e));
            return 1;
        }
    };
    let (probes, hole, ro) = split_pages(len);
    let mut buf = vec![0u8; PAGE];
    for &p in &probes {
        pattern::fill(241, offset + p as u64, &mut buf);
        c.check("fill", m.write(p, &buf));
    }
    let base = m.as_ptr() as usize;
    let at = |k: usize| (base + k) as *mut std::ffi::c_void;
    // SAFETY: A page inside our own mapping, which holds no Rust object; `PlacedMapping`
    // unmaps its whole range on drop, the hole included, and no access of ours goes there.
    let unmapped = unsafe { sys::munmap(at(hole), PAGE) } == 0;
    c.check("munmap-one-page", ok_or_errno("munmap", unmapped));
    // SAFETY: As above; the page is only read afterwards (and written by a child, which dies).
    let protected = unsafe { sys::mprotect(at(ro), PAGE, sys::PROT_READ) } == 0;
    c.check("mprotect-one-page", ok_or_errno("mprotect", protected));
    // SAFETY: As above; had it succeeded, device memory keeps its bytes and the entries are
    // faulted in again.
    let dropped = unsafe { sys::madvise(at(len / 8), 3 << 20, sys::MADV_DONTNEED) } == 0;
    // The kernel refuses to drop entries of a VM_PFNMAP mapping (madvise.c), huge or not.
    c.check(
        "madvise-dontneed-einval",
        expect_errno("MADV_DONTNEED", !dropped, EINVAL),
    );
    for &p in &probes {
        let mut back = vec![0u8; PAGE];
        c.check(
            &format!("page-{p:#x}-kept"),
            m.read(p, &mut back)
                .map_err(ToolError::from)
                .and_then(
                    |()| match pattern::first_mismatch(241, offset + p as u64, &back) {
                        None => Ok(()),
                        Some(k) => Err(ToolError::Check(format!("byte {k} differs"))),
                    },
                ),
        );
        if p != ro {
            pattern::fill(242, offset + p as u64, &mut buf);
            c.check(&format!("page-{p:#x}-written"), m.write(p, &buf));
        }
    }
    c.check(
        "hole-segfaults",
        ok_or_check(
            child_segfaults(at(hole).cast(), false),
            "reading the unmapped page",
        ),
    );
    c.check(
        "read-only-write-segfaults",
        ok_or_check(
            child_segfaults(at(ro).cast(), true),
            "writing the read-only page",
        ),
    );
    c.failed as i32
}

fn ok_or_errno(what: &str, ok: bool) -> Result<(), ToolError> {
    if ok {
        Ok(())
    } else {
        Err(ToolError::Check(format!("{what}: errno {}", errno())))
    }
}

fn ok_or_check(ok: bool, what: &str) -> Result<(), ToolError> {
    if ok {
        Ok(())
    } else {
        Err(ToolError::Check(format!("{what} did not raise SIGSEGV")))
    }
}
