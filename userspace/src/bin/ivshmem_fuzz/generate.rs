//! The call generator: [`gen_op`] draws a worker's next [`Op`] from its [`Rng`] and what it knew
//! at the start ([`GenEnv`]), never from what a call returned, so one seed gives the same calls in
//! the same order per thread. Also the dice themselves, used by the workers and the rebinder too.

use ivshmem::pattern::SplitMix64;
use ivshmem::uapi;

use crate::sys;

use crate::ops::{Cmd, EfdArg, Fixed, Op, OpenMode, Ptr, Remap};
use crate::{FD_SLOTS, HUGE, HUGE_2M, PAGE, SCRATCH_LEN, SLOTS};

/// The fuzzer's dice: [`SplitMix64`], fully determined by its seed.
#[derive(Clone, Debug)]
pub(crate) struct Rng(SplitMix64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0.next()
    }

    /// Uniform enough in `0..n` (0 for n = 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// `lo..=hi`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
}

/// The seed of worker `thread`'s generator.
pub(crate) fn thread_seed(seed: u64, thread: usize) -> u64 {
    Rng::new(seed ^ (thread as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)).next()
}

/// What the generator may know: the region sizes of the devices present at the start.
#[derive(Clone, Debug)]
pub(crate) struct GenEnv {
    pub(crate) sizes: Vec<u64>,
}

impl GenEnv {
    fn size(&self, r: &mut Rng) -> u64 {
        let i = r.below(self.sizes.len() as u64) as usize;
        self.sizes.get(i).copied().unwrap_or(1 << 20)
    }
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
pub(crate) fn gen_op(r: &mut Rng, env: &GenEnv) -> Op {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::OP_NAMES;

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
}
