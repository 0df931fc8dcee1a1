//! A worker's arena (see the crate documentation): its `MAP_FIXED` slots, keeping them reserved
//! with `PROT_NONE` as mappings come and go, and keeping the number of mappings bounded.

use std::ffi::c_void;
use std::sync::atomic::Ordering::Relaxed;

use crate::sys;

use super::segs::forget;
use super::Worker;
use crate::{
    ARENA_BASE, ARENA_PER_THREAD, HUGE, HUGE_SLOT_LEN, MAX_FREE_SEGS, MAX_SEGS, MAX_THREADS, PAGE,
    SLOTS, SLOT_LEN,
};

impl Worker<'_> {
    pub(super) fn slot_addr(&self, k: u8) -> usize {
        self.arena + (k as usize % SLOTS) * SLOT_LEN
    }

    /// Address and length of slot `k`: `0..SLOTS` the small ones, `SLOTS` the huge one.
    pub(super) fn slot(&self, k: usize) -> (usize, usize) {
        if k == SLOTS {
            (self.arena + HUGE, HUGE_SLOT_LEN)
        } else {
            (self.arena + (k % SLOTS) * SLOT_LEN, SLOT_LEN)
        }
    }

    pub(super) fn in_arena(addr: usize, len: usize) -> bool {
        addr < ARENA_BASE + MAX_THREADS * ARENA_PER_THREAD && addr + len > ARENA_BASE
    }

    /// Replaces arena slot `k` (see [`Worker::slot`]) with a fresh reservation (unmapping
    /// what was there).
    pub(super) fn clear_slot(&mut self, k: usize) {
        let (a, len) = self.slot(k);
        // SAFETY: The slot is this thread's (see the module documentation).
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
    pub(super) fn refill(&mut self, addr: usize, len: usize) {
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
    pub(super) fn release(&mut self, i: usize) {
        let seg = self.segs[i];
        if Self::in_arena(seg.addr, seg.len) {
            // SAFETY: The mapping is ours; replaced by a reservation in one step.
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
            // SAFETY: The mapping is ours and holds no Rust object.
            unsafe { sys::munmap(seg.addr as *mut c_void, seg.len) };
        }
        forget(&mut self.segs, seg.addr, seg.len);
    }

    /// Keeps the number of mappings outside the arena below [`MAX_FREE_SEGS`].
    pub(super) fn make_room(&mut self) {
        let outside: Vec<usize> = (0..self.segs.len())
            .filter(|&i| !Self::in_arena(self.segs[i].addr, self.segs[i].len))
            .collect();
        if outside.len() >= MAX_FREE_SEGS {
            self.release(outside[0]);
        }
    }

    pub(super) fn trim(&mut self) {
        while self.segs.len() > MAX_SEGS {
            self.release(0);
        }
    }
}
