//! The serving side of connections: a [`Listener`] names a service in a region of layout
//! version 2 (`conn_layout.rs`) and accepts the connections that [`Channel::connect`] makes to
//! it, each with rings of its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::chan::{
    Ring, ATTACHED, CLOSED, MAX_ADDRESS, SIDE_ADDRESS, SIDE_EPOCH, SIDE_HEARTBEAT, SIDE_LIVENESS,
    SIDE_NOTIFIES,
};
use super::conn_layout::Arenas;
use super::conn_layout::{
    self as cl, BlockView, EndHeader, ACCEPTOR, CONNECTION, CONNECTOR, E_CLOSED, E_CONS, E_DATA,
    E_PROD, E_SIDE, E_STATE, LISTENER, L_KIND, L_NAME, L_NAME_LEN, L_SIDE, L_STATE,
};
use super::control::{end_state, end_word, Control, Hold};
use super::heartbeat::Beat;
use super::layout::Kind;
use super::liveness::{self, Watch};
use super::pagemap::Block;
use super::reclaim;
use super::{Channel, ChannelError, Options, Region};

/// A service that accepts connections: the server side of [`Channel::connect`].
///
/// ```
/// use ivshmem::channel::{Channel, Listener, Options, Region};
/// use std::io::{Read, Write};
///
/// let region = Region::anonymous(1 << 20)?;
/// let opts = Options::new().capacity(4096);
/// let listener = Listener::bind(&region, "echo", &opts)?;
/// let client = std::thread::spawn({
///     let (region, opts) = (region.clone(), opts.clone());
///     move || -> std::io::Result<Vec<u8>> {
///         let mut c = Channel::connect(&region, "echo", &opts)?;
///         c.write_all(b"hi")?;
///         c.close_write()?;
///         let mut back = Vec::new();
///         c.read_to_end(&mut back)?;
///         Ok(back)
///     }
/// });
/// let mut server = listener.accept()?;
/// let mut got = Vec::new();
/// server.read_to_end(&mut got)?;
/// server.write_all(&got)?;
/// drop(server);
/// assert_eq!(client.join().unwrap()?, b"hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Each accepted connection has its own rings, so connections come and go independently;
/// the memory of a connection is freed when both of its ends are gone (or dead: see
/// `reclaim.rs`), and the listener's when it is dropped. A listener that died is noticed by
/// the next [`bind`](Self::bind) of its name, which then takes its place, and by pending
/// connects, which fail with `ConnectionRefused`.
///
/// # Invariants
///
/// `block` is a listener block this end allocated in `arena.own` and published with its
/// generation in its state word.
pub struct Listener {
    arena: Arenas,
    block: Block,
    service: String,
    kind: Kind,
    opts: Options,
    beat: Option<Arc<Beat>>,
    nonblocking: bool,
    timeout: Option<Duration>,
    last_sweep: Mutex<Instant>,
    /// What accepting saw of the region.
    ///
    /// # Locking
    ///
    /// Held for one scan of the map and the joins it makes (by one `accept` at a time); the
    /// region's sightings lock (`reclaim::sweep`) is never taken under it.
    pending: Mutex<Pending>,
}

/// The connector blocks this listener took (joined or found not to be joinable), and the count
/// of announced blocks at its last scan that found nothing new.
#[derive(Default)]
struct Pending {
    taken: HashMap<(u32, u32), Block>,
    seen: Option<u64>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("service", &self.service)
            .field("kind", &self.kind)
            .field("block", &self.block)
            .finish()
    }
}

/// A live listener found in the arena.
pub(super) struct Found {
    pub block: Block,
    pub kind: Kind,
}

/// Whether listener block `b` listens: its state word says so (acquire: its fields are
/// visible then).
pub(super) fn listening(v: &BlockView<'_>, b: &Block) -> bool {
    v.w64(L_STATE)
        .is_ok_and(|w| w.load(Acquire) == end_word(b.gen, ATTACHED))
}

/// The live listener of `service` (its state word shows it listening), the one at the
/// lowest page if a race left two.
pub(super) fn find(arena: &Arena, service: &str) -> Option<Found> {
    let mem = arena.mem();
    arena
        .blocks()
        .into_iter()
        .filter(|b| b.kind == LISTENER)
        .find_map(|b| {
            let v = BlockView::new(arena, mem, &b);
            if !listening(&v, &b) || v.name()? != service || !cl::still(arena, &b) {
                return None;
            }
            let kind = cl::kind_of(v.w32(L_KIND).ok()?.load(Relaxed))?;
            Some(Found { block: b, kind })
        })
}

/// Allocates a block in this end's own arena, sweeping what dead ends left when there is no
/// room.
pub(super) fn alloc(
    arenas: &Arenas,
    kind: u8,
    pages: u32,
    opts: &Options,
    what: &str,
) -> Result<Block, ChannelError> {
    let stale = opts.liveness_bound();
    let arena = &arenas.own;
    let r = match arena.alloc(kind, pages, stale) {
        Err(ChannelError::NoSpace { .. }) if reclaim::sweep(arenas, stale, stale) > 0 => {
            arena.alloc(kind, pages, stale)
        }
        r => r,
    };
    r.map_err(|e| match e {
        ChannelError::NoSpace { need, free, .. } => ChannelError::NoSpace {
            name: what.to_string(),
            need,
            free,
        },
        e => e,
    })
}

/// Allocates the block of a channel end with header `h` (its ring of `h.cap` bytes after the
/// first page) in this end's own arena and writes the header; its state word stays 0
/// (unpublished) for the caller.
pub(super) fn alloc_end(
    arenas: &Arenas,
    h: &EndHeader,
    opts: &Options,
    what: &str,
) -> Result<Block, ChannelError> {
    let b = alloc(arenas, CONNECTION, cl::end_pages(h.cap)?, opts, what)?;
    let arena = &arenas.own;
    h.write(&BlockView::new(arena, arena.mem(), &b))?;
    Ok(b)
}

/// Publishes side line `line` of an end with `opts`'s waker: address, notifies, liveness,
/// then the epoch (release), as a channel end does.
pub(super) fn publish_line(
    v: &BlockView<'_>,
    line: u64,
    gen: u32,
    opts: &Options,
) -> Result<(), ChannelError> {
    let address = opts.waker_ref().address().filter(|&a| a <= MAX_ADDRESS);
    v.w32(line + SIDE_ADDRESS)?
        .store(address.map_or(0, |a| a + 1), Relaxed);
    v.w32(line + SIDE_NOTIFIES)?
        .store(u32::from(opts.waker_ref().sleeps()), Relaxed);
    v.w32(line + SIDE_LIVENESS)?
        .store(liveness::to_word(opts.liveness_bound()), Relaxed);
    v.w64(line + SIDE_EPOCH)?.store(u64::from(gen), Release);
    Ok(())
}

/// The doorbell address side line `line` published for generation `gen`, if any.
pub(super) fn line_address(v: &BlockView<'_>, line: u64, gen: u32) -> Option<u32> {
    if v.w64(line + SIDE_EPOCH).ok()?.load(Acquire) != u64::from(gen) {
        return None;
    }
    let a = v.w32(line + SIDE_ADDRESS).ok()?.load(Relaxed);
    a.checked_sub(1).filter(|&a| a <= MAX_ADDRESS)
}

impl Listener {
    /// Listens for connections to `service` (1 to 32 bytes) in `region`, laying out a zeroed
    /// region as version 3 first. Connections carry `opts`'s kind; accepted ends get `opts`'s
    /// waiting and liveness settings.
    ///
    /// A live listener of the same name makes this fail with `AddrInUse`; one whose heartbeat
    /// stood still for its liveness bound (its process died) is taken over, which takes up to
    /// seven tenths of that bound. A region of layout version 1 is an error.
    ///
    /// On a pair ([`Region::map_pair`]) the listener lies in this end's own memory and
    /// connectors on the other side find it; the name must be unique on this side only.
    pub fn bind(region: &Region, service: &str, opts: &Options) -> Result<Self, ChannelError> {
        cl::check_name(service)?;
        let arena = cl::attach(region, opts.open_timeout_value())?;
        arena.tidy(opts.liveness_bound());
        let deadline = Instant::now().checked_add(opts.open_timeout_value());
        Self::take_over(&arena.own, service, opts, deadline)?;
        let block = alloc(&arena, LISTENER, 1, opts, &format!("listener '{service}'"))?;
        let mem = arena.own.mem().clone();
        let v = BlockView::new(&arena.own, &mem, &block);
        v.w32(L_NAME_LEN)?.store(service.len() as u32, Relaxed);
        v.w32(L_KIND)?
            .store(cl::kind_code(opts.kind_value()), Relaxed);
        mem.copy_in(v.off + L_NAME, service.as_bytes())?;
        publish_line(&v, L_SIDE, block.gen, opts)?;
        let listening = end_word(block.gen, ATTACHED);
        // Release: a connector that sees it listening (acquire, `find`) sees its fields.
        v.w64(L_STATE)?.store(listening, Release);
        let mut me = Self {
            arena,
            block,
            service: service.to_string(),
            kind: opts.kind_value(),
            opts: opts.clone(),
            beat: None,
            nonblocking: false,
            timeout: None,
            last_sweep: Mutex::new(Instant::now()),
            pending: Mutex::new(Pending::default()),
        };
        // Two binds that raced both published: the one at the lower page keeps the name.
        if find(&me.arena.own, service).is_some_and(|f| f.block != me.block) {
            return Err(in_use(service));
        }
        me.beat = Some(Beat::start(
            mem.clone(),
            Hold {
                word: v.off + L_STATE,
                value: listening,
            },
            v.off + L_SIDE + SIDE_HEARTBEAT,
            opts.liveness_bound() / 10,
        )?);
        Ok(me)
    }

    /// Waits until no live listener holds `service`: a live one (its heartbeat advances) is an
    /// error, a dead one's block is freed (in the map: its words stay its own).
    fn take_over(
        arena: &Arena,
        service: &str,
        opts: &Options,
        deadline: Option<Instant>,
    ) -> Result<(), ChannelError> {
        let mut seen: Option<(Block, u64)> = None;
        let mut watch = None;
        let mem = arena.mem();
        while let Some(f) = find(arena, service) {
            let v = BlockView::new(arena, mem, &f.block);
            let hb = v.w64(L_SIDE + SIDE_HEARTBEAT)?.load(Relaxed);
            let bound = liveness::agreed(
                opts.liveness_bound(),
                v.w32(L_SIDE + SIDE_LIVENESS)?.load(Relaxed),
            );
            match seen {
                Some((b, first)) if b == f.block && first != hb => return Err(in_use(service)),
                Some((b, _)) if b == f.block => {}
                _ => {
                    seen = Some((f.block, hb));
                    watch = None;
                }
            }
            if Watch::dead(&mut watch, f.block.gen, hb, Instant::now(), bound) {
                arena.free(&f.block);
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(ChannelError::Busy(format!(
                    "service '{service}' is held by a listener that neither beats nor died \
                     within the open timeout"
                )));
            }
            std::thread::sleep(bound / 10);
        }
        Ok(())
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether [`accept`](Self::accept) returns `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    /// How long [`accept`](Self::accept) waits before `TimedOut`; `None` waits for ever.
    pub fn set_accept_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    /// The waker's descriptor (doorbell or eventfd wakers), readable when a connector rings:
    /// for poll loops in non-blocking mode; poll at most a tenth of the liveness timeout.
    pub fn as_raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.opts.waker_ref().as_raw_fd()
    }

    /// Waits for the next connection and returns its accepting end. Each call also looks for
    /// connections and listeners whose processes died, at most ten times per liveness timeout,
    /// and frees their memory.
    pub fn accept(&self) -> Result<Channel, ChannelError> {
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let mut backoff = Duration::from_micros(1);
        let slice = self.opts.liveness_bound() / 10;
        loop {
            if let Some(c) = self.take_pending()? {
                return Ok(c);
            }
            self.check_held()?;
            self.sweep_now_and_then(slice);
            if self.nonblocking {
                self.opts.waker_ref().clear();
                if let Some(c) = self.take_pending()? {
                    return Ok(c);
                }
                return Err(ChannelError::WouldBlock);
            }
            let now = Instant::now();
            let mut wait = slice;
            if let Some(d) = deadline {
                if now >= d {
                    return Err(ChannelError::TimedOut);
                }
                wait = wait.min(d - now);
            }
            let waker = self.opts.waker_ref();
            if waker.sleeps() {
                waker.wait(wait)?;
            } else {
                waker.wait(backoff.min(wait))?;
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
    }

    /// An error once this listener's block was taken back (it stalled longer than its bound
    /// and a new listener took its name): it must be bound again.
    fn check_held(&self) -> Result<(), ChannelError> {
        let v = self.view();
        if self.arena.own.current(&self.block) && listening(&v, &self.block) {
            return Ok(());
        }
        Err(ChannelError::PeerGone(format!(
            "the listener of '{}' was declared dead (it stalled longer than its liveness \
             bound): bind again",
            self.service
        )))
    }

    fn sweep_now_and_then(&self, every: Duration) {
        let mut last = self
            .last_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.elapsed() >= every {
            *last = Instant::now();
            drop(last);
            let bound = self.opts.liveness_bound();
            reclaim::sweep(&self.arena, bound, bound);
        }
    }

    fn view(&self) -> BlockView<'_> {
        BlockView::new(&self.arena.own, self.arena.own.mem(), &self.block)
    }

    /// Joins the next connector block that names this listener and still waits, scanning the
    /// map only when a block was announced since the last scan that found nothing. Connectors
    /// lie in the peer's arena (the same one on one region), acceptors in this side's own.
    fn take_pending(&self) -> Result<Option<Channel>, ChannelError> {
        let arena = &self.arena.peer;
        let count = cl::announced(arena)?.load(Acquire);
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.seen == Some(count) {
            return Ok(None);
        }
        let blocks = arena.blocks();
        // Only what is gone for good is forgotten (a block made during a scan may be missed).
        p.taken.retain(|_, b| arena.current(b));
        let me = (self.block.head, self.block.gen);
        let mem = arena.mem().clone();
        // Connectors that have an acceptor (published or being published) are someone's.
        let own = &self.arena.own;
        let accepted: HashSet<(u32, u32)> = own
            .blocks()
            .iter()
            .filter(|b| b.kind == CONNECTION)
            .filter_map(|b| {
                let h = EndHeader::read(&BlockView::new(own, &mem, b))?;
                cl::still(own, b).then_some(h)
            })
            .filter(|h| h.role == ACCEPTOR)
            .map(|h| h.names)
            .collect();
        for b in blocks.iter().filter(|b| b.kind == CONNECTION) {
            if p.taken.contains_key(&(b.head, b.gen)) || accepted.contains(&(b.head, b.gen)) {
                continue;
            }
            let v = BlockView::new(arena, &mem, b);
            let waiting = v
                .w64(E_STATE)
                .is_ok_and(|w| w.load(Acquire) == end_word(b.gen, ATTACHED));
            let Some(h) = waiting.then(|| EndHeader::read(&v)).flatten() else {
                continue;
            };
            if !cl::still(arena, b) {
                continue;
            }
            if h.role != CONNECTOR || h.names != me {
                continue;
            }
            p.taken.insert((b.head, b.gen), *b);
            if h.kind != self.kind {
                continue;
            }
            // More may wait: the next call scans again (`seen` stays as it was).
            match self.join(b, &h) {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                Err(e) => {
                    // No room for our end, say: a later accept tries this connector again.
                    p.taken.remove(&(b.head, b.gen));
                    return Err(e);
                }
            }
        }
        p.seen = Some(count);
        Ok(None)
    }

    /// Joins connector block `c` (header `h`, waiting when it was read): allocates this end's
    /// block naming it, publishes and announces it, and returns the channel; `None` if the
    /// connector gave up meanwhile.
    fn join(&self, c: &Block, h: &EndHeader) -> Result<Option<Channel>, ChannelError> {
        let header = EndHeader {
            role: ACCEPTOR,
            kind: self.kind,
            names: (c.head, c.gen),
            cap: h.cap,
        };
        let what = format!("connection to '{}'", self.service);
        let b = alloc_end(&self.arena, &header, &self.opts, &what)?;
        let (own, peer) = (&self.arena.own, &self.arena.peer);
        let mem = own.mem().clone();
        let v = BlockView::new(own, &mem, &b);
        // Release: a connector that finds this block ready (acquire) sees its header.
        v.w64(E_STATE)?.store(end_word(b.gen, ATTACHED), Release);
        cl::announce(own);
        let retire = self.arena.retire(b, Some(*c));
        let cv = BlockView::new(peer, &mem, c);
        let still = peer.current(c)
            && cv
                .w64(E_STATE)
                .is_ok_and(|w| end_state(w.load(Acquire), c.gen) == Some((ATTACHED, 0)));
        if !still {
            // It gave up (or died) meanwhile: nobody will use either block.
            v.w64(E_STATE)?.store(end_word(b.gen, CLOSED), Release);
            retire.free();
            return Ok(None);
        }
        let opts = self.opts.for_one_end()?;
        let mut chan = end_channel(
            &mem,
            &self.service,
            self.kind,
            [&cv, &v],
            [h.cap; 2],
            1,
            &opts,
        )?;
        chan.start(1, c.gen, Some(retire))?;
        chan.notify_peer();
        Ok(Some(chan))
    }
}

/// The channel of a connection's end `side` (0 the connector, 1 the acceptor) on its two blocks
/// (`ends[0]` the connector's) whose rings have capacities `caps` (read from their headers and
/// checked against the blocks), not started yet.
pub(super) fn end_channel(
    mem: &Arc<super::region::Mem>,
    service: &str,
    kind: Kind,
    ends: [&BlockView<'_>; 2],
    caps: [u64; 2],
    side: usize,
    opts: &Options,
) -> Result<Channel, ChannelError> {
    let (mine, peer) = (ends[side], ends[1 - side]);
    // Every word below is checked to lie inside its block (and so the region) and aligned;
    // the payloads were checked against the blocks with the capacities.
    for v in ends {
        v.w64(E_STATE)?;
        v.w64(E_SIDE + SIDE_HEARTBEAT)?;
        v.w64(E_PROD + 8)?;
        v.w32(E_CLOSED)?;
        v.w64(E_CONS + 8)?;
    }
    let ctl = Control::Owned {
        own: (mine.off + E_STATE) as usize,
        own_word: end_word(mine.gen, ATTACHED),
        peer: (peer.off + E_STATE) as usize,
        peer_word: end_word(peer.gen, ATTACHED),
    };
    let sides = ends.map(|v| (v.off + E_SIDE) as usize);
    let out = Ring::on_lines(
        mine.off + E_PROD,
        mine.off + E_CLOSED,
        peer.off + E_CONS,
        mine.off + E_DATA,
        caps[side],
    );
    let inp = Ring::on_lines(
        peer.off + E_PROD,
        peer.off + E_CLOSED,
        mine.off + E_CONS,
        peer.off + E_DATA,
        caps[1 - side],
    );
    Ok(Channel::on_lines(
        mem.clone(),
        service,
        kind,
        ctl,
        sides,
        [out, inp],
        opts,
    ))
}

impl Drop for Listener {
    /// Stops listening: pending connects fail with `ConnectionRefused`, the block is freed.
    fn drop(&mut self) {
        if let Some(beat) = self.beat.take() {
            beat.stop();
        }
        let listening = end_word(self.block.gen, ATTACHED);
        let closed = end_word(self.block.gen, CLOSED);
        // Only while the block is still ours (a stalled listener's may have been taken back).
        if self.arena.own.current(&self.block) {
            if let Ok(w) = self.view().w64(L_STATE) {
                let _ = w.compare_exchange(listening, closed, Release, Relaxed);
            }
            self.arena.own.free(&self.block);
        }
        // Connectors that wait on our doorbell look at the listener once per slice anyway.
    }
}

fn in_use(service: &str) -> ChannelError {
    ChannelError::InUse(format!("service '{service}' has a live listener"))
}
