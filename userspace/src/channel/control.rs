//! Where an end learns whether it and its peer are still in their session.
//!
//! Every channel (layout version 2, `conn_layout.rs`) is two blocks, one per end, and each
//! end's state word lies in its own block, written by that end alone: an end that declares its
//! peer dead says so in its own word (the verdict), and the peer reads it there. No word of a
//! channel has two writers, which is what a read-only mapping of the peer's memory needs
//! (issue 19). The opener of a named channel has no peer until one joins (`Pending`).
//!
//! A state word of an end (u64):
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

use super::chan::{Shm, FREE, GONE};
use super::protocol::{Atomics, Std};
use super::ChannelError;

/// State of an end that holds its side (the value of `chan`'s constant of that name).
pub const ATTACHED: u8 = super::chan::ATTACHED;
/// State of an end that left cleanly (the value of `chan`'s constant of that name).
pub const CLOSED: u8 = super::chan::CLOSED;
/// State of an end that left after a violation or an abort, and the verdict an end writes on
/// a peer it declared dead (the value of `chan`'s constant of that name).
pub const DEAD: u8 = super::chan::DEAD;

/// The verdict bits of an end's state word.
const VERDICT: u64 = 0xff << 8;

/// An end's state word: generation `gen`, state `state`, no verdict.
pub fn end_word(gen: u32, state: u8) -> u64 {
    u64::from(gen) << 32 | u64::from(state)
}

/// The state and verdict of an end's word `w` if it carries generation `gen` and is a word an
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
    /// The opener of a named channel before a peer joined: its own state word and the value
    /// it holds while it is attached.
    Pending { own: usize, own_word: u64 },
    /// An end with a peer: its state word and its peer's, with the values they hold while
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
    /// by its peer, or its block taken back).
    pub me: u8,
    /// The peer's state: `FREE` (none joined yet), `ATTACHED`, `CLOSED`, `DEAD`, or `GONE`
    /// (its block was freed).
    pub peer: u8,
}

/// A check precomputed for the hot path: two words and the value each must hold. Two loads
/// and two compares, the same code whether a peer joined or not (a pending opener's check
/// names its own word twice). Exact: a word that differs in any bit (this end's verdict on its
/// peer too) sends the caller to its slow path, which decodes the words (`Control::look`).
///
/// # Invariants
///
/// Both offsets are those of 8-aligned words inside the region (from a [`Control`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Check([(usize, u64); 2]);

impl Check {
    /// Whether both words hold their values (relaxed loads: callers fence as they need).
    #[inline(always)]
    pub fn holds(&self, mem: &Shm) -> bool {
        let [(a, va), (b, vb)] = self.0;
        mem.w64(a).load(Relaxed) == va && mem.w64(b).load(Relaxed) == vb
    }
}

impl Control {
    /// The session check: this end's own word as it is while attached (no verdict), and its
    /// peer's word as it is while both are attached (see `Channel::check_session`). The
    /// write check is the same: a peer that left or was declared dead reads no more.
    pub fn check(&self) -> Check {
        match *self {
            Control::Pending { own, own_word } => Check([(own, own_word), (own, own_word)]),
            Control::Owned {
                own,
                own_word,
                peer,
                peer_word,
            } => Check([(peer, peer_word), (own, own_word)]),
        }
    }

    /// This end's and its peer's states (acquire). An error for words no honest end writes.
    pub fn look(&self, mem: &Shm) -> Result<Look, ChannelError> {
        let (own, own_word) = match *self {
            Control::Pending { own, own_word } | Control::Owned { own, own_word, .. } => {
                (own, own_word)
            }
        };
        let mine = mem.w64(own).load(Acquire);
        let held = mine & !VERDICT == own_word;
        let Control::Owned {
            peer, peer_word, ..
        } = *self
        else {
            let me = if held { ATTACHED } else { GONE };
            return Ok(Look { me, peer: FREE });
        };
        let theirs = mem.w64(peer).load(Acquire);
        let peer_gen = (peer_word >> 32) as u32;
        let (peer_state, verdict) = end_state(theirs, peer_gen).unwrap_or((GONE, 0));
        let me = if held && verdict == 0 && peer_state != GONE {
            ATTACHED
        } else {
            GONE
        };
        Ok(Look {
            me,
            peer: peer_state,
        })
    }

    /// Declares the attached peer dead (its heartbeat stood still): it finds itself detached
    /// when it reads the verdict in this end's word.
    pub fn declare_dead(&self, mem: &Shm) {
        if let Control::Owned { own, own_word, .. } = *self {
            // Release: whoever reads the verdict (acquire) sees what this end did before.
            let now = mem.w64(own).load(Relaxed);
            if now & !VERDICT == own_word {
                mem.w64(own).store(now | u64::from(DEAD) << 8, Release);
            }
        }
    }

    /// Leaves the session in `state` (`CLOSED` or `DEAD`). Whether this end left (it still
    /// held its side), and whether its peer was no longer there to use the memory then (the
    /// leaver then frees the blocks). A pending opener only stores its state: whether a peer
    /// joined meanwhile is for its caller to find out (`named.rs`).
    pub fn leave(&self, mem: &Shm, state: u8) -> (bool, bool) {
        match *self {
            Control::Pending { own, own_word } => {
                let word = mem.w64(own);
                let now = word.load(Relaxed);
                if now & !VERDICT != own_word {
                    return (false, false);
                }
                word.store(
                    (now & VERDICT) | own_word & !0xff | u64::from(state),
                    Release,
                );
                (true, false)
            }
            Control::Owned {
                own,
                own_word,
                peer,
                peer_word,
            } => leave::<Std>(mem.w64(own), own_word, mem.w64(peer), peer_word, state),
        }
    }

    /// The word whose value says whether an end still holds its side, for its heartbeat.
    pub fn hold(&self) -> Hold {
        match *self {
            Control::Pending { own, own_word } | Control::Owned { own, own_word, .. } => Hold {
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
/// make a block's next owner look alive. The end's own state word, verdict aside, is `value`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    pub word: u64,
    pub value: u64,
}

impl Hold {
    /// Whether word value `w` shows the side held.
    pub fn holds(&self, w: u64) -> bool {
        w & !VERDICT == self.value
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
