//! Waking over ivshmem-doorbell: a blocked side sleeps in `IVSHMEM_WAIT` on one vector of its
//! own device, and its peer rings that vector of this guest's peer id (`IVSHMEM_RING`).
//!
//! The peer ids are exchanged through the channel: each end publishes its own id when it
//! attaches ([`Waker::address`]) and the ringing end reads the peer's before every ring, so a
//! new session with a peer in another guest rings the right one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
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
    /// The device's eventfd for this vector, from the first [`Waker::as_raw_fd`]: the driver
    /// takes one per vector and device, so every end of this process on the device shares it
    /// ([`DeviceEvents`]).
    events: OnceLock<Option<Arc<DeviceEvents>>>,
}

/// The eventfd of one vector of one device, shared by every end of this process on it.
///
/// It stays registered (`IVSHMEM_SET_EVENTFD`) while any end holds it: the registration
/// belongs to `_claim`, a file of the device opened for it alone, so that no end's own file
/// takes it away when that end closes.
#[derive(Debug)]
struct DeviceEvents {
    fd: File,
    _claim: Device,
}

/// The eventfds of this process by device number and vector.
///
/// # Locking
///
/// Held to look one up or register one, and by [`DoorbellWaker::clear`] while it decides
/// whether it may drain (no other end holds the eventfd), so that an end that starts sharing
/// it cannot lose a ring to that drain.
static EVENTS: Mutex<Option<Registry>> = Mutex::new(None);

/// Device number and vector to the shared eventfd.
type Registry = HashMap<(u64, u32), Weak<DeviceEvents>>;

impl DeviceEvents {
    /// The shared eventfd of `vector` of the device at `path`, registered on first use.
    fn get(path: &str, vector: u32) -> io::Result<Arc<Self>> {
        let rdev = std::fs::metadata(path)?.rdev();
        let mut reg = EVENTS.lock().unwrap_or_else(PoisonError::into_inner);
        let map = reg.get_or_insert_with(HashMap::new);
        if let Some(e) = map.get(&(rdev, vector)).and_then(Weak::upgrade) {
            return Ok(e);
        }
        let claim = Device::open(path).map_err(io::Error::other)?;
        let fd = FdWaker::eventfd()?;
        claim
            .set_eventfd(vector, Some(fd.as_raw_fd()))
            .map_err(io::Error::other)?;
        let e = Arc::new(Self {
            fd: File::from(fd),
            _claim: claim,
        });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert((rdev, vector), Arc::downgrade(&e));
        Ok(e)
    }
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
            events: OnceLock::new(),
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

    fn another(&self) -> io::Result<Option<Arc<dyn Waker>>> {
        let dev = Device::open(self.dev.path()).map_err(io::Error::other)?;
        Ok(Some(Arc::new(Self::new(dev, self.vector)?)))
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        self.events
            .get_or_init(|| DeviceEvents::get(self.dev.path(), self.vector).ok())
            .as_ref()
            .map(|e| e.fd.as_raw_fd())
    }

    /// Drains the eventfd only while this end alone holds it; a shared one is drained by the
    /// poller ([`Waker::drain`]) before it retries every end on it.
    fn clear(&self) {
        if let Some(Some(e)) = self.events.get() {
            let _reg = EVENTS.lock().unwrap_or_else(PoisonError::into_inner);
            if Arc::strong_count(e) == 1 {
                super::wait::drain(&e.fd);
            }
        }
    }

    fn drain(&self) {
        if let Some(Some(e)) = self.events.get() {
            super::wait::drain(&e.fd);
        }
    }
}
