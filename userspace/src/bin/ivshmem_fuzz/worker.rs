//! One worker thread: [`Worker::run`] draws ops from the thread's generator and executes them
//! until told to stop. This file holds the loop, the dispatch ([`Worker::exec`]) and the small
//! helpers every op uses; the ops that need more than a few lines live in the submodules, each
//! an `impl Worker` of its own.

mod arena;
mod files;
mod ioctl;
mod mappings;
mod segs;
mod touch;

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::ptr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::sys;

use crate::generate::{gen_op, thread_seed, GenEnv, Rng};
use crate::ops::Op;
use crate::shared::Shared;
use crate::{ARENA_BASE, ARENA_PER_THREAD, FD_SLOTS, MAX_EFDS, PAGE, SCRATCH_LEN, SLOTS};
use segs::Seg;

pub(crate) struct Worker<'a> {
    id: usize,
    seed: u64,
    rng: Rng,
    env: &'a GenEnv,
    sh: &'a Shared,
    scratch: usize,
    arena: usize,
    /// Arena slots whose reservation could not be renewed (index `SLOTS`: the huge slot).
    poisoned: [bool; SLOTS + 1],
    segs: Vec<Seg>,
    efds: Vec<c_int>,
    trace: Option<BufWriter<File>>,
    /// Number and kind of the op being executed.
    n: u64,
    kind: usize,
}

impl<'a> Worker<'a> {
    pub(crate) fn new(
        id: usize,
        seed: u64,
        env: &'a GenEnv,
        sh: &'a Shared,
        trace: Option<BufWriter<File>>,
    ) -> io::Result<Self> {
        // SAFETY: A fresh private mapping chosen by the kernel.
        let p = unsafe {
            sys::mmap(
                ptr::null_mut(),
                SCRATCH_LEN + PAGE,
                sys::PROT_READ | sys::PROT_WRITE,
                sys::MAP_PRIVATE | sys::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == sys::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let scratch = p as usize;
        // SAFETY: The last page of the mapping just made: the guard page.
        if unsafe { sys::mprotect((scratch + SCRATCH_LEN) as *mut c_void, PAGE, sys::PROT_NONE) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            id,
            seed: thread_seed(seed, id),
            rng: Rng::new(thread_seed(seed, id)),
            env,
            sh,
            scratch,
            arena: ARENA_BASE + id * ARENA_PER_THREAD,
            poisoned: [false; SLOTS + 1],
            segs: Vec::new(),
            efds: Vec::new(),
            trace,
            n: 0,
            kind: 0,
        })
    }

    pub(crate) fn run(mut self) {
        // SAFETY: Plain libc call.
        let me = unsafe { sys::pthread_self() };
        self.sh.threads[self.id].store(me, SeqCst);
        while !self.sh.stop.load(Relaxed) {
            let op = gen_op(&mut self.rng, self.env);
            if let Some(t) = &mut self.trace {
                let _ = writeln!(t, "{} {op:?}", self.n);
            }
            self.kind = op.kind();
            self.sh.ops[self.kind].fetch_add(1, Relaxed);
            self.exec(op);
            self.trim();
            self.n += 1;
        }
        for fd in std::mem::take(&mut self.efds) {
            // SAFETY: The thread's own eventfd, closed once.
            unsafe { sys::close(fd) };
        }
        while !self.segs.is_empty() {
            self.release(0);
        }
        if let Some(mut t) = self.trace.take() {
            let _ = t.flush();
        }
    }

    /// Counts a call; reads errno first, so call it right after the call.
    fn note(&self, failed: bool) {
        let errno = failed.then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0));
        self.sh.calls.fetch_add(1, Relaxed);
        if let Some(e) = errno {
            self.sh.count_errno(self.kind, e);
        }
    }

    fn fd(&self, slot: u8) -> c_int {
        self.sh.fds[slot as usize % FD_SLOTS].load(SeqCst)
    }

    fn place(&self) -> String {
        format!("thread {} (seed {:#x}) call {}", self.id, self.seed, self.n)
    }

    fn exec(&mut self, op: Op) {
        match op {
            Op::Ioctl { slot, cmd, ptr } => self.ioctl(slot, cmd, ptr),
            Op::Mmap {
                slot,
                len,
                off,
                prot,
                flags,
                fixed,
            } => self.mmap(slot, len, off, prot, flags, fixed),
            Op::Munmap {
                map,
                at,
                pages,
                weird,
            } => self.munmap(map, at, pages, weird),
            Op::Mremap {
                map,
                at,
                pages,
                how,
            } => self.mremap(map, at, pages, how),
            Op::Mprotect {
                map,
                at,
                pages,
                prot,
            } => {
                if let Some((_, a, l)) = self.pick_range(map, at, pages) {
                    // SAFETY: A range of a mapping of ours that holds no Rust object; faults
                    // on it later are repaired (see `on_fault`).
                    let rc = unsafe { sys::mprotect(a as *mut c_void, l, prot) };
                    self.note(rc < 0);
                }
            }
            Op::Madvise {
                map,
                at,
                pages,
                advice,
            } => {
                if let Some((_, a, l)) = self.pick_range(map, at, pages) {
                    // SAFETY: As for mprotect; discarding the contents is fine, the fuzzer
                    // keeps nothing there it needs.
                    let rc = unsafe { sys::madvise(a as *mut c_void, l, advice) };
                    self.note(rc < 0);
                }
            }
            Op::Touch {
                map,
                at,
                count,
                seed,
            } => self.touch(map, at, count, seed),
            Op::Fork { maps, seed } => self.fork(maps, seed),
            Op::Read { slot, ptr, len } => {
                let fd = self.fd(slot);
                let r = self.resolve(ptr, 16, false);
                // SAFETY: The kernel may write only into the scratch area (stopping at its
                // guard page) or gets an address where nothing is mapped.
                let rc = unsafe { sys::read(fd, r.addr as *mut c_void, len as usize) };
                self.note(rc < 0);
            }
            Op::Write { slot, ptr, len } => {
                let fd = self.fd(slot);
                let r = self.resolve(ptr, 16, true);
                // SAFETY: Write only reads our memory (EFAULT where nothing is mapped).
                let rc = unsafe { sys::write(fd, r.addr as *const c_void, len as usize) };
                self.note(rc < 0);
            }
            Op::Reopen { slot, dev, mode } => self.reopen(slot, dev, mode),
            Op::Close { slot } => self.close_slot(slot),
            Op::EventfdNew => {
                if self.efds.len() >= MAX_EFDS {
                    let fd = self.efds.remove(0);
                    // SAFETY: The thread's own eventfd, closed once.
                    let rc = unsafe { sys::close(fd) };
                    self.note(rc < 0);
                }
                // SAFETY: Plain system call.
                let fd = unsafe { sys::eventfd(0, sys::EFD_NONBLOCK | sys::EFD_CLOEXEC) };
                self.note(fd < 0);
                if fd >= 0 {
                    self.efds.push(fd);
                }
            }
            Op::EventfdClose(k) => {
                if !self.efds.is_empty() {
                    let fd = self.efds.remove(k as usize % self.efds.len());
                    // SAFETY: The thread's own eventfd, closed once (the driver holds its
                    // own reference if it was registered).
                    let rc = unsafe { sys::close(fd) };
                    self.note(rc < 0);
                }
            }
        }
    }
}
