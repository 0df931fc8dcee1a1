//! Where an end learns whether it and its peer are still in their session.
//!
//! Named channels (layout version 1) keep both sides' states in one control word that both
//! ends change by compare-and-swap. Connections (layout version 2, `conn_layout.rs`) have two
//! blocks, one per end, and each end's state word lies in its own block, written by that end
//! alone: an end that declares its peer dead says so in its own word (the verdict), and the
//! peer reads it there. No word of a connection has two writers, which is what a read-only
//! mapping of the peer's memory needs (issue 19).
//!
//! A state word of a connection end (u64):
//!
//! | bits | field |
//! |---|---|
//! | 0-7 | state: `ATTACHED`, then `CLOSED` (left cleanly) or `DEAD` (left after a violation or an abort) |
//! | 8-15 | verdict on the peer: 0, or `DEAD` once this end declared it dead |
//! | 32-63 | the block's generation (from the page map): a reused block's word never matches |
//!
//! An end is in its session while its own word still carries its generation and `ATTACHED`,
//! and its peer's word carries the peer's generation, no verdict against it, and a state the
//! peer wrote for this session. Both words are read on the hot path (two loads: the own word's
//! line is this end's and rarely written, the peer's is the peer's and rarely written).
//!
//! Public only for the loom model in `tests/channel_loom.rs` ([`leave`], [`end_word`] and the
//! states); not a stable interface.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use super::chan::{decode, side_state, with_state, Shm, FREE, GONE};
use super::protocol::{Atomics, Std};
use super::ChannelError;

/// State of an end that holds its side (the value of `chan`'s constant of that name).
pub const ATTACHED: u8 = super::chan::ATTACHED;
/// State of an end that left cleanly (the value of `chan`'s constant of that name).
pub const CLOSED: u8 = super::chan::CLOSED;
/// State of an end that left after a violation or an abort, and the verdict an end writes on
/// a peer it declared dead (the value of `chan`'s constant of that name).
pub const DEAD: u8 = super::chan::DEAD;

/// The verdict bits of a connection end's state word.
const VERDICT: u64 = 0xff << 8;

/// Version 1's control word holds `side` attached to `session`: the bits and their value.
fn shared_check(session: u32, side: usize) -> (u64, u64) {
    let mask = 0xffff_ffff_u64 << 32 | 0xff << (8 * side);
    (
        mask,
        u64::from(session) << 32 | u64::from(ATTACHED) << (8 * side),
    )
}

/// A connection end's state word: generation `gen`, state `state`, no verdict.
pub fn end_word(gen: u32, state: u8) -> u64 {
    u64::from(gen) << 32 | u64::from(state)
}

/// The state of a connection end's word `w` if it carries generation `gen` and is a word an
/// honest end writes; `None` for another generation (the block was freed, maybe reused) or
/// garbage.
pub(super) fn end_state(w: u64, gen: u32) -> Option<(u8, u8)> {
    let state = w as u8;
    let verdict = (w >> 8) as u8;
    let ok = (w >> 32) as u32 == gen
        && (w >> 16) & 0xffff == 0
        && matches!(state, ATTACHED | CLOSED | DEAD)
        && (verdict == 0 || verdict == DEAD);
    ok.then_some((state, verdict))
}

/// The control of one end.
///
/// # Invariants
///
/// Every offset is that of an 8-aligned word inside the region (the channel's blocks were
/// checked against it).
#[derive(Debug, Clone, Copy)]
pub(super) enum Control {
    /// Layout version 1: the control word at this offset (sides' states, session).
    Shared(usize),
    /// A connection: this end's state word and its peer's, with the values they hold while
    /// both are attached.
    Owned {
        own: usize,
        own_word: u64,
        peer: usize,
        peer_word: u64,
    },
}

/// What an end sees of its session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Look {
    /// `ATTACHED` while this end holds its side; `GONE` once it was detached (declared dead
    /// by its peer, or its session or block taken over).
    pub me: u8,
    /// The peer's state: `FREE` (not joined yet), `ATTACHED`, `CLOSED`, `DEAD`, or `GONE`
    /// (its block was freed).
    pub peer: u8,
    /// The word that was read (version 1's control word; this end's own word otherwise).
    raw: u64,
}

/// A check precomputed for the hot path: two words, the bits of each that must hold a value.
/// Loads, masks and compares, the same code for both layouts.
///
/// # Invariants
///
/// Both offsets are those of 8-aligned words inside the region (from a [`Control`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Check([(usize, u64, u64); 2]);

impl Check {
    /// Whether both words hold their values (relaxed loads: callers fence as they need).
    #[inline]
    pub fn holds(&self, mem: &Shm) -> bool {
        let [(a, ma, va), (b, mb, vb)] = self.0;
        mem.w64(a).load(Relaxed) & ma == va && mem.w64(b).load(Relaxed) & mb == vb
    }
}

impl Control {
    /// The session check of `side` in `session`: the words show this end attached and not
    /// detached (version 1: the session and this side's state; connections: the peer's word
    /// as it is while both are attached, and this end's own, verdict aside). See
    /// `Channel::check_session`.
    pub fn session_check(&self, session: u32, side: usize) -> Check {
        match *self {
            Control::Shared(ctl) => {
                let (mask, want) = shared_check(session, side);
                Check([(ctl, mask, want), (ctl, 0, 0)])
            }
            Control::Owned {
                own,
                own_word,
                peer,
                peer_word,
            } => Check([(peer, !0, peer_word), (own, !VERDICT, own_word)]),
        }
    }

    /// The write check: as the session check, and the peer still reads or has not joined
    /// yet (version 1: its state is `ATTACHED` or `FREE`; connections: it is attached).
    pub fn write_check(&self, session: u32, side: usize) -> Check {
        match *self {
            Control::Shared(ctl) => {
                let (mask, want) = shared_check(session, side);
                // ATTACHED (2) and FREE (0) are the peer states with no bit but bit 1 set.
                debug_assert_eq!(ATTACHED & !2 | FREE, 0);
                let peer = 0xfd_u64 << (8 * (1 - side));
                Check([(ctl, mask | peer, want), (ctl, 0, 0)])
            }
            Control::Owned { .. } => self.session_check(session, side),
        }
    }

    /// This end's and its peer's states (acquire). An error for words no honest end writes.
    pub fn look(&self, mem: &Shm, session: u32, side: usize) -> Result<Look, ChannelError> {
        match *self {
            Control::Shared(ctl) => {
                let w = mem.w64(ctl).load(Acquire);
                let (s, sess) = decode(w)?;
                let me = if sess == session && s[side] == ATTACHED {
                    ATTACHED
                } else {
                    GONE
                };
                let peer = if sess == session { s[1 - side] } else { GONE };
                Ok(Look { me, peer, raw: w })
            }
            Control::Owned {
                own,
                own_word,
                peer,
                peer_word,
            } => {
                let mine = mem.w64(own).load(Acquire);
                let theirs = mem.w64(peer).load(Acquire);
                let peer_gen = (peer_word >> 32) as u32;
                let (peer_state, verdict) = end_state(theirs, peer_gen).unwrap_or((GONE, 0));
                let me = if mine & !VERDICT == own_word && verdict == 0 && peer_state != GONE {
                    ATTACHED
                } else {
                    GONE
                };
                Ok(Look {
                    me,
                    peer: peer_state,
                    raw: mine,
                })
            }
        }
    }

    /// Declares the attached peer dead (its heartbeat stood still), as seen in `look`: a new
    /// end may then take its side (version 1), or it finds itself detached (connections).
    pub fn declare_dead(&self, mem: &Shm, look: Look, side: usize) {
        match *self {
            Control::Shared(ctl) => {
                let dead = with_state(look.raw, 1 - side, DEAD);
                let _ = mem
                    .w64(ctl)
                    .compare_exchange(look.raw, dead, Relaxed, Relaxed);
            }
            Control::Owned { own, own_word, .. } => {
                // Release: whoever reads the verdict (acquire) sees what this end did before.
                let now = mem.w64(own).load(Relaxed);
                if now & !VERDICT == own_word {
                    mem.w64(own).store(now | u64::from(DEAD) << 8, Release);
                }
            }
        }
    }

    /// Leaves the session in `state` (`CLOSED` or `DEAD`). Whether this end left (it still
    /// held its side), and whether its peer was no longer there to use the memory then
    /// (connections: the leaver then frees the blocks).
    pub fn leave(&self, mem: &Shm, session: u32, side: usize, state: u8) -> (bool, bool) {
        match *self {
            Control::Shared(ctl) => {
                let ctl = mem.w64(ctl);
                let mut w = ctl.load(Acquire);
                for _ in 0..1000 {
                    if (w >> 32) as u32 != session || side_state(w, side) != ATTACHED {
                        return (false, false);
                    }
                    let left = with_state(w, side, state);
                    match ctl.compare_exchange(w, left, Release, Acquire) {
                        Ok(_) => {
                            let peer = side_state(left, 1 - side);
                            return (true, peer != ATTACHED && peer != super::chan::RESETTING);
                        }
                        Err(now) => w = now,
                    }
                }
                (false, false)
            }
            Control::Owned {
                own,
                own_word,
                peer,
                peer_word,
            } => leave::<Std>(mem.w64(own), own_word, mem.w64(peer), peer_word, state),
        }
    }

    /// The word whose value says whether an end still holds its side, for its heartbeat:
    /// its offset and how to tell.
    pub fn hold(&self, session: u32, side: usize) -> Hold {
        match *self {
            Control::Shared(ctl) => Hold::Shared {
                ctl: ctl as u64,
                session,
                side,
            },
            Control::Owned { own, own_word, .. } => Hold::Owned {
                word: own as u64,
                value: own_word,
            },
        }
    }
}

/// A connection end leaves its session in `state` (`CLOSED` or `DEAD`): the `Owned` arm of
/// `Control::leave`, generic over the atomics for the loom model. `own` is this end's state
/// word and `own_word` the value it holds while this end is attached (no verdict); `peer` and
/// `peer_word` the same of the peer. Returns whether this end left (it still held its side)
/// and whether its peer was no longer there to use the memory then (its word shows it left,
/// or another generation, or this end had declared it dead): the leaver then frees both
/// blocks. Of two ends leaving at once, at least one sees the other gone; an end never sees
/// gone a peer that is attached with no verdict against it.
pub fn leave<A: Atomics>(
    own: &A::U64,
    own_word: u64,
    peer: &A::U64,
    peer_word: u64,
    state: u8,
) -> (bool, bool) {
    let now = A::load(own, Relaxed);
    if now & !VERDICT != own_word {
        return (false, false);
    }
    // Release: the peer (or a reclaimer) that reads the state (acquire) sees every access this
    // end made. The fence then orders that store before the load of the peer's word: of two
    // ends leaving at once, at least one sees the other gone (both may, and both free: freeing
    // is a compare-and-swap in the map).
    A::store(
        own,
        (now & VERDICT) | own_word & !0xff | u64::from(state),
        Release,
    );
    A::fence(SeqCst);
    let theirs = A::load(peer, Acquire);
    let verdict = now & VERDICT != 0;
    let peer_gen = (peer_word >> 32) as u32;
    let gone = match end_state(theirs, peer_gen) {
        Some((s, _)) => s != ATTACHED || verdict,
        None => true,
    };
    (true, gone)
}

/// What a heartbeat looks at before each beat: an end that no longer holds its side must not
/// make the side's next holder (or a block's next owner) look alive.
#[derive(Debug, Clone, Copy)]
pub(super) enum Hold {
    /// Version 1: the control word shows `side` attached to `session`.
    Shared { ctl: u64, session: u32, side: usize },
    /// A connection end or a listener: its own state word, verdict aside, is `value`.
    Owned { word: u64, value: u64 },
}

impl Hold {
    /// The offset of the word to look at.
    pub fn offset(&self) -> u64 {
        match *self {
            Hold::Shared { ctl, .. } => ctl,
            Hold::Owned { word, .. } => word,
        }
    }

    /// Whether word value `w` shows the side held.
    pub fn holds(&self, w: u64) -> bool {
        match *self {
            Hold::Shared { session, side, .. } => super::chan::holds(w, session, side),
            Hold::Owned { value, .. } => w & !VERDICT == value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_words_carry_their_generation_and_honest_states_only() {
        assert_eq!(end_state(end_word(7, ATTACHED), 7), Some((ATTACHED, 0)));
        assert_eq!(end_state(end_word(7, CLOSED), 7), Some((CLOSED, 0)));
        assert_eq!(
            end_state(end_word(7, ATTACHED) | u64::from(DEAD) << 8, 7),
            Some((ATTACHED, DEAD))
        );
        assert_eq!(end_state(end_word(7, ATTACHED), 8), None, "another block");
        assert_eq!(end_state(0, 0), None, "a zeroed block");
        assert_eq!(end_state(end_word(7, 9), 7), None);
        assert_eq!(end_state(end_word(7, ATTACHED) | 1 << 20, 7), None);
        assert_eq!(end_state(end_word(7, ATTACHED) | 1 << 8, 7), None);
    }
}
