//! One end of a channel: attaching to a session, the heartbeat, waiting, and the stream,
//! message and zero-copy operations.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{Check, Control, Look};
use super::gate::SleepGate;
use super::heartbeat::Beat;
use super::layout::Kind;
use super::liveness::{self, Watch};
use super::named;
use super::options::Options;
use super::protocol::{Consumer, Producer, Std};
use super::reclaim::Retire;
use super::region::Mem;
use super::wait::Waker;
use super::{ChannelError, Region};

/// Offsets in an end's side line (`conn_layout.rs`).
pub(super) const SIDE_EPOCH: u64 = 0;
pub(super) const SIDE_HEARTBEAT: u64 = 8;
/// u32: 0, or 1 + the address the peer passes to [`Waker::notify`] (a doorbell peer id).
pub(super) const SIDE_ADDRESS: u64 = 0x10;
/// u32: 1 if this side notifies its peer (its waker sleeps), so the peer may sleep too.
pub(super) const SIDE_NOTIFIES: u64 = 0x14;
/// u32: this side's liveness timeout in milliseconds (0 from ends that predate it).
pub(super) const SIDE_LIVENESS: u64 = 0x18;
/// The largest address a side may publish (a 16-bit doorbell peer id).
pub(super) const MAX_ADDRESS: u32 = 0xffff;
/// How long a sleeping side sleeps at most while its peer has not attached yet: a peer that
/// turns out not to notify must not leave it asleep for a whole slice.
pub(super) const ALONE_SLICE: Duration = Duration::from_millis(20);

/// End states (`control.rs`); `FREE` and `GONE` only in what an end sees (`Look`).
pub(super) const FREE: u8 = 0;
pub(super) const ATTACHED: u8 = 2;
pub(super) const CLOSED: u8 = 3;
pub(super) const DEAD: u8 = 4;
/// A side that can no longer be reached: its block was freed (connections), or, in `Look`,
/// an end detached from its session.
pub(super) const GONE: u8 = 5;

/// Message header: u32 length, u32 its complement (a cheap check against scribbles).
const MSG_HDR: u64 = 8;

/// Spin iterations between two looks at the clock (deadline, peer heartbeat).
const CHECK_EVERY: u32 = 4096;

/// How long an end whose waker does not sleep (ivshmem-plain) yields the CPU after its spin
/// rounds before it backs off with sleeps. Without a doorbell the peer's answer is seen only
/// when this end looks: once both ends sleep between looks, every message waits for the
/// other's next wake-up, which lasts a timer tick in a kernel without high-resolution timers
/// (4 ms in the lab's guests), and they stay in that lockstep (`make bench` under TCG: every
/// 64-byte round trip 4 ms). Yielding for longer than a tick lets a sleeping peer's answer
/// find this end awake, which breaks the lockstep.
const YIELD_FOR: Duration = Duration::from_millis(10);

/// Absolute offsets of one ring's words and payload in the region.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ring {
    prod: usize,
    prod_wake: usize,
    closed: usize,
    cons: usize,
    cons_wake: usize,
    data: usize,
    cap: u64,
}

impl Ring {
    /// A ring whose producer line (index, wake-at), closed flag, consumer line (index,
    /// wake-at) and payload of `cap` bytes lie at these offsets: a connection's, in two
    /// blocks. The flag lies apart from the index, which moves with every publish: a reader
    /// that looks at the flag while it waits does not pull the producer's line away.
    pub(super) fn on_lines(prod: u64, closed: u64, cons: u64, data: u64, cap: u64) -> Self {
        Self {
            prod: prod as usize,
            prod_wake: prod as usize + 8,
            closed: closed as usize,
            cons: cons as usize,
            cons_wake: cons as usize + 8,
            data: data as usize,
            cap,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    In,
    Out,
}

/// The region, for words at offsets of one channel block.
///
/// # Invariants
///
/// Callers pass only offsets of words in the channel's blocks, which were checked against the
/// region's size (`listener::end_channel`): inside the region and aligned for the word.
/// `base` is `mem.base()`, kept beside it so that a word's address costs one load on the hot
/// path, not two.
#[derive(Clone)]
pub(super) struct Shm {
    mem: Arc<Mem>,
    base: NonNull<u8>,
}

// SAFETY: `Shm` is an `Arc<Mem>`, which is `Send` and `Sync`, and a copy of its base pointer,
// used only as `Mem` uses it.
unsafe impl Send for Shm {}
// SAFETY: As above.
unsafe impl Sync for Shm {}

impl Shm {
    fn new(mem: Arc<Mem>) -> Self {
        // INVARIANT: `base` is the region's.
        let base = NonNull::new(mem.base()).expect("a region's base is not null");
        Self { mem, base }
    }

    /// The 64-bit word at `off`.
    #[inline]
    pub(super) fn w64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= self.mem.len() && off.is_multiple_of(8));
        // SAFETY: By the type invariant `off` is inside the region and 8-aligned; `self.mem`
        // keeps the region alive; both sides only access this word as an `AtomicU64`.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    /// The 32-bit word at `off`.
    #[inline]
    fn w32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.mem.len() && off.is_multiple_of(4));
        // SAFETY: As in `w64`, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast()) }
    }

    #[inline]
    fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

/// One end of a named channel in a shared region.
///
/// A byte stream ([`Kind::Stream`]: `Read`, `Write`, [`write_slice`](Self::write_slice),
/// [`read_slice`](Self::read_slice)) or framed messages ([`Kind::Messages`]:
/// [`send`](Self::send), [`recv`](Self::recv)). Blocking by default;
/// [`set_nonblocking`](Self::set_nonblocking) gives `WouldBlock` instead, and the timeouts give
/// `TimedOut`. A peer that closed or died gives `BrokenPipe` (after everything it published
/// was read), a peer that breaks the protocol `InvalidData`; both carry a [`ChannelError`].
///
/// ```
/// use ivshmem::channel::{Channel, Options, Region};
/// use std::io::{Read, Write};
///
/// let region = Region::anonymous(1 << 20)?;
/// let mut a = Channel::open(&region, "demo", &Options::new())?;
/// let mut b = Channel::open(&region, "demo", &Options::new())?;
/// a.write_all(b"hello, other VM")?;
/// a.close_write()?;
/// let mut got = String::new();
/// b.read_to_string(&mut got)?;
/// assert_eq!(got, "hello, other VM");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Invariants
///
/// Every offset in `out`, `inp`, `ctl` and the side blocks is inside the region and aligned for
/// its word: `listener::end_channel` checked the blocks against the region's size.
pub struct Channel {
    mem: Shm,
    name: String,
    kind: Kind,
    side: usize,
    session: u32,
    ctl: Control,
    /// `ctl`'s session check (also the write check), once started.
    check: Check,
    /// A pending opener: the count of announced blocks when it last looked for its joiner.
    pair_seen: Option<u64>,
    sides: [usize; 2],
    out: Ring,
    inp: Ring,
    tx: Producer,
    rx: Consumer,
    waker: Arc<dyn Waker>,
    sleeps: bool,
    /// Whether the peer of this session may sleep (it notifies), once its side line is its own:
    /// an end that never sleeps never announces, so moving an index needs no fence for it.
    peer_sleeps: Option<bool>,
    spin: u32,
    spin_hint: bool,
    liveness: Duration,
    nonblocking: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    peer_hb: Option<Watch>,
    write_closed: bool,
    broken: Option<String>,
    /// The attachment, shared by the halves of a split end; `None` until attached.
    leave: Option<Arc<Leave>>,
    /// Which operations this end does: both, or one after [`Channel::split`].
    half: Half,
    gate: Arc<SleepGate>,
}

/// Which operations an end does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Half {
    Both,
    Reads,
    Writes,
}

/// An end's hold on its side of the session, shared by the halves of a split end: it beats the
/// heartbeat while any half lives, and when the last one goes it marks the side closed (or
/// dead, after a protocol violation or an abort) and rings the peer to see it.
struct Leave {
    mem: Shm,
    ctl: Control,
    session: u32,
    peer_line: usize,
    waker: Arc<dyn Waker>,
    heartbeat: std::sync::Mutex<Option<Arc<Beat>>>,
    dead: AtomicBool,
    /// The arena blocks of the channel (the peer's first): the last end to leave frees them.
    block: Option<Retire>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(hb) = self.heartbeat.get_mut().ok().and_then(Option::take) {
            hb.stop();
        }
        let state = if self.dead.load(Relaxed) {
            DEAD
        } else {
            CLOSED
        };
        let (left, peer_gone) = self.ctl.leave(&self.mem, state);
        if !left {
            return;
        }
        let mut peer_line = self.peer_line;
        match (&self.ctl, &self.block) {
            // An opener: whether a peer joined since it last looked, and what it left.
            (Control::Pending { .. }, Some(own)) => {
                peer_line = named::opener_left(own, state).unwrap_or(peer_line);
            }
            // The peer is gone too: nobody uses the blocks.
            (_, Some(blocks)) if peer_gone => blocks.free(),
            _ => {}
        }
        if self.waker.sleeps() {
            let _ = self
                .waker
                .notify(peer_address(&self.mem, peer_line, self.session));
        }
    }
}

/// The doorbell address side line `peer_line` published, if the line is that side's own for
/// `session` (see `Channel::peer_line_current`), read after the protocol decided to wake it.
///
/// Acquire half of the address handshake (see `open`): the fence follows the load of the
/// peer's wake-at word that made the decision. A value no honest side writes reads as no
/// address: a scribbling peer only loses its own wake-ups.
fn peer_address(mem: &Shm, peer_line: usize, session: u32) -> Option<u32> {
    fence(Acquire);
    if mem.w64(peer_line + SIDE_EPOCH as usize).load(Acquire) != u64::from(session) {
        return None;
    }
    let v = mem.w32(peer_line + SIDE_ADDRESS as usize).load(Relaxed);
    v.checked_sub(1).filter(|&a| a <= MAX_ADDRESS)
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("side", &self.side)
            .field("session", &self.session)
            .field("capacity", &(self.out.cap, self.inp.cap))
            .finish()
    }
}

impl Channel {
    /// An end with its control, its side lines (`sides[0]` side 0's) and its rings (`rings[0]`
    /// the one it writes), not started yet. The caller checked every offset against the
    /// region: each word inside and aligned, each payload inside.
    pub(super) fn on_lines(
        mem: Arc<Mem>,
        name: &str,
        kind: Kind,
        ctl: Control,
        sides: [usize; 2],
        rings: [Ring; 2],
        opts: &Options,
    ) -> Self {
        let [out, inp] = rings;
        Self {
            mem: Shm::new(mem),
            name: name.to_string(),
            kind,
            side: 0,
            session: 0,
            ctl,
            check: ctl.check(),
            pair_seen: None,
            sides,
            out,
            inp,
            tx: Producer::new(out.cap),
            rx: Consumer::new(inp.cap),
            waker: opts.waker.clone(),
            sleeps: opts.waker.sleeps(),
            peer_sleeps: None,
            spin: opts.spin,
            spin_hint: opts.spin_hint,
            liveness: opts.liveness,
            nonblocking: false,
            read_timeout: None,
            write_timeout: None,
            peer_hb: None,
            write_closed: false,
            broken: None,
            leave: None,
            half: Half::Both,
            gate: Arc::new(SleepGate::default()),
        }
    }

    /// Takes up `side` of `session`, which the control already shows this end attached to:
    /// publishes this side's line (address, notifies, liveness, then the epoch) and starts
    /// the heartbeat. `block` holds the arena blocks a connection lives in, freed by the last
    /// end to leave.
    pub(super) fn start(
        &mut self,
        side: usize,
        session: u32,
        block: Option<Retire>,
    ) -> Result<(), ChannelError> {
        self.side = side;
        self.session = session;
        let line = self.sides[side];
        let address = self.waker.address().filter(|&a| a <= MAX_ADDRESS);
        self.w32(line + SIDE_ADDRESS as usize)
            .store(address.map_or(0, |a| a + 1), Relaxed);
        self.w32(line + SIDE_NOTIFIES as usize)
            .store(u32::from(self.sleeps), Relaxed);
        self.w32(line + SIDE_LIVENESS as usize)
            .store(liveness::to_word(self.liveness), Relaxed);
        // Release: a peer that reads this session in our epoch word (acquire, see
        // `peer_line_current`) sees the words above, not a previous holder's.
        self.w64(line + SIDE_EPOCH as usize)
            .store(u64::from(session), Release);
        // Release half of the address handshake: every wake-at announcement this side makes
        // later follows this fence, so a peer that sees one (and then fences, see
        // `peer_address`) sees the address too. It also orders the attach before every
        // payload store of this end, for a stale end's check after its copies (see
        // `check_session`).
        fence(SeqCst);
        let every = self.liveness / 10;
        let heartbeat = Beat::start(
            self.mem.mem.clone(),
            self.ctl.hold(),
            (line as u64) + SIDE_HEARTBEAT,
            every,
        )?;
        self.leave = Some(Arc::new(Leave {
            mem: self.mem.clone(),
            ctl: self.ctl,
            session,
            peer_line: self.sides[1 - side],
            waker: self.waker.clone(),
            heartbeat: std::sync::Mutex::new(Some(heartbeat)),
            dead: AtomicBool::new(false),
            block,
        }));
        Ok(())
    }

    #[inline]
    fn w64(&self, off: usize) -> &AtomicU64 {
        self.mem.w64(off)
    }

    #[inline]
    fn w32(&self, off: usize) -> &AtomicU32 {
        self.mem.w32(off)
    }

    /// A connection's peer block: its offset and length in the region (for tests that map
    /// it read-only).
    #[cfg(test)]
    pub(super) fn peer_block(&self) -> Option<(usize, usize)> {
        let r = self.leave.as_ref()?.block.as_ref()?;
        let b = r.blocks.first()?;
        Some((r.arena.offset(b) as usize, b.pages as usize * 4096))
    }

    /// The region the channel lives in (for tools: listing, diagnostics).
    pub fn region(&self) -> Region {
        Region {
            mem: self.mem.mem.clone(),
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stream or messages.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Which side of the session this end holds: 0 (A, started it) or 1 (B, joined).
    pub fn side(&self) -> usize {
        self.side
    }

    /// The session (epoch) this end attached to; every new session increments it.
    pub fn epoch(&self) -> u32 {
        self.session
    }

    /// Capacities of the outgoing and the incoming ring in bytes.
    pub fn capacity(&self) -> (u64, u64) {
        (self.out.cap, self.inp.cap)
    }

    /// The largest message [`send`](Self::send) takes.
    pub fn max_message(&self) -> usize {
        // A record and the header word of the next one, which its commit clears.
        (self.out.cap - 2 * MSG_HDR) as usize
    }

    /// Whether operations return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// How long reads (and `recv`, `read_slice`) wait before `TimedOut`; `None` waits forever.
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// How long writes (and `send`, `write_slice`, `flush`) wait before `TimedOut`.
    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    /// The waker's descriptor, readable when the peer rings (doorbell or eventfd wakers):
    /// for poll/epoll users in non-blocking mode. An operation that returns `WouldBlock` has
    /// armed the end: it drained the descriptor and asked the peer to ring once it gets to
    /// what the operation waits for, so polling cannot miss that. Poll for at most
    /// [`poll_interval`](Self::poll_interval), then retry the operation: the retry is also
    /// where a dead peer is noticed.
    pub fn as_raw_fd(&self) -> Option<RawFd> {
        self.waker.as_raw_fd()
    }

    /// Consumes the wake-ups pending on [`as_raw_fd`](Self::as_raw_fd). The ends of one
    /// doorbell device in one process share one descriptor (the driver registers one eventfd
    /// per device and vector): when it becomes readable, a poller calls this on any of them,
    /// then retries every end on that descriptor until `WouldBlock`. An end alone on its
    /// descriptor needs no call: `WouldBlock` drains it.
    pub fn drain_events(&self) {
        self.waker.drain();
    }

    /// How long a poller may wait on [`as_raw_fd`](Self::as_raw_fd) before retrying: a tenth
    /// of the liveness timeout while the peer rings (so its heartbeat is looked at often
    /// enough), 20 ms while it has not attached or does not ring (a spinning peer).
    pub fn poll_interval(&self) -> Duration {
        match self.sleep_limit() {
            Some(l) if l > ALONE_SLICE => self.liveness / 10,
            _ => ALONE_SLICE,
        }
    }

    fn usable(&self, kind: Kind) -> Result<(), ChannelError> {
        if let Some(m) = &self.broken {
            return Err(ChannelError::Corrupt(m.clone()));
        }
        if kind != self.kind {
            return Err(ChannelError::Invalid(format!(
                "channel '{}' carries {}: use the {} API",
                self.name,
                kind_name(self.kind),
                match self.kind {
                    Kind::Stream => "Read/Write",
                    Kind::Messages => "send/recv",
                }
            )));
        }
        Ok(())
    }

    /// Records a protocol violation: the channel stays unusable.
    fn fail(&mut self, e: ChannelError) -> io::Error {
        if let ChannelError::Corrupt(m) = &e {
            self.broken = Some(m.clone());
        }
        e.into()
    }

    /// Whether this end still belongs to the session in the control word: an error
    /// (`PeerGone`) once it was declared dead or a newer session took the channel, whose rings
    /// it must not touch. Checked before every store into the rings (indices, copies, commits)
    /// and before bytes read out of them are delivered or lent; after a copy out of the ring,
    /// the acquire fence before the check makes it a validation (as a seqlock reader's): if
    /// the copy read a newer session's bytes, whose writer attached (changing the control
    /// word) and fenced before writing them, the check sees that session.
    ///
    /// What no check can exclude is an end stopped between its check and the store after it,
    /// for longer than the liveness bound, and resumed while a later session runs: it can
    /// store one index or one copy into that session's ring.
    #[inline]
    fn check_session(&self) -> Result<(), ChannelError> {
        fence(Acquire);
        // The hot path: compares on the words, no decoding.
        if self.check.holds(&self.mem) {
            return Ok(());
        }
        self.detached()
    }

    /// Why `check_session` failed (a peer that left is no failure of this end's).
    #[cold]
    fn detached(&self) -> Result<(), ChannelError> {
        if self.look()?.me != ATTACHED {
            return Err(ChannelError::PeerGone(format!(
                "this end was detached from session {} of channel '{}': the peer declared it \
                 dead (stalled longer than the liveness bound), or the channel was reset or \
                 its memory taken back",
                self.session, self.name
            )));
        }
        Ok(())
    }

    /// This end's and its peer's states in this end's session.
    fn look(&self) -> Result<Look, ChannelError> {
        self.ctl.look(&self.mem)
    }

    /// A protocol violation seen in the ring, unless this end is no longer in the session: a
    /// stale end reading a newer session's words gets `PeerGone`, not `Corrupt`.
    fn violation(&self, what: String) -> ChannelError {
        match self.check_session() {
            Ok(()) => ChannelError::Corrupt(what),
            Err(e) => e,
        }
    }

    /// Splits the end into a writing and a reading half, each usable from its own thread.
    /// The write side closes when the writing half is dropped (or `close_write`); the end
    /// leaves the session when both halves are gone.
    pub fn split(mut self) -> (super::WriteHalf, super::ReadHalf) {
        let reader = self.split_reader();
        (super::WriteHalf(self), super::ReadHalf(reader))
    }

    /// Makes this end its writing half and returns the reading half (see [`split`]).
    ///
    /// [`split`]: Self::split
    pub(crate) fn split_reader(&mut self) -> Self {
        let reader = Self {
            mem: self.mem.clone(),
            name: self.name.clone(),
            kind: self.kind,
            side: self.side,
            session: self.session,
            ctl: self.ctl,
            check: self.check,
            pair_seen: self.pair_seen,
            sides: self.sides,
            out: self.out,
            inp: self.inp,
            tx: self.tx.clone(),
            rx: self.rx.clone(),
            waker: self.waker.clone(),
            sleeps: self.sleeps,
            peer_sleeps: self.peer_sleeps,
            spin: self.spin,
            spin_hint: self.spin_hint,
            liveness: self.liveness,
            nonblocking: self.nonblocking,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            peer_hb: self.peer_hb.clone(),
            write_closed: true,
            broken: self.broken.clone(),
            leave: self.leave.clone(),
            half: Half::Reads,
            gate: self.gate.clone(),
        };
        self.half = Half::Writes;
        reader
    }

    /// Waits (as configured, with the write timeout) until the peer has read everything this
    /// end wrote or sent: the end of a transfer that must have arrived. `BrokenPipe` if the
    /// peer left first. (`io::Write::flush` does not wait: written bytes are already the
    /// peer's to read.)
    pub fn drain(&mut self) -> io::Result<()> {
        self.usable(self.kind)?;
        let cap = self.out.cap;
        self.wait(Dir::Out, cap, |c| c.writable(cap))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Waits (as configured, with the write timeout) until a peer has joined this end's
    /// session, whether it is still there or already left: a sender with nothing to send
    /// knows its end of the stream was seen.
    pub fn wait_peer(&mut self) -> io::Result<()> {
        self.wait(Dir::Out, 0, |c| c.peer_joined())
            .map_err(|e| self.fail(e))
    }

    fn peer_joined(&mut self) -> Result<Option<()>, ChannelError> {
        Ok((self.look()?.peer != FREE).then_some(()))
    }

    /// Ends this side's byte stream or message sequence: the peer reads what is in the ring,
    /// then end-of-file. Reading goes on.
    pub fn close_write(&mut self) -> io::Result<()> {
        if self.write_closed {
            return Ok(());
        }
        self.write_closed = true;
        if !self.still_attached() {
            // The ring may belong to a newer session by now: leave it alone.
            return Err(ChannelError::PeerGone("this end was detached".into()).into());
        }
        // Release: the peer's acquire of the flag sees every publish before it.
        self.w32(self.out.closed).store(1, Release);
        if self.sleeps
            && self
                .tx
                .consumer_waits::<Std>(self.mem.w64(self.out.cons_wake))
        {
            self.notify_peer();
        }
        Ok(())
    }

    /// Leaves without closing the write side: the peer reads what was published, then gets
    /// `BrokenPipe` instead of end-of-file. For a sender that failed before it finished.
    pub fn abort(mut self) {
        self.broken.get_or_insert_with(|| "aborted".into());
    }
}

mod messages;
mod progress;
mod zero_copy;
pub use zero_copy::{MessageSlot, MessageView, ReadSlice, WriteSlice};

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Stream => "a byte stream",
        Kind::Messages => "messages",
    }
}

impl io::Write for Channel {
    /// Writes as much of `buf` as fits (at least one byte, waiting as configured).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.usable(Kind::Stream)?;
        self.check_write().map_err(|e| self.fail(e))?;
        if buf.is_empty() {
            return Ok(0);
        }
        let free = self
            .wait(Dir::Out, 1, |c| c.writable(1))
            .map_err(|e| self.fail(e))?;
        let n = buf.len().min(free as usize);
        self.copy_to_ring(self.tx.pos, &buf[..n]);
        self.publish(n as u64)?;
        Ok(n)
    }

    /// Nothing to do: a written byte is in the peer's ring at once. (It does not wait for the
    /// peer to read, so a `BufWriter` that drops, or two ends that flush before they read,
    /// never block; [`Channel::drain`] waits.)
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Read for Channel {
    /// Reads what is there (at least one byte, waiting as configured); 0 at the end of the
    /// stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.usable(Kind::Stream)?;
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = self
            .wait(Dir::In, 1, |c| c.readable(1))
            .map_err(|e| self.fail(e))?;
        let n = buf.len().min(avail as usize);
        self.copy_from_ring(self.rx.pos, buf.as_mut_ptr(), n);
        self.release(n as u64)?;
        Ok(n)
    }
}

impl Drop for Channel {
    /// Leaves cleanly: the write side is closed (the peer reads the rest, then end-of-file)
    /// and, once the last half of a split end is gone, this end marked closed, so the peer's
    /// timeout is only for crashes. A channel that met a protocol violation leaves as
    /// [`Channel::abort`] does.
    fn drop(&mut self) {
        let Some(leave) = &self.leave else {
            return;
        };
        if self.broken.is_some() {
            leave.dead.store(true, Relaxed);
        } else if self.half != Half::Reads && !leave.dead.load(Relaxed) {
            let _ = self.close_write();
        }
        // Dropping `leave` next: the last half marks the side closed or dead.
    }
}

#[cfg(test)]
mod tests;
