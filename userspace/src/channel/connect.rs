//! The connecting side of connections: [`Channel::connect`] allocates its end's block naming
//! the listener, announces it, rings the listener, and waits until an acceptor's block names
//! it (layout in `conn_layout.rs`).

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use super::chan::{ATTACHED, CLOSED, SIDE_HEARTBEAT, SIDE_LIVENESS};
use super::conn_layout::{
    self as cl, BlockView, EndHeader, ACCEPTOR, CONNECTION, CONNECTOR, E_SIDE, E_STATE, L_SIDE,
};
use super::control::{end_state, end_word, Hold};
use super::heartbeat::Beat;
use super::listener::{self, alloc_end, end_channel, line_address, publish_line};
use super::liveness::{self, Watch};
use super::pagemap::Block;
use super::{Channel, ChannelError, Options, Region};

impl Channel {
    /// Connects to the listener of `service` in `region` (layout version 3, see
    /// [`super::Listener`]) and returns this end once the listener accepted, with rings of
    /// [`Options::capacity`] bytes each way.
    ///
    /// `ConnectionRefused` when no listener has the name, or the listener closes or dies
    /// before accepting; `TimedOut` when it does not accept within [`Options::open_timeout`];
    /// `InvalidInput` when the service carries the other [`super::Kind`].
    ///
    /// On a pair ([`Region::map_pair`]) the listener is looked for in the peer's memory: a
    /// connection always joins the two sides.
    pub fn connect(region: &Region, service: &str, opts: &Options) -> Result<Self, ChannelError> {
        cl::check_name(service)?;
        let arena = cl::attach(region, opts.open_timeout_value())?;
        arena.tidy(opts.liveness_bound());
        let deadline = Instant::now().checked_add(opts.open_timeout_value());
        let Some(l) = listener::find(&arena.peer, service) else {
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
        let opts = &opts.for_one_end()?;
        let cap = opts.capacity_value();
        let header = EndHeader {
            role: CONNECTOR,
            kind: l.kind,
            names: (l.block.head, l.block.gen),
            cap,
        };
        let b = alloc_end(&arena, &header, opts, &format!("connection to '{service}'"))?;
        let (own, peer) = (&arena.own, &arena.peer);
        let mem = own.mem().clone();
        let v = BlockView::new(own, &mem, &b);
        // The side line names the session (this block's generation), so the acceptor can ring
        // us; the heartbeat beats while we wait, so no sweep takes the block for dead.
        publish_line(&v, E_SIDE, b.gen, opts)?;
        let waiting = end_word(b.gen, ATTACHED);
        // Release: an acceptor that finds it waiting (acquire) sees the header and the line.
        v.w64(E_STATE)?.store(waiting, Release);
        let beat = Beat::start(
            mem.clone(),
            Hold {
                word: v.off + E_STATE,
                value: waiting,
            },
            v.off + E_SIDE + SIDE_HEARTBEAT,
            opts.liveness_bound() / 10,
        );
        let withdraw = |why: ChannelError| {
            // Nobody accepted: the block is nobody's. An acceptor that joined meanwhile finds
            // it closed and frees both blocks; freeing ours twice is harmless.
            let _ = v
                .w64(E_STATE)
                .map(|w| w.store(end_word(b.gen, CLOSED), Release));
            own.free(&b);
            why
        };
        let beat = beat.map_err(|e| withdraw(e.into()))?;
        cl::announce(own);

        let lv = BlockView::new(peer, &mem, &l.block);
        let waker = opts.waker_ref();
        let _ = waker.notify(line_address(&lv, L_SIDE, l.block.gen));
        let refused = |why: &str| {
            ChannelError::Refused(format!(
                "the listener of '{service}' {why} before accepting"
            ))
        };
        // Wait for the acceptor, watching the listener.
        let mut watch = None;
        let mut seen = None;
        let mut backoff = Duration::from_micros(1);
        let slice = opts.liveness_bound() / 10;
        let acceptor = loop {
            if let Some(a) = acceptor_of(peer, &b, &mut seen)? {
                break a;
            }
            if !peer.current(&l.block) || !listener::listening(&lv, &l.block) {
                return Err(withdraw(refused("closed")));
            }
            let now = Instant::now();
            let hb = lv.w64(L_SIDE + SIDE_HEARTBEAT)?.load(Relaxed);
            let bound = liveness::agreed(
                opts.liveness_bound(),
                lv.w32(L_SIDE + SIDE_LIVENESS)?.load(Relaxed),
            );
            if Watch::dead(&mut watch, l.block.gen, hb, now, bound) {
                return Err(withdraw(refused("died")));
            }
            let mut wait = slice;
            if let Some(d) = deadline {
                if now >= d {
                    return Err(withdraw(ChannelError::TimedOut));
                }
                wait = wait.min(d - now);
            }
            if waker.sleeps() {
                waker.wait(wait)?;
            } else {
                waker.wait(backoff.min(wait))?;
                backoff = (backoff * 2).min(Duration::from_millis(1));
            }
        };
        let (a, acap) = acceptor;
        let av = BlockView::new(peer, &mem, &a);
        let mut chan = end_channel(&mem, service, l.kind, [&v, &av], [cap, acap], 0, opts)?;
        chan.start(0, b.gen, Some(arena.retire(b, Some(a))))?;
        // The channel beats from here.
        beat.stop();
        Ok(chan)
    }
}

/// The acceptor block that names connector block `b`, with the capacity of its ring, once one
/// is ready; the map is scanned again only when the count of announced blocks moved since
/// `seen`.
pub(super) fn acceptor_of(
    arena: &super::arena::Arena,
    b: &Block,
    seen: &mut Option<u64>,
) -> Result<Option<(Block, u64)>, ChannelError> {
    let count = cl::announced(arena)?.load(Acquire);
    if *seen == Some(count) {
        return Ok(None);
    }
    *seen = Some(count);
    let mem = arena.mem();
    Ok(arena
        .blocks()
        .into_iter()
        .filter(|a| a.kind == CONNECTION)
        .find_map(|a| {
            let v = BlockView::new(arena, mem, &a);
            let w = v.w64(E_STATE).ok()?.load(Acquire);
            end_state(w, a.gen)?;
            let h = EndHeader::read(&v)?;
            let mine = h.role == ACCEPTOR && h.names == (b.head, b.gen);
            (mine && cl::still(arena, &a)).then_some((a, h.cap))
        }))
}

#[cfg(test)]
mod tests {
    use super::super::{usage, Listener, Options, Region};
    use super::*;
    use crate::pattern;
    use std::io::{Read, Write};

    fn opts() -> Options {
        Options::new()
            .capacity(16384)
            .liveness_timeout(Duration::from_millis(500))
            .open_timeout(Duration::from_secs(20))
    }

    /// Maps `c`'s peer block read-only in this process: a write to it is a SIGSEGV.
    fn protect_peer(region: &Region, c: &Channel) {
        let (off, len) = c.peer_block().expect("a connection's end");
        // SAFETY: A page-aligned range inside this process's mapping of the region (the
        // block lies in the region); only its protection changes.
        let rc = unsafe {
            crate::sys::mprotect(region.as_ptr().add(off).cast(), len, crate::sys::PROT_READ)
        };
        assert_eq!(rc, 0, "mprotect");
    }

    /// The connecting child: echoes the stream back with the acceptor's block read-only.
    #[test]
    fn single_writer_child() {
        let Ok(path) = std::env::var("SINGLE_WRITER_CHILD") else {
            return;
        };
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let region = Region::map_file(&f).unwrap();
        let mut c = Channel::connect(&region, "svc", &opts()).unwrap();
        protect_peer(&region, &c);
        let mut buf = vec![0u8; 5000];
        loop {
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            c.write_all(&buf[..n]).unwrap();
        }
        drop(c);
    }

    /// The single-writer layout, checked by the MMU: each end of a connection between two
    /// processes maps its peer's block read-only, and 4 MiB go each way (echoed, compared),
    /// then both close. Any store of an end into its peer's block would kill it with SIGSEGV.
    /// Both blocks are freed afterwards (in the page map, which both may write).
    #[test]
    fn each_end_writes_only_its_own_block() {
        let path = std::env::temp_dir().join(format!("single-writer-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let region = Region::map_file(&f).unwrap();
        let l = Listener::bind(&region, "svc", &opts()).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "channel::connect::tests::single_writer_child",
                "--exact",
                "--test-threads=1",
            ])
            .env("SINGLE_WRITER_CHILD", &path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = l.accept().unwrap();
        protect_peer(&region, &s);
        let total = 4u64 << 20;
        let (mut tx, mut rx) = s.split();
        let reader = std::thread::spawn(move || {
            let mut pos = 0u64;
            let mut buf = vec![0u8; 7000];
            loop {
                let n = rx.read(&mut buf).unwrap();
                if n == 0 {
                    return pos;
                }
                let bad = pattern::first_mismatch(5, pos, &buf[..n]);
                assert_eq!(bad, None, "echo differs near {pos}");
                pos += n as u64;
            }
        });
        let mut pos = 0u64;
        let mut chunk = vec![0u8; 6000];
        while pos < total {
            let k = 6000.min(total - pos) as usize;
            pattern::fill(5, pos, &mut chunk[..k]);
            tx.write_all(&chunk[..k]).unwrap();
            pos += k as u64;
        }
        drop(tx);
        assert_eq!(reader.join().unwrap(), total);
        let st = child.wait().unwrap();
        assert!(st.success(), "the connecting end: {st:?}");
        drop(l);
        let u = usage(&region).unwrap();
        assert_eq!((u.ends, u.pages_used), (0, 0), "{u:?}");
        std::fs::remove_file(&path).unwrap();
    }
}
