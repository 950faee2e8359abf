//! The inflate against FreeBSD's page-daemon controller: does inflating to
//! the floor make the page daemon ask for pages it cannot find?
//!
//! The model (FreeBSD 14.2 `sys/kern/subr_pidctrl.c`, `sys/vm/vm_pageout.c`),
//! one step a millisecond:
//! - `pidctrl_daemon` ported as it is (setpoint `v_free_target`, interval
//!   100 ms, integral bound 16 setpoints, gains 1/3, 1/4, 1/8), called at
//!   the start of every interval and once more half way (a wakeup within
//!   the interval, as allocations that cross the page daemon's threshold
//!   give; the soak saw the kernel's integral at its bound after a
//!   reload's inflate; with one call an interval the unpaced bursts below
//!   still leave one failed pass each, from the derivative, and the count
//!   still climbs);
//! - nothing is reclaimable (no swap, anonymous memory), so a pass asked
//!   for pages frees none and adds one to the page daemon's count; a pass
//!   asked for nothing leaves the count as it is (`vm_pageout_mightbe_oom`
//!   runs only for passes that look for pages); at `vm.pageout_oom_seq`
//!   (12) the largest process is killed;
//! - the host alternates an empty balloon and a target of all memory, as
//!   the soak's absurd targets after reloads did; no process allocates.

mod sim;

use sim::{sim, SimDevice, SimMemory};
use vtballoon::balloon::{Balloon, InflateLimit, Step, Tunables};
use vtballoon::pressure::{floor_default_pages, inflate_allowance, inflate_limit, InflatePace};
use vtballoon::protocol::Features;

const PAGES: usize = 262_144; // 1 GiB of 4 KiB pages
const FREE_TARGET: u64 = 6_000;
const INTERVAL_MS: u64 = 100;
const OOM_SEQ: u32 = 12;

/// `struct pidctrl` and `pidctrl_daemon()`, C integer arithmetic.
struct Pid {
    setpoint: i64,
    bound: i64,
    ticks: Option<u64>,
    error: i64,
    olderror: i64,
    integral: i64,
    output: i64,
}

impl Pid {
    fn new(setpoint: i64) -> Pid {
        Pid {
            setpoint,
            // pidctrl_init: bound factor x setpoint x Kid.
            bound: 4 * setpoint * 4,
            ticks: None,
            error: 0,
            olderror: 0,
            integral: 0,
            output: 0,
        }
    }

    fn daemon(&mut self, now_ms: u64, input: i64) -> i64 {
        let mut error = self.setpoint - input;
        if self.ticks.is_none_or(|t| now_ms - t >= INTERVAL_MS) {
            self.ticks = Some(now_ms);
            self.olderror = self.error;
            self.output = 0;
            self.error = 0;
        } else {
            // The error relative to the last call of this interval.
            error -= self.error - self.output;
        }
        self.error += error;
        self.integral = (self.integral + error).min(self.bound).max(0);
        let derivative = self.error - self.olderror;
        let output = self.error / 3 + self.integral / 4 + derivative / 8;
        let output = (output - self.output).max(0);
        self.output += output;
        output
    }
}

/// What the page daemon did over a run.
struct PageDaemon {
    /// Passes that asked for pages (and, with nothing reclaimable, freed
    /// none).
    failed: u32,
    /// Its count toward a kill at its highest; `OOM_SEQ` means a kill.
    seq: u32,
}

fn run(paced: bool, cycles: u32) -> PageDaemon {
    let features = Features::MUST_TELL_HOST | Features::DEFLATE_ON_OOM;
    let (w, mut dev, mut mem): (_, SimDevice, SimMemory) = sim(features, PAGES);
    w.borrow_mut().free_target = FREE_TARGET;
    let floor = floor_default_pages(&w.borrow().vm());
    let mut b = Balloon::new(features, Tunables::default());
    let mut pace = InflatePace::new();
    let mut pid = Pid::new(FREE_TARGET as i64);
    let mut pd = PageDaemon { failed: 0, seq: 0 };
    let mut seq = 0;
    let mut next_step = 0;
    for now in 0..u64::from(cycles) * 2_000 {
        w.borrow_mut().now_ms = now;
        if now % 2_000 == 0 || now % 2_000 == 1_000 {
            // Empty, then all of memory, a second each.
            let full = now % 2_000 == 0;
            w.borrow_mut().num_pages = if full { PAGES as u32 } else { 0 };
            b.config_changed();
            next_step = now;
        }
        if now >= next_step {
            let vm = w.borrow().vm();
            let ballooned = b.held_pages(&mem);
            let limit = if paced {
                inflate_limit(&mut pace, now, &vm, floor, false, ballooned)
            } else {
                InflateLimit::Floor(inflate_allowance(&vm, floor, false))
            };
            b.set_inflate_limit(limit);
            next_step = match b.step(&mut dev, &mut mem) {
                Step::More => now + 1,
                Step::Backoff { ms } => now + u64::from(ms),
                Step::Idle | Step::Failed(_) => u64::MAX,
            };
        }
        if now % INTERVAL_MS == 0 || now % INTERVAL_MS == INTERVAL_MS / 2 {
            let free = w.borrow().free_pages() as i64;
            if pid.daemon(now, free) > 0 {
                pd.failed += 1;
                seq += 1;
                pd.seq = pd.seq.max(seq);
                if seq >= OOM_SEQ {
                    break;
                }
            }
        }
    }
    assert!(w.borrow().violations.is_empty());
    pd
}

#[test]
fn unpaced_inflates_to_the_floor_wind_the_controller_up_until_a_kill() {
    // What the soak found: bursts of inflate, each leaving the controller
    // asking for a while with free memory above its target; the count goes
    // on from burst to burst.
    let pd = run(false, 10);
    assert_eq!(pd.seq, OOM_SEQ, "failed passes {}", pd.failed);
}

#[test]
fn the_paced_inflate_never_makes_the_page_daemon_ask() {
    let pd = run(true, 10);
    assert_eq!(pd.failed, 0);
}

#[test]
fn the_paced_inflate_still_reaches_the_floor_within_two_seconds() {
    let features = Features::MUST_TELL_HOST | Features::DEFLATE_ON_OOM;
    let (w, mut dev, mut mem) = sim(features, PAGES);
    w.borrow_mut().free_target = FREE_TARGET;
    w.borrow_mut().num_pages = PAGES as u32;
    let floor = floor_default_pages(&w.borrow().vm());
    let mut b = Balloon::new(features, Tunables::default());
    let mut pace = InflatePace::new();
    let mut now = 0;
    // A fifth of the margin a window: 17 windows to the floor, by the
    // pace's arithmetic.
    while now < 2_000 {
        w.borrow_mut().now_ms = now;
        let vm = w.borrow().vm();
        let limit = inflate_limit(&mut pace, now, &vm, floor, false, b.held_pages(&mem));
        b.set_inflate_limit(limit);
        now += match b.step(&mut dev, &mut mem) {
            Step::Backoff { ms } => u64::from(ms),
            _ => 1,
        };
    }
    // Within 1% of memory of what the floor allows.
    let left = inflate_allowance(&w.borrow().vm(), floor, false);
    assert!(left < PAGES as u64 / 100, "{left} pages short of the floor");
}
