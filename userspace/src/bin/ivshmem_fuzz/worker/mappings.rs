//! The ops that make, move and cut device mappings: mmap (placed by the kernel or in an arena
//! slot, maybe for huge entries), munmap and mremap, and how a range inside a mapping is picked
//! for them and for mprotect and madvise. Checks that mmap only succeeds where it may.

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering::Relaxed;

use crate::sys;

use super::segs::{forget, huge_capable, Seg};
use super::Worker;
use crate::ops::{Fixed, Remap};
use crate::{HUGE, HUGE_2M, PAGE, SLOTS, SLOT_LEN};

fn round_up(n: usize) -> Option<usize> {
    n.checked_add(PAGE - 1).map(|n| n & !(PAGE - 1))
}

impl Worker<'_> {
    pub(super) fn mmap(
        &mut self,
        slot: u8,
        len: u64,
        off: i64,
        prot: i32,
        flags: i32,
        fixed: Fixed,
    ) {
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
        // SAFETY: Either the kernel chooses the place, or it is an arena slot of this thread
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
    pub(super) fn pick_range(
        &self,
        map: u32,
        at: u32,
        pages: u32,
    ) -> Option<(usize, usize, usize)> {
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

    pub(super) fn munmap(&mut self, map: u32, at: u32, pages: u32, weird: u8) {
        let Some((_, a, l)) = self.pick_range(map, at, pages) else {
            return;
        };
        let (addr, len) = match weird {
            0 => (a + 1, l),
            1 => (a, 0),
            _ => (a, l),
        };
        // SAFETY: Inside a mapping of ours that holds no Rust object; it is forgotten below.
        let rc = unsafe { sys::munmap(addr as *mut c_void, len) };
        self.note(rc < 0);
        if rc == 0 {
            let start = addr & !(PAGE - 1);
            let end = round_up(addr + len).unwrap_or(start);
            forget(&mut self.segs, start, end - start);
            self.refill(start, end - start);
        }
    }

    pub(super) fn mremap(&mut self, map: u32, at: u32, pages: u32, how: Remap) {
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
            // SAFETY: The source is a mapping of ours (no Rust object), the destination is
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
}
