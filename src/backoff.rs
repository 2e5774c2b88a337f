//! How a retrying thread waits when reclaim freed nothing.
//!
//! A few rounds of spinning first (memory freed by another thread on another
//! core shows up within microseconds), then a few `sched_yield`s, then sleeps
//! that double from 50 µs up to a cap of 10 ms, so that a thread retrying
//! forever costs about a hundred wake-ups a second, never a core. The schedule
//! is pure logic; [`Pause::wait`] is the only part that touches the OS, and it
//! never allocates.

use core::time::Duration;

const SPIN_ROUNDS: u32 = 3;
const YIELD_ROUNDS: u32 = 3;
const FIRST_SLEEP: Duration = Duration::from_micros(50);
/// The longest single sleep between two attempts.
pub(crate) const MAX_SLEEP: Duration = Duration::from_millis(10);

/// One wait between two attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pause {
    /// Spin this many times with the processor's spin-loop hint.
    Spin(u32),
    /// Give the core to another thread once.
    Yield,
    /// Sleep.
    Sleep(Duration),
}

impl Pause {
    pub(crate) fn wait(self) {
        match self {
            Pause::Spin(n) => (0..n).for_each(|_| core::hint::spin_loop()),
            Pause::Yield => std::thread::yield_now(),
            Pause::Sleep(d) => std::thread::sleep(d),
        }
    }
}

/// The backoff schedule of one retrying allocation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backoff {
    round: u32,
}

impl Backoff {
    pub(crate) const fn new() -> Self {
        Backoff { round: 0 }
    }

    /// The next wait, advancing the schedule.
    pub(crate) fn next_pause(&mut self) -> Pause {
        let round = self.round;
        self.round = self.round.saturating_add(1);
        if round < SPIN_ROUNDS {
            Pause::Spin(16 << round)
        } else if round < SPIN_ROUNDS + YIELD_ROUNDS {
            Pause::Yield
        } else {
            let doublings = (round - SPIN_ROUNDS - YIELD_ROUNDS).min(16);
            Pause::Sleep((FIRST_SLEEP * (1u32 << doublings)).min(MAX_SLEEP))
        }
    }

    /// Starts the schedule again: reclaim made progress.
    pub(crate) fn reset(&mut self) {
        self.round = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_then_yields_then_sleeps_doubling_to_the_cap() {
        let mut b = Backoff::new();
        let seen: Vec<Pause> = (0..16).map(|_| b.next_pause()).collect();
        assert_eq!(
            &seen[..3],
            &[Pause::Spin(16), Pause::Spin(32), Pause::Spin(64)]
        );
        assert_eq!(&seen[3..6], &[Pause::Yield; 3]);
        let us = |n| Pause::Sleep(Duration::from_micros(n));
        assert_eq!(
            &seen[6..14],
            &[
                us(50),
                us(100),
                us(200),
                us(400),
                us(800),
                us(1600),
                us(3200),
                us(6400)
            ]
        );
        assert_eq!(&seen[14..], &[Pause::Sleep(MAX_SLEEP); 2]);
    }

    #[test]
    fn never_exceeds_the_cap_however_long_it_runs() {
        let mut b = Backoff {
            round: u32::MAX - 2,
        };
        for _ in 0..5 {
            assert_eq!(b.next_pause(), Pause::Sleep(MAX_SLEEP));
        }
    }

    #[test]
    fn reset_starts_again_with_spinning() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            b.next_pause();
        }
        b.reset();
        assert_eq!(b.next_pause(), Pause::Spin(16));
    }
}
