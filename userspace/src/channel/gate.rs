//! One sleeper per end: the two halves of a split channel share one waker, whose every
//! notification wakes whoever sleeps on it. If each half slept on the waker itself, the
//! reading half could consume the ring meant for the writing half, which would then sleep a
//! whole slice. So at most one half sleeps on the waker; the other waits on this gate, and
//! every return of the sleeper (a ring or the end of its slice) opens the gate for everyone
//! to look at the ring again.

use std::io;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::wait::Waker;

/// The gate of one end (shared by its halves).
///
/// # Locking
///
/// `state` is held only to read or change its two fields, never across the waker's wait, so
/// the sleeper never blocks a half that wants to look at the gate.
#[derive(Debug, Default)]
pub(super) struct SleepGate {
    state: Mutex<GateState>,
    opened: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// A half sleeps on the waker.
    sleeper: bool,
    /// How often a sleeper returned from the waker: a half that saw another value before it
    /// announced what it waits for must look at the ring again instead of sleeping.
    generation: u64,
}

impl SleepGate {
    /// The generation, taken before announcing what this half waits for.
    pub(super) fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Waits at most `slice` for a notification: on the waker if no other half sleeps there,
    /// else on the gate until the sleeper returns. Returns at once if a sleeper returned since
    /// `seen` (the caller's [`generation`](Self::generation)), whose notification may have been
    /// this half's.
    pub(super) fn wait(&self, waker: &dyn Waker, seen: u64, slice: Duration) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.generation != seen {
            return Ok(());
        }
        if st.sleeper {
            // The sleeper's return (or its leaving) opens the gate; then look again.
            let _ = self
                .opened
                .wait_timeout_while(st, slice, |s| s.generation == seen && s.sleeper)
                .unwrap_or_else(PoisonError::into_inner);
            return Ok(());
        }
        st.sleeper = true;
        drop(st);
        let r = waker.wait(slice);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.sleeper = false;
        st.generation = st.generation.wrapping_add(1);
        drop(st);
        self.opened.notify_all();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::FdWaker;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_consumed_by_the_sleeper_wakes_the_other_half() {
        let (mine, peer) = FdWaker::pair().unwrap();
        let (mine, gate) = (Arc::new(mine), Arc::new(SleepGate::default()));
        let long = Duration::from_secs(20);
        // Half one sleeps on the waker.
        let sleeper = {
            let (mine, gate) = (mine.clone(), gate.clone());
            std::thread::spawn(move || {
                let g = gate.generation();
                gate.wait(&*mine, g, long).unwrap();
            })
        };
        while !gate.state.lock().unwrap().sleeper {
            std::thread::yield_now();
        }
        // Half two must wait on the gate, and come back when the sleeper got the ring.
        let g = gate.generation();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                gate.wait(&*mine, g, long).unwrap();
                t.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        peer.notify(None).unwrap();
        sleeper.join().unwrap();
        assert!(waiter.join().unwrap() < Duration::from_secs(10));
        // A half whose generation is old does not sleep at all.
        let t = Instant::now();
        let (w, _) = FdWaker::pair().unwrap();
        gate.wait(&w, g, long).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
