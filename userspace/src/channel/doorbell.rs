//! Waking over ivshmem-doorbell: a blocked side sleeps in `IVSHMEM_WAIT` on one vector of its
//! own device, and its peer rings that vector of this guest's peer id (`IVSHMEM_RING`).
//!
//! The peer ids are exchanged through the channel: each end publishes its own id when it
//! attaches ([`Waker::address`]) and the ringing end reads the peer's before every ring, so a
//! new session with a peer in another guest rings the right one.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use super::wait::{FdWaker, Waker};
use crate::sys::errno::{EINTR, ETIMEDOUT};
use crate::uapi::{IVSHMEM_FLAG_DOORBELL, IVSHMEM_MAX_PEER};
use crate::Device;

/// Sleeps in `IVSHMEM_WAIT`, rings the peer's doorbell.
///
/// Interrupts that arrive between two waits are counted by the driver per open file, so a ring
/// that comes before this side sleeps ends the next wait at once: no wake-up is lost. Several
/// channels may share a vector; a wake-up meant for another only costs a look at the ring.
#[derive(Debug)]
pub struct DoorbellWaker {
    dev: Device,
    vector: u32,
    id: u32,
    /// The eventfd of `IVSHMEM_SET_EVENTFD`, set up on the first [`Waker::as_raw_fd`]: the
    /// driver takes one per vector and device, so only ends that poll claim one.
    eventfd: OnceLock<Option<File>>,
}

impl DoorbellWaker {
    /// Waits on `vector` of `dev` (its own open file: the driver counts interrupts per file).
    /// Fails with `Unsupported` on a device without a doorbell.
    pub fn new(dev: Device, vector: u32) -> io::Result<Self> {
        let info = dev.info().map_err(io::Error::other)?;
        let unsupported = |why: String| io::Error::new(io::ErrorKind::Unsupported, why);
        if info.flags & IVSHMEM_FLAG_DOORBELL == 0 {
            return Err(unsupported(format!(
                "{}: no doorbell (ivshmem-plain, or no interrupt vectors)",
                dev.path()
            )));
        }
        if info.peer_id > IVSHMEM_MAX_PEER {
            return Err(unsupported(format!("{}: no peer id", dev.path())));
        }
        if vector >= info.vectors {
            return Err(unsupported(format!(
                "{}: vector {vector} of {}",
                dev.path(),
                info.vectors
            )));
        }
        Ok(Self {
            id: info.peer_id,
            dev,
            vector,
            eventfd: OnceLock::new(),
        })
    }
}

impl Waker for DoorbellWaker {
    fn sleeps(&self) -> bool {
        true
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        // The driver's timeout is in milliseconds and 0 would not block at all.
        let t = timeout.max(Duration::from_millis(1));
        match self.dev.wait(self.vector, Some(t)) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(ETIMEDOUT | EINTR)) => Ok(()),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn notify(&self, peer: Option<u32>) -> io::Result<()> {
        match peer {
            Some(p) => self.dev.ring(p, self.vector).map_err(io::Error::other),
            None => Ok(()),
        }
    }

    fn address(&self) -> Option<u32> {
        Some(self.id)
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        self.eventfd
            .get_or_init(|| {
                let fd = FdWaker::eventfd().ok()?;
                self.dev
                    .set_eventfd(self.vector, Some(fd.as_raw_fd()))
                    .ok()?;
                Some(File::from(fd))
            })
            .as_ref()
            .map(|f| f.as_raw_fd())
    }

    fn clear(&self) {
        if let Some(Some(f)) = self.eventfd.get() {
            super::wait::drain(f);
        }
    }
}
