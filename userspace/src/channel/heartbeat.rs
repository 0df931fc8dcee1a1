//! One heartbeat thread per process for every open end: each end registers its heartbeat word
//! and period, and the thread advances every word on time, whatever the application does
//! (also while it blocks). A thousand connections cost one thread, not a thousand.
//!
//! The thread blocks every signal, so a process's signal handlers never run on it. A child
//! made by `fork` has no copy of the thread: the first end it registers finds the registry
//! made by another process and starts a new one of its own (the old one, whose lock a thread
//! that did not survive the fork may hold, is left alone).

use std::io;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicPtr};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::control::Hold;
use super::region::Mem;
use crate::sys;

/// One end's heartbeat: its word, and the word that says whether it still holds its side (a
/// detached end must not keep the side's next holder looking alive).
///
/// # Invariants
///
/// `hold`'s word and `word` are offsets of 8-aligned words inside `mem` (callers pass offsets
/// checked against the region; they are re-checked on each access anyway).
pub(super) struct Beat {
    mem: Arc<Mem>,
    hold: Hold,
    word: u64,
    every: Duration,
    /// Set by [`Beat::stop`]; read by the thread under the registry's lock.
    stopped: AtomicBool,
}

impl Beat {
    /// Advances the heartbeat word at `word` every `every` while `hold` shows the end holding
    /// its side; until the returned handle drops or [`stop`](Self::stop) is called.
    pub(super) fn start(
        mem: Arc<Mem>,
        hold: Hold,
        word: u64,
        every: Duration,
    ) -> io::Result<Arc<Self>> {
        let beat = Arc::new(Self {
            mem,
            hold,
            word,
            every,
            stopped: AtomicBool::new(false),
        });
        let reg = registry()?;
        reg.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Arc::downgrade(&beat), Instant::now()));
        reg.thread.unpark();
        Ok(beat)
    }

    /// Stops the beats: when this returns, the thread beats this word no more (it beats under
    /// the registry's lock, which this takes), so the caller may give the memory away.
    pub(super) fn stop(&self) {
        let Ok(reg) = registry() else {
            return;
        };
        let _pass = reg.beats.lock().unwrap_or_else(PoisonError::into_inner);
        self.stopped.store(true, Relaxed);
    }

    /// One beat, if the end still holds its side; false once it does not (it never will
    /// again: sessions only move on).
    fn beat(&self) -> bool {
        let (Ok(hold), Ok(word)) = (self.mem.u64_at(self.hold.word), self.mem.u64_at(self.word))
        else {
            return false;
        };
        let mine = !self.stopped.load(Relaxed) && self.hold.holds(hold.load(Relaxed));
        if mine {
            word.fetch_add(1, Relaxed);
        }
        mine
    }
}

/// The registered beats of this process, and the thread that beats them.
struct Registry {
    /// The process that made it: a forked child makes its own.
    pid: u32,
    /// Each beat with the time it is due next.
    ///
    /// # Locking
    ///
    /// Held by the thread for one pass over the list and by `Beat::start` for one push; never
    /// while waiting.
    beats: Mutex<Vec<(Weak<Beat>, Instant)>>,
    thread: Thread,
}

static REGISTRY: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());

/// The registry of this process, made (with its thread) on first use here.
fn registry() -> io::Result<&'static Registry> {
    let pid = std::process::id();
    let cur = REGISTRY.load(Acquire);
    // SAFETY: A non-null pointer in `REGISTRY` came from `Box::leak` below and is never freed.
    if let Some(r) = unsafe { cur.as_ref() } {
        if r.pid == pid {
            return Ok(r);
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<&'static Registry>(1);
    let handle = std::thread::Builder::new()
        .name("ivshmem-beat".into())
        .spawn(move || {
            block_signals();
            if let Ok(reg) = rx.recv() {
                run(reg);
            }
        })?;
    let reg: &'static Registry = Box::leak(Box::new(Registry {
        pid,
        beats: Mutex::new(Vec::new()),
        thread: handle.thread().clone(),
    }));
    let new = reg as *const Registry as *mut Registry;
    match REGISTRY.compare_exchange(cur, new, AcqRel, Acquire) {
        Ok(_) => {
            let _ = tx.send(reg);
            Ok(reg)
        }
        // Another thread of this process made one first: use it; ours (never published)
        // ends its thread when `tx` drops and stays leaked, which is small and once.
        Err(now) => {
            // SAFETY: As above: a pointer published in `REGISTRY`.
            let r = unsafe { &*now };
            if r.pid == pid {
                Ok(r)
            } else {
                Err(io::Error::other("heartbeat registry raced with a fork"))
            }
        }
    }
}

/// The thread: beats what is due, drops what ended, sleeps until the next is due (a new
/// registration wakes it early).
fn run(reg: &'static Registry) {
    loop {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(3600);
        {
            let mut beats = reg.beats.lock().unwrap_or_else(PoisonError::into_inner);
            beats.retain_mut(|(weak, due)| {
                let Some(b) = weak.upgrade() else {
                    return false;
                };
                if *due <= now {
                    if !b.beat() {
                        return false;
                    }
                    *due = now + b.every;
                }
                next = next.min(*due);
                true
            });
        }
        std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
    }
}

/// Blocks every signal on the calling thread.
fn block_signals() {
    let all = sys::SigSet([u64::MAX; 16]);
    // SAFETY: `all` is a valid signal set for the call; the old mask is not wanted.
    unsafe { sys::pthread_sigmask(sys::SIG_BLOCK, &all, std::ptr::null_mut()) };
}

/// The signal masks (`SigBlk` of `/proc`) of this process's heartbeat threads (for tests).
#[cfg(test)]
pub(super) fn beat_threads() -> Vec<u64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let dir = t.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim() != "ivshmem-beat" {
                return None;
            }
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let blk = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
            u64::from_str_radix(blk.trim(), 16).ok()
        })
        .collect()
}
