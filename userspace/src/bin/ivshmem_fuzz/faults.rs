//! Faults while touching our own mappings: the SIGBUS/SIGSEGV handler that repairs a page
//! inside the faulting thread's touch window (see the crate documentation) and lets every other
//! fault kill the process, and the SIGUSR1 handler that only interrupts blocked calls at the end.

use std::ffi::{c_int, c_void};
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use crate::sys;

use crate::{MAX_THREADS, PAGE};

/// The range a worker is touching; the fault handler repairs faults inside it only.
pub(crate) struct Window {
    pub(crate) start: AtomicUsize,
    pub(crate) end: AtomicUsize,
}

pub(crate) static WINDOWS: [Window; MAX_THREADS] = [const {
    Window {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }
}; MAX_THREADS];
pub(crate) static FIXED_SIGBUS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FIXED_SIGSEGV: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_handler(sig: c_int, handler: usize, flags: c_int) -> io::Result<()> {
    let act = sys::SigAction {
        handler,
        mask: [0; 16],
        flags,
        restorer: 0,
    };
    // SAFETY: `act` is a valid, initialised sigaction; the old action is not wanted.
    if unsafe { sys::sigaction(sig, &act, ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGBUS/SIGSEGV: a touch of a revoked, zapped or protected page of our own is repaired with
/// an anonymous page and retried; any other fault is fatal, as without this handler. Only
/// async-signal-safe work: atomics, `mmap`, `sigaction`.
pub(crate) extern "C" fn on_fault(sig: c_int, info: *mut c_void, _context: *mut c_void) {
    // SAFETY: Installed with SA_SIGINFO, so `info` points to the siginfo_t of this SIGBUS or
    // SIGSEGV, whose `si_addr` (the faulting address) is at this offset.
    let addr = unsafe {
        info.cast::<u8>()
            .add(sys::SIGINFO_ADDR_OFFSET)
            .cast::<usize>()
            .read()
    };
    let ours = WINDOWS
        .iter()
        .any(|w| w.start.load(SeqCst) <= addr && addr < w.end.load(SeqCst));
    if ours {
        // SAFETY: The page is inside a touch window, i.e. inside a mapping the touching
        // thread made for fuzzing and tracks; no Rust object lives there, and replacing it
        // is what an munmap followed by an mmap would do.
        let p = unsafe {
            sys::mmap(
                (addr & !(PAGE - 1)) as *mut c_void,
                PAGE,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_FIXED | sys::MAP_PRIVATE | sys::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != sys::MAP_FAILED {
            let counter = if sig == sys::SIGBUS {
                &FIXED_SIGBUS
            } else {
                &FIXED_SIGSEGV
            };
            counter.fetch_add(1, Relaxed);
            return;
        }
    }
    // The access is retried on return and now gets the default action.
    let _ = set_handler(sig, sys::SIG_DFL, 0);
}

/// SIGUSR1 only interrupts a blocked call (no SA_RESTART), to stop the workers.
pub(crate) extern "C" fn on_nudge(_sig: c_int) {}
