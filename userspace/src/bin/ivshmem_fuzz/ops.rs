//! What a worker can do: [`Op`], one system call (or a few) with its arguments, and the types
//! of those arguments. Only data: `generate` makes ops from the seed, `worker` executes them, and
//! `--trace` writes them out with `Debug`.

/// A user pointer handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Ptr {
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

/// The fd argument of `SET_EVENTFD`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum EfdArg {
    /// One of the thread's eventfds (maybe closed since), or -1 if it has none.
    Mine(u8),
    Remove,
    Number(i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Cmd {
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

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Fixed {
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
pub(crate) enum OpenMode {
    ReadWrite,
    ReadOnly,
    WriteOnly,
    Path,
    NonBlock,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Remap {
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
pub(crate) enum Op {
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
pub(crate) const OP_NAMES: [&str; 14] = [
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
    pub(crate) fn kind(&self) -> usize {
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
