//! The connecting side of connections: [`Channel::connect`] allocates a connection block with
//! its rings, puts it in the listener's backlog, rings the listener, and waits until it is
//! accepted.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::chan::{holds, side_state, ATTACHED, C_CTL, FREE, SIDE_HEARTBEAT, SIDE_LIVENESS};
use super::conn_layout::{
    self as cl, BlockView, BACKLOG, CONNECTION, L_BACKLOG, L_CTL, L_SIDE, N_CAP, N_CHAN, N_KIND,
    N_LISTENER,
};
use super::listener::{self, alloc, line_address};
use super::liveness::{self, Watch};
use super::reclaim::Retire;
use super::{Channel, ChannelError, Options, Region};

impl Channel {
    /// Connects to the listener of `service` in `region` (layout version 2, see
    /// [`super::Listener`]) and returns this end once the listener accepted, with rings of
    /// [`Options::capacity`] bytes each way.
    ///
    /// `ConnectionRefused` when no listener has the name, or the listener closes or dies
    /// before accepting; `TimedOut` when it does not accept within [`Options::open_timeout`];
    /// `InvalidInput` when the service carries the other [`super::Kind`].
    pub fn connect(region: &Region, service: &str, opts: &Options) -> Result<Self, ChannelError> {
        cl::check_name(service)?;
        let arena = cl::attach(region, opts.open_timeout_value())?;
        let deadline = Instant::now().checked_add(opts.open_timeout_value());
        let Some(l) = listener::find(&arena, service) else {
            return Err(ChannelError::Refused(format!(
                "no listener for service '{service}' in this region"
            )));
        };
        if l.kind != opts.kind_value() {
            return Err(ChannelError::Invalid(format!(
                "service '{service}' carries {:?}, not {:?}",
                l.kind,
                opts.kind_value()
            )));
        }
        // Each end its own waker where ends must not share one (a doorbell's file).
        let own;
        let opts = match opts.waker_ref().another()? {
            Some(w) => {
                own = opts.clone().waker(w);
                &own
            }
            None => opts,
        };
        let cap = opts.capacity_value();
        let pages = cl::connection_pages(cap)?;
        let b = alloc(
            &arena,
            CONNECTION,
            pages,
            opts,
            &format!("connection to '{service}'"),
        )?;
        let mem = arena.mem().clone();
        let v = BlockView::new(&arena, &mem, &b);
        v.w32(N_LISTENER)?.store(l.block.head, Relaxed);
        v.w32(N_LISTENER + 4)?.store(l.block.gen, Relaxed);
        v.w32(N_KIND)?.store(cl::kind_code(l.kind), Relaxed);
        for at in N_CAP {
            v.w32(at)?.store(cap as u32, Relaxed);
        }
        let ctl = v.w64(N_CHAN + C_CTL)?;
        // Release: an acceptor whose compare-and-swap reads it sees the header and the empty
        // (zeroed) rings. From here the block is the channel's: its drop frees it.
        ctl.store(u64::from(b.gen) << 32 | u64::from(ATTACHED), Release);
        let mut chan =
            Channel::on_block(mem.clone(), service, l.kind, v.off + N_CHAN, [cap; 2], opts);
        chan.start(
            0,
            b.gen,
            Some(Retire {
                arena: arena.clone(),
                block: b,
            }),
        )?;

        let lv = BlockView::new(&arena, &mem, &l.block);
        let listening = |lv: &BlockView<'_>| {
            arena.current(&l.block)
                && lv
                    .w64(L_CTL)
                    .is_ok_and(|w| holds(w.load(Acquire), l.block.gen, 0))
        };
        let refused = |why: &str| {
            ChannelError::Refused(format!(
                "the listener of '{service}' {why} before accepting"
            ))
        };
        // Into the backlog: the first free word.
        let word = cl::backlog_word(&b);
        let mut posted = None;
        while posted.is_none() {
            for i in 0..BACKLOG {
                let slot = lv.w64(L_BACKLOG + 8 * u64::from(i))?;
                if slot.load(Relaxed) == 0
                    && slot.compare_exchange(0, word, AcqRel, Relaxed).is_ok()
                {
                    posted = Some(slot);
                    break;
                }
            }
            if posted.is_none() {
                if !listening(&lv) {
                    return Err(refused("closed"));
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Err(ChannelError::Busy(format!(
                        "the backlog of service '{service}' stayed full ({BACKLOG} pending \
                         connections)"
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let posted = posted.expect("the loop ends once posted");
        let _ = chan.waker().notify(line_address(&lv, L_SIDE, l.block.gen));

        // Wait for the acceptor, watching the listener.
        let mut watch = None;
        let mut backoff = Duration::from_micros(1);
        let slice = opts.liveness_bound() / 10;
        let withdraw = || {
            // Leave the backlog word to nobody; the block itself is freed by our drop.
            let _ = posted.compare_exchange(word, 0, AcqRel, Relaxed);
        };
        loop {
            let w = ctl.load(Acquire);
            if side_state(w, 1) != FREE {
                return Ok(chan);
            }
            if !listening(&lv) {
                withdraw();
                return Err(refused("closed"));
            }
            let now = Instant::now();
            let hb = lv.w64(L_SIDE + SIDE_HEARTBEAT)?.load(Relaxed);
            let bound = liveness::agreed(
                opts.liveness_bound(),
                lv.w32(L_SIDE + SIDE_LIVENESS)?.load(Relaxed),
            );
            if Watch::dead(&mut watch, l.block.gen, hb, now, bound) {
                withdraw();
                return Err(refused("died"));
            }
            let mut wait = slice;
            if let Some(d) = deadline {
                if now >= d {
                    withdraw();
                    return Err(ChannelError::TimedOut);
                }
                wait = wait.min(d - now);
            }
            if chan.waker().sleeps() {
                chan.waker().wait(wait)?;
            } else {
                chan.waker().wait(backoff.min(wait))?;
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        }
    }
}
