//! The ioctl op, and the user pointers a worker hands the kernel ([`Ptr`], resolved to an
//! address that is safe to give it; `read` and `write` use them too). Also checks what the
//! driver reports: sizes it cannot have, a WAIT that hangs.

use std::ffi::c_ulong;
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ivshmem::uapi;

use crate::sys;

use super::Worker;
use crate::ops::{Cmd, EfdArg, Ptr};
use crate::{PAGE, SCRATCH_LEN, WAIT_LIMIT};

/// Where a [`Ptr`] points, and how many bytes of the argument we may write there first.
pub(super) struct Resolved {
    pub(super) addr: usize,
    fill: usize,
}

impl Worker<'_> {
    /// Turns a [`Ptr`] into an address for an argument of `size` bytes. `may_map`: the
    /// argument may point into a device mapping (the driver reads it, or writes at most 64
    /// bytes), else such pointers become the scratch area.
    pub(super) fn resolve(&self, ptr: Ptr, size: usize, may_map: bool) -> Resolved {
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

    pub(super) fn ioctl(&mut self, slot: u8, cmd: Cmd, ptr: Ptr) {
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
        // SAFETY: The kernel writes at most 64 bytes at `r.addr`, which is the scratch area,
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
                // SAFETY: Inside the scratch area (`fill` is only non-zero there).
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
}
