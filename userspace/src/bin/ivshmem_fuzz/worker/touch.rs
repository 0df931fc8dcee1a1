//! Touching device mappings: reads and writes in this thread, inside its touch window (so the
//! fault handler repairs what faults), and in a forked child that inherits them. Both check the
//! page headers they read (see [`MAGIC`]).

use std::ffi::c_int;
use std::io;
use std::ptr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sys;

use super::Worker;
use crate::faults::{set_handler, WINDOWS};
use crate::generate::Rng;
use crate::{header_ok, MAGIC, PAGE};

/// A volatile read, or write of `value`, of `N` bytes at `addr`.
///
/// # Safety
///
/// `addr..addr + N` lies in a mapping of the calling thread's own, inside its touch window, and
/// holds no Rust object.
unsafe fn access<const N: usize>(addr: usize, value: Option<[u8; N]>) {
    match value {
        // SAFETY: Per the contract; `[u8; N]` needs no alignment.
        Some(v) => unsafe { ptr::write_volatile(addr as *mut [u8; N], v) },
        // SAFETY: As above.
        None => drop(unsafe { ptr::read_volatile(addr as *const [u8; N]) }),
    }
}

/// `waitpid` status decoded: `Ok(exit code)` or `Err(signal)`.
fn wait_status(status: c_int) -> Result<i32, i32> {
    if status & 0x7f == 0 {
        Ok((status >> 8) & 0xff)
    } else {
        Err(status & 0x7f)
    }
}

impl Worker<'_> {
    /// Reads and writes around page `at` of a mapping; checks each page header it reads.
    pub(super) fn touch(&mut self, map: u32, at: u32, count: u8, seed: u64) {
        if self.segs.is_empty() {
            return;
        }
        let seg = self.segs[map as usize % self.segs.len()];
        let pages = seg.len / PAGE;
        let w = &WINDOWS[self.id];
        w.start.store(seg.addr, SeqCst);
        w.end.store(seg.addr + seg.len, SeqCst);
        let mut r = Rng::new(seed);
        for _ in 0..count {
            let page = (at as usize + r.below(8) as usize) % pages;
            let base = seg.addr + page * PAGE;
            let off = seg.off + (page * PAGE) as u64;
            let size = [1usize, 4, 8][r.below(3) as usize];
            let data = base + 8 + r.below((PAGE - 8 - size + 1) as u64) as usize;
            match r.below(4) {
                0 => {
                    // SAFETY: `base` is an 8-byte aligned page start inside `seg`, a mapping
                    // of ours in our touch window (a fault is repaired and the read retried);
                    // no Rust object lives there. Other guests write it too: volatile only.
                    let v = unsafe { ptr::read_volatile(base as *const u64) };
                    if !header_ok(v, off, self.sh.fresh) {
                        self.sh.impossible(format!(
                            "{}: page at {base:#x} (region offset {off:#x}) has header {v:#x}, \
                             expected 0 or {:#x}",
                            self.place(),
                            MAGIC ^ off
                        ));
                    }
                }
                // SAFETY: As above.
                1 => unsafe { ptr::write_volatile(base as *mut u64, MAGIC ^ off) },
                k => {
                    let v = (k == 3).then(|| r.next().to_ne_bytes());
                    // SAFETY: `data..data + size` lies in the same page of `seg`, past its
                    // header.
                    unsafe {
                        match size {
                            1 => access::<1>(data, v.map(|v| [v[0]])),
                            4 => access::<4>(data, v.map(|v| [v[0], v[1], v[2], v[3]])),
                            _ => access::<8>(data, v),
                        }
                    }
                }
            }
        }
        w.start.store(0, SeqCst);
        w.end.store(0, SeqCst);
    }

    /// A child inherits the mappings, checks and writes a few page headers, and exits; it dies
    /// of SIGBUS if the device went away meanwhile.
    pub(super) fn fork(&mut self, maps: [u32; 3], seed: u64) {
        // Everything the child needs is prepared here: after a fork in a threaded process
        // the child must not allocate (another thread may hold the allocator's lock).
        let mut r = Rng::new(seed);
        let mut plan: Vec<(usize, u64)> = Vec::new();
        for m in maps {
            if self.segs.is_empty() {
                break;
            }
            let seg = self.segs[m as usize % self.segs.len()];
            for _ in 0..4 {
                let page = r.below((seg.len / PAGE) as u64) as usize;
                plan.push((seg.addr + page * PAGE, seg.off + (page * PAGE) as u64));
            }
        }
        let fresh = self.sh.fresh;
        // SAFETY: The child only runs async-signal-safe code below and leaves with `_exit`.
        let pid = unsafe { sys::fork() };
        self.note(pid < 0);
        if pid == 0 {
            // Default SIGBUS/SIGSEGV: the parent counts how its child died.
            let _ = set_handler(sys::SIGBUS, sys::SIG_DFL, 0);
            let _ = set_handler(sys::SIGSEGV, sys::SIG_DFL, 0);
            let mut code = 0;
            for &(addr, off) in &plan {
                // SAFETY: Page headers of the parent's mappings, inherited; no Rust object
                // lives there; a fault kills this child only.
                let v = unsafe { ptr::read_volatile(addr as *const u64) };
                if !header_ok(v, off, fresh) {
                    code = 3;
                }
                // SAFETY: As above.
                unsafe { ptr::write_volatile(addr as *mut u64, MAGIC ^ off) };
            }
            // SAFETY: Leaves the child without running anything of the parent's.
            unsafe { sys::_exit(code) };
        }
        if pid < 0 {
            return;
        }
        self.sh.forks.fetch_add(1, Relaxed);
        let mut status = 0;
        // SAFETY: Waits for our own child; retried when SIGUSR1 interrupts it.
        while unsafe { sys::waitpid(pid, &mut status, 0) } < 0 {
            if io::Error::last_os_error().raw_os_error() != Some(4) {
                self.sh.impossible(format!(
                    "{}: waitpid: {}",
                    self.place(),
                    io::Error::last_os_error()
                ));
                return;
            }
        }
        match wait_status(status) {
            Ok(0) => {}
            Err(sys::SIGBUS) => {
                self.sh.child_sigbus.fetch_add(1, Relaxed);
            }
            Err(sys::SIGSEGV) => {
                self.sh.child_sigsegv.fetch_add(1, Relaxed);
            }
            Ok(3) => self.sh.impossible(format!(
                "{}: a forked child read a wrong page header in {plan:x?}",
                self.place()
            )),
            other => self.sh.impossible(format!(
                "{}: forked child ended with {other:?}",
                self.place()
            )),
        }
    }
}
