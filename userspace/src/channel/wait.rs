//! How a blocked side waits and how it wakes its peer: spinning with back-off (ivshmem-plain),
//! sleeping on a file descriptor that the peer makes readable (eventfds between processes), or
//! sleeping in `IVSHMEM_WAIT` until the peer rings this guest's doorbell (ivshmem-doorbell).

use std::ffi::c_long;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::sys;

/// How one side of a channel waits for its peer, and wakes it.
///
/// The channel spins first (its spin budget), then calls [`wait`](Self::wait) in slices no
/// longer than a quarter of the liveness timeout, re-checking the ring, the deadline and the
/// peer's heartbeat in between. A waker that [`sleeps`](Self::sleeps) makes the channel use
/// event suppression: before `wait` the side stores the index it waits for in shared memory,
/// and the peer calls [`notify`](Self::notify) only when its own index moves past that one.
pub trait Waker: Send + Sync {
    /// Whether `wait` blocks until `notify` (true) or just passes time (false: no flags, no
    /// notifications).
    fn sleeps(&self) -> bool;

    /// Waits for a notification from the peer for at most `timeout`. Returning early is fine.
    fn wait(&self, timeout: Duration) -> io::Result<()>;

    /// Wakes the peer (or does nothing, for a waker that does not sleep). `peer` is the
    /// [`address`](Self::address) the peer's end published in the channel, if it published
    /// one; a waker that needs an address and gets none does nothing.
    fn notify(&self, peer: Option<u32>) -> io::Result<()>;

    /// Where the peer must ring to wake this side (a doorbell's peer id), published in the
    /// channel when this side attaches; `None` if `notify` needs no address.
    fn address(&self) -> Option<u32> {
        None
    }

    /// A descriptor that becomes readable when the peer notifies, for poll/epoll users.
    fn as_raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// Consumes a notification that is pending on [`as_raw_fd`](Self::as_raw_fd) without
    /// waiting: done before the channel arms itself for a poller, so the descriptor becomes
    /// readable again only for a later notification. A waker whose descriptor other ends share
    /// leaves it alone (a drain here could take a ring meant for one of them).
    fn clear(&self) {}

    /// Consumes whatever is pending on the descriptor: the poller's step after the descriptor
    /// became readable and before it retries every end that shares it.
    fn drain(&self) {
        self.clear()
    }

    /// A waker of the same kind for another end of this process ([`super::Listener`] gives
    /// one to each connection it accepts), when ends must not share this one: a doorbell
    /// waker counts interrupts per open file, so two ends sleeping on one file would take each
    /// other's wake-ups. `None` (the default): this one can be shared.
    fn another(&self) -> io::Result<Option<std::sync::Arc<dyn Waker>>> {
        Ok(None)
    }
}

/// Waiting without a doorbell (ivshmem-plain): the channel spins its budget, yields the CPU
/// for a while, then sleeps here in slices it doubles from 1 us, each at most `max`. No
/// notifications.
#[derive(Debug, Clone)]
pub struct SpinWaker {
    /// Longest sleep between two looks at the ring.
    pub max: Duration,
}

impl Default for SpinWaker {
    fn default() -> Self {
        Self {
            max: Duration::from_micros(200),
        }
    }
}

impl Waker for SpinWaker {
    fn sleeps(&self) -> bool {
        false
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        std::thread::sleep(timeout.min(self.max));
        Ok(())
    }

    fn notify(&self, _peer: Option<u32>) -> io::Result<()> {
        Ok(())
    }
}

/// Sleeping on a file descriptor that becomes readable when the peer rings.
///
/// On the host: two eventfds, one per side ([`FdWaker::eventfds`]). In a guest with
/// ivshmem-doorbell: the eventfd given to `IVSHMEM_SET_EVENTFD` and a `ring` that rings the
/// peer's doorbell ([`FdWaker::new`]).
pub struct FdWaker {
    fd: File,
    ring: Box<dyn Fn() -> io::Result<()> + Send + Sync>,
}

impl std::fmt::Debug for FdWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdWaker").field("fd", &self.fd).finish()
    }
}

impl FdWaker {
    /// Waits on `fd` (it must be non-blocking: it is drained with reads until `EAGAIN`) and
    /// wakes the peer with `ring`.
    pub fn new(fd: OwnedFd, ring: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Self {
        Self {
            fd: File::from(fd),
            ring: Box::new(ring),
        }
    }

    /// Waits on the eventfd `mine` and wakes the peer by writing to the eventfd `peers`.
    pub fn eventfds(mine: OwnedFd, peers: OwnedFd) -> Self {
        let peers = File::from(peers);
        Self::new(mine, move || match (&peers).write(&1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // The counter is saturated: the peer has a wake-up pending anyway.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        })
    }

    /// A new non-blocking, close-on-exec eventfd.
    pub fn eventfd() -> io::Result<OwnedFd> {
        // SAFETY: Plain syscall without pointers.
        let fd = unsafe { sys::eventfd(0, sys::EFD_NONBLOCK | sys::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Two wakers that wake each other, for two ends in one process.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = (Self::eventfd()?, Self::eventfd()?);
        Ok((
            Self::eventfds(a.try_clone()?, b.try_clone()?),
            Self::eventfds(b, a),
        ))
    }
}

impl Waker for FdWaker {
    fn sleeps(&self) -> bool {
        true
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut pfd = sys::PollFd {
            fd: self.fd.as_raw_fd(),
            events: sys::POLLIN,
            revents: 0,
        };
        let ts = sys::Timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as c_long,
            tv_nsec: timeout.subsec_nanos() as c_long,
        };
        // SAFETY: `pfd` and `ts` are valid for the call; one descriptor; no signal mask.
        let r = unsafe { sys::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        let mut buf = [0u8; 8];
        match (&self.fd).read(&mut buf) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn notify(&self, _peer: Option<u32>) -> io::Result<()> {
        (self.ring)()
    }

    fn as_raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn clear(&self) {
        drain(&self.fd);
    }
}

/// Reads a non-blocking eventfd until it is empty (one read resets its counter).
pub(super) fn drain(fd: &File) {
    let mut buf = [0u8; 8];
    let _ = (&*fd).read(&mut buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn eventfd_pair_wakes_the_other_side_only() {
        let (a, b) = FdWaker::pair().unwrap();
        let t = Instant::now();
        a.wait(Duration::from_millis(20)).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(20),
            "no notification yet"
        );
        a.notify(None).unwrap();
        let t = Instant::now();
        b.wait(Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4), "b was notified");
        // The notification was consumed: the next wait times out again.
        let t = Instant::now();
        b.wait(Duration::from_millis(20)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert!(a.as_raw_fd().is_some());
    }
}
