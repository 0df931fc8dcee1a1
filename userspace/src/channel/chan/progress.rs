//! How an end makes progress on its rings: what is readable and writable, waiting for it (spin,
//! sleep, the peer's liveness on the way), copying, publishing and releasing, waking the peer,
//! pairing an opener with its joiner, and the checks before writing.

use super::*;

impl Channel {
    /// Bytes (at least `want`) readable now; `Some(0)` at the end of the stream.
    #[inline]
    pub(super) fn readable(&mut self, want: u64) -> Result<Option<u64>, ChannelError> {
        let prod = self.mem.w64(self.inp.prod);
        let n = self
            .rx
            .avail::<Std>(prod, want)
            .map_err(|e| self.violation(e))?;
        if n >= want {
            return Ok(Some(n));
        }
        // Acquire: pairs with the release store of the flag, which follows the peer's last
        // publish, so the re-read below sees everything it wrote.
        if self.w32(self.inp.closed).load(Acquire) == 0 {
            return Ok(None);
        }
        let n = self
            .rx
            .avail::<Std>(prod, want)
            .map_err(|e| self.violation(e))?;
        self.check_session()?;
        match n {
            n if n >= want => Ok(Some(n)),
            0 => Ok(Some(0)),
            n => Err(ChannelError::Corrupt(format!(
                "the peer closed after {n} bytes of a {want}-byte record"
            ))),
        }
    }

    /// Free bytes (at least `want`) in the outgoing ring.
    #[inline]
    pub(super) fn writable(&mut self, want: u64) -> Result<Option<u64>, ChannelError> {
        let n = self
            .tx
            .space::<Std>(self.mem.w64(self.out.cons), want)
            .map_err(|e| self.violation(e))?;
        Ok((n >= want).then_some(n))
    }

    /// Waits until `ready` gives a value: spin, then sleep (or back off) in slices, looking at
    /// the peer and the deadline every `CHECK_EVERY` spins and before every sleep.
    pub(super) fn wait<T>(
        &mut self,
        dir: Dir,
        want: u64,
        mut ready: impl FnMut(&mut Self) -> Result<Option<T>, ChannelError>,
    ) -> Result<T, ChannelError> {
        if let Some(v) = ready(self)? {
            return Ok(v);
        }
        if self.nonblocking {
            if let Err(e) = self.check_peer(dir, Instant::now()) {
                // A peer that left may have published before it went: deliver that first,
                // unless this end is the one that left its session.
                self.check_session()?;
                return ready(self)?.ok_or(e);
            }
            if self.sleeps {
                // Armed: a poller on `as_raw_fd` is woken when the peer gets to what we wait
                // for. Drain first, so a ring that follows the announcement stays pending.
                self.waker.clear();
                self.announce(dir, want);
                if let Some(v) = ready(self)? {
                    self.waited(dir)?;
                    return Ok(v);
                }
            }
            return Err(ChannelError::WouldBlock);
        }
        let timeout = match dir {
            Dir::In => self.read_timeout,
            Dir::Out => self.write_timeout,
        };
        // A timeout too long to be an instant (`Duration::MAX`) is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut i = 0u32;
        let mut backoff = Duration::from_micros(1);
        // A waker that does not sleep (ivshmem-plain): yield until then, back off after.
        let mut yield_until = None;
        loop {
            if let Some(v) = ready(self)? {
                self.waited(dir)?;
                return Ok(v);
            }
            i = i.saturating_add(1);
            if i <= self.spin {
                pace(self.spin_hint);
                if !i.is_multiple_of(CHECK_EVERY) {
                    continue;
                }
            }
            let now = Instant::now();
            if let Err(e) = self.check_peer(dir, now) {
                // As above.
                self.check_session()?;
                return ready(self)?.ok_or(e);
            }
            let mut slice = self.liveness / 10;
            if let Some(d) = deadline {
                if now >= d {
                    return Err(ChannelError::TimedOut);
                }
                slice = slice.min(d - now);
            }
            if i <= self.spin {
                continue;
            }
            let limit = if self.sleeps {
                self.sleep_limit()
            } else {
                None
            };
            if let Some(limit) = limit {
                slice = slice.min(limit);
                let seen = self.gate.generation();
                self.announce(dir, want);
                if let Some(v) = ready(self)? {
                    self.waited(dir)?;
                    return Ok(v);
                }
                if self.half == Half::Both {
                    self.waker.wait(slice)?;
                } else {
                    // The halves share the waker: one sleeps on it, the other on the gate.
                    self.gate.wait(&*self.waker, seen, slice)?;
                }
            } else if now < *yield_until.get_or_insert(now + YIELD_FOR) {
                std::thread::yield_now();
            } else {
                self.waker.wait(backoff.min(slice))?;
                backoff = (backoff * 2).min(slice);
            }
        }
    }

    /// After a wait that ended: it may have been stopped past the liveness bound meanwhile,
    /// so a writer checks its session before it copies into the ring. A reader's check comes
    /// after its copy, before it delivers or lends the bytes (`release`, `peek`, `read_slice`),
    /// where it also covers the copy: one check on the receive path, not two.
    #[inline(always)]
    fn waited(&self, dir: Dir) -> Result<(), ChannelError> {
        match dir {
            Dir::Out => self.check_session(),
            Dir::In => Ok(()),
        }
    }

    /// The liveness bound for side `x`'s heartbeat: the longer of this end's timeout and the
    /// one side `x` published.
    pub(super) fn bound_for(&self, x: usize) -> Duration {
        let word = self
            .w32(self.sides[x] + SIDE_LIVENESS as usize)
            .load(Relaxed);
        liveness::agreed(self.liveness, word)
    }

    /// Asks the peer to ring when it gets to what we wait for (`want` bytes readable or
    /// free), after which the caller looks again: see `protocol::crossed` for why this cannot
    /// miss a wake-up.
    pub(super) fn announce(&self, dir: Dir, want: u64) {
        match dir {
            Dir::In => self
                .rx
                .announce_wait::<Std>(self.mem.w64(self.inp.cons_wake), want),
            Dir::Out => self
                .tx
                .announce_wait::<Std>(self.mem.w64(self.out.prod_wake), want),
        }
    }

    /// Looks at the control word and the peer's heartbeat: an error when this side or the peer
    /// left the session, or the peer's heartbeat stood still for the liveness timeout (it is
    /// then declared dead, so that a new end can take its place).
    pub(super) fn check_peer(&mut self, dir: Dir, now: Instant) -> Result<(), ChannelError> {
        self.try_pair();
        let look = self.look()?;
        if look.me != ATTACHED {
            return self.detached();
        }
        let peer = 1 - self.side;
        match look.peer {
            FREE => Ok(()),
            ATTACHED => {
                let hb = self
                    .w64(self.sides[peer] + SIDE_HEARTBEAT as usize)
                    .load(Relaxed);
                let bound = self.bound_for(peer);
                if Watch::dead(&mut self.peer_hb, self.session, hb, now, bound) {
                    self.ctl.declare_dead(&self.mem);
                    return Err(ChannelError::PeerGone(format!(
                        "the peer's heartbeat stood still for {:?} (liveness bound {bound:?}, \
                         the longer of both ends'): it died or hangs",
                        liveness::dead_after(bound)
                    )));
                }
                Ok(())
            }
            CLOSED => Err(ChannelError::PeerGone(match dir {
                Dir::In => "the peer closed the channel".into(),
                Dir::Out => "the peer closed the channel; nobody reads any more".into(),
            })),
            DEAD => Err(ChannelError::PeerGone("the peer was declared dead".into())),
            GONE => Err(ChannelError::PeerGone("the connection was closed".into())),
            x => Err(ChannelError::Corrupt(format!(
                "peer state {x} in a running session"
            ))),
        }
    }

    /// Copies `src` into the outgoing ring at free-running position `pos`, in two parts when
    /// it wraps. `src` must fit the free space there.
    #[inline(always)]
    pub(super) fn copy_to_ring(&self, pos: u64, src: &[u8]) {
        let r = self.out;
        debug_assert!(src.len() as u64 <= r.cap);
        let off = (pos & (r.cap - 1)) as usize;
        let first = src.len().min(r.cap as usize - off);
        // SAFETY: `off + first <= cap` and `src.len() - first <= cap` keep both copies inside
        // the ring's payload (in the region by the type invariant); the producer owns the free
        // space `[pos, seen + cap)` until it publishes, and `src` is private memory.
        unsafe {
            let data = self.mem.base().add(r.data);
            copy(src.as_ptr(), data.add(off), first);
            if first < src.len() {
                copy(src.as_ptr().add(first), data, src.len() - first);
            }
        }
    }

    /// Copies bytes at free-running position `pos` of the incoming ring into `dst`.
    #[inline(always)]
    pub(super) fn copy_from_ring(&self, pos: u64, dst: *mut u8, len: usize) {
        let r = self.inp;
        debug_assert!(len as u64 <= r.cap);
        let off = (pos & (r.cap - 1)) as usize;
        let first = len.min(r.cap as usize - off);
        // SAFETY: As in `copy_to_ring`; the bytes `[pos, pos + len)` are published and the
        // consumer's until it releases them; `dst` is valid for `len` bytes (callers).
        unsafe {
            let data = self.mem.base().add(r.data);
            copy(data.add(off), dst, first);
            if first < len {
                copy(data, dst.add(first), len - first);
            }
        }
    }

    /// Publishes `n` bytes written at the producer position, if this end is still in its
    /// session.
    #[inline]
    pub(super) fn publish(&mut self, n: u64) -> io::Result<()> {
        self.check_session()?;
        let wakeups = self.wakeups();
        let prod = self.mem.w64(self.out.prod);
        let wake = self.mem.w64(self.out.cons_wake);
        if self.tx.publish::<Std>(n, prod, wake, wakeups) {
            self.notify_peer();
        }
        Ok(())
    }

    /// Gives `n` read bytes back, if this end is still in its session; an error means the
    /// bytes read since the last check may be a newer session's, so the caller delivers none.
    /// Always inlined: `recv`'s hot path (callgrind: 272 instructions per 64-byte send + recv
    /// when it was called, 259 inlined).
    #[inline(always)]
    pub(super) fn release(&mut self, n: u64) -> io::Result<()> {
        self.check_session()?;
        let wakeups = self.wakeups();
        let cons = self.mem.w64(self.inp.cons);
        let wake = self.mem.w64(self.inp.prod_wake);
        if self.rx.release::<Std>(n, cons, wake, wakeups) {
            self.notify_peer();
        }
        Ok(())
    }

    /// The address the peer published, read after the protocol decided to wake it.
    ///
    /// Acquire half of the address handshake (see `open`): the fence follows the load of the
    /// peer's wake-at word that made the decision. A value no honest side writes reads as no
    /// address: a scribbling peer only loses its own wake-ups.
    pub(super) fn peer_address(&self) -> Option<u32> {
        peer_address(&self.mem, self.sides[1 - self.side], self.session)
    }

    /// Whether the peer's side line (address, notifies, liveness) is its own for this
    /// session: its epoch word, stored last with release, names our session. Before that the
    /// words may be a previous holder's, which must not decide whom to ring or how to sleep.
    pub(super) fn peer_line_current(&self) -> bool {
        let epoch = self
            .w64(self.sides[1 - self.side] + SIDE_EPOCH as usize)
            .load(Acquire);
        epoch == u64::from(self.session)
    }

    /// Whether moving an index must look for the peer's announcement (the fence and the load
    /// of `protocol::crossed`): only when both ends sleep. Until the peer's side line is its own
    /// (its epoch names this session) it counts as sleeping. Inlined (the hot path of every
    /// send and receive): the answer once known, or `learn_wakeups`.
    #[inline(always)]
    pub(super) fn wakeups(&mut self) -> bool {
        if !self.sleeps {
            return false;
        }
        match self.peer_sleeps {
            Some(p) => p,
            None => self.learn_wakeups(),
        }
    }

    /// `wakeups` before the peer's side line said whether it sleeps.
    #[inline(never)]
    fn learn_wakeups(&mut self) -> bool {
        self.try_pair();
        if !self.peer_line_current() {
            return true;
        }
        let notifies = self
            .w32(self.sides[1 - self.side] + SIDE_NOTIFIES as usize)
            .load(Relaxed);
        self.peer_sleeps = Some(notifies == 1);
        notifies == 1
    }

    /// A pending opener (see `named.rs`) takes the end that joined it as its peer, once there
    /// is one: the joiner's state word, side line, consumer line for this end's ring, and its
    /// own ring to read. Before, this end read zeroes for all of these. Cheap while nothing
    /// was announced: one load.
    #[inline]
    pub(super) fn try_pair(&mut self) {
        let Control::Pending { own, own_word } = self.ctl else {
            return;
        };
        let Some(blocks) = self.leave.as_ref().and_then(|l| l.block.clone()) else {
            return;
        };
        let Some(j) = named::joiner(&blocks, &mut self.pair_seen) else {
            return;
        };
        self.ctl = Control::Owned {
            own,
            own_word,
            peer: j.state,
            peer_word: j.word,
        };
        self.check = self.ctl.check();
        self.sides[1 - self.side] = j.side;
        self.out.cons = j.cons as usize;
        self.out.cons_wake = j.cons as usize + 8;
        self.inp = Ring::on_lines(j.prod, j.closed, self.inp.cons as u64, j.data, j.cap);
        self.rx = Consumer::new(j.cap);
        self.peer_sleeps = None;
        self.peer_hb = None;
    }

    /// Rings the peer after this end moved an index or closed. A failed ring is not an error
    /// of the operation, which has taken effect (the bytes are published or consumed): a
    /// sleeping peer looks at the ring again after at most a tenth of its liveness timeout.
    pub(in crate::channel) fn notify_peer(&self) {
        let _ = self.waker.notify(self.peer_address());
    }

    /// Whether sleeping is worth it, and for how long at most: only when the peer notifies
    /// (it sleeps too); while it has not attached yet, in short slices.
    pub(super) fn sleep_limit(&self) -> Option<Duration> {
        let Ok(look) = self.look() else {
            return None;
        };
        let peer = 1 - self.side;
        if look.me != ATTACHED || look.peer != ATTACHED || !self.peer_line_current() {
            return Some(ALONE_SLICE);
        }
        let notifies = self
            .w32(self.sides[peer] + SIDE_NOTIFIES as usize)
            .load(Relaxed);
        (notifies == 1).then_some(self.liveness)
    }

    /// Whether the control still shows this end attached to its session.
    pub(super) fn still_attached(&self) -> bool {
        self.look().is_ok_and(|l| l.me == ATTACHED)
    }

    /// Before writing: this end may write, and someone may still read (the control's words,
    /// which change only when an end comes or goes).
    #[inline]
    pub(super) fn check_write(&self) -> Result<(), ChannelError> {
        if !self.write_closed && self.check.holds(&self.mem) {
            fence(Acquire);
            return Ok(());
        }
        self.cannot_write()
    }

    /// Why `check_write` failed.
    #[cold]
    pub(super) fn cannot_write(&self) -> Result<(), ChannelError> {
        if self.write_closed {
            return Err(ChannelError::PeerGone(
                "this end closed its write side".into(),
            ));
        }
        let look = self.look()?;
        if look.me != ATTACHED {
            return Err(ChannelError::PeerGone("this end was detached".into()));
        }
        match look.peer {
            CLOSED | DEAD => Err(ChannelError::PeerGone(
                "the peer left the channel; nobody reads any more".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Between two looks at the ring while spinning: the pause hint if asked for, else (on x86)
/// an `lfence`, so that each look waits for the one before it. Without it the core keeps many
/// loads of the peer's line in flight: they pull the line back while the peer is still writing
/// the record on it, and the first look that sees the record costs a pipeline flush. Measured
/// on this project's 2-core EPYC host (two threads, 64-byte messages, 20 alternating rounds of
/// 100,000 against a bare spin ping-pong): round trip 1.3-1.4x the bare one without, 1.0-1.1x
/// with `lfence` or `pause`. Unlike `pause`, which leaves QEMU's translated code (367 ns a
/// round in the TCG lab), `lfence` is a plain barrier there.
#[inline(always)]
fn pace(hint: bool) {
    if hint {
        std::hint::spin_loop();
        return;
    }
    // SAFETY: `lfence` only orders instructions; SSE2, which it needs, is part of x86_64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
}

/// Copies `n` bytes from `src` to `dst`: up to 64 (a message's usual size) inline, as two
/// overlapping parts of a power-of-two size, longer ones with `memcpy`: a call into libc costs
/// more than a short copy (under TCG above all, where the call and its return each leave the
/// translated block).
///
/// # Safety
///
/// As [`std::ptr::copy_nonoverlapping`]: `src` readable and `dst` writable for `n` bytes, not
/// overlapping.
#[inline(always)]
unsafe fn copy(src: *const u8, dst: *mut u8, n: usize) {
    /// Copies `N` bytes at offset `at`.
    ///
    /// # Safety
    ///
    /// `at + N <= n`, with the caller's guarantees for `n` bytes.
    #[inline(always)]
    unsafe fn part<const N: usize>(src: *const u8, dst: *mut u8, at: usize) {
        // SAFETY: `[at, at + N)` lies within the `n` bytes the caller vouches for.
        unsafe {
            let v = src.add(at).cast::<[u8; N]>().read_unaligned();
            dst.add(at).cast::<[u8; N]>().write_unaligned(v);
        }
    }
    /// Copies 32 bytes at offset `at`: on x86-64 through a general-purpose register, 8 bytes
    /// at a time, where the compiler would use two SSE moves. QEMU's TCG (the lab's emulator)
    /// runs vector moves through its copy of the vector registers: TCG lab, `rtt --bare`, 64-byte
    /// messages, near vCPU placement: round trip 0.500 us (3.31x the bare ping-pong) with SSE,
    /// 0.461 us (3.06x) with these (medians of 30 rounds in 8 boots, A/B in the same boots).
    /// On hardware the eight moves cost a few cycles more than the four; callgrind counts 24
    /// more instructions per 64-byte send + recv.
    ///
    /// # Safety
    ///
    /// `at + 32 <= n`, with the caller's guarantees for `n` bytes.
    #[inline(always)]
    unsafe fn part32(src: *const u8, dst: *mut u8, at: usize) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `[at, at + 32)` lies within the `n` bytes the caller vouches for (the four
        // loads read it from `src`, the four stores write it to `dst`); the scratch register is
        // declared clobbered; no stack, flags untouched.
        unsafe {
            std::arch::asm!(
                "mov {t}, [{s}]",
                "mov [{d}], {t}",
                "mov {t}, [{s} + 8]",
                "mov [{d} + 8], {t}",
                "mov {t}, [{s} + 16]",
                "mov [{d} + 16], {t}",
                "mov {t}, [{s} + 24]",
                "mov [{d} + 24], {t}",
                s = in(reg) src.wrapping_add(at),
                d = in(reg) dst.wrapping_add(at),
                t = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: As above.
        unsafe {
            part::<32>(src, dst, at)
        };
    }
    // SAFETY: Each part lies within `[0, n)` (the arms bound `n`); the caller vouches for the
    // `n` bytes.
    unsafe {
        match n {
            65.. => std::ptr::copy_nonoverlapping(src, dst, n),
            32.. => {
                part32(src, dst, 0);
                part32(src, dst, n - 32);
            }
            16.. => {
                part::<16>(src, dst, 0);
                part::<16>(src, dst, n - 16);
            }
            8.. => {
                part::<8>(src, dst, 0);
                part::<8>(src, dst, n - 8);
            }
            4.. => {
                part::<4>(src, dst, 0);
                part::<4>(src, dst, n - 4);
            }
            1.. => {
                part::<1>(src, dst, 0);
                part::<1>(src, dst, n / 2);
                part::<1>(src, dst, n - 1);
            }
            0 => {}
        }
    }
}
