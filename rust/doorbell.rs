// SPDX-License-Identifier: GPL-2.0

//! Doorbell mode (`ivshmem-doorbell`): ringing peers through the Doorbell register, and
//! counting, waiting for and forwarding (eventfd) the MSI-X interrupts peers send us.

use kernel::{
    io::Io,
    new_condvar,
    num::Bounded,
    prelude::*,
    sync::{
        atomic::{
            ordering::Relaxed,
            Atomic, //
        },
        CondVar,
        CondVarTimeoutResult, //
    },
    time::{
        msecs_to_jiffies,
        Jiffies, //
    },
};

use crate::{
    compat::{
        eopnotsupp,
        new_irq_lock,
        DevresBar,
        IrqLock, //
    },
    eventfd::EventFd,
    regs,
    uapi, //
};

const MAX: usize = uapi::IVSHMEM_MAX_VECTORS as usize;

/// BAR0, usable from open files: revoked when the device is unbound.
pub(crate) type Regs = DevresBar<{ regs::SIZE }>;

struct Events {
    /// Cleared by `Shared::revoke` (the one place that decides the device is gone), so that
    /// waiters, which sleep under this lock, return `ENODEV`.
    alive: bool,
    /// Interrupts received per vector since probe.
    counts: [u64; MAX],
    /// Per vector: the eventfd to signal, and the file (id) that set it.
    eventfds: [Option<(usize, EventFd)>; MAX],
}

/// Doorbell state of one device. On `ivshmem-plain` (or without MSI-X) `vectors` is 0 and every
/// doorbell operation fails with `EOPNOTSUPP`.
#[pin_data]
pub(crate) struct Doorbell {
    regs: Regs,
    vectors: u32,
    #[pin]
    events: IrqLock<Events>,
    #[pin]
    waiters: CondVar,
}

/// What each open file remembers: the count of each vector it has seen.
pub(crate) struct Seen([Atomic<u64>; MAX]);

impl Doorbell {
    pub(crate) fn new(regs: Regs, vectors: u32) -> impl PinInit<Self> {
        pin_init!(Self {
            regs,
            vectors,
            events <- new_irq_lock!(Events {
                alive: true,
                counts: [0; MAX],
                eventfds: [const { None }; MAX],
            }, "ivshmem::Doorbell::events"),
            waiters <- new_condvar!("ivshmem::Doorbell::waiters"),
        })
    }

    /// Number of MSI-X vectors in use.
    pub(crate) fn vectors(&self) -> u32 {
        self.vectors
    }

    fn check_vector(&self, vector: u32) -> Result<usize> {
        if self.vectors == 0 {
            return Err(eopnotsupp());
        }
        if vector >= self.vectors {
            return Err(EINVAL);
        }
        Ok(vector as usize)
    }

    /// The counts as of now: a new file sees only later interrupts.
    pub(crate) fn seen_now(&self) -> Seen {
        let events = self.events.lock();
        Seen(core::array::from_fn(|v| Atomic::new(events.counts[v])))
    }

    /// Interrupt on `vector`: count it, signal its eventfd, wake the waiters.
    pub(crate) fn interrupt(&self, vector: usize) {
        let mut events = self.events.lock();
        events.counts[vector] += 1;
        if let Some((_, efd)) = &events.eventfds[vector] {
            efd.signal();
        }
        drop(events);
        self.waiters.notify_all();
    }

    /// Writes the Doorbell register: interrupt `vector` of peer `peer`.
    pub(crate) fn ring(&self, peer: u32, vector: u32) -> Result {
        self.check_vector(vector)?;
        // Out-of-range values cannot be encoded into the register.
        let peer = Bounded::<u32, 16>::try_new(peer).ok_or(EINVAL)?;
        let vector = Bounded::<u32, 16>::try_new(vector).ok_or(EINVAL)?;
        let regs = self.regs.try_access().ok_or(ENODEV)?;
        regs.write_reg(regs::DOORBELL::zeroed().with_peer(peer).with_vector(vector));
        Ok(())
    }

    /// Waits up to `timeout_ms` (negative: forever, 0: not at all) for an interrupt on `vector`
    /// that `seen` has not seen; returns how many arrived.
    pub(crate) fn wait(&self, seen: &Seen, vector: u32, timeout_ms: i32) -> Result<u64> {
        let v = self.check_vector(vector)?;
        let mut left: Jiffies = if timeout_ms < 0 {
            Jiffies::MAX
        } else {
            msecs_to_jiffies(timeout_ms as u32)
        };
        let mut events = self.events.lock();
        loop {
            if !events.alive {
                return Err(ENODEV);
            }
            let now = events.counts[v];
            let before = seen.0[v].load(Relaxed);
            if now != before {
                // Only updated under `events`, so no interrupt is counted twice or lost.
                seen.0[v].store(now, Relaxed);
                return Ok(now - before);
            }
            if timeout_ms == 0 {
                return Err(EAGAIN);
            }
            match self.waiters.wait_interruptible_timeout(&mut events, left) {
                CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
                CondVarTimeoutResult::Woken { jiffies } => {
                    if timeout_ms > 0 {
                        left = jiffies;
                    }
                }
            }
        }
    }

    /// Sets (`fd` >= 0) or removes (`fd` == -1) the eventfd of `vector` for file `owner`.
    pub(crate) fn set_eventfd(&self, owner: usize, vector: u32, fd: i32) -> Result {
        let v = self.check_vector(vector)?;
        let new = match fd {
            -1 => None,
            fd if fd >= 0 => Some((owner, EventFd::from_fd(fd)?)),
            _ => return Err(EBADF),
        };
        let mut events = self.events.lock();
        if !events.alive {
            // `revoke` already dropped the eventfds: do not add one it would miss.
            return Err(ENODEV);
        }
        let old = match &events.eventfds[v] {
            Some((o, _)) if *o != owner => return Err(EBUSY),
            _ => core::mem::replace(&mut events.eventfds[v], new),
        };
        drop(events);
        // The old reference is put outside the spinlock.
        drop(old);
        Ok(())
    }

    /// Removes every eventfd that file `owner` set; called when it is released.
    pub(crate) fn release_file(&self, owner: usize) {
        self.drop_eventfds(|o| o == owner);
    }

    /// Takes the eventfds whose owner matches out of the table, one at a time, and puts their
    /// references outside the spinlock.
    fn drop_eventfds(&self, matches: impl Fn(usize) -> bool) {
        for v in 0..MAX {
            let mut events = self.events.lock();
            let old = match &events.eventfds[v] {
                Some((o, _)) if matches(*o) => events.eventfds[v].take(),
                _ => None,
            };
            drop(events);
            drop(old);
        }
    }

    /// Device removal: wake every waiter with `ENODEV` and drop the eventfds.
    pub(crate) fn revoke(&self) {
        self.events.lock().alive = false;
        self.waiters.notify_all();
        self.drop_eventfds(|_| true);
    }
}
