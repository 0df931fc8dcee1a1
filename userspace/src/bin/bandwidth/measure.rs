//! The measurement, apart from the memory it copies: a warm-up, then shared and private copies
//! in alternation, each cleared before and checked after; and the median and best of each.

use std::time::{Duration, Instant};

use ivshmem::ToolError;

/// Which memory a copy measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Shared,
    Private,
}

/// The order of the timed copies: shared and private alternate, shared first, `reps` each.
pub fn schedule(reps: u32) -> impl Iterator<Item = Side> {
    (0..reps).flat_map(|_| [Side::Shared, Side::Private])
}

/// Median and best (shortest) of a set of copy times.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Summary {
    pub median: Duration,
    pub best: Duration,
}

/// `None` for no times; the median of an even count is the mean of the middle two.
pub fn summarize(times: &[Duration]) -> Option<Summary> {
    let mut t = times.to_vec();
    t.sort();
    let n = t.len();
    let best = *t.first()?;
    let median = if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2
    };
    Some(Summary { median, best })
}

/// The copies of one direction, with the untimed steps around each.
pub trait Copier {
    /// Clears the destination of `side`'s copy, touching every page of it.
    fn clear(&mut self, side: Side) -> Result<(), ToolError>;
    /// The timed copy.
    fn copy(&mut self, side: Side);
    /// Checks that the copy arrived, byte for byte.
    fn verify(&mut self, side: Side) -> Result<(), ToolError>;
}

/// Copy times of each side, in the order they were taken.
#[derive(Debug, Default)]
pub struct Times {
    pub shared: Vec<Duration>,
    pub private: Vec<Duration>,
}

/// Warms up (one untimed clear, copy and check of each side), then times `reps` copies of each
/// side in [`schedule`] order, each one cleared before and checked after.
pub fn measure(c: &mut impl Copier, reps: u32) -> Result<Times, ToolError> {
    for side in [Side::Shared, Side::Private] {
        c.clear(side)?;
        c.copy(side);
        c.verify(side)?;
    }
    let mut times = Times::default();
    for side in schedule(reps) {
        c.clear(side)?;
        let start = Instant::now();
        c.copy(side);
        let took = start.elapsed();
        c.verify(side)?;
        match side {
            Side::Shared => times.shared.push(took),
            Side::Private => times.private.push(took),
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_private_alternate_shared_first() {
        use Side::{Private as P, Shared as S};
        assert_eq!(schedule(1).collect::<Vec<_>>(), [S, P]);
        assert_eq!(schedule(3).collect::<Vec<_>>(), [S, P, S, P, S, P]);
    }

    #[test]
    fn median_and_best() {
        let s = |v: &[u64]| {
            let t: Vec<Duration> = v.iter().map(|&m| Duration::from_millis(m)).collect();
            summarize(&t).unwrap()
        };
        let d = Duration::from_millis;
        assert_eq!(
            s(&[7]),
            Summary {
                median: d(7),
                best: d(7)
            }
        );
        assert_eq!(
            s(&[50, 10, 30]),
            Summary {
                median: d(30),
                best: d(10)
            }
        );
        // An even count: the mean of the middle two; order does not matter.
        assert_eq!(
            s(&[40, 10, 30, 20]),
            Summary {
                median: d(25),
                best: d(10)
            }
        );
        // One slow outlier (a first touch, a busy host) moves the median little.
        assert_eq!(
            s(&[900, 10, 11, 12, 13]),
            Summary {
                median: d(12),
                best: d(10)
            }
        );
        assert_eq!(summarize(&[]), None);
    }

    /// Records every step, optionally failing the check of the N-th shared copy.
    #[derive(Default)]
    struct Log {
        steps: Vec<(&'static str, Side)>,
        fail_shared_check: Option<usize>,
    }

    impl Copier for Log {
        fn clear(&mut self, side: Side) -> Result<(), ToolError> {
            self.steps.push(("clear", side));
            Ok(())
        }
        fn copy(&mut self, side: Side) {
            self.steps.push(("copy", side));
        }
        fn verify(&mut self, side: Side) -> Result<(), ToolError> {
            self.steps.push(("verify", side));
            let n = self
                .steps
                .iter()
                .filter(|s| *s == &("verify", Side::Shared))
                .count();
            match self.fail_shared_check {
                Some(k) if side == Side::Shared && n == k => {
                    Err(ToolError::Check("differs".into()))
                }
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn warm_up_then_alternating_verified_copies() {
        let mut log = Log::default();
        let t = measure(&mut log, 2).unwrap();
        assert_eq!((t.shared.len(), t.private.len()), (2, 2));
        let mut want = Vec::new();
        // Warm-up, then the schedule: every copy between a clear and a check.
        for side in [Side::Shared, Side::Private].into_iter().chain(schedule(2)) {
            want.extend([("clear", side), ("copy", side), ("verify", side)]);
        }
        assert_eq!(log.steps, want);
    }

    #[test]
    fn a_failed_check_stops_the_measurement() {
        let mut log = Log {
            fail_shared_check: Some(2),
            ..Log::default()
        };
        let e = measure(&mut log, 5).unwrap_err();
        assert!(matches!(e, ToolError::Check(_)), "{e:?}");
        // Warm-up (6 steps) and the first timed shared copy (3): the second one failed.
        assert_eq!(log.steps.len(), 6 + 3);
    }
}
