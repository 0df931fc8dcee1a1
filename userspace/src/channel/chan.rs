//! One end of a channel: attaching to a session, the heartbeat, waiting, and the stream,
//! message and zero-copy operations.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
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
use super::protocol::{Consumer, Producer, Std};
use super::reclaim::Retire;
use super::region::Mem;
use super::wait::{SpinWaker, Waker};
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

/// How [`Channel::open`] opens a channel and how the channel waits.
#[derive(Clone)]
pub struct Options {
    kind: Kind,
    capacity: u64,
    create: bool,
    spin: u32,
    spin_hint: bool,
    liveness: Duration,
    open_timeout: Duration,
    waker: Arc<dyn Waker>,
    pub(super) wait: Wait,
}

/// How [`Channel::open_path`] makes an end wait for its peer (ends opened on a
/// [`Region`] use the [`Options::waker`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wait {
    /// The doorbell when the device has one, else [`Options::waker`] (spinning by default).
    #[default]
    Auto,
    /// Spin, then back off with short sleeps ([`SpinWaker`]): works on any region.
    Spin,
    /// Sleep in `IVSHMEM_WAIT` and ring the peer only when it announced that it sleeps
    /// ([`super::DoorbellWaker`]); an error on a region without a doorbell.
    Doorbell,
}

impl Wait {
    /// The mode's name on command lines: `auto`, `spin` or `doorbell`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Spin => "spin",
            Self::Doorbell => "doorbell",
        }
    }
}

impl std::str::FromStr for Wait {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Auto, Self::Spin, Self::Doorbell]
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("'{s}' is not a wait mode: auto, spin or doorbell"))
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("kind", &self.kind)
            .field("capacity", &self.capacity)
            .field("create", &self.create)
            .field("spin", &self.spin)
            .field("spin_hint", &self.spin_hint)
            .field("liveness", &self.liveness)
            .field("open_timeout", &self.open_timeout)
            .field("sleeps", &self.waker.sleeps())
            .field("wait", &self.wait)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

impl Options {
    /// A byte stream with 256 KiB rings, created if missing, spinning 10 000 rounds (without
    /// the pause hint) before backing off, a peer declared dead after 10 s without a heartbeat.
    pub fn new() -> Self {
        Self {
            kind: Kind::Stream,
            capacity: 256 << 10,
            create: true,
            spin: 10_000,
            spin_hint: false,
            liveness: Duration::from_secs(10),
            open_timeout: Duration::from_secs(30),
            waker: Arc::new(SpinWaker::default()),
            wait: Wait::Auto,
        }
    }

    /// Stream or messages; opening an existing channel of the other kind fails.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// Ring capacity per direction in bytes (a power of two, 64 B to 1 GiB), used when this
    /// side creates the channel; an existing channel keeps its own.
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Whether a missing channel is created (default) or an error.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Rounds to spin on the ring before waiting with the waker.
    pub fn spin(mut self, rounds: u32) -> Self {
        self.spin = rounds;
        self
    }

    /// Whether spinning executes the CPU's pause hint (`core::hint::spin_loop`) each round.
    ///
    /// Off by default: in the TCG lab a round costs 8 ns without it and 367 ns with it (QEMU
    /// leaves the translated code on `pause`), which made the 64-byte round trip 4.9 us
    /// instead of 4.5 (`make bench`); under KVM `pause` can cause pause-loop exits. Turn it on
    /// on hardware where a spinning thread shares its core with another.
    pub fn spin_hint(mut self, on: bool) -> Self {
        self.spin_hint = on;
        self
    }

    /// The bound on noticing a dead peer: an operation blocked on a peer that died fails within
    /// this time. Each end beats ten times per period and looks at its peer at least as often;
    /// a heartbeat that stands still for seven tenths of it counts as death.
    ///
    /// Clamped to 100 ms..=1 h. Each end publishes its own; an end applies the longer of both
    /// to its peer, so two ends configured differently agree.
    pub fn liveness_timeout(mut self, t: Duration) -> Self {
        self.liveness = liveness::clamp(t);
        self
    }

    /// How long opening waits for the layout, a slot being created, or a channel held by a
    /// side that must leave first.
    pub fn open_timeout(mut self, t: Duration) -> Self {
        self.open_timeout = t;
        self
    }

    /// How this side waits and wakes its peer (default: [`SpinWaker`]).
    pub fn waker(mut self, waker: Arc<dyn Waker>) -> Self {
        self.waker = waker;
        self
    }

    /// How [`Channel::open_path`] chooses the waker (default [`Wait::Auto`]).
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    pub(super) fn kind_value(&self) -> Kind {
        self.kind
    }

    pub(super) fn capacity_value(&self) -> u64 {
        self.capacity
    }

    pub(super) fn liveness_bound(&self) -> Duration {
        self.liveness
    }

    /// These options for one more end: with a waker of its own where ends must not share one
    /// (a doorbell's file), else the same.
    pub(super) fn for_one_end(&self) -> Result<Self, ChannelError> {
        Ok(match self.waker.another()? {
            Some(w) => self.clone().waker(w),
            None => self.clone(),
        })
    }

    pub(super) fn create_value(&self) -> bool {
        self.create
    }

    pub(super) fn open_timeout_value(&self) -> Duration {
        self.open_timeout
    }

    pub(super) fn waker_ref(&self) -> &Arc<dyn Waker> {
        &self.waker
    }
}

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
    /// A ring whose producer line (index, wake-at, closed), consumer line (index, wake-at)
    /// and payload of `cap` bytes lie at these offsets: a connection's, in two blocks.
    pub(super) fn on_lines(prod: u64, cons: u64, data: u64, cap: u64) -> Self {
        Self {
            prod: prod as usize,
            prod_wake: prod as usize + 8,
            closed: prod as usize + 16,
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
#[derive(Clone)]
pub(super) struct Shm(Arc<Mem>);

impl Shm {
    /// The 64-bit word at `off`.
    pub(super) fn w64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= self.0.len() && off.is_multiple_of(8));
        // SAFETY: by the type invariant `off` is inside the region and 8-aligned; `self.0`
        // keeps the region alive; both sides only access this word as an `AtomicU64`.
        unsafe { AtomicU64::from_ptr(self.0.base().add(off).cast()) }
    }

    /// The 32-bit word at `off`.
    fn w32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.0.len() && off.is_multiple_of(4));
        // SAFETY: as in `w64`, with 4-byte alignment.
        unsafe { AtomicU32::from_ptr(self.0.base().add(off).cast()) }
    }

    fn base(&self) -> *mut u8 {
        self.0.base()
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
            mem: Shm(mem),
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
            self.mem.0.clone(),
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

    fn w64(&self, off: usize) -> &AtomicU64 {
        self.mem.w64(off)
    }

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
            mem: self.mem.0.clone(),
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
        (self.out.cap - MSG_HDR) as usize
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
    /// it must not touch. Checked after every load of the peer's index and before every store
    /// into the rings; after a copy out of the ring, the acquire fence before the check makes it
    /// a validation (as a seqlock reader's): if the copy read a newer session's bytes, whose
    /// writer attached (changing the control word) and fenced before writing them, the check
    /// sees that session.
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

    /// Bytes (at least `want`) readable now; `Some(0)` at the end of the stream.
    #[inline]
    fn readable(&mut self, want: u64) -> Result<Option<u64>, ChannelError> {
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
    fn writable(&mut self, want: u64) -> Result<Option<u64>, ChannelError> {
        let n = self
            .tx
            .space::<Std>(self.mem.w64(self.out.cons), want)
            .map_err(|e| self.violation(e))?;
        Ok((n >= want).then_some(n))
    }

    /// Waits until `ready` gives a value: spin, then sleep (or back off) in slices, looking at
    /// the peer and the deadline every `CHECK_EVERY` spins and before every sleep.
    fn wait<T>(
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
                    // It waited: it may have been stopped past the bound meanwhile.
                    self.check_session()?;
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
        loop {
            if let Some(v) = ready(self)? {
                // It waited: it may have been stopped past the bound meanwhile.
                self.check_session()?;
                return Ok(v);
            }
            i = i.saturating_add(1);
            if i <= self.spin {
                if self.spin_hint {
                    std::hint::spin_loop();
                }
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
                    // It waited: it may have been stopped past the bound meanwhile.
                    self.check_session()?;
                    return Ok(v);
                }
                if self.half == Half::Both {
                    self.waker.wait(slice)?;
                } else {
                    // The halves share the waker: one sleeps on it, the other on the gate.
                    self.gate.wait(&*self.waker, seen, slice)?;
                }
            } else {
                self.waker.wait(backoff.min(slice))?;
                backoff = (backoff * 2).min(slice);
            }
        }
    }

    /// The liveness bound for side `x`'s heartbeat: the longer of this end's timeout and the
    /// one side `x` published.
    fn bound_for(&self, x: usize) -> Duration {
        let word = self
            .w32(self.sides[x] + SIDE_LIVENESS as usize)
            .load(Relaxed);
        liveness::agreed(self.liveness, word)
    }

    /// Asks the peer to ring when it gets to what we wait for (`want` bytes readable or
    /// free), after which the caller looks again: see `protocol::crossed` for why this cannot
    /// miss a wake-up.
    fn announce(&self, dir: Dir, want: u64) {
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
    fn check_peer(&mut self, dir: Dir, now: Instant) -> Result<(), ChannelError> {
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
    fn copy_to_ring(&self, pos: u64, src: &[u8]) {
        let r = self.out;
        debug_assert!(src.len() as u64 <= r.cap);
        let off = (pos & (r.cap - 1)) as usize;
        let first = src.len().min(r.cap as usize - off);
        // SAFETY: `off + first <= cap` and `src.len() - first <= cap` keep both copies inside
        // the ring's payload (in the region by the type invariant); the producer owns the free
        // space `[pos, seen + cap)` until it publishes, and `src` is private memory.
        unsafe {
            let data = self.mem.base().add(r.data);
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(off), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Copies bytes at free-running position `pos` of the incoming ring into `dst`.
    fn copy_from_ring(&self, pos: u64, dst: *mut u8, len: usize) {
        let r = self.inp;
        debug_assert!(len as u64 <= r.cap);
        let off = (pos & (r.cap - 1)) as usize;
        let first = len.min(r.cap as usize - off);
        // SAFETY: as in `copy_to_ring`; the bytes `[pos, pos + len)` are published and the
        // consumer's until it releases them; `dst` is valid for `len` bytes (callers).
        unsafe {
            let data = self.mem.base().add(r.data);
            std::ptr::copy_nonoverlapping(data.add(off), dst, first);
            std::ptr::copy_nonoverlapping(data, dst.add(first), len - first);
        }
    }

    /// Publishes `n` bytes written at the producer position, if this end is still in its
    /// session.
    #[inline]
    fn publish(&mut self, n: u64) -> io::Result<()> {
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
    #[inline]
    fn release(&mut self, n: u64) -> io::Result<()> {
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
    fn peer_address(&self) -> Option<u32> {
        peer_address(&self.mem, self.sides[1 - self.side], self.session)
    }

    /// Whether the peer's side line (address, notifies, liveness) is its own for this
    /// session: its epoch word, stored last with release, names our session. Before that the
    /// words may be a previous holder's, which must not decide whom to ring or how to sleep.
    fn peer_line_current(&self) -> bool {
        let epoch = self
            .w64(self.sides[1 - self.side] + SIDE_EPOCH as usize)
            .load(Acquire);
        epoch == u64::from(self.session)
    }

    /// Whether moving an index must look for the peer's announcement (the fence and the load
    /// of `protocol::crossed`): only when both ends sleep. Until the peer's side line is its own
    /// (its epoch names this session) it counts as sleeping.
    #[inline]
    fn wakeups(&mut self) -> bool {
        if !self.sleeps {
            return false;
        }
        if let Some(p) = self.peer_sleeps {
            return p;
        }
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
    fn try_pair(&mut self) {
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
        self.inp = Ring::on_lines(j.prod, self.inp.cons as u64, j.data, j.cap);
        self.rx = Consumer::new(j.cap);
        self.peer_sleeps = None;
        self.peer_hb = None;
    }

    /// Rings the peer after this end moved an index or closed. A failed ring is not an error
    /// of the operation, which has taken effect (the bytes are published or consumed): a
    /// sleeping peer looks at the ring again after at most a tenth of its liveness timeout.
    pub(super) fn notify_peer(&self) {
        let _ = self.waker.notify(self.peer_address());
    }

    /// Whether sleeping is worth it, and for how long at most: only when the peer notifies
    /// (it sleeps too); while it has not attached yet, in short slices.
    fn sleep_limit(&self) -> Option<Duration> {
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
    fn still_attached(&self) -> bool {
        self.look().is_ok_and(|l| l.me == ATTACHED)
    }

    /// Before writing: this end may write, and someone may still read (the control's words,
    /// which change only when an end comes or goes).
    #[inline]
    fn check_write(&self) -> Result<(), ChannelError> {
        if !self.write_closed && self.check.holds(&self.mem) {
            fence(Acquire);
            return Ok(());
        }
        self.cannot_write()
    }

    /// Why `check_write` failed.
    #[cold]
    fn cannot_write(&self) -> Result<(), ChannelError> {
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

    /// Sends one message (blocking as configured). It arrives whole or not at all.
    pub fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.reserve_message(msg.len())?;
        self.copy_to_ring(self.tx.pos + MSG_HDR, msg);
        self.commit_message(msg.len() as u32)
    }

    /// Waits (as configured) until a message of `len` bytes fits in the outgoing ring.
    #[inline]
    fn reserve_message(&mut self, len: usize) -> io::Result<()> {
        self.usable(Kind::Messages)?;
        self.check_write().map_err(|e| self.fail(e))?;
        let max = self.max_message();
        if len > max {
            return Err(ChannelError::MessageTooLarge { len, max }.into());
        }
        let need = MSG_HDR + (len as u64).next_multiple_of(8);
        self.wait(Dir::Out, need, |c| c.writable(need))
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Receives the next message into `buf` (replacing its contents): `Some(len)`, or `None`
    /// once the peer closed and every message was read.
    pub fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let Some((len, need)) = self.next_message()? else {
            return Ok(None);
        };
        buf.clear();
        buf.reserve(len);
        let spare: &mut [MaybeUninit<u8>] = &mut buf.spare_capacity_mut()[..len];
        self.copy_from_ring(self.rx.pos + MSG_HDR, spare.as_mut_ptr().cast(), len);
        // SAFETY: the copy above initialised the first `len` bytes of the spare capacity.
        unsafe { buf.set_len(len) };
        self.release(need)?;
        Ok(Some(len))
    }

    /// [`recv`](Self::recv) without waiting: `WouldBlock` when no message is there (the end is
    /// armed, as in non-blocking mode).
    pub fn try_recv(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let was = std::mem::replace(&mut self.nonblocking, true);
        let r = self.recv(buf);
        self.nonblocking = was;
        r
    }

    /// [`recv`](Self::recv) waiting at most `t` (`TimedOut` after), whatever the read timeout.
    pub fn recv_timeout(&mut self, buf: &mut Vec<u8>, t: Duration) -> io::Result<Option<usize>> {
        let was = self.read_timeout.replace(t);
        let nb = std::mem::replace(&mut self.nonblocking, false);
        let r = self.recv(buf);
        (self.read_timeout, self.nonblocking) = (was, nb);
        r
    }

    /// Waits for the next message's header and checks it: its payload length and the bytes
    /// its record takes in the ring, or `None` at the end of the sequence.
    #[inline]
    fn next_message(&mut self) -> io::Result<Option<(usize, u64)>> {
        self.usable(Kind::Messages)?;
        let avail = self
            .wait(Dir::In, MSG_HDR, |c| c.readable(MSG_HDR))
            .map_err(|e| self.fail(e))?;
        if avail == 0 {
            return Ok(None);
        }
        let hdr = u64::from_le(self.ring_word(self.inp, self.rx.pos).load(Relaxed));
        let len = hdr as u32;
        let check = (hdr >> 32) as u32;
        let need = MSG_HDR + u64::from(len).next_multiple_of(8);
        if check != !len || u64::from(len) > self.inp.cap - MSG_HDR || need > avail {
            let e = self.violation(format!(
                "message header {len:#x}/{check:#x} at {} with {avail} bytes published",
                self.rx.pos
            ));
            return Err(self.fail(e));
        }
        Ok(Some((len as usize, need)))
    }

    /// Writes the header of a message of `len` bytes at the producer position and publishes
    /// its record (header, payload written by the caller, padding).
    #[inline]
    fn commit_message(&mut self, len: u32) -> io::Result<()> {
        // One store: the length in the low half, its complement in the high half (both
        // little-endian, as the layout says).
        let hdr = u64::from(len) | u64::from(!len) << 32;
        self.ring_word(self.out, self.tx.pos)
            .store(hdr.to_le(), Relaxed);
        self.publish(MSG_HDR + u64::from(len).next_multiple_of(8))
    }

    /// The 8-byte word at free-running position `pos` of ring `r`: a message header, which is
    /// 8-aligned and never straddles the wrap (records are 8-aligned in a ring of 2^n >= 64
    /// bytes). An atomic (relaxed) access: the peer may write it at any time; what orders it
    /// is the index protocol, as for the payload.
    fn ring_word(&self, r: Ring, pos: u64) -> &AtomicU64 {
        debug_assert!(pos.is_multiple_of(8));
        self.mem.w64(r.data + (pos & (r.cap - 1)) as usize)
    }
}

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
mod tests {
    use super::*;
    use crate::channel::FdWaker;
    use std::io::{Read, Write};

    fn pair(opts: &Options) -> (Region, Channel, Channel) {
        let r = Region::anonymous(1 << 20).unwrap();
        let a = Channel::open(&r, "t", opts).unwrap();
        let b = Channel::open(&r, "t", opts).unwrap();
        (r, a, b)
    }

    /// The state word of an end.
    fn ctl_word(c: &Channel) -> usize {
        match c.ctl {
            Control::Pending { own, .. } | Control::Owned { own, .. } => own,
        }
    }

    fn kind_of(e: &io::Error) -> io::ErrorKind {
        e.kind()
    }

    #[test]
    fn stream_wraps_and_writes_partially() {
        let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
        assert_eq!((a.side(), b.side()), (0, 1));
        assert_eq!(a.epoch(), b.epoch());
        let data: Vec<u8> = (0..=255).collect();
        let mut got = Vec::new();
        let mut sent = 0;
        let mut buf = [0u8; 40];
        while got.len() < data.len() {
            if sent < data.len() {
                let n = a.write(&data[sent..]).unwrap();
                assert!(n >= 1 && n <= 64 - (sent - got.len()));
                sent += n;
            }
            let n = b.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        // Full ring: a partial write, then WouldBlock.
        a.set_nonblocking(true);
        assert_eq!(a.write(&[7u8; 100]).unwrap(), 64);
        assert_eq!(
            kind_of(&a.write(&[7u8]).unwrap_err()),
            io::ErrorKind::WouldBlock
        );
        a.set_nonblocking(false);
        a.set_write_timeout(Some(Duration::from_millis(30)));
        let t = Instant::now();
        assert_eq!(
            kind_of(&a.write(&[7u8]).unwrap_err()),
            io::ErrorKind::TimedOut
        );
        assert!(t.elapsed() >= Duration::from_millis(30));
        a.close_write().unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [7u8; 64]);
        assert_eq!(b.read(&mut buf).unwrap(), 0, "EOF stays EOF");
        assert_eq!(
            kind_of(&a.write(b"x").unwrap_err()),
            io::ErrorKind::BrokenPipe
        );
    }

    #[test]
    fn empty_ring_would_block_or_time_out() {
        let (_r, _a, mut b) = pair(&Options::new());
        let mut buf = [0u8; 8];
        b.set_nonblocking(true);
        assert_eq!(
            kind_of(&b.read(&mut buf).unwrap_err()),
            io::ErrorKind::WouldBlock
        );
        b.set_nonblocking(false);
        b.set_read_timeout(Some(Duration::from_millis(20)));
        assert_eq!(
            kind_of(&b.read(&mut buf).unwrap_err()),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn messages_keep_their_boundaries() {
        let opts = Options::new().kind(Kind::Messages).capacity(128);
        let (r, mut a, mut b) = pair(&opts);
        assert_eq!(a.max_message(), 120);
        let mut buf = Vec::new();
        for round in 0..50usize {
            let len = (round * 7) % 121;
            let msg: Vec<u8> = (0..len).map(|i| (i + round) as u8).collect();
            a.send(&msg).unwrap();
            assert_eq!(b.recv(&mut buf).unwrap(), Some(len));
            assert_eq!(buf, msg);
        }
        let e = a.send(&[0u8; 121]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("121 bytes is larger"), "{e}");
        // Two that fit together, the third waits.
        a.set_nonblocking(true);
        a.send(&[1; 50]).unwrap();
        a.send(&[2; 50]).unwrap();
        assert_eq!(
            a.send(&[3; 50]).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(b.recv(&mut buf).unwrap(), Some(50));
        assert_eq!(buf, [1; 50]);
        a.send(&[3; 50]).unwrap();
        a.send(b"").unwrap_err(); // full again: the empty message needs its header
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap(), Some(50));
        assert_eq!(buf, [2; 50]);
        assert_eq!(b.recv(&mut buf).unwrap(), Some(50));
        assert_eq!(buf, [3; 50]);
        assert_eq!(b.recv(&mut buf).unwrap(), None);
        // The wrong API and the wrong kind are clear errors.
        let mut c = [0u8; 1];
        let e = b.read(&mut c).unwrap_err();
        assert!(e.to_string().contains("use the send/recv API"), "{e}");
        let e = Channel::open(&r, "t", &Options::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("carries messages, not a byte stream"),
            "{e}"
        );
    }

    #[test]
    fn zero_copy_slices() {
        let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
        a.write_all(&[0u8; 40]).unwrap();
        let mut sink = [0u8; 40];
        b.read_exact(&mut sink).unwrap();
        // The writable slice ends where the ring wraps.
        let mut w = a.write_slice().unwrap();
        assert_eq!(w.len(), 24);
        w.copy_from(0, b"zero-copy");
        w.commit(9).unwrap();
        let r = b.read_slice().unwrap();
        assert_eq!(r.len(), 9);
        let mut got = [0u8; 4];
        r.copy_to(5, &mut got);
        assert_eq!(&got, b"copy");
        // SAFETY: both ends are in this test; nobody writes the ring meanwhile.
        assert_eq!(unsafe { r.as_slice() }, b"zero-copy");
        r.release(9).unwrap();
        let w = a.write_slice().unwrap();
        assert!(w.commit(1000).is_err());
        a.close_write().unwrap();
        assert!(b.read_slice().unwrap().is_empty());
    }

    #[test]
    fn zero_copy_messages_across_the_wrap() {
        let opts = Options::new().kind(Kind::Messages).capacity(64);
        let (_r, mut a, mut b) = pair(&opts);
        let mut buf = Vec::new();
        let mut wrapped = 0;
        for round in 0..40usize {
            // Records of 24 to 40 bytes: their starts walk around the 64-byte ring, and now
            // and then a payload wraps over its end.
            let len = 9 + round * 5 % 20;
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let mut slot = a.reserve(len).unwrap();
            assert_eq!(slot.len(), len);
            if round % 2 == 0 {
                slot.copy_from(0, &msg[..5]);
                slot.copy_from(5, &msg[5..]);
            } else {
                // SAFETY: both ends are in this test; the peer does not write our free space.
                let (p, q) = unsafe { slot.as_mut_slices() };
                assert_eq!(p.len() + q.len(), len);
                let n = p.len();
                p.copy_from_slice(&msg[..n]);
                q.copy_from_slice(&msg[n..]);
            }
            slot.commit(len).unwrap();
            let view = b.peek().unwrap().unwrap();
            assert_eq!(view.len(), len);
            let mut got = vec![0u8; len];
            view.copy_to(0, &mut got);
            assert_eq!(got, msg, "round {round}");
            // SAFETY: as above.
            let (p, q) = unsafe { view.as_slices() };
            assert_eq!([p, q].concat(), msg);
            wrapped += usize::from(!q.is_empty());
            if round % 3 == 0 {
                let _ = view; // not released: still next
                assert_eq!(b.recv(&mut buf).unwrap(), Some(len));
                assert_eq!(buf, msg);
            } else {
                view.release().unwrap();
            }
        }
        assert!(wrapped >= 5, "{wrapped} of 40 payloads wrapped");
        // A shorter commit, a dropped slot (nothing sent), an oversized commit.
        let mut slot = a.reserve(30).unwrap();
        slot.copy_from(0, b"short");
        slot.commit(5).unwrap();
        let _ = a.reserve(30).unwrap();
        assert!(a.reserve(10).unwrap().commit(11).is_err());
        assert_eq!(b.recv(&mut buf).unwrap(), Some(5));
        assert_eq!(buf, b"short");
        // try_recv and recv_timeout leave the modes as they were.
        assert_eq!(
            b.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let t = Instant::now();
        let e = b
            .recv_timeout(&mut buf, Duration::from_millis(30))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(30));
        a.send(b"late").unwrap();
        assert_eq!(b.try_recv(&mut buf).unwrap(), Some(4));
        b.set_read_timeout(Some(Duration::from_millis(10)));
        assert_eq!(
            b.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        drop(a);
        assert!(b.peek().unwrap().is_none(), "end of the sequence");
    }

    #[test]
    fn closed_peer_breaks_the_pipe_after_the_data() {
        let (_r, mut a, mut b) = pair(&Options::new());
        b.write_all(b"last words").unwrap();
        drop(b);
        let mut got = String::new();
        a.read_to_string(&mut got).unwrap();
        assert_eq!(got, "last words");
        assert_eq!(a.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn abort_is_not_end_of_file() {
        let (_r, mut a, mut b) = pair(&Options::new());
        b.write_all(b"partial").unwrap();
        b.abort();
        let mut got = Vec::new();
        let e = a.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"partial");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("declared dead"), "{e}");
    }

    #[test]
    fn drain_waits_until_the_peer_read_everything_flush_does_not() {
        let (_r, mut a, mut b) = pair(&Options::new());
        a.write_all(b"12345").unwrap();
        a.set_write_timeout(Some(Duration::from_millis(20)));
        assert_eq!(a.drain().unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Both ends flush before either reads: no deadlock, and a BufWriter drops at once.
        a.set_write_timeout(None);
        b.write_all(b"67890").unwrap();
        io::Write::flush(&mut a).unwrap();
        io::Write::flush(&mut b).unwrap();
        let mut w = io::BufWriter::new(&mut a);
        w.write_all(b"!").unwrap();
        drop(w);
        let mut buf = [0u8; 6];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"12345!");
        a.read_exact(&mut buf[..5]).unwrap();
        a.drain().unwrap();
    }

    #[test]
    fn duration_max_means_no_timeout() {
        let opts = Options::new()
            .open_timeout(Duration::MAX)
            .liveness_timeout(Duration::MAX);
        let (_r, mut a, mut b) = pair(&opts);
        a.set_read_timeout(Some(Duration::MAX));
        b.set_write_timeout(Some(Duration::MAX));
        b.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        a.read_exact(&mut buf).unwrap();
        b.drain().unwrap();
    }

    /// Stops the heartbeat of `c`, which stays attached: a stalled end.
    fn stall(c: &Channel) {
        *c.leave.as_ref().unwrap().heartbeat.lock().unwrap() = None;
    }

    /// Stops the heartbeat and leaks the end, as a crash would.
    fn crash(c: Channel) {
        stall(&c);
        std::mem::forget(c);
    }

    #[test]
    fn dead_peer_is_detected_and_replaced() {
        let opts = Options::new().liveness_timeout(Duration::from_millis(100));
        let (r, mut a, mut b) = pair(&opts);
        b.write_all(b"before").unwrap();
        crash(b);
        let mut buf = [0u8; 16];
        assert_eq!(a.read(&mut buf).unwrap(), 6);
        let t = Instant::now();
        let e = a.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("heartbeat stood still"), "{e}");
        assert!(
            t.elapsed() >= Duration::from_millis(70),
            "dead after 7/10 of the timeout"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        let old = a.epoch();
        // A new end waits for the survivor to leave, the survivor reopens: a fresh session.
        let r2 = r.clone();
        let o2 = opts.clone();
        let newcomer = std::thread::spawn(move || {
            let mut c = Channel::open(&r2, "t", &o2).unwrap();
            c.write_all(b"fresh").unwrap();
            c.drain().unwrap();
            c
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(a);
        let mut a = Channel::open(&r, "t", &opts).unwrap();
        let mut got = [0u8; 5];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fresh");
        let c = newcomer.join().unwrap();
        assert_eq!(a.epoch(), old + 1);
        assert_eq!(c.epoch(), old + 1);
    }

    #[test]
    fn a_stale_end_leaves_a_new_session_alone() {
        let opts = Options::new().liveness_timeout(Duration::from_millis(100));
        let (r, mut a, mut b) = pair(&opts);
        stall(&a); // alive, but silent
        let mut buf = [0u8; 4];
        assert_eq!(
            b.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        drop(b);
        let mut c = Channel::open(&r, "t", &opts).unwrap();
        let mut d = Channel::open(&r, "t", &opts).unwrap();
        assert_eq!(c.epoch(), a.epoch() + 1);
        let e = a.write(b"stale").unwrap_err();
        assert!(e.to_string().contains("detached"), "{e}");
        drop(a); // must not close the new session's ring
        c.write_all(b"new").unwrap();
        d.set_nonblocking(true);
        assert_eq!(d.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"new");
        assert_eq!(
            d.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    /// The stale end of issue 18: a receiver that stalls past the liveness bound with a full
    /// ring, then resumes while a newer session has put its own bytes where it would read.
    #[test]
    fn a_stale_reader_takes_nothing_from_the_next_session() {
        for kind in [Kind::Stream, Kind::Messages] {
            let opts = Options::new()
                .kind(kind)
                .capacity(64)
                .liveness_timeout(Duration::from_millis(100));
            let (r, mut a, mut b) = pair(&opts);
            stall(&b); // alive, but silent
            let fill = |c: &mut Channel, byte: u8| match kind {
                Kind::Stream => c.write_all(&[byte; 64]),
                Kind::Messages => c.send(&[byte; 56]),
            };
            fill(&mut a, 1).unwrap();
            a.set_write_timeout(Some(Duration::from_secs(5)));
            let e = fill(&mut a, 1).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
            drop(a);
            let mut c = Channel::open(&r, "t", &opts).unwrap();
            let mut d = Channel::open(&r, "t", &opts).unwrap();
            fill(&mut c, 2).unwrap();
            // `b` would find 64 published bytes where its own were: it must take none.
            let mut buf = [0u8; 64];
            let mut msg = Vec::new();
            let e = match kind {
                Kind::Stream => b.read(&mut buf).map(|_| ()).unwrap_err(),
                Kind::Messages => b.recv(&mut msg).map(|_| ()).unwrap_err(),
            };
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
            assert!(e.to_string().contains("detached from session"), "{e}");
            drop(b);
            // The new session is whole: its bytes, its index, its open write side.
            match kind {
                Kind::Stream => {
                    d.read_exact(&mut buf).unwrap();
                    assert_eq!(buf, [2u8; 64]);
                }
                Kind::Messages => {
                    assert_eq!(d.recv(&mut msg).unwrap(), Some(56));
                    assert_eq!(msg, [2u8; 56]);
                }
            }
            fill(&mut c, 3).unwrap();
            drop(c);
            match kind {
                Kind::Stream => {
                    let mut rest = Vec::new();
                    d.read_to_end(&mut rest).unwrap();
                    assert_eq!(rest, [3u8; 64]);
                }
                Kind::Messages => {
                    assert_eq!(d.recv(&mut msg).unwrap(), Some(56));
                    assert_eq!(msg, [3u8; 56]);
                    assert_eq!(d.recv(&mut msg).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn an_end_whose_block_was_taken_back_stops_beating() {
        let (_r, a, b) = pair(&Options::new().liveness_timeout(Duration::from_millis(100)));
        // As an allocator zeroing `b`'s block for a new owner after it was freed.
        b.w64(ctl_word(&b)).store(0, Relaxed);
        let hb = b.w64(b.sides[b.side] + SIDE_HEARTBEAT as usize);
        let t = Instant::now();
        loop {
            let v = hb.load(Relaxed);
            std::thread::sleep(Duration::from_millis(50)); // five beat periods
            if hb.load(Relaxed) == v {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "still beating");
        }
        let last = hb.load(Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(hb.load(Relaxed), last);
        // `a` is still attached and beats.
        let ha = a.w64(a.sides[a.side] + SIDE_HEARTBEAT as usize);
        let v = ha.load(Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_ne!(ha.load(Relaxed), v);
    }

    #[test]
    fn one_heartbeat_thread_for_many_ends() {
        let r = Region::anonymous(4 << 20).unwrap();
        let opts = Options::new()
            .capacity(4096)
            .liveness_timeout(Duration::from_millis(100));
        let ends: Vec<Channel> = (0..60)
            .map(|i| Channel::open(&r, &format!("c{}", i / 2), &opts).unwrap())
            .collect();
        // Every end beats: each heartbeat word moves within a few periods.
        let words: Vec<u64> = ends
            .iter()
            .map(|c| {
                c.w64(c.sides[c.side] + SIDE_HEARTBEAT as usize)
                    .load(Relaxed)
            })
            .collect();
        std::thread::sleep(Duration::from_millis(60));
        for (c, w) in ends.iter().zip(words) {
            let now = c
                .w64(c.sides[c.side] + SIDE_HEARTBEAT as usize)
                .load(Relaxed);
            assert!(now > w, "{} side {} did not beat", c.name, c.side);
        }
        // It runs (they beat), so it has its name and its mask.
        let masks = crate::channel::heartbeat::beat_threads();
        assert_eq!(masks.len(), 1, "one thread");
        let blocked = |sig: u32| masks[0] & 1 << (sig - 1) != 0;
        assert!(
            blocked(2) && blocked(15) && blocked(10),
            "SIGINT, SIGTERM, SIGUSR1 blocked"
        );
    }

    #[test]
    fn the_longer_liveness_bound_applies_to_both() {
        let r = Region::anonymous(1 << 20).unwrap();
        let slow = Options::new().liveness_timeout(Duration::from_secs(2));
        let fast = Options::new().liveness_timeout(Duration::from_millis(100));
        let mut a = Channel::open(&r, "t", &slow).unwrap();
        let mut b = Channel::open(&r, "t", &fast).unwrap();
        assert_eq!(b.bound_for(a.side), Duration::from_secs(2));
        assert_eq!(a.bound_for(b.side), Duration::from_secs(2));
        // `a` beats every 200 ms: `b`, blocked for 600 ms, must not declare it dead.
        b.set_read_timeout(Some(Duration::from_millis(600)));
        let mut buf = [0u8; 1];
        assert_eq!(
            b.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        a.write_all(b"x").unwrap();
        b.read_exact(&mut buf).unwrap();
    }

    #[test]
    fn a_dead_holder_is_replaced_on_open() {
        let opts = Options::new().liveness_timeout(Duration::from_millis(100));
        let (r, a, b) = pair(&opts);
        crash(a);
        crash(b);
        let t = Instant::now();
        let mut c = Channel::open(&r, "t", &opts).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        let mut d = Channel::open(&r, "t", &opts).unwrap();
        c.write_all(b"ok").unwrap();
        let mut got = [0u8; 2];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        // Two live ends hold the channel: a third gets Busy.
        let e = Channel::open(
            &r,
            "t",
            &opts.clone().open_timeout(Duration::from_millis(50)),
        )
        .unwrap_err();
        assert!(matches!(e, ChannelError::Busy(_)), "{e}");
    }

    #[test]
    fn scribbled_index_is_corrupt_and_stays_so() {
        let (_r, mut a, mut b) = pair(&Options::new().capacity(64));
        a.write_all(b"abc").unwrap();
        a.mem.w64(a.out.prod).store(1 << 40, Relaxed);
        let mut buf = [0u8; 8];
        let e = b.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("producer index"), "{e}");
        a.mem.w64(a.out.prod).store(3, Relaxed);
        assert_eq!(
            b.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A garbage state word: no end wrote it for this session (its block may have been
        // taken back and reused), so the end is detached.
        a.mem.w64(ctl_word(&a)).store(u64::MAX, Relaxed);
        a.set_nonblocking(true);
        let mut buf = [0u8; 1];
        let e = a.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.to_string().contains("detached"), "{e}");
    }

    #[test]
    fn message_header_scribbles_are_corrupt() {
        let opts = Options::new().kind(Kind::Messages).capacity(64);
        let (_r, mut a, mut b) = pair(&opts);
        a.send(b"hello").unwrap();
        // Length 5 with a wrong check word.
        let data = a.out.data;
        a.mem.w32(data + 4).store(0, Relaxed);
        let e = b.recv(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("message header"), "{e}");
    }

    /// A sleeping end and a spinning one: the sleeper stops looking for announcements once it
    /// sees its peer does not notify, and backs off instead of sleeping; both directions flow.
    #[test]
    fn a_sleeping_end_and_a_spinning_one() {
        let (wa, _wb) = FdWaker::pair().unwrap();
        let r = Region::anonymous(1 << 20).unwrap();
        let o = Options::new().capacity(64).spin(100);
        let mut a = Channel::open(&r, "t", &o.clone().waker(Arc::new(wa))).unwrap();
        let mut b = Channel::open(&r, "t", &o).unwrap();
        assert_eq!(a.peer_sleeps, None);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let want = data.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            b.write_all(&got[..1000]).unwrap();
            got
        });
        a.write_all(&data).unwrap();
        assert_eq!(
            a.peer_sleeps,
            Some(false),
            "the spinning peer's side line says so"
        );
        a.close_write().unwrap();
        let mut back = vec![0u8; 1000];
        a.read_exact(&mut back).unwrap();
        assert_eq!(back, want[..1000]);
        assert_eq!(reader.join().unwrap(), want);
    }

    #[test]
    fn sleeping_ends_wake_each_other() {
        let (wa, wb) = FdWaker::pair().unwrap();
        let r = Region::anonymous(1 << 20).unwrap();
        let base = Options::new().capacity(64).spin(0);
        let mut a = Channel::open(&r, "t", &base.clone().waker(Arc::new(wa))).unwrap();
        let mut b = Channel::open(&r, "t", &base.waker(Arc::new(wb))).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&data).unwrap();
        a.close_write().unwrap();
        assert_eq!(reader.join().unwrap(), data);
    }
}
