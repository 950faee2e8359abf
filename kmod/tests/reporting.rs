//! Free page reporting against the simulated device and guest memory.

mod sim;

use sim::{sim, Ack, Shared, SimDevice, SimMemory, World};
use vtballoon::balloon::{Balloon, Step, Tunables};
use vtballoon::platform::VmCounters;
use vtballoon::protocol::Features;
use vtballoon::reporting::{Policy, ReportEnv, Reporter, Stop};

const FEATURES: Features = Features::MUST_TELL_HOST.union(Features::REPORTING);
/// 64 MiB of 4 KiB pages: 32 blocks of 2 MiB.
const PAGES: usize = 16384;
const BLOCK: usize = 512;

struct Env {
    w: Shared,
    free_target: u64,
    pressure: bool,
    page_size: u64,
}

impl ReportEnv for Env {
    fn vm(&mut self) -> VmCounters {
        let w = self.w.borrow();
        VmCounters {
            page_size: self.page_size,
            page_count: w.total_pages as u64,
            free: w.free_pages() as u64,
            free_target: self.free_target,
            freed_total: w.freed_total,
            ..Default::default()
        }
    }
    fn now_ms(&mut self) -> u64 {
        self.w.borrow().now_ms
    }
    fn take_pressure(&mut self) -> bool {
        std::mem::take(&mut self.pressure)
    }
}

type Rep = Reporter<usize, Vec<u64>>;

fn setup(policy: Policy) -> (Shared, SimDevice, SimMemory, Env, Rep) {
    let (w, dev, mem) = sim(FEATURES, PAGES);
    let words = Rep::bitmap_words(
        sim::RAM_BASE + (PAGES as u64) * 4096,
        4096,
        policy.min_order,
    );
    let rep = Reporter::new(policy, 4096, vec![0; words]);
    let env = Env {
        w: w.clone(),
        free_target: 256,
        pressure: false,
        page_size: 4096,
    };
    (w, dev, mem, env, rep)
}

fn clean(w: &Shared) {
    let v = &w.borrow().violations;
    assert!(v.is_empty(), "violations: {v:?}");
}

fn small_batches() -> Policy {
    Policy {
        batch_blocks: 4,
        ..Policy::default()
    }
}

#[test]
fn reports_free_blocks_and_gives_every_one_back() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    let before = w.borrow().resident();
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(r.reported >= 24, "{r:?}");
    let world = w.borrow();
    assert_eq!(world.free_pages(), PAGES, "every block came back");
    assert!(world.reporter_pages.is_empty());
    assert_eq!(
        world.reported_bytes,
        u64::from(r.reported) * 2 * 1024 * 1024
    );
    assert!(world.resident() <= before - r.reported as usize * BLOCK);
    assert!(
        world.most_blocks_held <= 4,
        "held {} blocks at once",
        world.most_blocks_held
    );
    assert_eq!(rep.counters().blocks.get(), u64::from(r.reported));
    assert_eq!(rep.counters().acks.get(), world.reports);
    assert_eq!(rep.counters().inflight.get(), 0);
    drop(world);
    clean(&w);
}

#[test]
fn keeps_free_memory_above_twice_the_page_daemon_target() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    // Floor: 15000 pages + blocks held + one block. Two blocks fit, not four.
    env.free_target = 7500;
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert_eq!((r.reported, r.stop), (0, Stop::MemoryLow));
    // What was held when the floor was hit went straight back.
    assert_eq!(w.borrow().free_pages(), PAGES);
    assert_eq!(w.borrow().reports, 0);
    env.free_target = 1000;
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(r.reported > 0, "{r:?}");
    clean(&w);
}

#[test]
fn never_reports_ballooned_or_used_pages() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    // Balloon 3000 pages and let a workload use 5000.
    w.borrow_mut().num_pages = 3000;
    let mut b = Balloon::new(FEATURES, Tunables::default());
    while b.step(&mut dev, &mut mem) != Step::Idle {}
    w.borrow_mut().workload_alloc(5000);
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(r.reported > 0);
    clean(&w); // the device flags any reported page that is not free
    assert_eq!(w.borrow().guest_list().len(), 3000);
}

#[test]
fn memory_pressure_stops_reporting_for_a_while() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    env.pressure = true;
    assert_eq!(rep.pass(&mut dev, &mut mem, &mut env).stop, Stop::Pressure);
    w.borrow_mut().now_ms += 5_000;
    assert_eq!(rep.pass(&mut dev, &mut mem, &mut env).stop, Stop::Pressure);
    assert_eq!(w.borrow().reports, 0);
    w.borrow_mut().now_ms += 6_000;
    assert!(rep.pass(&mut dev, &mut mem, &mut env).reported > 0);
    clean(&w);
}

#[test]
fn untouched_blocks_are_not_reported_again_and_again() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    let mut total = 0;
    while rep.pass(&mut dev, &mut mem, &mut env).stop == Stop::Budget {}
    total += rep.counters().blocks.get();
    let reports = w.borrow().reports;
    for _ in 0..20 {
        w.borrow_mut().now_ms += 2_000;
        let r = rep.pass(&mut dev, &mut mem, &mut env);
        assert_eq!(r.reported, 0, "{r:?}");
    }
    assert_eq!(w.borrow().reports, reports);
    assert_eq!(rep.counters().blocks.get(), total);
    // The idle passes did not even touch the free lists.
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert_eq!((r.stop, r.skipped), (Stop::Unchanged, 0));
    clean(&w);
}

#[test]
fn memory_used_and_freed_after_a_report_is_reported_again() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    while rep.pass(&mut dev, &mut mem, &mut env).stop == Stop::Budget {}
    let low = w.borrow().resident();
    // A workload touches 32 MiB and frees it.
    let n = w.borrow_mut().workload_alloc(8192);
    assert_eq!(w.borrow().resident(), low + n);
    w.borrow_mut().workload_free();
    w.borrow_mut().now_ms += 6_000;
    let mut passes = 0;
    while passes < 10 {
        passes += 1;
        let r = rep.pass(&mut dev, &mut mem, &mut env);
        if r.stop != Stop::Budget {
            break;
        }
    }
    let after = w.borrow().resident();
    let dropped = low + n - after;
    assert!(
        dropped * 10 >= n * 9,
        "host got back {dropped} of {n} pages"
    );
    clean(&w);
}

#[test]
fn a_silent_host_keeps_the_blocks_until_it_acks_or_the_device_resets() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    w.borrow_mut().ack = Ack::Never;
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(matches!(r.stop, Stop::Host(_)), "{r:?}");
    assert_eq!(rep.held(), 4);
    assert!(rep.waiting_for_host());
    // The next pass waits for the same batch; nothing new is taken.
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(matches!(r.stop, Stop::Host(_)));
    assert_eq!(w.borrow().reports, 0);
    assert_eq!(w.borrow().free_pages(), PAGES - 4 * BLOCK);
    // Detach resets the device, then frees the blocks.
    w.borrow_mut().reset();
    assert_eq!(rep.release(&mut mem), 4);
    assert_eq!(w.borrow().free_pages(), PAGES);
    clean(&w);
}

#[test]
fn a_late_ack_completes_on_the_next_pass() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    w.borrow_mut().ack = Ack::AfterMs(7_000);
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert!(matches!(r.stop, Stop::Host(_)));
    w.borrow_mut().ack = Ack::Immediate;
    rep.pass(&mut dev, &mut mem, &mut env);
    assert_eq!(rep.held(), 0);
    assert_eq!(w.borrow().free_pages(), PAGES);
    assert!(rep.counters().blocks.get() >= 4);
    clean(&w);
}

#[test]
fn disabled_reporting_does_nothing() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    rep.set_enabled(false);
    assert_eq!(rep.pass(&mut dev, &mut mem, &mut env).stop, Stop::Disabled);
    assert_eq!(w.borrow().notifications, 0);
    rep.set_enabled(true);
    assert!(rep.pass(&mut dev, &mut mem, &mut env).reported > 0);
}

#[test]
fn each_pass_is_bounded() {
    let policy = Policy {
        batch_blocks: 2,
        pass_blocks: 6,
        ..Policy::default()
    };
    let (w, mut dev, mut mem, mut env, mut rep) = setup(policy);
    let r = rep.pass(&mut dev, &mut mem, &mut env);
    assert_eq!((r.reported, r.stop), (6, Stop::Budget));
    assert_eq!(w.borrow().reports, 3);
    assert!(w.borrow().most_blocks_held <= 2);
    clean(&w);
}

#[test]
fn fragmented_memory_is_reported_in_smaller_blocks() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    // One used page in every 2 MiB block: no order-9 block is free.
    for block in 0..PAGES / BLOCK {
        w.borrow_mut().workload_pin(block * BLOCK + 7);
    }
    let before = w.borrow().resident();
    loop {
        let r = rep.pass(&mut dev, &mut mem, &mut env);
        if r.stop != Stop::Budget {
            break;
        }
    }
    let world = w.borrow();
    let dropped = before - world.resident();
    // Everything free except the 32-page unit holding each pinned page.
    assert!(
        dropped >= PAGES - (PAGES / BLOCK) * 32,
        "only {dropped} pages went back"
    );
    assert_eq!(world.free_pages(), PAGES - PAGES / BLOCK);
    drop(world);
    clean(&w); // no pinned page was reported
}

#[test]
fn reports_new_free_memory_even_when_the_allocator_returns_reported_blocks_first() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    w.borrow_mut().address_order = true;
    // The upper 3/4 of memory is in use; the lower quarter is reported.
    for p in PAGES / 4..PAGES {
        w.borrow_mut().workload_pin(p);
    }
    while rep.pass(&mut dev, &mut mem, &mut env).stop == Stop::Budget {}
    let low = w.borrow().resident();
    // The workload frees the rest: it lies after every reported block.
    w.borrow_mut().workload_free();
    w.borrow_mut().now_ms += 6_000;
    for _ in 0..8 {
        if rep.pass(&mut dev, &mut mem, &mut env).stop != Stop::Budget {
            break;
        }
    }
    let dropped = low - w.borrow().resident();
    assert!(
        dropped >= PAGES * 3 / 4 * 9 / 10,
        "only {dropped} pages went back"
    );
    assert_eq!(w.borrow().free_pages(), PAGES, "every block came back");
    clean(&w);
}

#[test]
fn a_scan_holds_one_batch_at_most_even_past_reported_blocks() {
    let (w, mut dev, mut mem, mut env, mut rep) = setup(small_batches());
    w.borrow_mut().address_order = true;
    // Everything reported once.
    while rep.pass(&mut dev, &mut mem, &mut env).stop == Stop::Budget {}
    w.borrow_mut().now_ms += 6_000;
    // Someone else frees memory: the next scan meets reported blocks first.
    w.borrow_mut().workload_alloc(PAGES / 2);
    w.borrow_mut().workload_free();
    w.borrow_mut().free_floor_seen = usize::MAX;
    w.borrow_mut().most_blocks_held = 0;
    while rep.pass(&mut dev, &mut mem, &mut env).stop == Stop::Budget {}
    let lowest = w.borrow().free_floor_seen;
    // Free memory never dips by more than the batch being reported.
    assert!(
        PAGES - lowest <= 4 * BLOCK,
        "free memory fell by {} pages",
        PAGES - lowest
    );
    assert!(w.borrow().most_blocks_held <= 4);
    assert_eq!(w.borrow().free_pages(), PAGES);
    clean(&w);
}

#[test]
fn the_pause_between_passes_doubles_while_idle_and_resets_on_work() {
    use vtballoon::reporting::PassResult;
    let p = Policy::default();
    let idle = PassResult {
        reported: 0,
        skipped: 0,
        stop: Stop::Unchanged,
    };
    let mut pause = p.interval_ms;
    let mut seen = Vec::new();
    for _ in 0..6 {
        pause = p.next_pause(pause, &idle);
        seen.push(pause);
    }
    assert_eq!(seen, [4_000, 8_000, 16_000, 16_000, 16_000, 16_000]);
    // A pass that reported, or stopped for pressure or the budget: back to
    // the interval.
    for stop in [Stop::Budget, Stop::Pressure, Stop::AllReported] {
        let busy = PassResult {
            reported: u32::from(stop == Stop::AllReported),
            skipped: 0,
            stop,
        };
        assert_eq!(p.next_pause(16_000, &busy), p.interval_ms, "{stop:?}");
    }
}

#[test]
fn blocks_are_2_mib_whatever_the_guest_page_size() {
    assert_eq!(Policy::for_page_size(4096), Policy::default());
    let mut words_at = vec![];
    for page_size in [4096u64, 16384, 65536] {
        // 64 MiB and the page daemon's free target of 1 MiB, in pages.
        let pages = (64 << 20) / page_size as usize;
        let w = World::new(FEATURES, pages, page_size);
        let (mut dev, mut mem) = (SimDevice::new(w.clone()), SimMemory(w.clone()));
        let policy = Policy {
            batch_blocks: 4,
            ..Policy::for_page_size(page_size)
        };
        assert_eq!(page_size << policy.order, 2 << 20);
        assert_eq!(page_size << policy.min_order, 128 << 10);
        assert_eq!(policy.forget_pages * page_size, 32 << 20);
        let words = Rep::bitmap_words(sim::RAM_BASE + (64 << 20), page_size, policy.min_order);
        words_at.push(words);
        let mut rep = Reporter::new(policy, page_size, vec![0; words]);
        let mut env = Env {
            w: w.clone(),
            free_target: (1 << 20) / page_size,
            pressure: false,
            page_size,
        };
        let r = rep.pass(&mut dev, &mut mem, &mut env);
        assert!(r.reported >= 24, "{page_size}: {r:?}");
        let world = w.borrow();
        assert_eq!(world.reported_bytes, u64::from(r.reported) * (2 << 20));
        assert_eq!(world.free_pages(), pages, "every block came back");
        drop(world);
        clean(&w);
    }
    assert!(
        words_at.windows(2).all(|p| p[0] == p[1]),
        "one bit pair per 128 KiB whatever the page size: {words_at:?}"
    );
}
