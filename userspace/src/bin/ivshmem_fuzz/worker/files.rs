//! The shared table of device files: closing a slot's file and opening another into it, while
//! other threads may be using the old number (the "close while in use" case).

use std::fs::OpenOptions;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sys;

use super::Worker;
use crate::ops::OpenMode;
use crate::FD_SLOTS;

impl Worker<'_> {
    pub(super) fn close_slot(&mut self, slot: u8) {
        let old = self.sh.fds[slot as usize % FD_SLOTS].swap(-1, SeqCst);
        if old >= 0 {
            // SAFETY: The swap made us the only owner of `old`; other threads may still use
            // the number (that is the test), but nobody else closes it.
            let rc = unsafe { sys::close(old) };
            self.note(rc < 0);
        }
    }

    /// Opens `/dev/ivshmem<dev>` and swaps it into the slot, closing the file it replaces
    /// (which other threads may be using). On failure the slot keeps its file.
    pub(super) fn reopen(&mut self, slot: u8, dev: u8, mode: OpenMode) {
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
                        // SAFETY: The swap made us the only owner of `old` (see `close_slot`).
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
}
