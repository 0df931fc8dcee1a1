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

use std::ffi::{c_int, c_ulong, c_void};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::time::{Duration, Instant};

use ivshmem::args::{run_tool, Args};
use ivshmem::pattern::SplitMix64;
use ivshmem::{sys, uapi, ToolError};

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

fn round_up(n: usize) -> Option<usize> {
    n.checked_add(PAGE - 1).map(|n| n & !(PAGE - 1))
}

// --- the generator -------------------------------------------------------------------------

/// The fuzzer's dice: [`SplitMix64`], fully determined by its seed.
#[derive(Clone, Debug)]
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next()
    }

    /// Uniform enough in `0..n` (0 for n = 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
}

/// The seed of worker `thread`'s generator.
fn thread_seed(seed: u64, thread: usize) -> u64 {
    Rng::new(seed ^ (thread as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)).next()
}

/// What the generator may know: the region sizes of the devices present at the start.
#[derive(Clone, Debug)]
struct GenEnv {
    sizes: Vec<u64>,
}

impl GenEnv {
    fn size(&self, r: &mut Rng) -> u64 {
        let i = r.below(self.sizes.len() as u64) as usize;
        self.sizes.get(i).copied().unwrap_or(1 << 20)
    }
}

/// A user pointer handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ptr {
    /// The scratch area, filled with the argument.
    Valid,
    Null,
    /// An address in the kernel half.
    Kernel(u64),
    /// Between the two canonical halves.
    NonCanonical(u64),
    /// Below 64 KiB, where nothing is mapped.
    LowPage(u16),
    /// Scratch + 1..63.
    Unaligned(u8),
    /// The argument straddles the end of the scratch area into its `PROT_NONE` guard page.
    HalfMapped(u8),
    /// Anywhere in the scratch area.
    Scratch(u16),
    /// Inside one of our device mappings (page offset 8..PAGE-64), only for arguments the
    /// driver reads or writes at most 64 bytes of: (mapping, position).
    InMapping(u32, u32),
}

fn gen_ptr(r: &mut Rng) -> Ptr {
    match r.below(100) {
        0..=39 => Ptr::Valid,
        40..=46 => Ptr::Null,
        47..=54 => Ptr::Kernel(match r.below(3) {
            0 => 0xffff_8880_0000_0000 + r.below(1 << 32),
            1 => 0xffff_ffff_8100_0000 + r.below(1 << 24),
            _ => u64::MAX - r.below(64),
        }),
        55..=59 => Ptr::NonCanonical((r.next() >> 1) | (1 << 47)),
        60..=64 => Ptr::LowPage(r.below(1 << 16) as u16),
        65..=74 => Ptr::Unaligned(r.between(1, 63) as u8),
        75..=84 => Ptr::HalfMapped(r.next() as u8),
        85..=89 => Ptr::Scratch(r.next() as u16),
        _ => Ptr::InMapping(r.u32(), r.u32()),
    }
}

/// The fd argument of `SET_EVENTFD`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum EfdArg {
    /// One of the thread's eventfds (maybe closed since), or -1 if it has none.
    Mine(u8),
    Remove,
    Number(i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmd {
    GetSize,
    GetInfo,
    SetCache(u32),
    Ring {
        peer: u32,
        vector: u32,
    },
    /// Always with a timeout of 0..=20 ms, so no thread sleeps long.
    Wait {
        vector: u32,
        timeout_ms: i32,
    },
    SetEventfd {
        vector: u32,
        fd: EfdArg,
    },
    /// A command number the driver does not have (or a known one with the wrong size or
    /// direction); the upper 32 bits are dropped by the system call.
    Foreign(u64),
}

/// Ioctl types the VFS serves itself before a driver sees the call (fs/ioctl.c: FIBMAP,
/// FIGETBSZ, FIOCLEX, FIONBIO, FIFREEZE, FICLONE, FS_IOC_SETFLAGS, FS_IOC_GETFSUUID, ...). They
/// never reach the driver, and some act on the filesystem holding the node (FIFREEZE would
/// freeze devtmpfs): left out.
const VFS_IOCTL_TYPES: [u32; 6] = [0x00, b'T' as u32, b'X' as u32, b'f' as u32, 0x94, 0x15];

fn gen_foreign(r: &mut Rng) -> u64 {
    loop {
        let magic = u64::from(uapi::IVSHMEM_IOCTL_MAGIC) << 8;
        let cmd = match r.below(4) {
            0 => (r.below(4) << 30) | (r.below(1 << 14) << 16) | magic | r.between(6, 255),
            1 => (r.below(4) << 30) | (r.below(1 << 14) << 16) | magic | r.below(6),
            2 => r.next() & 0xffff_ffff,
            _ => r.next(),
        };
        if !VFS_IOCTL_TYPES.contains(&((cmd as u32 >> 8) & 0xff)) {
            return cmd;
        }
    }
}

/// Mostly a small number (a plausible peer or vector), sometimes any.
fn small_or_any(r: &mut Rng, n: u64) -> u32 {
    if r.chance(85) {
        r.below(n) as u32
    } else {
        r.u32()
    }
}

fn gen_cmd(r: &mut Rng) -> Cmd {
    match r.below(100) {
        0..=13 => Cmd::GetSize,
        14..=27 => Cmd::GetInfo,
        28..=39 => Cmd::SetCache(if r.chance(70) {
            r.below(4) as u32
        } else {
            r.u32()
        }),
        40..=53 => Cmd::Ring {
            peer: small_or_any(r, 4),
            vector: small_or_any(r, 4),
        },
        54..=67 => Cmd::Wait {
            vector: small_or_any(r, 4),
            timeout_ms: r.below(21) as i32,
        },
        68..=79 => Cmd::SetEventfd {
            vector: small_or_any(r, 4),
            fd: match r.below(10) {
                0..=4 => EfdArg::Mine(r.next() as u8),
                5..=6 => EfdArg::Remove,
                7..=8 => EfdArg::Number(r.below(64) as i32),
                _ => EfdArg::Number(r.u32() as i32),
            },
        },
        _ => Cmd::Foreign(gen_foreign(r)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fixed {
    No,
    /// `MAP_FIXED` over arena slot N (cleared first).
    Slot(u8),
    /// `MAP_FIXED_NOREPLACE` over arena slot N (occupied: EEXIST).
    NoReplace(u8),
    /// `MAP_FIXED` in arena slot N (cleared first) at an address congruent to the offset
    /// modulo 2 MiB: where the driver may use 2 MiB entries.
    Congruent(u8),
    /// `MAP_FIXED` in the huge slot (cleared first) at an address congruent to the offset
    /// modulo 1 GiB: where 1 GiB entries would go (the driver makes 2 MiB ones: README, mmap).
    Huge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum OpenMode {
    ReadWrite,
    ReadOnly,
    WriteOnly,
    Path,
    NonBlock,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Remap {
    /// Shrink a range in place (its tail goes away).
    Shrink(u32),
    /// Grow in place by N pages.
    Grow(u32),
    /// Grow by N pages, moving if needed.
    GrowMove(u32),
    /// Move into arena slot N, changing the length by the second field (pages, signed).
    MoveFixed(u8, i8),
    /// Move and leave the old range mapped (`MREMAP_DONTUNMAP`).
    DontUnmap,
}

/// One call (or a few: a touch, a fork) to make. Ranges inside a mapping are given as random
/// numbers (mapping, first page, pages) that the worker reduces modulo what it has: the
/// generator never looks at outcomes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Ioctl {
        slot: u8,
        cmd: Cmd,
        ptr: Ptr,
    },
    Mmap {
        slot: u8,
        len: u64,
        off: i64,
        prot: i32,
        flags: i32,
        fixed: Fixed,
    },
    /// `weird`: 0 unaligned address, 1 length 0, else a plain range.
    Munmap {
        map: u32,
        at: u32,
        pages: u32,
        weird: u8,
    },
    Mremap {
        map: u32,
        at: u32,
        pages: u32,
        how: Remap,
    },
    Mprotect {
        map: u32,
        at: u32,
        pages: u32,
        prot: i32,
    },
    Madvise {
        map: u32,
        at: u32,
        pages: u32,
        advice: i32,
    },
    /// `count` reads and writes around page `at` of a mapping.
    Touch {
        map: u32,
        at: u32,
        count: u8,
        seed: u64,
    },
    /// A child touches up to three mappings it inherited, then exits.
    Fork {
        maps: [u32; 3],
        seed: u64,
    },
    Read {
        slot: u8,
        ptr: Ptr,
        len: u64,
    },
    Write {
        slot: u8,
        ptr: Ptr,
        len: u64,
    },
    /// Close the slot's file and open `/dev/ivshmem<dev>` into it.
    Reopen {
        slot: u8,
        dev: u8,
        mode: OpenMode,
    },
    Close {
        slot: u8,
    },
    EventfdNew,
    EventfdClose(u8),
}

/// Names of the [`Op`] kinds, for the per-kind counts.
const OP_NAMES: [&str; 14] = [
    "ioctl",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "touch",
    "fork",
    "read",
    "write",
    "reopen",
    "close",
    "eventfd",
    "eventfd-close",
];

impl Op {
    fn kind(&self) -> usize {
        match self {
            Op::Ioctl { .. } => 0,
            Op::Mmap { .. } => 1,
            Op::Munmap { .. } => 2,
            Op::Mremap { .. } => 3,
            Op::Mprotect { .. } => 4,
            Op::Madvise { .. } => 5,
            Op::Touch { .. } => 6,
            Op::Fork { .. } => 7,
            Op::Read { .. } => 8,
            Op::Write { .. } => 9,
            Op::Reopen { .. } => 10,
            Op::Close { .. } => 11,
            Op::EventfdNew => 12,
            Op::EventfdClose(_) => 13,
        }
    }
}

fn gen_prot(r: &mut Rng) -> i32 {
    let mut prot = if r.chance(60) {
        sys::PROT_READ | sys::PROT_WRITE
    } else {
        r.below(8) as i32 // any of READ, WRITE, EXEC
    };
    if r.chance(3) {
        prot |= 1 << r.between(3, 30);
    }
    prot
}

fn gen_len(r: &mut Rng, env: &GenEnv) -> u64 {
    let page = PAGE as u64;
    let m2 = HUGE_2M as u64;
    match r.below(100) {
        0..=33 => r.between(1, 4) * page,
        34..=59 => r.between(1, 64) * page,
        60..=65 => env.size(r),
        66..=69 => r.between(65, 1024) * page,
        70..=72 => 0,
        73..=77 => env.size(r) + r.between(1, 16) * page,
        78..=82 => r.below(64) * page + r.between(1, page - 1),
        // Huge-sized: whole 2 MiB entries, a page more or less, 1 GiB.
        83..=88 => r.between(1, 7) * m2,
        89..=92 => r.between(1, 6) * m2 + r.between(0, 2) * page - page,
        93..=95 => HUGE as u64,
        _ => 1 << r.between(32, 63),
    }
}

fn gen_off(r: &mut Rng, env: &GenEnv) -> i64 {
    let page = PAGE as u64;
    let size = env.size(r);
    let off = match r.below(100) {
        0..=33 => r.below(16) * page,
        34..=54 => r.below(size / page) * page,
        55..=62 => size.saturating_sub(r.between(1, 4) * page),
        63..=70 => size + r.below(16) * page,
        71..=74 => r.below(size / page) * page + r.between(1, page - 1),
        75..=78 => (r.next() >> 1) & !(page - 1),
        // Huge-aligned, or a page off: where 2 MiB and 1 GiB entries may (or just may not) go.
        79..=87 => r.below(size.div_ceil(HUGE_2M as u64)) * HUGE_2M as u64,
        88..=91 => r.below(size.div_ceil(HUGE as u64)) * HUGE as u64,
        92..=95 => {
            let at = r.below(size.div_ceil(HUGE_2M as u64)) * HUGE_2M as u64;
            if r.chance(50) {
                at + page
            } else {
                at.saturating_sub(page)
            }
        }
        _ => (r.between(1, 16) * page).wrapping_neg(),
    };
    off as i64
}

/// Length and offset for a mapping with entries of `size`: whole ones, or a page more or less
/// at either end.
fn gen_huge(r: &mut Rng, env: &GenEnv, size: usize) -> (u64, i64) {
    let (page, size) = (PAGE as u64, size as u64);
    let entries = env.size(r).div_ceil(size);
    let off = r.below(entries) * size;
    let len = r.between(1, entries.min(7)) * size;
    match r.below(10) {
        0..=5 => (len, off as i64),
        6 => (len + page, off as i64),
        7 => (len - page, off as i64),
        8 => (len - page, (off + page) as i64),
        _ => (len, off.saturating_sub(page) as i64),
    }
}

fn gen_flags(r: &mut Rng) -> i32 {
    let mut flags = match r.below(100) {
        0..=64 => sys::MAP_SHARED,
        65..=79 => sys::MAP_PRIVATE,
        80..=91 => sys::MAP_SHARED_VALIDATE,
        _ => 0,
    };
    for extra in [
        sys::MAP_POPULATE,
        sys::MAP_NORESERVE,
        sys::MAP_LOCKED,
        sys::MAP_NONBLOCK,
        sys::MAP_STACK,
        sys::MAP_SYNC,
        sys::MAP_32BIT,
    ] {
        if r.chance(6) {
            flags |= extra;
        }
    }
    flags
}

fn gen_advice(r: &mut Rng) -> i32 {
    let advice = match r.below(100) {
        0..=44 => sys::MADV_DONTNEED,
        45..=64 => sys::MADV_WILLNEED,
        65..=89 => r.below(26) as i32,
        90..=94 => 102 + r.below(2) as i32, // MADV_GUARD_INSTALL, MADV_GUARD_REMOVE
        _ => r.u32() as i32,
    };
    // Poisoning memory is not the driver's business and would kill the guest's pages.
    if advice == sys::MADV_HWPOISON || advice == sys::MADV_SOFT_OFFLINE {
        sys::MADV_DONTNEED
    } else {
        advice
    }
}

fn gen_rw_len(r: &mut Rng) -> u64 {
    match r.below(10) {
        0 => 0,
        1..=3 => 8,
        4..=8 => r.between(1, SCRATCH_LEN as u64),
        _ => 1 << r.between(20, 62),
    }
}

/// The next call of a worker: a function of its generator and `env` only.
fn gen_op(r: &mut Rng, env: &GenEnv) -> Op {
    let slot = r.below(FD_SLOTS as u64) as u8;
    match r.below(100) {
        0..=33 => Op::Ioctl {
            slot,
            cmd: gen_cmd(r),
            ptr: gen_ptr(r),
        },
        34..=47 => {
            let fixed = match r.below(100) {
                0..=39 => Fixed::No,
                40..=59 => Fixed::Slot(r.below(SLOTS as u64) as u8),
                60..=79 => Fixed::Congruent(r.below(SLOTS as u64) as u8),
                80..=94 => Fixed::Huge,
                _ => Fixed::NoReplace(r.below(SLOTS as u64) as u8),
            };
            // Placed for huge entries: mostly sizes and offsets that let the driver use them.
            let (len, off) = match fixed {
                Fixed::Congruent(_) if r.chance(70) => gen_huge(r, env, HUGE_2M),
                Fixed::Huge if r.chance(70) => gen_huge(r, env, HUGE),
                _ => (gen_len(r, env), gen_off(r, env)),
            };
            Op::Mmap {
                slot,
                len,
                off,
                prot: gen_prot(r),
                flags: gen_flags(r),
                fixed,
            }
        }
        48..=53 => Op::Munmap {
            map: r.u32(),
            at: r.u32(),
            pages: r.u32(),
            weird: r.below(10) as u8,
        },
        54..=58 => Op::Mremap {
            map: r.u32(),
            at: r.u32(),
            pages: r.u32(),
            how: match r.below(5) {
                0 => Remap::Shrink(r.u32()),
                1 => Remap::Grow(r.between(1, 16) as u32),
                2 => Remap::GrowMove(r.between(1, 16) as u32),
                3 => Remap::MoveFixed(r.below(SLOTS as u64) as u8, r.between(0, 8) as i8 - 4),
                _ => Remap::DontUnmap,
            },
        },
        59..=63 => Op::Mprotect {
            map: r.u32(),
            at: r.u32(),
            pages: r.u32(),
            prot: gen_prot(r),
        },
        64..=68 => Op::Madvise {
            map: r.u32(),
            at: r.u32(),
            pages: r.u32(),
            advice: gen_advice(r),
        },
        69..=82 => Op::Touch {
            map: r.u32(),
            at: r.u32(),
            count: r.between(1, 64) as u8,
            seed: r.next(),
        },
        83 => Op::Fork {
            maps: [r.u32(), r.u32(), r.u32()],
            seed: r.next(),
        },
        84..=86 => Op::Read {
            slot,
            ptr: gen_ptr(r),
            len: gen_rw_len(r),
        },
        87..=89 => Op::Write {
            slot,
            ptr: gen_ptr(r),
            len: gen_rw_len(r),
        },
        90..=95 => Op::Reopen {
            slot,
            // Mostly a node that exists.
            dev: if r.chance(10) {
                env.sizes.len() as u8
            } else {
                r.below(env.sizes.len() as u64) as u8
            },
            mode: match r.below(10) {
                0..=5 => OpenMode::ReadWrite,
                6 => OpenMode::ReadOnly,
                7 => OpenMode::WriteOnly,
                8 => OpenMode::Path,
                _ => OpenMode::NonBlock,
            },
        },
        96 => Op::Close { slot },
        97..=98 => Op::EventfdNew,
        _ => Op::EventfdClose(r.next() as u8),
    }
}

// --- faults --------------------------------------------------------------------------------

/// The range a worker is touching; the fault handler repairs faults inside it only.
struct Window {
    start: AtomicUsize,
    end: AtomicUsize,
}

static WINDOWS: [Window; MAX_THREADS] = [const {
    Window {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }
}; MAX_THREADS];
static FIXED_SIGBUS: AtomicU64 = AtomicU64::new(0);
static FIXED_SIGSEGV: AtomicU64 = AtomicU64::new(0);

fn set_handler(sig: c_int, handler: usize, flags: c_int) -> io::Result<()> {
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
extern "C" fn on_fault(sig: c_int, info: *mut c_void, _context: *mut c_void) {
    // SAFETY: installed with SA_SIGINFO, so `info` points to the siginfo_t of this SIGBUS or
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
        // SAFETY: the page is inside a touch window, i.e. inside a mapping the touching
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
extern "C" fn on_nudge(_sig: c_int) {}

// --- shared state --------------------------------------------------------------------------

struct Shared {
    stop: AtomicBool,
    fresh: bool,
    /// Region sizes of the devices found at the start.
    sizes: Vec<u64>,
    fds: [AtomicI32; FD_SLOTS],
    calls: AtomicU64,
    /// Failed calls per op kind and errno.
    errnos: [[AtomicU64; ERRNO_MAX]; OP_NAMES.len()],
    ops: [AtomicU64; OP_NAMES.len()],
    forks: AtomicU64,
    child_sigbus: AtomicU64,
    child_sigsegv: AtomicU64,
    rebinds: AtomicU64,
    rebind_errors: AtomicU64,
    max_wait: AtomicU64,
    poisoned: AtomicU64,
    /// Mappings made where the driver can use 2 MiB entries, and of them the 1 GiB-aligned: [2 MiB, 1 GiB].
    huge_capable: [AtomicU64; 2],
    /// pthread ids of the workers (0 before they start), to interrupt blocked calls at the end.
    threads: [AtomicU64; MAX_THREADS],
    /// How many outcomes that must never happen there were (see [`Shared::impossible`]).
    impossibles: AtomicU64,
}

impl Shared {
    /// Records (and prints, up to [`MAX_REPORTS`]) an outcome that must never happen.
    fn impossible(&self, what: String) {
        if self.impossibles.fetch_add(1, SeqCst) < MAX_REPORTS {
            eprintln!("fuzz: IMPOSSIBLE: {what}");
        }
    }

    fn count_errno(&self, kind: usize, errno: i32) {
        let i = usize::try_from(errno).unwrap_or(0).min(ERRNO_MAX - 1);
        self.errnos[kind][i].fetch_add(1, Relaxed);
    }
}

/// A device mapping of a worker: `len` bytes at `addr` show the region from offset `off`
/// (unless a page was repaired by the fault handler: it then reads zeros).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Seg {
    addr: usize,
    len: usize,
    off: u64,
}

/// Whether a mapping of `len` bytes at `addr` from offset `off` can hold an entry of `size`:
/// address and offset congruent modulo `size`, and a whole aligned `size` inside.
fn huge_capable(addr: usize, off: u64, len: usize, size: usize) -> bool {
    let first = addr.next_multiple_of(size);
    (addr as u64).wrapping_sub(off).is_multiple_of(size as u64) && first - addr + size <= len
}

/// Removes `[addr, addr + len)` from `segs`, splitting the mappings it cuts.
fn forget(segs: &mut Vec<Seg>, addr: usize, len: usize) {
    let end = addr.saturating_add(len);
    let mut out = Vec::with_capacity(segs.len() + 1);
    for s in segs.drain(..) {
        let s_end = s.addr + s.len;
        if s_end <= addr || s.addr >= end {
            out.push(s);
            continue;
        }
        if s.addr < addr {
            out.push(Seg {
                len: addr - s.addr,
                ..s
            });
        }
        if s_end > end {
            out.push(Seg {
                addr: end,
                len: s_end - end,
                off: s.off + (end - s.addr) as u64,
            });
        }
    }
    *segs = out;
}

/// A volatile read, or write of `value`, of `N` bytes at `addr`.
///
/// # Safety
///
/// `addr..addr + N` lies in a mapping of the calling thread's own, inside its touch window, and
/// holds no Rust object.
unsafe fn access<const N: usize>(addr: usize, value: Option<[u8; N]>) {
    match value {
        // SAFETY: per the contract; `[u8; N]` needs no alignment.
        Some(v) => unsafe { ptr::write_volatile(addr as *mut [u8; N], v) },
        // SAFETY: as above.
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

// --- the workers ---------------------------------------------------------------------------

struct Worker<'a> {
    id: usize,
    seed: u64,
    rng: Rng,
    env: &'a GenEnv,
    sh: &'a Shared,
    scratch: usize,
    arena: usize,
    /// Arena slots whose reservation could not be renewed (index `SLOTS`: the huge slot).
    poisoned: [bool; SLOTS + 1],
    segs: Vec<Seg>,
    efds: Vec<c_int>,
    trace: Option<BufWriter<File>>,
    /// Number and kind of the op being executed.
    n: u64,
    kind: usize,
}

/// Where a [`Ptr`] points, and how many bytes of the argument we may write there first.
struct Resolved {
    addr: usize,
    fill: usize,
}

impl<'a> Worker<'a> {
    fn new(
        id: usize,
        seed: u64,
        env: &'a GenEnv,
        sh: &'a Shared,
        trace: Option<BufWriter<File>>,
    ) -> io::Result<Self> {
        // SAFETY: a fresh private mapping chosen by the kernel.
        let p = unsafe {
            sys::mmap(
                ptr::null_mut(),
                SCRATCH_LEN + PAGE,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_PRIVATE | sys::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == sys::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let scratch = p as usize;
        // SAFETY: the last page of the mapping just made: the guard page.
        if unsafe { sys::mprotect((scratch + SCRATCH_LEN) as *mut c_void, PAGE, sys::PROT_NONE) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            id,
            seed: thread_seed(seed, id),
            rng: Rng::new(thread_seed(seed, id)),
            env,
            sh,
            scratch,
            arena: ARENA_BASE + id * ARENA_PER_THREAD,
            poisoned: [false; SLOTS + 1],
            segs: Vec::new(),
            efds: Vec::new(),
            trace,
            n: 0,
            kind: 0,
        })
    }

    fn run(mut self) {
        // SAFETY: plain libc call.
        let me = unsafe { sys::pthread_self() };
        self.sh.threads[self.id].store(me, SeqCst);
        while !self.sh.stop.load(Relaxed) {
            let op = gen_op(&mut self.rng, self.env);
            if let Some(t) = &mut self.trace {
                let _ = writeln!(t, "{} {op:?}", self.n);
            }
            self.kind = op.kind();
            self.sh.ops[self.kind].fetch_add(1, Relaxed);
            self.exec(op);
            self.trim();
            self.n += 1;
        }
        for fd in std::mem::take(&mut self.efds) {
            // SAFETY: the thread's own eventfd, closed once.
            unsafe { sys::close(fd) };
        }
        while !self.segs.is_empty() {
            self.release(0);
        }
        if let Some(mut t) = self.trace.take() {
            let _ = t.flush();
        }
    }

    /// Counts a call; reads errno first, so call it right after the call.
    fn note(&self, failed: bool) {
        let errno = failed.then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0));
        self.sh.calls.fetch_add(1, Relaxed);
        if let Some(e) = errno {
            self.sh.count_errno(self.kind, e);
        }
    }

    fn fd(&self, slot: u8) -> c_int {
        self.sh.fds[slot as usize % FD_SLOTS].load(SeqCst)
    }

    fn place(&self) -> String {
        format!("thread {} (seed {:#x}) call {}", self.id, self.seed, self.n)
    }

    fn slot_addr(&self, k: u8) -> usize {
        self.arena + (k as usize % SLOTS) * SLOT_LEN
    }

    /// Address and length of slot `k`: `0..SLOTS` the small ones, `SLOTS` the huge one.
    fn slot(&self, k: usize) -> (usize, usize) {
        if k == SLOTS {
            (self.arena + HUGE, HUGE_SLOT_LEN)
        } else {
            (self.arena + (k % SLOTS) * SLOT_LEN, SLOT_LEN)
        }
    }

    fn in_arena(addr: usize, len: usize) -> bool {
        addr < ARENA_BASE + MAX_THREADS * ARENA_PER_THREAD && addr + len > ARENA_BASE
    }

    fn exec(&mut self, op: Op) {
        match op {
            Op::Ioctl { slot, cmd, ptr } => self.ioctl(slot, cmd, ptr),
            Op::Mmap {
                slot,
                len,
                off,
                prot,
                flags,
                fixed,
            } => self.mmap(slot, len, off, prot, flags, fixed),
            Op::Munmap {
                map,
                at,
                pages,
                weird,
            } => self.munmap(map, at, pages, weird),
            Op::Mremap {
                map,
                at,
                pages,
                how,
            } => self.mremap(map, at, pages, how),
            Op::Mprotect {
                map,
                at,
                pages,
                prot,
            } => {
                if let Some((_, a, l)) = self.pick_range(map, at, pages) {
                    // SAFETY: a range of a mapping of ours that holds no Rust object; faults
                    // on it later are repaired (see `on_fault`).
                    let rc = unsafe { sys::mprotect(a as *mut c_void, l, prot) };
                    self.note(rc < 0);
                }
            }
            Op::Madvise {
                map,
                at,
                pages,
                advice,
            } => {
                if let Some((_, a, l)) = self.pick_range(map, at, pages) {
                    // SAFETY: as for mprotect; discarding the contents is fine, the fuzzer
                    // keeps nothing there it needs.
                    let rc = unsafe { sys::madvise(a as *mut c_void, l, advice) };
                    self.note(rc < 0);
                }
            }
            Op::Touch {
                map,
                at,
                count,
                seed,
            } => self.touch(map, at, count, seed),
            Op::Fork { maps, seed } => self.fork(maps, seed),
            Op::Read { slot, ptr, len } => {
                let fd = self.fd(slot);
                let r = self.resolve(ptr, 16, false);
                // SAFETY: the kernel may write only into the scratch area (stopping at its
                // guard page) or gets an address where nothing is mapped.
                let rc = unsafe { sys::read(fd, r.addr as *mut c_void, len as usize) };
                self.note(rc < 0);
            }
            Op::Write { slot, ptr, len } => {
                let fd = self.fd(slot);
                let r = self.resolve(ptr, 16, true);
                // SAFETY: write only reads our memory (EFAULT where nothing is mapped).
                let rc = unsafe { sys::write(fd, r.addr as *const c_void, len as usize) };
                self.note(rc < 0);
            }
            Op::Reopen { slot, dev, mode } => self.reopen(slot, dev, mode),
            Op::Close { slot } => self.close_slot(slot),
            Op::EventfdNew => {
                if self.efds.len() >= MAX_EFDS {
                    let fd = self.efds.remove(0);
                    // SAFETY: the thread's own eventfd, closed once.
                    let rc = unsafe { sys::close(fd) };
                    self.note(rc < 0);
                }
                // SAFETY: plain system call.
                let fd = unsafe { sys::eventfd(0, sys::EFD_NONBLOCK | sys::EFD_CLOEXEC) };
                self.note(fd < 0);
                if fd >= 0 {
                    self.efds.push(fd);
                }
            }
            Op::EventfdClose(k) => {
                if !self.efds.is_empty() {
                    let fd = self.efds.remove(k as usize % self.efds.len());
                    // SAFETY: the thread's own eventfd, closed once (the driver holds its
                    // own reference if it was registered).
                    let rc = unsafe { sys::close(fd) };
                    self.note(rc < 0);
                }
            }
        }
    }

    /// Turns a [`Ptr`] into an address for an argument of `size` bytes. `may_map`: the
    /// argument may point into a device mapping (the driver reads it, or writes at most 64
    /// bytes), else such pointers become the scratch area.
    fn resolve(&self, ptr: Ptr, size: usize, may_map: bool) -> Resolved {
        let guard = self.scratch + SCRATCH_LEN;
        let (addr, fill) = match ptr {
            Ptr::Valid => (self.scratch, size),
            Ptr::Null => (0, 0),
            Ptr::Kernel(a) | Ptr::NonCanonical(a) => (a as usize, 0),
            Ptr::LowPage(a) => (a as usize, 0),
            Ptr::Unaligned(k) => (self.scratch + k as usize, size),
            Ptr::HalfMapped(k) => {
                let before = 1 + k as usize % (size - 1);
                (guard - before, before)
            }
            Ptr::Scratch(k) => (self.scratch + k as usize % (SCRATCH_LEN - 64), size),
            Ptr::InMapping(m, pos) if may_map && !self.segs.is_empty() => {
                let seg = self.segs[m as usize % self.segs.len()];
                let page = (pos as usize >> 12) % (seg.len / PAGE);
                let in_page = 8 + (pos as usize & 0xfff) % (PAGE - 72);
                (seg.addr + page * PAGE + in_page, 0)
            }
            Ptr::InMapping(..) => (self.scratch, size),
        };
        Resolved { addr, fill }
    }

    /// Writes the first `r.fill` bytes of `arg` at `r.addr` (always inside the scratch area).
    fn prefill(&self, r: &Resolved, arg: &[u8]) {
        for (i, b) in arg.iter().take(r.fill).enumerate() {
            // SAFETY: `resolve` only asks to fill inside the scratch area, which is ours,
            // writable, and holds no Rust object.
            unsafe { ptr::write_volatile((r.addr + i) as *mut u8, *b) };
        }
    }

    fn ioctl(&mut self, slot: u8, cmd: Cmd, ptr: Ptr) {
        let fd = self.fd(slot);
        let pair = |a: u32, b: u32| [a.to_ne_bytes(), b.to_ne_bytes()].concat();
        let (nr, arg, may_map): (u64, Vec<u8>, bool) = match cmd {
            Cmd::GetSize => (uapi::IVSHMEM_GET_SIZE.into(), vec![0; 8], true),
            Cmd::GetInfo => (uapi::IVSHMEM_GET_INFO.into(), vec![0; 64], true),
            Cmd::SetCache(v) => (
                uapi::IVSHMEM_SET_CACHE.into(),
                v.to_ne_bytes().to_vec(),
                true,
            ),
            Cmd::Ring { peer, vector } => (uapi::IVSHMEM_RING.into(), pair(peer, vector), true),
            // Never from a device mapping: another guest could turn the timeout negative
            // (wait forever) under our feet.
            Cmd::Wait { vector, timeout_ms } => (
                uapi::IVSHMEM_WAIT.into(),
                [pair(vector, timeout_ms as u32), vec![0; 8]].concat(),
                false,
            ),
            Cmd::SetEventfd { vector, fd } => {
                let fd = match fd {
                    EfdArg::Mine(k) if !self.efds.is_empty() => {
                        self.efds[k as usize % self.efds.len()]
                    }
                    EfdArg::Mine(_) | EfdArg::Remove => -1,
                    EfdArg::Number(n) => n,
                };
                (
                    uapi::IVSHMEM_SET_EVENTFD.into(),
                    pair(vector, fd as u32),
                    true,
                )
            }
            // Zeros in our memory: should a foreign number turn out to be WAIT, it does not block.
            Cmd::Foreign(nr) => (nr, vec![0; 64], false),
        };
        let r = self.resolve(ptr, arg.len(), may_map);
        self.prefill(&r, &arg);
        let start = Instant::now();
        // SAFETY: the kernel writes at most 64 bytes at `r.addr`, which is the scratch area,
        // bytes 8..PAGE of a page of a device mapping of ours (no Rust object, see `MAGIC`),
        // or an address where nothing is mapped.
        let rc = unsafe { sys::ioctl(fd, nr as c_ulong, r.addr) };
        self.note(rc < 0);
        let took = start.elapsed();
        if let Cmd::Wait { timeout_ms, .. } = cmd {
            self.sh.max_wait.fetch_max(took.as_millis() as u64, Relaxed);
            if took > WAIT_LIMIT {
                self.sh.impossible(format!(
                    "{}: WAIT with a {timeout_ms} ms timeout took {took:?}",
                    self.place()
                ));
            }
        }
        // A size the driver reported must be one of the devices' sizes.
        if rc == 0 && r.fill == arg.len() && matches!(cmd, Cmd::GetSize | Cmd::GetInfo) {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().enumerate() {
                // SAFETY: inside the scratch area (`fill` is only non-zero there).
                *x = unsafe { ptr::read_volatile((r.addr + i) as *const u8) };
            }
            let size = u64::from_ne_bytes(b);
            if !self.sh.sizes.contains(&size) {
                self.sh.impossible(format!(
                    "{}: {cmd:?} reported size {size:#x}, devices have {:x?}",
                    self.place(),
                    self.sh.sizes
                ));
            }
        }
    }

    fn mmap(&mut self, slot: u8, len: u64, off: i64, prot: i32, flags: i32, fixed: Fixed) {
        let fd = self.fd(slot);
        let fits = len > 0 && len <= SLOT_LEN as u64;
        // Where in slot `k` an address congruent to the offset modulo `align` lies, if the
        // mapping fits there.
        let congruent = |k: usize, align: usize| {
            let shift = off as u64 as usize & (align - 1);
            let (_, slot_len) = self.slot(k);
            (len > 0 && shift as u64 + len <= slot_len as u64).then_some(shift)
        };
        let (addr, extra) = match fixed {
            Fixed::Slot(k) if fits && !self.poisoned[k as usize % SLOTS] => {
                self.clear_slot(k as usize % SLOTS);
                (self.slot_addr(k), sys::MAP_FIXED)
            }
            Fixed::NoReplace(k) if fits && !self.poisoned[k as usize % SLOTS] => {
                (self.slot_addr(k), sys::MAP_FIXED_NOREPLACE)
            }
            Fixed::Congruent(k) if !self.poisoned[k as usize % SLOTS] => {
                match congruent(k as usize % SLOTS, HUGE_2M) {
                    Some(shift) => {
                        self.clear_slot(k as usize % SLOTS);
                        (self.slot_addr(k) + shift, sys::MAP_FIXED)
                    }
                    None => {
                        self.make_room();
                        (0, 0)
                    }
                }
            }
            Fixed::Huge if !self.poisoned[SLOTS] => match congruent(SLOTS, HUGE) {
                Some(shift) => {
                    self.clear_slot(SLOTS);
                    (self.slot(SLOTS).0 + shift, sys::MAP_FIXED)
                }
                None => {
                    self.make_room();
                    (0, 0)
                }
            },
            _ => {
                self.make_room();
                (0, 0)
            }
        };
        // SAFETY: either the kernel chooses the place, or it is an arena slot of this thread
        // (see the module documentation), which holds no Rust object.
        let p = unsafe {
            sys::mmap(
                addr as *mut c_void,
                len as usize,
                prot,
                flags | extra,
                fd,
                off,
            )
        };
        self.note(p == sys::MAP_FAILED);
        let rlen = round_up(len as usize).unwrap_or(0);
        if p == sys::MAP_FAILED {
            if extra == sys::MAP_FIXED {
                // A late failure leaves a hole where the slot was.
                self.refill(addr, rlen);
            }
            return;
        }
        let p = p as usize;
        if extra == 0 && Self::in_arena(p, rlen) {
            self.sh.impossible(format!(
                "{}: the kernel placed a mapping in the arena at {p:#x}",
                self.place()
            ));
        }
        if extra != 0 && p != addr {
            self.sh.impossible(format!(
                "{}: fixed mmap at {addr:#x} returned {p:#x}",
                self.place()
            ));
        }
        let max = self.sh.sizes.iter().copied().max().unwrap_or(0);
        if off < 0 || (off as u64).saturating_add(rlen as u64) > max {
            self.sh.impossible(format!(
                "{}: mmap of {len:#x} bytes at offset {off:#x} succeeded, beyond every region \
                 (largest {max:#x})",
                self.place()
            ));
        }
        for (k, size) in [HUGE_2M, HUGE].into_iter().enumerate() {
            if huge_capable(p, off as u64, rlen, size) {
                self.sh.huge_capable[k].fetch_add(1, Relaxed);
            }
        }
        if rlen > 0 {
            self.segs.push(Seg {
                addr: p,
                len: rlen,
                off: off as u64,
            });
        }
    }

    /// Mapping `map` (modulo how many there are) and a page range in it:
    /// `(index, address, length)`.
    fn pick_range(&self, map: u32, at: u32, pages: u32) -> Option<(usize, usize, usize)> {
        if self.segs.is_empty() {
            return None;
        }
        let i = map as usize % self.segs.len();
        let seg = self.segs[i];
        let total = seg.len / PAGE;
        let first = at as usize % total;
        let n = 1 + pages as usize % (total - first);
        Some((i, seg.addr + first * PAGE, n * PAGE))
    }

    fn munmap(&mut self, map: u32, at: u32, pages: u32, weird: u8) {
        let Some((_, a, l)) = self.pick_range(map, at, pages) else {
            return;
        };
        let (addr, len) = match weird {
            0 => (a + 1, l),
            1 => (a, 0),
            _ => (a, l),
        };
        // SAFETY: inside a mapping of ours that holds no Rust object; it is forgotten below.
        let rc = unsafe { sys::munmap(addr as *mut c_void, len) };
        self.note(rc < 0);
        if rc == 0 {
            let start = addr & !(PAGE - 1);
            let end = round_up(addr + len).unwrap_or(start);
            forget(&mut self.segs, start, end - start);
            self.refill(start, end - start);
        }
    }

    fn mremap(&mut self, map: u32, at: u32, pages: u32, how: Remap) {
        // Room first: the range picked below must not be unmapped (and taken by someone
        // else) before it is remapped.
        if matches!(how, Remap::GrowMove(_) | Remap::DontUnmap) {
            self.make_room();
        }
        let Some((i, a, l)) = self.pick_range(map, at, pages) else {
            return;
        };
        let seg = self.segs[i];
        let off = seg.off + (a - seg.addr) as u64;
        let remap = |a: usize, l: usize, n: usize, flags: c_int, to: usize| {
            // SAFETY: the source is a mapping of ours (no Rust object), the destination is
            // chosen by the kernel or an arena slot of this thread.
            let p = unsafe { sys::mremap(a as *mut c_void, l, n, flags, to as *mut c_void) };
            (p != sys::MAP_FAILED).then_some(p as usize)
        };
        match how {
            Remap::Shrink(k) => {
                let n = (k as usize % (l / PAGE)) * PAGE;
                let p = remap(a, l, n, 0, 0);
                self.note(p.is_none());
                if p.is_some() {
                    forget(&mut self.segs, a + n, l - n);
                    self.refill(a + n, l - n);
                }
            }
            Remap::Grow(k) | Remap::GrowMove(k) => {
                // The range up to the end of the mapping, grown by k pages.
                let l = seg.addr + seg.len - a;
                let n = l + k as usize * PAGE;
                let flags = if matches!(how, Remap::GrowMove(_)) {
                    sys::MREMAP_MAYMOVE
                } else {
                    0
                };
                let p = remap(a, l, n, flags, 0);
                self.note(p.is_none());
                if let Some(p) = p {
                    forget(&mut self.segs, a, l);
                    if p != a {
                        self.refill(a, l);
                    }
                    self.segs.push(Seg {
                        addr: p,
                        len: n,
                        off,
                    });
                }
            }
            Remap::MoveFixed(k, delta) => {
                let dest = self.slot_addr(k);
                let n = l as isize + delta as isize * PAGE as isize;
                let overlaps = a < dest + SLOT_LEN && a + l > dest;
                if self.poisoned[k as usize % SLOTS] || overlaps || n <= 0 || n as usize > SLOT_LEN
                {
                    return;
                }
                let n = n as usize;
                self.clear_slot(k as usize % SLOTS);
                let flags = sys::MREMAP_MAYMOVE | sys::MREMAP_FIXED;
                let p = remap(a, l, n, flags, dest);
                self.note(p.is_none());
                match p {
                    Some(p) => {
                        forget(&mut self.segs, a, l);
                        self.refill(a, l);
                        self.segs.push(Seg {
                            addr: p,
                            len: n,
                            off,
                        });
                    }
                    // The destination may have been unmapped before the move failed.
                    None => self.refill(dest, n),
                }
            }
            Remap::DontUnmap => {
                let flags = sys::MREMAP_MAYMOVE | sys::MREMAP_DONTUNMAP;
                let p = remap(a, l, l, flags, 0);
                self.note(p.is_none());
                if let Some(p) = p {
                    // The old range stays mapped (emptied); the new one shows the region.
                    self.segs.push(Seg {
                        addr: p,
                        len: l,
                        off,
                    });
                }
            }
        }
    }

    /// Reads and writes around page `at` of a mapping; checks each page header it reads.
    fn touch(&mut self, map: u32, at: u32, count: u8, seed: u64) {
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
                // SAFETY: as above.
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
    fn fork(&mut self, maps: [u32; 3], seed: u64) {
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
        // SAFETY: the child only runs async-signal-safe code below and leaves with `_exit`.
        let pid = unsafe { sys::fork() };
        self.note(pid < 0);
        if pid == 0 {
            // Default SIGBUS/SIGSEGV: the parent counts how its child died.
            let _ = set_handler(sys::SIGBUS, sys::SIG_DFL, 0);
            let _ = set_handler(sys::SIGSEGV, sys::SIG_DFL, 0);
            let mut code = 0;
            for &(addr, off) in &plan {
                // SAFETY: page headers of the parent's mappings, inherited; no Rust object
                // lives there; a fault kills this child only.
                let v = unsafe { ptr::read_volatile(addr as *const u64) };
                if !header_ok(v, off, fresh) {
                    code = 3;
                }
                // SAFETY: as above.
                unsafe { ptr::write_volatile(addr as *mut u64, MAGIC ^ off) };
            }
            // SAFETY: leaves the child without running anything of the parent's.
            unsafe { sys::_exit(code) };
        }
        if pid < 0 {
            return;
        }
        self.sh.forks.fetch_add(1, Relaxed);
        let mut status = 0;
        // SAFETY: waits for our own child; retried when SIGUSR1 interrupts it.
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

    fn close_slot(&mut self, slot: u8) {
        let old = self.sh.fds[slot as usize % FD_SLOTS].swap(-1, SeqCst);
        if old >= 0 {
            // SAFETY: the swap made us the only owner of `old`; other threads may still use
            // the number (that is the test), but nobody else closes it.
            let rc = unsafe { sys::close(old) };
            self.note(rc < 0);
        }
    }

    /// Opens `/dev/ivshmem<dev>` and swaps it into the slot, closing the file it replaces
    /// (which other threads may be using). On failure the slot keeps its file.
    fn reopen(&mut self, slot: u8, dev: u8, mode: OpenMode) {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::ReadOnly => o.read(true),
            OpenMode::WriteOnly => o.write(true),
            OpenMode::Path => o.read(true).custom_flags(sys::O_PATH),
            OpenMode::NonBlock => o.read(true).write(true).custom_flags(sys::O_NONBLOCK),
        };
        // While a device is unbound its node is missing (and rebinding may renumber the
        // nodes): the next ones are tried, or the slots would often stay empty.
        let n = self.env.sizes.len();
        let tries = if (dev as usize) < n { n } else { 1 };
        for t in 0..tries {
            let path = format!(
                "/dev/ivshmem{}",
                (dev as usize + t) % n.max(dev as usize + 1)
            );
            self.sh.calls.fetch_add(1, Relaxed);
            match o.open(path) {
                Ok(f) => {
                    let old = self.sh.fds[slot as usize % FD_SLOTS].swap(f.into_raw_fd(), SeqCst);
                    if old >= 0 {
                        // SAFETY: the swap made us the only owner of `old` (see `close_slot`).
                        let rc = unsafe { sys::close(old) };
                        self.note(rc < 0);
                    }
                    return;
                }
                Err(e) => self
                    .sh
                    .count_errno(self.kind, e.raw_os_error().unwrap_or(0)),
            }
        }
    }

    /// Replaces arena slot `k` (see [`Worker::slot`]) with a fresh reservation (unmapping
    /// what was there).
    fn clear_slot(&mut self, k: usize) {
        let (a, len) = self.slot(k);
        // SAFETY: the slot is this thread's (see the module documentation).
        let p = unsafe {
            sys::mmap(
                a as *mut c_void,
                len,
                sys::PROT_NONE,
                sys::MAP_FIXED | sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_NORESERVE,
                -1,
                0,
            )
        };
        forget(&mut self.segs, a, len);
        if p == sys::MAP_FAILED {
            self.poisoned[k] = true;
            self.sh.poisoned.fetch_add(1, Relaxed);
        }
    }

    /// After `[addr, addr + len)` was (maybe) unmapped: the arena part of it is reserved again.
    /// Never replaces anything: `MAP_FIXED_NOREPLACE`, page by page where holes and mappings
    /// mix.
    fn refill(&mut self, addr: usize, len: usize) {
        if len == 0 || !Self::in_arena(addr, len) {
            return;
        }
        let reserve = |a: usize, l: usize| {
            // SAFETY: NOREPLACE maps only where nothing is mapped.
            let p = unsafe {
                sys::mmap(
                    a as *mut c_void,
                    l,
                    sys::PROT_NONE,
                    sys::MAP_FIXED_NOREPLACE
                        | sys::MAP_PRIVATE
                        | sys::MAP_ANONYMOUS
                        | sys::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            p != sys::MAP_FAILED
        };
        if reserve(addr, len) {
            return;
        }
        // SAFETY: MS_ASYNC does nothing but fail with ENOMEM if part of the range is unmapped.
        if unsafe { sys::msync(addr as *mut c_void, len, sys::MS_ASYNC) } == 0 {
            return;
        }
        for a in (addr..addr + len).step_by(PAGE) {
            reserve(a, PAGE);
        }
    }

    /// Unmaps (or, in the arena, re-reserves) mapping `i` and forgets it.
    fn release(&mut self, i: usize) {
        let seg = self.segs[i];
        if Self::in_arena(seg.addr, seg.len) {
            // SAFETY: the mapping is ours; replaced by a reservation in one step.
            unsafe {
                sys::mmap(
                    seg.addr as *mut c_void,
                    seg.len,
                    sys::PROT_NONE,
                    sys::MAP_FIXED | sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
        } else {
            // SAFETY: the mapping is ours and holds no Rust object.
            unsafe { sys::munmap(seg.addr as *mut c_void, seg.len) };
        }
        forget(&mut self.segs, seg.addr, seg.len);
    }

    /// Keeps the number of mappings outside the arena below [`MAX_FREE_SEGS`].
    fn make_room(&mut self) {
        let outside: Vec<usize> = (0..self.segs.len())
            .filter(|&i| !Self::in_arena(self.segs[i].addr, self.segs[i].len))
            .collect();
        if outside.len() >= MAX_FREE_SEGS {
            self.release(outside[0]);
        }
    }

    fn trim(&mut self) {
        while self.segs.len() > MAX_SEGS {
            self.release(0);
        }
    }
}

// --- devices and rebinding -----------------------------------------------------------------

/// `/dev/ivshmemN` nodes present, by number.
fn device_nodes() -> Vec<String> {
    let mut nums: Vec<u32> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("ivshmem")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    nums.sort_unstable();
    nums.into_iter()
        .map(|n| format!("/dev/ivshmem{n}"))
        .collect()
}

/// PCI addresses of the 1af4:1110 devices bound to the ivshmem driver.
fn bound_devices() -> Vec<String> {
    let base = "/sys/bus/pci/devices";
    let mut out: Vec<String> = std::fs::read_dir(base)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|bdf| {
                    let read = |f: &str| std::fs::read_to_string(format!("{base}/{bdf}/{f}"));
                    let driver = std::fs::read_link(format!("{base}/{bdf}/driver"));
                    read("vendor").is_ok_and(|v| v.trim() == "0x1af4")
                        && read("device").is_ok_and(|v| v.trim() == "0x1110")
                        && driver.is_ok_and(|d| d.ends_with("ivshmem"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

const DRIVER: &str = "/sys/bus/pci/drivers/ivshmem";

/// Unbinds a random device (sometimes all), waits a little, binds it again; repeats.
fn rebinder(sh: &Shared, bdfs: &[String], unbind: &File, bind: &File, ms: (u64, u64), seed: u64) {
    let mut r = Rng::new(seed);
    while !sh.stop.load(Relaxed) {
        let chosen: Vec<&String> = if r.chance(25) {
            bdfs.iter().collect()
        } else {
            vec![&bdfs[r.below(bdfs.len() as u64) as usize]]
        };
        for bdf in &chosen {
            if unbind.write_at(bdf.as_bytes(), 0).is_err() {
                sh.rebind_errors.fetch_add(1, Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(r.below(ms.1 / 2 + 1)));
        for bdf in &chosen {
            match bind.write_at(bdf.as_bytes(), 0) {
                Ok(_) => {
                    sh.rebinds.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    sh.rebind_errors.fetch_add(1, Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(r.between(ms.0, ms.1)));
    }
}

/// Binds every device in `bdfs` that is not bound; whether all are bound in the end.
fn bind_all(bdfs: &[String], bind: &File) -> bool {
    for _ in 0..50 {
        let unbound: Vec<&String> = bdfs
            .iter()
            .filter(|b| std::fs::read_link(format!("/sys/bus/pci/devices/{b}/driver")).is_err())
            .collect();
        if unbound.is_empty() {
            return true;
        }
        for b in unbound {
            let _ = bind.write_at(b.as_bytes(), 0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

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

// --- main ----------------------------------------------------------------------------------

#[derive(Debug)]
struct Opts {
    seconds: u64,
    seed: u64,
    threads: usize,
    rebind: Option<(u64, u64)>,
    fresh: bool,
    trace: Option<String>,
}

fn parse(mut a: Args) -> Result<Option<Opts>, ToolError> {
    if a.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let seconds = a.parsed(&["--seconds"])?.unwrap_or(10);
    let seed = match a.value(&["--seed"])? {
        Some(s) => s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
            .map_err(|_| ToolError::usage(format!("bad value '{s}' for --seed: not a number")))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let threads = a.parsed(&["--threads"])?.unwrap_or(4);
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(ToolError::usage(format!(
            "--threads must be 1..={MAX_THREADS}"
        )));
    }
    let no_rebind = a.flag(&["--no-rebind"]);
    let ms = match a.value(&["--rebind-ms"])? {
        None => (20, 100),
        Some(v) => {
            let bad =
                || ToolError::usage(format!("bad value '{v}' for --rebind-ms: MS or MIN-MAX"));
            let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
            let lo: u64 = lo.parse().map_err(|_| bad())?;
            let hi: u64 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            (lo, hi)
        }
    };
    let fresh = a.flag(&["--fresh"]);
    let trace = a.value(&["--trace"])?;
    let rest = a.finish()?;
    if let Some(x) = rest.first() {
        return Err(ToolError::usage(format!("unexpected argument '{x}'")));
    }
    Ok(Some(Opts {
        seconds,
        seed,
        threads,
        rebind: (!no_rebind).then_some(ms),
        fresh,
        trace,
    }))
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
    // SAFETY: a fresh mapping chosen by the kernel, unmapped right away.
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
    // SAFETY: the page just mapped.
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
                    // SAFETY: the id of a thread of this scope, not joined yet: still valid.
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
            // SAFETY: every worker is done: the slot's fd is ours alone.
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
        o.seed,
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
            o.seed,
        )))
    }
}

fn main() {
    run_tool("ivshmem-fuzz", USAGE, parse, run);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (the reference implementation's).
        let mut r = Rng::new(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
    }

    fn ops(seed: u64, thread: usize, n: usize) -> Vec<Op> {
        let env = GenEnv {
            sizes: vec![64 << 20, 4 << 20],
        };
        let mut r = Rng::new(thread_seed(seed, thread));
        (0..n).map(|_| gen_op(&mut r, &env)).collect()
    }

    #[test]
    fn same_seed_same_calls_other_seed_or_thread_other_calls() {
        assert_eq!(ops(7, 0, 5000), ops(7, 0, 5000));
        assert_ne!(ops(7, 0, 50), ops(8, 0, 50));
        assert_ne!(ops(7, 0, 50), ops(7, 1, 50));
    }

    #[test]
    fn every_kind_of_call_is_generated() {
        let all = ops(1, 0, 20000);
        for (kind, name) in OP_NAMES.iter().enumerate() {
            assert!(all.iter().any(|o| o.kind() == kind), "{name}");
        }
        let wait = |o: &Op| {
            matches!(
                o,
                Op::Ioctl {
                    cmd: Cmd::Wait { .. },
                    ..
                }
            )
        };
        assert!(all.iter().any(wait));
        let exec = |o: &Op| matches!(o, Op::Mmap { prot, .. } if prot & sys::PROT_EXEC != 0);
        assert!(all.iter().any(exec));
    }

    #[test]
    fn huge_aligned_mappings_are_generated() {
        let env = GenEnv {
            sizes: vec![64 << 20, 4 << 20, 1 << 30],
        };
        let mut r = Rng::new(thread_seed(9, 0));
        let maps: Vec<(u64, i64, Fixed)> = (0..50_000)
            .filter_map(|_| match gen_op(&mut r, &env) {
                Op::Mmap {
                    len, off, fixed, ..
                } => Some((len, off, fixed)),
                _ => None,
            })
            .collect();
        let gib = HUGE as u64;
        let m2 = HUGE_2M as u64;
        let count = |f: &dyn Fn(&(u64, i64, Fixed)) -> bool| maps.iter().filter(|m| f(m)).count();
        // 1 GiB at a 1 GiB-aligned offset, in the huge slot: 512 2 MiB entries.
        let pud = count(&|&(len, off, fixed)| {
            fixed == Fixed::Huge && len == gib && off >= 0 && (off as u64).is_multiple_of(gib)
        });
        // Whole 2 MiB entries at 2 MiB-aligned offsets, at a congruent address.
        let pmd = count(&|&(len, off, fixed)| {
            matches!(fixed, Fixed::Congruent(_))
                && len >= m2
                && len % m2 == 0
                && off > 0
                && (off as u64).is_multiple_of(m2)
        });
        // A page off, at a congruent address: huge entries inside, 4 KiB ones at the ends.
        let ragged = count(&|&(len, off, fixed)| {
            matches!(fixed, Fixed::Congruent(_) | Fixed::Huge)
                && len > m2
                && (len % m2 == PAGE as u64 || off as u64 % m2 == PAGE as u64)
        });
        assert!(
            pud > 100 && pmd > 100 && ragged > 100,
            "{pud} {pmd} {ragged}"
        );
    }

    #[test]
    fn huge_capable_needs_congruence_and_a_whole_entry() {
        let (m2, g) = (HUGE_2M, HUGE);
        assert!(huge_capable(64 * g, 0, g, g));
        assert!(huge_capable(64 * g + 4096, 4096, g, m2));
        assert!(
            !huge_capable(64 * g + 4096, 4096, g, g),
            "no whole 1 GiB inside"
        );
        assert!(!huge_capable(64 * g + 8192, 4096, g, m2), "not congruent");
        assert!(huge_capable(
            64 * g + m2 - 4096,
            (3 * m2 - 4096) as u64,
            m2 + 4096,
            m2
        ));
        assert!(!huge_capable(
            64 * g + m2 - 4096,
            (3 * m2 - 4096) as u64,
            m2,
            m2
        ));
    }

    #[test]
    fn congruent_slots_fit_in_the_arena() {
        const { assert!(ARENA_BASE.is_multiple_of(HUGE) && ARENA_PER_THREAD.is_multiple_of(HUGE)) };
        const { assert!(SLOTS * SLOT_LEN <= HUGE && SLOT_LEN.is_multiple_of(HUGE_2M)) };
    }

    #[test]
    fn waits_are_short_and_vfs_ioctls_left_out() {
        let mut r = Rng::new(3);
        for _ in 0..100_000 {
            match gen_cmd(&mut r) {
                Cmd::Wait { timeout_ms, .. } => assert!((0..=20).contains(&timeout_ms)),
                Cmd::Foreign(c) => {
                    assert!(
                        !VFS_IOCTL_TYPES.contains(&((c as u32 >> 8) & 0xff)),
                        "{c:#x}"
                    )
                }
                _ => {}
            }
        }
        for _ in 0..10_000 {
            let a = gen_advice(&mut r);
            assert!(a != sys::MADV_HWPOISON && a != sys::MADV_SOFT_OFFLINE);
        }
    }

    #[test]
    fn forget_splits_mappings_and_keeps_offsets() {
        let p = PAGE;
        let mut segs = vec![
            Seg {
                addr: 10 * p,
                len: 8 * p,
                off: 100 * p as u64,
            },
            Seg {
                addr: 40 * p,
                len: 2 * p,
                off: 0,
            },
        ];
        // A hole in the middle of the first, nothing of the second.
        forget(&mut segs, 12 * p, 3 * p);
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 10 * p,
                    len: 2 * p,
                    off: 100 * p as u64
                },
                Seg {
                    addr: 15 * p,
                    len: 3 * p,
                    off: 105 * p as u64
                },
                Seg {
                    addr: 40 * p,
                    len: 2 * p,
                    off: 0
                },
            ]
        );
        // A range covering the tail of one and all of another.
        forget(&mut segs, 16 * p, 30 * p);
        assert_eq!(
            segs,
            vec![
                Seg {
                    addr: 10 * p,
                    len: 2 * p,
                    off: 100 * p as u64
                },
                Seg {
                    addr: 15 * p,
                    len: p,
                    off: 105 * p as u64
                },
            ]
        );
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

    #[test]
    fn options() {
        let o = parse(Args::new([
            "--seconds",
            "3",
            "--seed",
            "0x10",
            "--rebind-ms",
            "5-9",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.seconds, o.seed, o.rebind, o.threads),
            (3, 16, Some((5, 9)), 4)
        );
        let o = parse(Args::new(["--no-rebind", "--seed", "5"]))
            .unwrap()
            .unwrap();
        assert_eq!((o.seed, o.rebind), (5, None));
        assert!(parse(Args::new(["--rebind-ms", "9-5"])).is_err());
        assert!(parse(Args::new(["--threads", "0"])).is_err());
        assert!(parse(Args::new(["--bogus"]))
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
    }
}
