//! Deciding that a peer died from its heartbeat: the bound both ends agree on, and the watch
//! that turns samples of a heartbeat word into a verdict.
//!
//! Each end beats ten times per its own liveness timeout and publishes that timeout in its
//! side line. The observer uses the longer of its own and the peer's, so an end configured
//! for 10 s is not declared dead by one configured for 100 ms. Stall time is counted only
//! while the observer itself runs: the time between two samples counts for at most two beat
//! periods, so an observer that was descheduled, or a VM that was paused with everything in
//! it, does not take its own gap for the peer's silence.

use std::time::{Duration, Instant};

/// The shortest liveness timeout: a shorter one would declare a busy but healthy peer dead
/// (a beat thread may wait tens of milliseconds for a CPU on a loaded host).
pub const MIN: Duration = Duration::from_millis(100);

/// The longest liveness timeout, also the most a peer's published timeout can make this end
/// wait: a peer cannot make itself immortal by publishing a huge one.
pub const MAX: Duration = Duration::from_secs(3600);

/// `t` clamped to [`MIN`]..=[`MAX`].
pub fn clamp(t: Duration) -> Duration {
    t.clamp(MIN, MAX)
}

/// The liveness timeout as published in a side line: whole milliseconds.
pub fn to_word(t: Duration) -> u32 {
    clamp(t).as_millis() as u32
}

/// The bound this end applies to a peer: the longer of `own` and the peer's published timeout
/// `word` (0: an end that publishes none, which gets `own`), within [`MIN`]..=[`MAX`].
pub fn agreed(own: Duration, word: u32) -> Duration {
    clamp(own.max(Duration::from_millis(word.into())))
}

/// How long a heartbeat may stand still before its end counts as dead, for bound `t`: the
/// peer beats every `t / 10` and is looked at every `t / 10` at the latest, so a death is
/// noticed within `t / 10` (the first look at its last beat) + `7t / 10` + `t / 10` < `t`.
pub fn dead_after(t: Duration) -> Duration {
    t / 10 * 7
}

/// Samples of one end's heartbeat word.
///
/// # Invariants
///
/// `stalled` is the observer's own running time, between samples that all read `beat`, since
/// the first of them; each gap between two samples counts for at most two beat periods.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Whose heartbeat: a session, so a watch never carries over to the next one.
    session: u32,
    beat: u64,
    last: Instant,
    stalled: Duration,
    samples: u32,
}

impl Watch {
    /// A first sample.
    pub fn new(session: u32, beat: u64, now: Instant) -> Self {
        Self {
            session,
            beat,
            last: now,
            stalled: Duration::ZERO,
            samples: 1,
        }
    }

    /// Adds a sample taken at `now` (of session `session`'s end, heartbeat word `beat`) and
    /// says whether the end is dead for bound `t`: its heartbeat stood still for
    /// [`dead_after`]`(t)` of this end's running time, seen by at least three samples.
    pub fn dead(
        this: &mut Option<Self>,
        session: u32,
        beat: u64,
        now: Instant,
        t: Duration,
    ) -> bool {
        match this {
            Some(w) if w.session == session && w.beat == beat => {
                let gap = now.saturating_duration_since(w.last);
                w.stalled += gap.min(t / 5);
                w.last = now;
                w.samples = w.samples.saturating_add(1);
                w.samples >= 3 && w.stalled > dead_after(t)
            }
            _ => {
                *this = Some(Self::new(session, beat, now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(1000);

    #[test]
    fn the_longer_published_bound_wins_within_limits() {
        assert_eq!(
            agreed(Duration::from_millis(100), 10_000),
            Duration::from_secs(10)
        );
        assert_eq!(
            agreed(Duration::from_secs(10), 100),
            Duration::from_secs(10)
        );
        assert_eq!(agreed(Duration::from_millis(5), 0), MIN, "at least 100 ms");
        assert_eq!(
            agreed(T, u32::MAX),
            MAX,
            "a peer cannot make itself immortal"
        );
        assert_eq!(to_word(Duration::MAX), 3_600_000);
        assert_eq!(
            dead_after(Duration::MAX),
            Duration::MAX / 10 * 7,
            "no overflow"
        );
    }

    #[test]
    fn a_steady_stall_is_death_after_seven_tenths() {
        let t0 = Instant::now();
        let mut w = None;
        let mut dead_at = None;
        for i in 0..20u32 {
            if Watch::dead(&mut w, 1, 42, t0 + T / 10 * i, T) {
                dead_at = Some(i);
                break;
            }
        }
        assert_eq!(dead_at, Some(8), "7/10 of the bound, strictly more");
    }

    #[test]
    fn a_beat_or_a_new_session_starts_over() {
        let t0 = Instant::now();
        let mut w = None;
        for i in 0..7u32 {
            assert!(!Watch::dead(&mut w, 1, 42, t0 + T / 10 * i, T));
        }
        assert!(!Watch::dead(&mut w, 1, 43, t0 + T, T), "it beat");
        assert!(
            !Watch::dead(&mut w, 2, 43, t0 + T * 2, T),
            "another session"
        );
        assert!(!Watch::dead(&mut w, 2, 43, t0 + T * 2 + T / 10, T));
    }

    #[test]
    fn the_observers_own_gaps_count_little() {
        let t0 = Instant::now();
        let mut w = None;
        // Paused for an hour between the first two looks, then looking at once: not dead.
        assert!(!Watch::dead(&mut w, 1, 42, t0, T));
        assert!(!Watch::dead(
            &mut w,
            1,
            42,
            t0 + Duration::from_secs(3600),
            T
        ));
        assert!(!Watch::dead(
            &mut w,
            1,
            42,
            t0 + Duration::from_secs(3600),
            T
        ));
        // Still silent while we look every tenth: dead half a bound later.
        let resumed = t0 + Duration::from_secs(3600);
        let mut n = 0;
        while !Watch::dead(&mut w, 1, 42, resumed + T / 10 * n, T) {
            n += 1;
        }
        assert_eq!(n, 6, "2/10 credited for the gap, 6 more tenths observed");
    }
}
