//! How a channel end is opened and waits ([`Options`], [`Wait`]): the settings every way of
//! opening one takes.

use std::sync::Arc;
use std::time::Duration;

use super::layout::Kind;
use super::liveness;
use super::wait::{SpinWaker, Waker};
use super::ChannelError;

/// How [`Channel::open`](super::Channel::open) opens a channel and how the channel waits.
#[derive(Clone)]
pub struct Options {
    kind: Kind,
    capacity: u64,
    create: bool,
    pub(super) spin: u32,
    pub(super) spin_hint: bool,
    pub(super) liveness: Duration,
    open_timeout: Duration,
    pub(super) waker: Arc<dyn Waker>,
    pub(super) wait: Wait,
}

/// How [`Channel::open_path`](super::Channel::open_path) makes an end wait for its peer (ends opened on a
/// [`Region`](super::Region) use the [`Options::waker`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wait {
    /// The doorbell when the device has one, else [`Options::waker`] (spinning by default).
    #[default]
    Auto,
    /// Spin, then back off with short sleeps ([`SpinWaker`]): works on any region.
    Spin,
    /// Sleep in `IVSHMEM_WAIT` and ring the peer only when it announced that it sleeps
    /// ([`DoorbellWaker`](super::DoorbellWaker)); an error on a region without a doorbell.
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

    /// How [`Channel::open_path`](super::Channel::open_path) chooses the waker (default [`Wait::Auto`]).
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
