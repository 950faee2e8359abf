//! Free page hinting against the simulated device (QEMU's hint states and
//! config, hw/virtio/virtio-balloon.c) and guest memory.

mod sim;

use sim::{sim, Ack, HintStatus, Rng, Shared, SimDevice, SimMemory};
use vtballoon::balloon::{Balloon, Step, Tunables};
use vtballoon::hinting::{Hinter, Next, Policy};
use vtballoon::platform::VmCounters;
use vtballoon::protocol::{hint_cmd, Features, Queue};

const FEATURES: Features = Features::MUST_TELL_HOST
    .union(Features::FREE_PAGE_HINT)
    .union(Features::VERSION_1);
/// 256 MiB of 4 KiB pages: 64 blocks of 4 MiB.
const PAGES: usize = 65536;
const BLOCK: usize = 1024;
const FREE_TARGET: u64 = 1024;
/// The hinter leaves twice the free target free.
const FLOOR: u64 = 2 * FREE_TARGET;

fn vm(w: &Shared) -> VmCounters {
    let w = w.borrow();
    VmCounters {
        page_size: 4096,
        page_count: PAGES as u64,
        free: w.free_pages() as u64,
        free_target: FREE_TARGET,
        freed_total: w.freed_total,
        ..Default::default()
    }
}

/// The config-change interrupt: the glue reads the field and tells the hinter.
fn deliver(w: &Shared, h: &Hinter) {
    let v = w.borrow_mut().take_hint_config();
    if let Some(v) = v {
        h.config_changed(v);
    }
}

/// One step as the hint thread would take it, after any pending interrupt.
fn step(w: &Shared, h: &mut Hinter, dev: &mut SimDevice, mem: &mut SimMemory) -> Next {
    deliver(w, h);
    let vm = vm(w);
    let now = w.borrow().now_ms;
    h.step(dev, mem, &vm, now)
}

/// Steps until the hinter has nothing to do right now.
fn run(w: &Shared, h: &mut Hinter, dev: &mut SimDevice, mem: &mut SimMemory) -> Next {
    for _ in 0..10_000 {
        match step(w, h, dev, mem) {
            Next::Now => {}
            n => return n,
        }
    }
    panic!("the hinter never rested");
}

fn setup(policy: Policy) -> (Shared, SimDevice, SimMemory, Hinter) {
    let (w, dev, mem) = sim(FEATURES, PAGES);
    (w, dev, mem, Hinter::new(policy, 4096))
}

fn clean(w: &Shared) {
    let v = &w.borrow().violations;
    assert!(v.is_empty(), "violations: {v:?}");
}

/// Held pages as the hinter counts them agree with the pages it holds.
fn consistent(w: &Shared, h: &Hinter) {
    let held = w.borrow().hint_held.len() as u64;
    assert_eq!(h.held_pages(), held);
    assert_eq!(h.counters().held_pages.get(), held);
}

fn small_batches() -> Policy {
    Policy {
        batch_blocks: 2,
        ..Policy::default()
    }
}

#[test]
fn a_round_hints_free_memory_down_to_the_floor_and_holds_it() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    let id = w.borrow_mut().hint_start();
    assert_eq!(id, hint_cmd::QEMU_MIN + 1, "QEMU's first round");
    let next = run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(
        next,
        Next::After(h.policy().check_ms),
        "holding: watch memory"
    );
    clean(&w);
    consistent(&w, &h);
    let world = w.borrow();
    let free = world.free_pages() as u64;
    assert!(free > FLOOR, "the floor is kept: {free}");
    assert!(
        free <= FLOOR + BLOCK as u64,
        "all but the floor hinted: {free}"
    );
    assert_eq!(world.hint.start_buffers, 1);
    assert_eq!(world.hint.stop_buffers, 1, "the round ends with STOP");
    assert_eq!(
        world.hint.status,
        HintStatus::Stop,
        "START -> STOP by our buffer"
    );
    assert_eq!(
        world.hint.hinted_pages,
        h.held_pages(),
        "every hint in START"
    );
    assert_eq!(world.hint.clean.len() as u64, h.held_pages());
    assert_eq!(world.hint.ignored_pages, 0);
    assert!(world.hint.most_outstanding <= h.policy().slots + 2);
    let c = h.counters();
    assert_eq!(c.rounds.get(), 1);
    assert_eq!(c.hinted_pages.get(), h.held_pages());
    assert_eq!(c.host_timeouts.get() + c.errors.get(), 0);
    assert!(
        h.reporting_paused(),
        "the reporter waits while pages are held"
    );
}

#[test]
fn done_gives_every_held_page_back() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    let hinted = h.held_pages();
    assert!(hinted > 0);
    w.borrow_mut().hint_done();
    assert_eq!(run(&w, &mut h, &mut dev, &mut mem), Next::Idle);
    clean(&w);
    consistent(&w, &h);
    assert_eq!(h.held_pages(), 0);
    assert_eq!(w.borrow().free_pages(), PAGES, "all memory free again");
    assert_eq!(h.counters().done_pages.get(), hinted);
    assert!(!h.reporting_paused());
}

#[test]
fn pages_stay_held_across_stop_and_later_rounds_until_done() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    // A workload holds half the memory during the first round.
    w.borrow_mut().workload_alloc(PAGES / 2);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    let first = h.held_pages();
    assert!(first > 0);
    // The migration's bitmap sync: STOP, then the next round.
    w.borrow_mut().hint_stop();
    run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.held_pages(), first, "STOP keeps what is held");
    w.borrow_mut().workload_free();
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    let world = w.borrow();
    assert!(
        h.held_pages() > first,
        "the second round hints what was freed"
    );
    assert_eq!(world.hint.started.len(), 2);
    assert_eq!(
        world.hint.hinted_pages,
        h.held_pages(),
        "held blocks are not hinted twice"
    );
    assert!(world.free_pages() as u64 > FLOOR);
    drop(world);
    w.borrow_mut().hint_done();
    run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(w.borrow().free_pages(), PAGES);
    consistent(&w, &h);
}

#[test]
fn host_stop_mid_round_ends_it_and_nothing_is_hinted_after() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    let id = w.borrow_mut().hint_start();
    assert_eq!(step(&w, &mut h, &mut dev, &mut mem), Next::Now);
    assert_eq!(h.active(), Some(id));
    let held = h.held_pages();
    assert_eq!(held, 2 * BLOCK as u64, "one buffer of two blocks");
    w.borrow_mut().hint_stop();
    assert_eq!(
        step(&w, &mut h, &mut dev, &mut mem),
        Next::After(h.policy().check_ms)
    );
    assert_eq!(h.active(), None);
    assert_eq!(h.held_pages(), held, "held until DONE");
    clean(&w);
    let world = w.borrow();
    assert_eq!(world.hint.ignored_pages, 0, "no hint after STOP");
    assert_eq!(world.hint.stop_buffers, 1);
}

#[test]
fn a_new_id_while_a_round_runs_ends_it_and_starts_the_next() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    let first = w.borrow_mut().hint_start();
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.active(), Some(first));
    // STOP and the next id reach the driver as one config read.
    {
        let mut world = w.borrow_mut();
        world.hint_stop();
        world.hint_start();
    }
    let second = w.borrow().hint.cmd_id;
    assert_eq!(step(&w, &mut h, &mut dev, &mut mem), Next::Now);
    assert_eq!(h.active(), Some(second));
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    let world = w.borrow();
    assert!(world.hint.started.contains(&first) && world.hint.started.contains(&second));
    assert_eq!(world.hint.stop_buffers, 2, "one STOP per round");
    assert_eq!(world.hint.ignored_pages, 0);
    assert_eq!(world.hint.hinted_pages, h.held_pages());
    assert_eq!(h.counters().rounds.get(), 2);
}

#[test]
fn the_same_id_is_never_started_twice() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    let id = w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    // The glue reads the old id again (a spurious interrupt, a re-read).
    h.config_changed(id);
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    assert_eq!(w.borrow().hint.start_buffers, 1);
    assert_eq!(h.counters().rounds.get(), 1);
}

#[test]
fn command_ids_wrap_as_qemu_counts_them() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    w.borrow_mut().hint.cmd_id = u32::MAX - 1;
    assert_eq!(w.borrow_mut().hint_start(), u32::MAX);
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.active(), Some(u32::MAX));
    w.borrow_mut().hint_stop();
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(w.borrow_mut().hint_start(), hint_cmd::QEMU_MIN);
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.active(), Some(hint_cmd::QEMU_MIN));
    clean(&w);
}

#[test]
fn a_config_interrupt_during_a_round_reads_stop_and_ends_it() {
    // QEMU leaves free_page_hint_cmd_id zeroed while a round has started: a
    // config interrupt for another reason (a balloon target) reads STOP.
    // Linux ends its round then too; the next bitmap sync starts another.
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    w.borrow_mut().hint_start();
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(w.borrow().hint.status, HintStatus::Start);
    assert_eq!(w.borrow().hint_config(), hint_cmd::STOP);
    w.borrow_mut().hint.config_pending = true;
    step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.active(), None);
    assert_eq!(w.borrow().hint.status, HintStatus::Stop, "our STOP");
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    assert_eq!(h.counters().rounds.get(), 2);
}

#[test]
fn pressure_gives_everything_back_at_once_and_pauses_new_rounds() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    w.borrow_mut().hint_start();
    step(&w, &mut h, &mut dev, &mut mem);
    step(&w, &mut h, &mut dev, &mut mem);
    let held = h.held_pages();
    assert!(held > 0 && h.active().is_some());
    let now = w.borrow().now_ms;
    assert_eq!(h.pressure(&mut mem, now), held);
    consistent(&w, &h);
    assert_eq!(
        w.borrow().free_pages(),
        PAGES,
        "at once, not at the next step"
    );
    assert_eq!(h.counters().pressure_pages.get(), held);
    assert_eq!(h.counters().pressure_events.get(), 1);
    // The round under way ends at the next step, without taking more.
    let n = step(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(n, Next::Idle);
    assert_eq!(h.active(), None);
    assert_eq!(h.held_pages(), 0);
    assert_eq!(w.borrow().hint.stop_buffers, 1);
    // A new round during the cooldown waits.
    w.borrow_mut().hint_stop();
    w.borrow_mut().hint_start();
    let n = step(&w, &mut h, &mut dev, &mut mem);
    assert!(matches!(n, Next::After(_)), "{n:?}");
    assert_eq!(h.held_pages(), 0);
    assert_eq!(w.borrow().hint.start_buffers, 1);
    // After the cooldown, the id (still current) starts.
    w.borrow_mut().now_ms += h.policy().pressure_cooldown_ms;
    run(&w, &mut h, &mut dev, &mut mem);
    assert!(h.held_pages() > 0);
    assert_eq!(w.borrow().hint.start_buffers, 2);
    clean(&w);
    consistent(&w, &h);
}

#[test]
fn low_free_memory_while_holding_gives_blocks_back() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    let held = h.held_pages();
    // The guest allocates what the hinter left free, and more.
    let free = w.borrow().free_pages();
    w.borrow_mut().workload_alloc(free - FREE_TARGET as usize);
    assert!((w.borrow().free_pages() as u64) < FREE_TARGET + FREE_TARGET / 2);
    step(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    let free = w.borrow().free_pages() as u64;
    assert!(free >= FLOOR, "back above the floor: {free}");
    assert!(
        h.held_pages() < held && h.held_pages() > 0,
        "only what is needed"
    );
    assert_eq!(h.counters().pressure_events.get(), 1);
    assert_eq!(h.counters().pressure_pages.get(), held - h.held_pages());
}

#[test]
fn no_page_is_both_ballooned_and_hinted() {
    let features = FEATURES | Features::DEFLATE_ON_OOM;
    let (w, mut dev, mut mem) = sim(features, PAGES);
    let mut b = Balloon::new(features, Tunables::default());
    let mut h = Hinter::new(Policy::default(), 4096);
    let inflate = |b: &mut Balloon, dev: &mut SimDevice, mem: &mut SimMemory, target: u32| {
        w.borrow_mut().num_pages = target;
        b.config_changed();
        for _ in 0..10_000 {
            match b.step(dev, mem) {
                Step::More => {}
                Step::Backoff { ms } => {
                    w.borrow_mut().now_ms += u64::from(ms);
                    break;
                }
                _ => break,
            }
        }
    };
    inflate(&mut b, &mut dev, &mut mem, (PAGES / 4) as u32);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    assert!(h.held_pages() > 0);
    // The host grows the balloon mid-migration: only the floor is free.
    inflate(&mut b, &mut dev, &mut mem, (PAGES / 2) as u32);
    {
        let world = w.borrow();
        assert!(world
            .guest_list()
            .iter()
            .all(|p| !world.hint_held.contains(p)));
    }
    // The balloon thread deflates under pressure; hinted blocks go back first.
    let now = w.borrow().now_ms;
    h.pressure(&mut mem, now);
    b.give_back(&mut dev, &mut mem, 256);
    w.borrow_mut().hint_done();
    run(&w, &mut h, &mut dev, &mut mem);
    inflate(&mut b, &mut dev, &mut mem, (PAGES / 2) as u32);
    clean(&w);
    consistent(&w, &h);
    assert_eq!(
        b.actual() as usize,
        PAGES / 2,
        "freed hinted memory can be ballooned"
    );
}

#[test]
fn a_reset_mid_round_gives_everything_back_and_the_next_round_works() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    w.borrow_mut().hint_start();
    step(&w, &mut h, &mut dev, &mut mem);
    step(&w, &mut h, &mut dev, &mut mem);
    assert!(w.borrow().outstanding(Queue::FreePageHint) > 0 || h.held_pages() > 0);
    // Detach or re-initialization: the device is reset, then the driver
    // frees what it held.
    w.borrow_mut().reset();
    let n = h.release(&mut mem);
    assert_eq!(n, 4 * BLOCK as u64);
    assert_eq!(w.borrow().free_pages(), PAGES);
    consistent(&w, &h);
    assert_eq!(h.active(), None);
    // The device comes back; the next migration hints again.
    w.borrow_mut().driver_ok = true;
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    assert!(h.held_pages() > 0);
    assert_eq!(h.counters().errors.get(), 0);
}

#[test]
fn a_dead_host_costs_bounded_waits_and_the_memory_comes_back() {
    let (w, mut dev, mut mem, mut h) = setup(small_batches());
    w.borrow_mut().ack = Ack::Never;
    w.borrow_mut().hint_start();
    let t0 = w.borrow().now_ms;
    let next = run(&w, &mut h, &mut dev, &mut mem);
    let waited = w.borrow().now_ms - t0;
    assert!(matches!(next, Next::After(_)), "{next:?}");
    assert_eq!(h.counters().host_timeouts.get(), 1);
    assert_eq!(
        waited,
        u64::from(h.policy().host_timeout_ms),
        "one bounded wait"
    );
    assert_eq!(
        h.held_pages(),
        (h.policy().slots * 2 * BLOCK) as u64,
        "only what went out in the slots"
    );
    clean(&w);
    // The next id finds the start slot still with the host: not started.
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.active(), None);
    assert!(h.counters().errors.get() >= 1);
    // No DONE ever comes: the memory goes back after hold_max_ms.
    w.borrow_mut().now_ms += h.policy().hold_max_ms;
    assert_eq!(step(&w, &mut h, &mut dev, &mut mem), Next::Idle);
    assert_eq!(w.borrow().free_pages(), PAGES);
    assert!(h.counters().expired_pages.get() > 0);
    consistent(&w, &h);
    clean(&w);
}

#[test]
fn fragmented_memory_is_hinted_in_smaller_blocks() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    // One page in use in every 4 MiB block: no block of order 10 is free.
    for b in 0..PAGES / BLOCK {
        w.borrow_mut().workload_pin(b * BLOCK + 7);
    }
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    let free = w.borrow().free_pages() as u64;
    assert!(h.held_pages() > PAGES as u64 / 2, "{}", h.held_pages());
    assert!(free > FLOOR, "{free}");
}

#[test]
fn reporting_pauses_from_the_first_round_to_done() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    assert!(!h.reporting_paused());
    // All memory in use: the round takes nothing, yet a migration runs.
    let free = w.borrow().free_pages();
    w.borrow_mut().workload_alloc(free - FLOOR as usize);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.held_pages(), 0);
    assert!(h.reporting_paused(), "between rounds of a migration");
    w.borrow_mut().hint_stop();
    run(&w, &mut h, &mut dev, &mut mem);
    assert!(h.reporting_paused());
    w.borrow_mut().hint_done();
    run(&w, &mut h, &mut dev, &mut mem);
    assert!(!h.reporting_paused(), "DONE ends the migration");
    // A host that never says DONE does not pause reporting for ever.
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    assert!(h.reporting_paused());
    w.borrow_mut().now_ms += h.policy().hold_max_ms;
    step(&w, &mut h, &mut dev, &mut mem);
    assert!(!h.reporting_paused());
    clean(&w);
}

#[test]
fn no_round_without_a_command_and_nothing_taken() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    assert_eq!(run(&w, &mut h, &mut dev, &mut mem), Next::Idle);
    w.borrow_mut().hint_stop();
    w.borrow_mut().hint_done();
    assert_eq!(run(&w, &mut h, &mut dev, &mut mem), Next::Idle);
    assert_eq!(w.borrow().notifications, 0);
    assert_eq!(w.borrow().free_pages(), PAGES);
}

/// Random migrations, workloads, pressure, resets and host failures: no
/// protocol violation, the hinter's count matches what it holds, the floor
/// holds after every step that took memory, and DONE frees everything.
#[test]
fn random_host_and_guest_behaviour_keeps_the_invariants() {
    for seed in 0..60 {
        let mut r = Rng::new(seed);
        let policy = Policy {
            batch_blocks: 1 + r.below(8) as usize,
            slots: 1 + r.below(4) as usize,
            order: 8 + r.below(3) as u32,
            ..Policy::default()
        };
        let (w, mut dev, mut mem, mut h) = setup(policy);
        for _ in 0..150 {
            match r.below(12) {
                0 => {
                    w.borrow_mut().hint_start();
                }
                1 => w.borrow_mut().hint_stop(),
                2 => w.borrow_mut().hint_done(),
                3 => {
                    let n = r.below(PAGES as u64 / 4) as usize;
                    w.borrow_mut().workload_alloc(n);
                }
                4 => w.borrow_mut().workload_free(),
                5 => {
                    let now = w.borrow().now_ms;
                    h.pressure(&mut mem, now);
                }
                6 => w.borrow_mut().now_ms += r.below(20_000),
                7 => w.borrow_mut().hint.config_pending = true,
                8 if r.chance(20) => {
                    w.borrow_mut().reset();
                    h.release(&mut mem);
                    w.borrow_mut().driver_ok = true;
                    w.borrow_mut().ack = Ack::Immediate;
                }
                9 if r.chance(10) => w.borrow_mut().ack = Ack::Never,
                _ => {
                    let before = w.borrow().free_pages() as u64;
                    step(&w, &mut h, &mut dev, &mut mem);
                    let after = w.borrow().free_pages() as u64;
                    assert!(
                        after >= before || after > FLOOR,
                        "seed {seed}: took memory below the floor ({before} -> {after})"
                    );
                }
            }
            consistent(&w, &h);
            let v = w.borrow().violations.clone();
            assert!(v.is_empty(), "seed {seed}: {v:?}");
        }
        w.borrow_mut().hint_done();
        if w.borrow().ack == Ack::Never {
            // A dead host's DONE still reaches config; buffers stay out.
            w.borrow_mut().now_ms += h.policy().hold_max_ms;
        }
        run(&w, &mut h, &mut dev, &mut mem);
        assert_eq!(h.held_pages(), 0, "seed {seed}");
        consistent(&w, &h);
    }
}

#[test]
fn a_config_change_of_the_command_id_alone_is_not_the_balloons() {
    use vtballoon::hinting::config_for_balloon;
    let id = hint_cmd::QEMU_MIN + 1;
    // Hinting's own notifications: a new id, STOP, DONE, the next id.
    assert!(!config_for_balloon((1000, hint_cmd::STOP), (1000, id)));
    assert!(!config_for_balloon((1000, id), (1000, hint_cmd::STOP)));
    assert!(!config_for_balloon(
        (1000, hint_cmd::STOP),
        (1000, hint_cmd::DONE)
    ));
    assert!(!config_for_balloon((1000, id), (1000, id + 1)));
    // A new target, alone or with a hinting change.
    assert!(config_for_balloon(
        (1000, hint_cmd::STOP),
        (2000, hint_cmd::STOP)
    ));
    assert!(config_for_balloon((1000, id), (0, hint_cmd::STOP)));
    // Nothing visible changed: the host repeated its target (WANTSIZE).
    assert!(config_for_balloon((1000, id), (1000, id)));
    assert!(config_for_balloon((0, hint_cmd::STOP), (0, hint_cmd::STOP)));
}

/// The kernel keeps the counters in the driver state, outside the hinter's
/// lock, and reads them while the hinter works: a hinter counting through a
/// reference counts exactly as one that owns its counters.
#[test]
fn counters_kept_outside_the_hinter_count_the_same() {
    use vtballoon::hinting::HintCounters;
    let counters = HintCounters::default();
    let (w, mut dev, mut mem) = sim(FEATURES, PAGES);
    let mut h = Hinter::with_counters(Policy::default(), 4096, &counters);
    let (w2, mut dev2, mut mem2, mut owned) = setup(Policy::default());
    w.borrow_mut().hint_start();
    w2.borrow_mut().hint_start();
    let settle = |w: &Shared, f: &mut dyn FnMut(u32, &VmCounters, u64) -> Next| {
        for _ in 0..10_000 {
            let v = w.borrow_mut().take_hint_config();
            let vm = vm(w);
            let now = w.borrow().now_ms;
            if f(v.unwrap_or(u32::MAX), &vm, now) != Next::Now {
                return;
            }
        }
        panic!("the hinter never rested");
    };
    settle(&w, &mut |v, vm, now| {
        if v != u32::MAX {
            h.config_changed(v);
        }
        h.step(&mut dev, &mut mem, vm, now)
    });
    settle(&w2, &mut |v, vm, now| {
        if v != u32::MAX {
            owned.config_changed(v);
        }
        owned.step(&mut dev2, &mut mem2, vm, now)
    });
    assert!(counters.hinted_pages.get() > 0);
    assert_eq!(counters.rounds.get(), 1);
    assert_eq!(counters.held_pages.get(), h.held_pages());
    assert_eq!(
        counters.hinted_pages.get(),
        owned.counters().hinted_pages.get()
    );
    w.borrow_mut().hint_done();
    settle(&w, &mut |v, vm, now| {
        if v != u32::MAX {
            h.config_changed(v);
        }
        h.step(&mut dev, &mut mem, vm, now)
    });
    assert_eq!(counters.held_pages.get(), 0);
    assert_eq!(counters.done_pages.get(), counters.hinted_pages.get());
    clean(&w);
    assert_eq!(w.borrow().free_pages(), PAGES);
}

/// `hint_enabled=0`: the host's rounds are followed (the reporter pauses
/// until DONE) but nothing is posted or taken; switched on again, the next
/// round id hints as usual; switched off during a round, the round ends
/// with STOP and what is held stays held until DONE.
#[test]
fn switched_off_the_hinter_follows_rounds_without_taking_memory() {
    let (w, mut dev, mut mem, mut h) = setup(Policy::default());
    h.set_enabled(false);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    assert_eq!(h.held_pages(), 0);
    assert_eq!(w.borrow().free_pages(), PAGES, "nothing taken");
    assert_eq!(w.borrow().hint.start_buffers, 0, "no start buffer");
    assert_eq!(h.counters().rounds.get(), 0);
    assert!(h.reporting_paused(), "a migration is under way");
    w.borrow_mut().hint_stop();
    run(&w, &mut h, &mut dev, &mut mem);
    h.set_enabled(true);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    let held = h.held_pages();
    assert!(held > 0, "on again: the next round hints");
    assert_eq!(h.counters().rounds.get(), 1);
    // Off while holding: stays held, DONE gives it back.
    h.set_enabled(false);
    w.borrow_mut().hint_start();
    run(&w, &mut h, &mut dev, &mut mem);
    assert_eq!(h.held_pages(), held, "no more taken, none dropped");
    w.borrow_mut().hint_done();
    run(&w, &mut h, &mut dev, &mut mem);
    clean(&w);
    consistent(&w, &h);
    assert_eq!(h.held_pages(), 0);
    assert!(!h.reporting_paused());
    assert_eq!(w.borrow().free_pages(), PAGES);
}
