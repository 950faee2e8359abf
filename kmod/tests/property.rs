//! Random sequences of host targets, config changes, lowmem events and
//! pressure-watch looks, inflate limits (floor, pressure), allocation
//! failures, and delayed or lost acks. Invariants:
//! - the guest's count of ballooned pages equals the device's;
//! - `actual` in config matches the guest's count after every resize;
//! - no page is reused before its ack (the simulator flags it);
//! - no buffer is posted without a pending config change (WANTSIZE), except
//!   to settle buffers already in flight, and lowmem deflates only;
//! - nothing is inflated while the pressure limit is set, nor after a
//!   deflate that found the guest short, until the host speaks again;
//! - after a clean shutdown every page is back with the guest.
//!
//! Seeds are deterministic; a failure prints the seed that replays it
//! (`PROPERTY_SEED=n cargo test -p vtballoon --test property`).

mod sim;

use sim::{sim, Ack, Rng, Shared, SimDevice, SimMemory};
use vtballoon::balloon::{Balloon, InflateLimit, Relief, Step, Tunables};
use vtballoon::pressure::{OomTunables, Pressure};
use vtballoon::protocol::{Features, Queue};

const PAGES: usize = 4096;

fn check(seed: u64, w: &Shared, b: &Balloon, what: &str) {
    let world = w.borrow();
    assert!(
        world.violations.is_empty(),
        "seed {seed}, after {what}: violations {:?}",
        world.violations
    );
    let in_flight = world.outstanding(Queue::Inflate) + world.outstanding(Queue::Deflate);
    if in_flight == 0 {
        assert_eq!(
            world.host_units(),
            b.actual(),
            "seed {seed}, after {what}: host vs guest count"
        );
        assert_eq!(
            world.guest_list().len() as u32,
            b.actual(),
            "seed {seed}, after {what}: list"
        );
        assert_eq!(
            world.actual,
            b.actual(),
            "seed {seed}, after {what}: config actual"
        );
    }
}

fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed);
    let features = Features::MUST_TELL_HOST | Features::DEFLATE_ON_OOM;
    let (w, mut dev, mut mem): (Shared, SimDevice, SimMemory) = sim(features, PAGES);
    let tun = Tunables {
        inflight_buffers: 1 + rng.below(8) as usize,
        ..Tunables::default()
    };
    let oom = OomTunables {
        min_batch_pages: 1 + rng.below(600) as u32,
        headroom_pages: rng.below(300) as u32,
        ..OomTunables::default()
    };
    w.borrow_mut().free_target = rng.below(400);
    let mut pressure = Pressure::new();
    let mut b = Balloon::new(features, tun);
    let mut limit = InflateLimit::None;
    let mut host_changed_since_lowmem = true;
    for op in 0..80 {
        let what = format!("op {op}");
        match rng.below(10) {
            0..=2 => {
                // The host sets a new target and (usually) interrupts.
                w.borrow_mut().num_pages = rng.below(PAGES as u64 + 200) as u32;
                if rng.chance(80) {
                    b.config_changed();
                    host_changed_since_lowmem = true;
                }
            }
            3 => {
                let before = w.borrow().inflate_buffers;
                let cause = if rng.chance(50) {
                    Relief::LowmemEvent
                } else {
                    Relief::Watch
                };
                let vm = w.borrow().vm();
                let now = w.borrow().now_ms;
                let held = PAGES - w.borrow().free_pages();
                // An event finding the guest short stops the balloon; one
                // finding free memory at the goal does not.
                let short = pressure.short(&oom, &vm);
                let freed = b.relieve(&mut pressure, &oom, cause, &mut dev, &mut mem, &vm, now);
                assert_eq!(
                    w.borrow().inflate_buffers,
                    before,
                    "seed {seed}: lowmem inflated"
                );
                assert!(
                    freed as usize <= held,
                    "seed {seed}: gave back more than the guest had given"
                );
                let stops = match cause {
                    Relief::LowmemEvent => short,
                    Relief::Watch => freed > 0,
                };
                if stops {
                    host_changed_since_lowmem = false;
                }
            }
            9 if rng.chance(50) => {
                limit = match rng.below(3) {
                    0 => InflateLimit::None,
                    1 => InflateLimit::Floor(rng.below(PAGES as u64)),
                    _ => InflateLimit::Pressure,
                };
                b.set_inflate_limit(limit);
            }
            4 => w.borrow_mut().fail_allocs = rng.below(300) as usize,
            5 => {
                let mut world = w.borrow_mut();
                world.reserve = rng.below(PAGES as u64) as usize;
                // Fragmentation: the largest free run the VM has.
                world.max_run_order = rng.below(9) as u32;
            }
            6 => {
                w.borrow_mut().ack = match rng.below(6) {
                    0 => Ack::Never,
                    1 | 2 => Ack::AfterMs(rng.below(7_000)),
                    _ => Ack::Immediate,
                }
            }
            7 => w.borrow_mut().fail_posts = rng.below(2) as usize,
            _ => {
                // The balloon thread runs a while.
                for _ in 0..rng.below(40) {
                    let inflates = w.borrow().inflate_buffers;
                    let posts = w.borrow().notifications;
                    let settling = !b.wantsize();
                    match b.step(&mut dev, &mut mem) {
                        Step::Idle => break,
                        Step::Backoff { ms } => w.borrow_mut().now_ms += u64::from(ms),
                        _ => {}
                    }
                    if settling {
                        assert_eq!(
                            w.borrow().notifications,
                            posts,
                            "seed {seed}: post without WANTSIZE"
                        );
                    }
                    if !host_changed_since_lowmem || limit == InflateLimit::Pressure {
                        assert_eq!(
                            w.borrow().inflate_buffers,
                            inflates,
                            "seed {seed}: inflated after lowmem or under pressure"
                        );
                    }
                }
            }
        }
        check(seed, &w, &b, &what);
    }
    // A healthy host again: the balloon converges to the target after a config change.
    {
        let mut world = w.borrow_mut();
        world.ack = Ack::Immediate;
        world.fail_allocs = 0;
        world.fail_posts = 0;
        world.reserve = 0;
        world.now_ms += 100_000; // lost acks stay lost
    }
    let stuck = w.borrow().outstanding(Queue::Inflate) + w.borrow().outstanding(Queue::Deflate);
    if stuck == 0 {
        b.set_inflate_limit(InflateLimit::None);
        b.config_changed();
        for _ in 0..1000 {
            match b.step(&mut dev, &mut mem) {
                Step::Idle => break,
                Step::Backoff { ms } => w.borrow_mut().now_ms += u64::from(ms),
                _ => {}
            }
        }
        // A target above guest memory is met as far as memory goes.
        let want = w.borrow().num_pages.min(PAGES as u32);
        assert_eq!(b.actual(), want, "seed {seed}: converged");
        check(seed, &w, &b, "convergence");
        assert_eq!(
            b.shutdown(&mut dev, &mut mem),
            Ok(()),
            "seed {seed}: shutdown"
        );
    } else if b.shutdown(&mut dev, &mut mem).is_err() {
        // Lost acks: detach resets the device and takes every page back.
        w.borrow_mut().reset();
        b.abandon(&dev, &mut mem);
    }
    let world = w.borrow();
    assert!(
        world.violations.is_empty(),
        "seed {seed}: {:?}",
        world.violations
    );
    assert_eq!(world.free_pages(), PAGES, "seed {seed}: pages leaked");
}

#[test]
fn random_host_and_guest_behaviour_keeps_the_invariants() {
    if let Ok(seed) = std::env::var("PROPERTY_SEED") {
        run_seed(seed.parse().expect("PROPERTY_SEED is a number"));
        return;
    }
    for seed in 0..2000 {
        run_seed(seed);
    }
}
