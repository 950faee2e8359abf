//! When the driver's kernel threads sleep, and for how long.
//!
//! The balloon thread sleeps with no timer while the target is reached (it
//! wakes only for a host config change, WANTSIZE), steps again at once while
//! there is work, and pauses after a step that could not go on: the
//! balloon's own backoff when the guest is short of memory, a fixed pause
//! after a host or queue failure. While the pressure watch runs
//! ([`crate::pressure`]) it also wakes for each look at free memory, the
//! sooner of the two. A config change or a vm_lowmem event ends any sleep.
//! The kernel glue asks [`BalloonThread::next`] with its wait lock held, so
//! a wakeup cannot fall between the decision and the sleep.

use crate::balloon::Step;

/// Pause after a failed balloon step (host timeout, full queue).
pub const FAILED_STEP_PAUSE_MS: u32 = 1_000;

/// What the balloon thread does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Detach: leave the loop.
    Stop,
    /// Take a balloon step; `config`: a host config change came first.
    Step { config: bool },
    /// Sleep until woken, for at most `ms` (0: no timeout), then ask again.
    Sleep { ms: u32 },
}

/// What the balloon thread waits for between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Wait {
    /// Nothing: step again (at first: attach sets a config change pending).
    #[default]
    Nothing,
    /// A config change (the target is reached).
    Config,
    /// This long, or a config change.
    Ms(u32),
}

/// The balloon thread's sleep policy.
#[derive(Debug, Clone, Default)]
pub struct BalloonThread {
    wait: Wait,
    /// The pressure watch's next look, from the last step on.
    look_ms: Option<u32>,
}

impl BalloonThread {
    /// Decides, with the wait lock held: `stopping` (detach), `config` (a
    /// config change was pending and is now taken), `lowmem` (a vm_lowmem
    /// event asked for a look, now taken), `timed_out` (the sleep this
    /// thread just woke from ran out; false when it did not sleep).
    pub fn next(&mut self, stopping: bool, config: bool, lowmem: bool, timed_out: bool) -> Next {
        if stopping {
            return Next::Stop;
        }
        if config || lowmem {
            return Next::Step { config };
        }
        let ms = match (self.wait, self.look_ms) {
            (Wait::Nothing, _) => return Next::Step { config: false },
            (Wait::Config, None) => return Next::Sleep { ms: 0 },
            (Wait::Config, Some(look)) => look,
            (Wait::Ms(ms), None) => ms,
            (Wait::Ms(ms), Some(look)) => ms.min(look),
        };
        if timed_out && ms > 0 {
            Next::Step { config: false }
        } else {
            // Woken early by something else: the pause goes on.
            Next::Sleep { ms }
        }
    }

    /// Records how the last step ended, and when the pressure watch looks
    /// next (`None`: it does not run).
    pub fn stepped(&mut self, step: Step, look_ms: Option<u32>) {
        self.look_ms = look_ms;
        self.wait = match step {
            Step::Idle => Wait::Config,
            Step::More | Step::Backoff { ms: 0 } => Wait::Nothing,
            Step::Backoff { ms } => Wait::Ms(ms),
            Step::Failed(_) => Wait::Ms(FAILED_STEP_PAUSE_MS),
        };
    }
}

/// The reporting thread's sleep before its next pass: `pause_ms` while
/// reporting is on, until woken (0: no timeout) while it is off.
pub fn report_sleep_ms(enabled: bool, pause_ms: u32) -> u32 {
    if enabled {
        pause_ms.max(1)
    } else {
        0
    }
}

/// `cycles` of a counter running at `per_second` in microseconds, rounded
/// down; 0 for a counter of unknown rate. Divides before multiplying, as
/// the kernel's cputick2usec() does, so a sum of days of cycles at GHz
/// rates does not overflow.
pub fn cycles_to_us(cycles: u64, per_second: u64) -> u64 {
    if per_second == 0 {
        return 0;
    }
    (cycles / per_second).saturating_mul(1_000_000)
        + (cycles % per_second).saturating_mul(1_000_000) / per_second
}

/// A duration in kernel ticks at `hz` ticks a second, rounded up: at least
/// one tick (a callout or sleep of 0 ticks means something else), at most
/// `i32::MAX`.
pub fn ms_to_ticks(ms: u32, hz: u32) -> i32 {
    let t = (u64::from(ms) * u64::from(hz)).div_ceil(1000);
    i32::try_from(t.max(1)).unwrap_or(i32::MAX)
}

/// The timeout of a sleep of at most `ms` milliseconds in ticks, as
/// msleep(9) takes it: 0 ms is no timeout (0 ticks).
pub fn sleep_ticks(ms: u32, hz: u32) -> i32 {
    if ms == 0 {
        0
    } else {
        ms_to_ticks(ms, hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Error;

    #[test]
    fn idle_sleeps_without_a_timer_until_a_config_change() {
        let mut t = BalloonThread::default();
        assert_eq!(
            t.next(false, false, false, false),
            Next::Step { config: false }
        );
        t.stepped(Step::Idle, None);
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 0 });
        // A wakeup that is not a config change (detach's, a spurious one).
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 0 });
        assert_eq!(
            t.next(false, true, false, false),
            Next::Step { config: true }
        );
    }

    #[test]
    fn more_work_steps_again_at_once() {
        let mut t = BalloonThread::default();
        t.stepped(Step::More, None);
        assert_eq!(
            t.next(false, false, false, false),
            Next::Step { config: false }
        );
    }

    #[test]
    fn backoff_sleeps_its_time_then_steps() {
        let mut t = BalloonThread::default();
        t.stepped(Step::Backoff { ms: 400 }, None);
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 400 });
        // Woken early, not by the host: keeps pausing.
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 400 });
        assert_eq!(
            t.next(false, false, false, true),
            Next::Step { config: false }
        );
        // A config change cuts the pause short.
        t.stepped(Step::Backoff { ms: 400 }, None);
        assert_eq!(
            t.next(false, true, false, false),
            Next::Step { config: true }
        );
        // A pause of 0 is none (a sleep of 0 would have no timeout).
        t.stepped(Step::Backoff { ms: 0 }, None);
        assert_eq!(
            t.next(false, false, false, false),
            Next::Step { config: false }
        );
    }

    #[test]
    fn a_failed_step_pauses_a_second() {
        let mut t = BalloonThread::default();
        t.stepped(Step::Failed(Error::Timeout), None);
        assert_eq!(
            t.next(false, false, false, false),
            Next::Sleep {
                ms: FAILED_STEP_PAUSE_MS
            }
        );
        assert_eq!(
            t.next(false, false, false, true),
            Next::Step { config: false }
        );
    }

    #[test]
    fn the_pressure_watch_wakes_an_idle_thread_for_each_look() {
        let mut t = BalloonThread::default();
        t.stepped(Step::Idle, Some(10));
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 10 });
        assert_eq!(
            t.next(false, false, false, true),
            Next::Step { config: false }
        );
        // The watch ended: back to no timer.
        t.stepped(Step::Idle, None);
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 0 });
    }

    #[test]
    fn a_look_due_before_the_backoff_ends_comes_first() {
        let mut t = BalloonThread::default();
        t.stepped(Step::Backoff { ms: 400 }, Some(10));
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 10 });
        t.stepped(Step::Backoff { ms: 5 }, Some(10));
        assert_eq!(t.next(false, false, false, false), Next::Sleep { ms: 5 });
    }

    #[test]
    fn a_lowmem_event_ends_any_sleep() {
        let mut t = BalloonThread::default();
        t.stepped(Step::Idle, None);
        assert_eq!(
            t.next(false, false, true, false),
            Next::Step { config: false }
        );
        t.stepped(Step::Backoff { ms: 400 }, None);
        assert_eq!(
            t.next(false, false, true, false),
            Next::Step { config: false }
        );
        assert_eq!(t.next(true, false, true, false), Next::Stop);
    }

    #[test]
    fn stopping_wins_over_everything() {
        let mut t = BalloonThread::default();
        assert_eq!(t.next(true, true, false, false), Next::Stop);
        t.stepped(Step::Idle, None);
        assert_eq!(t.next(true, false, false, false), Next::Stop);
    }

    #[test]
    fn the_reporter_sleeps_until_switched_on_when_off() {
        assert_eq!(report_sleep_ms(true, 2_000), 2_000);
        assert_eq!(report_sleep_ms(true, 0), 1);
        assert_eq!(report_sleep_ms(false, 2_000), 0);
    }

    #[test]
    fn cycles_convert_at_both_arches_rates() {
        // arm64 under QEMU 7.2: the generic timer at 62.5 MHz.
        assert_eq!(cycles_to_us(62_500_000, 62_500_000), 1_000_000);
        assert_eq!(cycles_to_us(625, 62_500_000), 10);
        assert_eq!(cycles_to_us(62, 62_500_000), 0, "under a microsecond");
        // A 1 GHz timer (newer QEMU virt machines) and a 3 GHz TSC.
        assert_eq!(cycles_to_us(1_500, 1_000_000_000), 1);
        assert_eq!(
            cycles_to_us(3_000_000_000 * 5 + 3_000, 3_000_000_000),
            5_000_001
        );
        // A day of TSC cycles: no overflow, exact.
        let day = 86_400 * 3_000_000_000u64;
        assert_eq!(cycles_to_us(day, 3_000_000_000), 86_400_000_000);
        assert_eq!(cycles_to_us(u64::MAX, 1), u64::MAX, "saturates");
        assert_eq!(cycles_to_us(12_345, 0), 0, "unknown rate");
    }

    #[test]
    fn ticks_round_up_and_stay_positive() {
        assert_eq!(ms_to_ticks(1_000, 1_000), 1_000);
        assert_eq!(ms_to_ticks(1, 100), 1, "10 ms ticks: 1 ms is one tick");
        assert_eq!(ms_to_ticks(15, 100), 2);
        assert_eq!(ms_to_ticks(0, 1_000), 1);
        assert_eq!(ms_to_ticks(u32::MAX, u32::MAX), i32::MAX);
        assert_eq!(sleep_ticks(0, 1_000), 0, "no timeout");
        assert_eq!(sleep_ticks(5_000, 1_000), 5_000);
    }
}
