//! `ivshmem-fuzz`: random, seeded system calls against every `/dev/ivshmem*` from several
//! threads at once, while another thread unbinds and rebinds the PCI devices.
//!
//! Run as root in a guest with the module loaded. Each worker thread draws its calls from its
//! own generator, seeded from `--seed` and the thread number and from nothing else (never from
//! what a call returned): two runs with the same seed issue the same calls in the same order per
//! thread (`--trace DIR` writes them down), only their interleaving and results differ. Failing
//! system calls are the point and are only counted, by errno; the exit status is 1 only for what
//! must never happen (see [`Shared::impossible`]), such as a mapping that shows memory from the
//! wrong place.
//!
//! How the fuzzer stays sound while it breaks things on purpose:
//!
//! - Memory the kernel may write (ioctl results, `read`) is a per-thread scratch area followed
//!   by a `PROT_NONE` guard page, device mappings of our own (result structs never reach a
//!   page's first 8 bytes, see [`MAGIC`]), or addresses where nothing of ours can be (NULL,
//!   the first 64 KiB, kernel and non-canonical addresses). Never a random address of ours.
//! - `MAP_FIXED` (and `mremap` to a fixed place) only targets a per-thread arena reserved with
//!   `PROT_NONE` at [`ARENA_BASE`], far below anything the kernel hands out on its own (it
//!   allocates top-down from the stack, or bottom-up from a third of the address space, and
//!   terabytes above the arena are free), so no allocation of this process ever lands there.
//!   Holes that `munmap` and failed mmaps leave in it are filled again at once with
//!   `MAP_FIXED_NOREPLACE`, which never clobbers anything.
//! - Huge entries: the driver maps with 2 MiB entries where the address is congruent
//!   to the file offset modulo that size, which the kernel does not arrange for a misc device.
//!   So some mmaps go to an arena slot at such an address ([`Fixed::Congruent`] in a 16 MiB
//!   slot, [`Fixed::Huge`] in a 2 GiB slot per thread), with offsets and lengths that are
//!   often multiples of 2 MiB or 1 GiB; munmap, mprotect, madvise and touches then land inside
//!   huge entries, and the fault handler's repair page splits one.
//! - The device has one cache type at a time: an mmap after `SET_CACHE` to another type fails
//!   with `EBUSY` while any mapping of the device exists. Threads switch types at random, so
//!   that errno is expected and counted like the others.
//! - Touching a mapping after the device went away raises SIGBUS (and one that another call
//!   made `PROT_NONE` or zapped raises SIGSEGV). The handler only acts on addresses inside the
//!   range the faulting thread is touching (its "touch window", always a mapping of its own):
//!   it maps a fresh anonymous page over the faulting page and returns, so the access is retried
//!   and reads zeros. No `longjmp` out of a handler, no unwinding: the access just completes.
//!   Any other fault gets the default action (the process dies, as it should).
//! - File descriptors live in a shared table of atomic slots. A thread may use a number that
//!   another thread has just closed and that the kernel has reused: that is the "close while
//!   in use" case. Only slot owners close (after an atomic swap), so nothing is closed twice,
//!   and during the run the only descriptors ever created are device nodes and eventfds (the
//!   sysfs bind/unbind files and trace files are opened before and stay open), so a reused
//!   number can only be another device node or eventfd.
//! - `fork` children run only async-signal-safe code (volatile memory accesses, `sigaction`,
//!   `_exit`) on data prepared before the fork.
//!
//! The code: `options` reads the command line; `ops` is what a call can be and `generate` draws
//! them from the seed alone; `worker` makes them, one thread each, with its mappings, arena and
//! touches in its submodules; `faults` is the SIGBUS/SIGSEGV handler; `shared` is the state and
//! counters every thread sees; `devices` finds, unbinds and rebinds the devices; `report` prints
//! the summary. [`run`] below ties them together; the constants below are shared by them all.
//!
//! [`Fixed::Congruent`]: ops::Fixed::Congruent
//! [`Fixed::Huge`]: ops::Fixed::Huge

mod devices;
mod faults;
mod generate;
mod ops;
mod options;
mod report;
mod shared;
mod sys;
mod worker;

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::fd::IntoRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use ivshmem::args::run_tool;
use ivshmem::ToolError;

use devices::{bind_all, bound_devices, device_nodes, rebinder, DRIVER};
use faults::{on_fault, on_nudge, set_handler};
use generate::GenEnv;
use options::{parse, Opts};
use shared::Shared;
use worker::Worker;

const USAGE: &str = "\
usage: ivshmem-fuzz [--seconds N] [--seed S] [--threads T] [--rebind-ms MS|MIN-MAX]
                    [--no-rebind] [--fresh] [--trace DIR]

Fuzzes every /dev/ivshmem* (ioctls, mmap/mremap/munmap/mprotect/madvise, memory touches, fork,
read/write, close while in use, eventfds) from T threads (default 4) for N seconds (default 10)
while unbinding and rebinding each ivshmem PCI device every MIN-MAX ms (default 20-100).
Prints the seed first (default: from the clock) and one summary line at the end:
  fuzz: seed S, N s, CALLS calls, REBINDS rebinds, SIGBUS sigbus, FORKS forks, ERRORS by errno: ...
  --fresh      the shared memory was all zeros at the start: any page header that is neither
               zero nor the fuzzer's mark for that offset is an error (default: only marks
               for another offset are)
  --trace DIR  write each thread's calls to DIR/thread-N.log (same seed: same lines)
Exit status: 0, or 1 if something impossible happened (it is printed), 2 for bad usage.";

const PAGE: usize = 4096;
/// Shared table of open device files.
const FD_SLOTS: usize = 4;
const MAX_THREADS: usize = 16;
/// `MAP_FIXED` targets per thread, each [`SLOT_LEN`] long; then, 1 GiB into the thread's
/// arena, one of [`HUGE_SLOT_LEN`] (slot number `SLOTS`), for 1 GiB entries.
const SLOTS: usize = 4;
const SLOT_LEN: usize = 16 << 20;
const HUGE: usize = 1 << 30;
const HUGE_2M: usize = 2 << 20;
const HUGE_SLOT_LEN: usize = 2 * HUGE;
/// Start of the threads' arenas: 64 GiB, see the module documentation.
const ARENA_BASE: usize = 64 << 30;
const ARENA_PER_THREAD: usize = HUGE + HUGE_SLOT_LEN;
/// Per-thread memory the kernel may write into, followed by one guard page.
const SCRATCH_LEN: usize = 4 * PAGE;
/// Mappings a thread keeps (older ones are unmapped), and how many of them outside the arena.
const MAX_SEGS: usize = 32;
const MAX_FREE_SEGS: usize = 12;
const MAX_EFDS: usize = 4;
const ERRNO_MAX: usize = 134;
/// A WAIT asks for at most 20 ms; one that takes this long is a hang.
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Impossible outcomes printed; later ones are only counted.
const MAX_REPORTS: u64 = 20;

/// The first 8 bytes of every page the fuzzer writes hold `MAGIC ^ offset of the page in the
/// region` (offsets are below 2^40; both guests use the same marks). Everything else the
/// fuzzer or the kernel writes into mappings stays off those 8 bytes. A page header that reads
/// as the mark of another offset means a mapping shows the wrong part of the region.
const MAGIC: u64 = 0x667a_7a00_0000_0000;

/// Whether a page header read at region offset `off` is possible. With `fresh`, the memory
/// was all zeros at the start, so nothing but zero or the right mark is.
fn header_ok(v: u64, off: u64, fresh: bool) -> bool {
    v == 0 || v == MAGIC ^ off || (!fresh && (v ^ MAGIC) >> 40 != 0)
}

fn run(o: Opts) -> Result<(), ToolError> {
    let nodes = device_nodes();
    if nodes.is_empty() {
        return Err(ToolError::Failed(
            "no /dev/ivshmem* (is the ivshmem module loaded?)".into(),
        ));
    }
    let mut sizes = Vec::new();
    let mut described = Vec::new();
    for path in &nodes {
        let dev = ivshmem::Device::open(path)?;
        let info = dev.info()?;
        let pci = String::from_utf8_lossy(&info.pci_name);
        described.push(format!(
            "{path} ({}, {} KiB, {} vectors)",
            pci.trim_end_matches('\0'),
            info.size >> 10,
            info.vectors
        ));
        sizes.push(info.size);
    }
    let bdfs = if o.rebind.is_some() {
        bound_devices()
    } else {
        Vec::new()
    };
    if o.rebind.is_some() && bdfs.is_empty() {
        return Err(ToolError::Failed(format!(
            "no 1af4:1110 device bound to {DRIVER}"
        )));
    }
    let open_w = |f: &str| {
        OpenOptions::new()
            .write(true)
            .open(format!("{DRIVER}/{f}"))
            .map_err(|e| ToolError::sys(format!("{DRIVER}/{f}"), e))
    };
    let (unbind, bind) = if o.rebind.is_some() {
        (Some(open_w("unbind")?), Some(open_w("bind")?))
    } else {
        (None, None)
    };

    // The arena, and proof that the kernel's own choices land far above it.
    let arena_len = MAX_THREADS * ARENA_PER_THREAD;
    // SAFETY: NOREPLACE: fails rather than replace anything.
    let p = unsafe {
        sys::mmap(
            ARENA_BASE as *mut c_void,
            arena_len,
            sys::PROT_NONE,
            sys::MAP_FIXED_NOREPLACE | sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == sys::MAP_FAILED {
        return Err(ToolError::Failed(format!(
            "reserving the arena at {ARENA_BASE:#x}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: A fresh mapping chosen by the kernel, unmapped right away.
    let probe = unsafe {
        sys::mmap(
            ptr::null_mut(),
            PAGE,
            sys::PROT_NONE,
            sys::MAP_PRIVATE | sys::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    // SAFETY: The page just mapped.
    unsafe { sys::munmap(probe, PAGE) };
    if (probe as usize) < ARENA_BASE + arena_len {
        return Err(ToolError::Failed(format!(
            "the kernel maps at {probe:p}, below the end of the arena: unexpected address space layout"
        )));
    }

    set_handler(sys::SIGBUS, on_fault as *const () as usize, sys::SA_SIGINFO)?;
    set_handler(
        sys::SIGSEGV,
        on_fault as *const () as usize,
        sys::SA_SIGINFO,
    )?;
    set_handler(sys::SIGUSR1, on_nudge as *const () as usize, 0)?;

    let sh = Shared {
        stop: AtomicBool::new(false),
        fresh: o.fresh,
        sizes: sizes.clone(),
        fds: std::array::from_fn(|_| AtomicI32::new(-1)),
        calls: AtomicU64::new(0),
        errnos: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        ops: std::array::from_fn(|_| AtomicU64::new(0)),
        forks: AtomicU64::new(0),
        child_sigbus: AtomicU64::new(0),
        child_sigsegv: AtomicU64::new(0),
        rebinds: AtomicU64::new(0),
        rebind_errors: AtomicU64::new(0),
        max_wait: AtomicU64::new(0),
        poisoned: AtomicU64::new(0),
        huge_capable: std::array::from_fn(|_| AtomicU64::new(0)),
        threads: std::array::from_fn(|_| AtomicU64::new(0)),
        impossibles: AtomicU64::new(0),
    };
    for (slot, path) in sh.fds.iter().zip(nodes.iter().cycle()) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ToolError::sys(path.as_str(), e))?;
        slot.store(f.into_raw_fd(), SeqCst);
    }
    let env = GenEnv { sizes };
    let mut traces = Vec::new();
    for i in 0..o.threads {
        traces.push(match &o.trace {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| ToolError::sys(dir.as_str(), e))?;
                let path = format!("{dir}/thread-{i}.log");
                Some(BufWriter::new(
                    File::create(&path).map_err(|e| ToolError::sys(path.as_str(), e))?,
                ))
            }
        });
    }
    println!(
        "fuzz: seed {}, {} threads, {} s, rebind {}, devices: {}",
        o.seed,
        o.threads,
        o.seconds,
        o.rebind.map_or("off".to_string(), |(a, b)| format!(
            "every {a}-{b} ms of {}",
            bdfs.join(" ")
        )),
        described.join(", ")
    );

    let mut ready = Vec::new();
    for (i, trace) in traces.into_iter().enumerate() {
        ready.push(
            Worker::new(i, o.seed, &env, &sh, trace).map_err(|e| ToolError::sys("scratch", e))?,
        );
    }
    let start = Instant::now();
    let mut stuck = false;
    std::thread::scope(|s| {
        let workers: Vec<_> = ready
            .into_iter()
            .map(|w| s.spawn(move || w.run()))
            .collect();
        if let (Some(ms), Some(unbind), Some(bind)) = (o.rebind, &unbind, &bind) {
            let (sh, bdfs) = (&sh, &bdfs);
            s.spawn(move || rebinder(sh, bdfs, unbind, bind, ms, o.seed ^ 0x5eed));
        }
        while start.elapsed() < Duration::from_secs(o.seconds) {
            std::thread::sleep(Duration::from_millis(100));
        }
        sh.stop.store(true, SeqCst);
        // Interrupt whatever a worker is blocked in, until all have seen `stop`.
        let deadline = Instant::now() + Duration::from_secs(60);
        while workers.iter().any(|w| !w.is_finished()) {
            if Instant::now() > deadline {
                stuck = true;
                break;
            }
            for (i, _) in workers.iter().enumerate().filter(|(_, w)| !w.is_finished()) {
                let t = sh.threads[i].load(SeqCst);
                if t != 0 {
                    // SAFETY: The id of a thread of this scope, not joined yet: still valid.
                    unsafe { sys::pthread_kill(t, sys::SIGUSR1) };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let took = start.elapsed();
    if stuck {
        sh.impossible("a worker did not stop within 60 s".into());
    }
    for slot in &sh.fds {
        let fd = slot.swap(-1, SeqCst);
        if fd >= 0 {
            // SAFETY: Every worker is done: the slot's fd is ours alone.
            unsafe { sys::close(fd) };
        }
    }
    if let Some(bind) = &bind {
        if !bind_all(&bdfs, bind) {
            sh.impossible(format!(
                "could not bind every device again: {}",
                bdfs.join(" ")
            ));
        }
        let mut nodes_now = device_nodes();
        for _ in 0..20 {
            if nodes_now.len() == nodes.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            nodes_now = device_nodes();
        }
        if nodes_now.len() != nodes.len() {
            sh.impossible(format!("nodes before: {nodes:?}, after: {nodes_now:?}"));
        }
    }

    report::summarize(&sh, o.seed, took)
}

fn main() {
    run_tool("ivshmem-fuzz", USAGE, parse, run);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congruent_slots_fit_in_the_arena() {
        const { assert!(ARENA_BASE.is_multiple_of(HUGE) && ARENA_PER_THREAD.is_multiple_of(HUGE)) };
        const { assert!(SLOTS * SLOT_LEN <= HUGE && SLOT_LEN.is_multiple_of(HUGE_2M)) };
    }

    #[test]
    fn headers_mark_their_offset() {
        assert!(header_ok(0, 4096, true));
        assert!(header_ok(MAGIC ^ 4096, 4096, true));
        assert!(!header_ok(MAGIC ^ 8192, 4096, true));
        assert!(!header_ok(MAGIC ^ 8192, 4096, false));
        assert!(!header_ok(0x1234, 4096, true));
        assert!(header_ok(0x1234, 4096, false), "foreign data is not a mark");
    }
}
