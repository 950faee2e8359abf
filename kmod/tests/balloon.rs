//! The sizing logic against the simulated device and guest memory.

mod sim;

use sim::{sim, Ack, Shared, SimDevice, SimMemory, World};
use vtballoon::balloon::{Balloon, InflateLimit, Relief, Step, Tunables};
use vtballoon::platform::{Device, Error, Memory};
use vtballoon::pressure::{OomTunables, Pressure};
use vtballoon::protocol::{Features, Queue};

const MTH: Features = Features::MUST_TELL_HOST;
const OOM: Features = Features::DEFLATE_ON_OOM;

/// Steps like the balloon kthread would, sleeping (in simulated time) on
/// backoff, until the balloon is idle. Returns the steps taken.
fn run(b: &mut Balloon, w: &Shared, dev: &mut SimDevice, mem: &mut SimMemory) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..10_000 {
        let s = b.step(dev, mem);
        steps.push(s);
        match s {
            Step::Idle => return steps,
            Step::More => {}
            Step::Backoff { ms } => w.borrow_mut().now_ms += u64::from(ms),
            Step::Failed(_) => return steps,
        }
    }
    panic!("balloon never went idle: {:?}", &steps[steps.len() - 5..]);
}

fn clean(w: &Shared) {
    let v = &w.borrow().violations;
    assert!(v.is_empty(), "protocol violations: {v:?}");
}

fn setup(features: Features, pages: usize, target: u32) -> (Shared, SimDevice, SimMemory, Balloon) {
    setup_with(features, pages, target, Tunables::default())
}

fn setup_with(
    features: Features,
    pages: usize,
    target: u32,
    tun: Tunables,
) -> (Shared, SimDevice, SimMemory, Balloon) {
    let (w, dev, mem) = sim(features, pages);
    w.borrow_mut().num_pages = target;
    (w, dev, mem, Balloon::new(features, tun))
}

#[test]
fn reads_the_host_target_once_per_config_change_not_per_buffer() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 3000);
    let steps = run(&mut b, &w, &mut dev, &mut mem);
    assert!(steps.len() > 10, "many steps: {}", steps.len());
    assert_eq!(b.actual(), 3000);
    assert_eq!(w.borrow().target_reads, 1, "read at attach only");
    // A change the host made without telling is not followed...
    w.borrow_mut().num_pages = 1000;
    b.config_changed();
    assert_eq!(b.step(&mut dev, &mut mem), Step::More);
    w.borrow_mut().num_pages = 500;
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(w.borrow().target_reads, 2);
    assert_eq!(b.actual(), 1000, "the target as read after the change");
    // ...until its interrupt comes.
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 500);
    assert_eq!(w.borrow().target_reads, 3);
    clean(&w);
}

#[test]
fn writes_config_actual_every_16_buffers_and_when_nothing_is_in_flight() {
    // 40 buffers of 256 pages each way: written after buffers 16, 32 and
    // the last (nothing in flight).
    let (w, mut dev, mut mem, mut b) = setup(MTH, 16384, 40 * 256);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 40 * 256);
    assert_eq!(w.borrow().actual, 40 * 256, "the last value written");
    assert_eq!(w.borrow().actual_writes, 3);
    w.borrow_mut().num_pages = 0;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(w.borrow().actual, 0);
    assert_eq!(w.borrow().actual_writes, 6);
    clean(&w);
}

#[test]
fn inflates_to_the_host_target_at_attach_in_buffers_of_at_most_256() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1000);
    let steps = run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(steps.last(), Some(&Step::Idle));
    assert_eq!(b.actual(), 1000);
    let world = w.borrow();
    assert_eq!(world.actual, 1000, "actual written to config");
    assert_eq!(world.host_units(), 1000);
    assert_eq!(world.guest_list().len(), 1000);
    assert_eq!(world.inflate_buffers, 4, "1000 PFNs = 256+256+256+232");
    assert_eq!(b.counters().inflated_pages.get(), 1000);
    assert_eq!(b.counters().actual_pages.get(), 1000);
    drop(world);
    clean(&w);
}

#[test]
fn keeps_several_buffers_in_flight() {
    let tun = Tunables {
        inflight_buffers: 4,
        ..Tunables::default()
    };
    let (w, mut dev, mut mem, mut b) = setup_with(MTH, 8192, 4096, tun);
    w.borrow_mut().ack = Ack::AfterMs(1);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 4096);
    assert_eq!(w.borrow().max_outstanding, 4);
    clean(&w);
}

#[test]
fn buffers_in_flight_change_at_run_time_within_bounds() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 8192, 0);
    w.borrow_mut().ack = Ack::AfterMs(1);
    for bad in [0, 9, usize::MAX] {
        assert!(!b.set_inflight(bad), "{bad}");
    }
    assert_eq!(b.tunables().inflight_buffers, 4, "unchanged");
    for (n, target) in [(1usize, 2048u32), (8, 6144)] {
        assert!(b.set_inflight(n));
        assert_eq!(b.tunables().inflight_buffers, n);
        w.borrow_mut().max_outstanding = 0;
        w.borrow_mut().num_pages = target;
        b.config_changed();
        run(&mut b, &w, &mut dev, &mut mem);
        assert_eq!(b.actual(), target);
        assert_eq!(w.borrow().max_outstanding, n, "{n} in flight");
    }
    clean(&w);
}

#[test]
fn deflates_when_the_host_lowers_its_target() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1000);
    run(&mut b, &w, &mut dev, &mut mem);
    w.borrow_mut().num_pages = 300;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 300);
    assert_eq!(w.borrow().host_units(), 300);
    assert_eq!(w.borrow().free_pages(), 4096 - 300);
    assert_eq!(b.counters().deflated_pages.get(), 700);
    clean(&w);
}

#[test]
fn never_resizes_without_a_config_change() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 500);
    run(&mut b, &w, &mut dev, &mut mem);
    let posted = w.borrow().notifications;
    // The host target moves, but no config-change interrupt came.
    w.borrow_mut().num_pages = 800;
    assert!(!b.needs_work());
    assert_eq!(b.step(&mut dev, &mut mem), Step::Idle);
    assert_eq!(w.borrow().notifications, posted);
    assert_eq!(b.actual(), 500);
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 800);
    clean(&w);
}

#[test]
fn deflated_pages_are_freed_only_after_the_host_acked() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1024);
    run(&mut b, &w, &mut dev, &mut mem);
    w.borrow_mut().ack = Ack::AfterMs(40);
    w.borrow_mut().num_pages = 0;
    b.config_changed();
    // First step posts the deflates and waits for one ack.
    assert_eq!(b.step(&mut dev, &mut mem), Step::More);
    {
        let world = w.borrow();
        // Pages in buffers still outstanding are neither free nor listed.
        let outstanding = world.outstanding(Queue::Deflate);
        assert!(outstanding >= 1);
        assert_eq!(world.free_pages(), 4096 - 1024 + 256);
    }
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 0);
    assert_eq!(w.borrow().free_pages(), 4096);
    clean(&w); // the sim flags any page freed while the host still claims it
}

/// A vm_lowmem event with plenty of free memory: the least batch goes back.
fn lowmem_event(b: &mut Balloon, w: &Shared, dev: &mut SimDevice, mem: &mut SimMemory) -> u32 {
    let mut p = Pressure::new();
    let vm = w.borrow().vm();
    let now = w.borrow().now_ms + 1;
    let tun = OomTunables::default();
    b.relieve(&mut p, &tun, Relief::LowmemEvent, dev, mem, &vm, now)
}

#[test]
fn lowmem_deflates_a_bounded_batch_and_the_thread_does_not_undo_it() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 2000);
    run(&mut b, &w, &mut dev, &mut mem);
    // The guest is short: 6192 pages free, the goal is the free target
    // plus the headroom (4096), 6396; 204 short, the batch is more.
    w.borrow_mut().free_target = 2300;
    let freed = lowmem_event(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(freed, 256);
    assert_eq!(b.actual(), 1744);
    assert_eq!(w.borrow().actual, 1744);
    assert_eq!(b.counters().lowmem_events.get(), 1);
    assert_eq!(b.counters().lowmem_pages.get(), 256);
    assert_eq!(b.counters().oom_deflates.get(), 1);
    // The host target is still 2000, but nothing re-inflates.
    let inflates = w.borrow().inflate_buffers;
    assert_eq!(run(&mut b, &w, &mut dev, &mut mem), [Step::Idle]);
    assert_eq!(w.borrow().inflate_buffers, inflates);
    assert_eq!(b.actual(), 1744);
    // Until the host speaks again.
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 2000);
    clean(&w);
}

#[test]
fn a_lowmem_event_finding_the_guest_not_short_after_the_target_was_reached_is_made_up() {
    // The page daemon raises vm_lowmem on a fast fall of free memory too,
    // as right after the balloon reached a high target: with free memory
    // above the goal the batch goes back, and once the watch has passed
    // the balloon is at the host's target again, read before the event
    // (the host did not speak: no config read). Before, it stayed one
    // batch short until the host's next config change (the hostile boot's
    // oom-retarget: 1507 of 1508 MiB).
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 2000);
    run(&mut b, &w, &mut dev, &mut mem);
    let reads = w.borrow().target_reads;
    assert_eq!(lowmem_event(&mut b, &w, &mut dev, &mut mem), 256);
    assert_eq!(b.actual(), 1744);
    assert_eq!(w.borrow().actual, 1744, "the host is told at once");
    // While the watch runs: nothing.
    b.set_inflate_limit(InflateLimit::Pressure);
    let inflates = w.borrow().inflate_buffers;
    assert!(matches!(b.step(&mut dev, &mut mem), Step::Backoff { .. }));
    assert_eq!(w.borrow().inflate_buffers, inflates);
    // After it: the target again.
    b.set_inflate_limit(InflateLimit::None);
    assert_eq!(
        run(&mut b, &w, &mut dev, &mut mem).last(),
        Some(&Step::Idle)
    );
    assert_eq!(b.actual(), 2000);
    assert_eq!(w.borrow().actual, 2000);
    assert_eq!(w.borrow().target_reads, reads, "the target as read before");
    // An event after a shortage since the host spoke changes nothing of
    // that: the balloon does not grow back.
    w.borrow_mut().free_target = 2300;
    assert_eq!(lowmem_event(&mut b, &w, &mut dev, &mut mem), 256);
    w.borrow_mut().free_target = 0;
    assert_eq!(lowmem_event(&mut b, &w, &mut dev, &mut mem), 256);
    assert_eq!(run(&mut b, &w, &mut dev, &mut mem), [Step::Idle]);
    assert_eq!(b.actual(), 1488);
    clean(&w);
}

#[test]
fn lowmem_interrupts_an_inflate_in_progress() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 4000);
    w.borrow_mut().ack = Ack::AfterMs(5);
    assert_eq!(b.step(&mut dev, &mut mem), Step::More);
    // The guest is short: free memory below the page daemon's target.
    w.borrow_mut().free_target = 8192;
    let freed = lowmem_event(&mut b, &w, &mut dev, &mut mem);
    assert!(freed >= 256);
    assert_eq!(
        run(&mut b, &w, &mut dev, &mut mem).last(),
        Some(&Step::Idle)
    );
    assert!(b.actual() < 4000);
    assert_eq!(w.borrow().host_units(), b.actual());
    clean(&w);
}

#[test]
fn a_lowmem_event_with_free_memory_at_the_goal_gives_the_batch_but_stops_nothing() {
    // FreeBSD's page daemon also raises vm_lowmem when free memory falls
    // fast (its controller's derivative term), as right after an inflate,
    // while free memory is still well above its target: the event gets
    // its batch, but the balloon goes on to the host's target (as far as
    // the floor lets it) once the watch has passed.
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 4000);
    w.borrow_mut().ack = Ack::AfterMs(5);
    assert_eq!(b.step(&mut dev, &mut mem), Step::More);
    assert_eq!(lowmem_event(&mut b, &w, &mut dev, &mut mem), 256);
    assert_eq!(
        run(&mut b, &w, &mut dev, &mut mem).last(),
        Some(&Step::Idle)
    );
    assert_eq!(b.actual(), 4000);
    assert_eq!(b.counters().lowmem_events.get(), 1);
    assert_eq!(b.counters().lowmem_pages.get(), 256);
    clean(&w);
}

#[test]
fn a_lowmem_event_gives_back_the_shortage_not_a_fixed_batch() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 6000);
    run(&mut b, &w, &mut dev, &mut mem);
    w.borrow_mut().free_target = 1000;
    // 2192 pages free; a workload takes 2000 of them.
    assert_eq!(w.borrow_mut().workload_alloc(2000), 2000);
    let tun = OomTunables {
        headroom_pages: 100,
        ..Default::default()
    };
    let mut p = Pressure::new();
    let vm = w.borrow().vm();
    let freed = b.relieve(
        &mut p,
        &tun,
        Relief::LowmemEvent,
        &mut dev,
        &mut mem,
        &vm,
        10,
    );
    // Back to the free target plus the headroom: 1100 - 192.
    assert_eq!(freed, 908);
    assert_eq!(w.borrow().vm().free, 1100);
    assert!(p.watching_at(11));
    clean(&w);
}

#[test]
fn give_back_is_bounded_by_the_balloon() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 8192, 2000);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.give_back(&mut dev, &mut mem, 1000), 1000);
    assert_eq!(b.give_back(&mut dev, &mut mem, 5000), 1000);
    assert_eq!(b.give_back(&mut dev, &mut mem, 5000), 0);
    assert_eq!(w.borrow().free_pages(), 8192);
    assert_eq!(b.counters().oom_deflates.get(), 2);
    clean(&w);
}

#[test]
fn lowmem_without_deflate_on_oom_leaves_the_balloon_alone() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1000);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(lowmem_event(&mut b, &w, &mut dev, &mut mem), 0);
    assert_eq!(b.give_back(&mut dev, &mut mem, 500), 0);
    assert_eq!(b.actual(), 1000);
    assert_eq!(b.counters().lowmem_events.get(), 0);
    clean(&w);
}

#[test]
fn the_floor_stops_an_inflate_and_counts_what_it_refused() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 4096, 4000);
    b.set_inflate_limit(InflateLimit::Floor(1000));
    for _ in 0..20 {
        if let Step::Backoff { ms } = b.step(&mut dev, &mut mem) {
            w.borrow_mut().now_ms += u64::from(ms);
        }
    }
    assert_eq!(b.actual(), 1000, "what the floor let it take");
    assert_eq!(w.borrow().actual, 1000, "the host is told the truth");
    assert_eq!(b.counters().floor_refused_pages.get(), 3000);
    assert_eq!(b.counters().floor_stops.get(), 1);
    assert!(b.wantsize(), "the host's target is still pending");
    // Memory came back: the rest is taken and the refusal cleared.
    b.set_inflate_limit(InflateLimit::Floor(u64::MAX));
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 4000);
    assert_eq!(b.counters().floor_refused_pages.get(), 0);
    clean(&w);
}

#[test]
fn no_inflate_while_pressure_is_watched_but_deflates_go_on() {
    let (w, mut dev, mut mem, mut b) = setup(MTH | OOM, 4096, 1000);
    run(&mut b, &w, &mut dev, &mut mem);
    b.set_inflate_limit(InflateLimit::Pressure);
    w.borrow_mut().num_pages = 3000;
    b.config_changed();
    assert!(matches!(b.step(&mut dev, &mut mem), Step::Backoff { .. }));
    assert_eq!(b.actual(), 1000);
    assert_eq!(b.counters().floor_refused_pages.get(), 0, "not the floor");
    // A lower target is followed at once.
    w.borrow_mut().num_pages = 200;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 200);
    // The pressure has passed: the next higher target is followed.
    b.set_inflate_limit(InflateLimit::None);
    w.borrow_mut().num_pages = 3000;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 3000);
    clean(&w);
}

#[test]
fn allocation_failure_backs_off_instead_of_spinning() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 1000, 900);
    w.borrow_mut().reserve = 700; // only 300 pages can be taken
    let mut backoffs = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..8 {
        match b.step(&mut dev, &mut mem) {
            Step::Backoff { ms } => {
                backoffs.push(ms);
                calls.push(w.borrow().alloc_calls);
                w.borrow_mut().now_ms += u64::from(ms);
            }
            Step::More => {}
            s => panic!("unexpected {s:?}"),
        }
    }
    assert_eq!(b.actual(), 300);
    assert!(backoffs.len() >= 5, "{backoffs:?}");
    assert!(
        backoffs.windows(2).all(|p| p[1] >= p[0]),
        "backoff grows: {backoffs:?}"
    );
    // Capped at the maximum once it has doubled enough.
    assert!(backoffs
        .iter()
        .all(|&ms| ms <= Tunables::default().backoff_max_ms));
    assert_eq!(backoffs[0], Tunables::default().backoff_min_ms);
    // One failed allocation per retry, not a loop of them.
    assert!(calls.windows(2).all(|p| p[1] - p[0] == 1), "{calls:?}");
    assert!(b.counters().alloc_failures.get() >= 5);
    // Memory comes back: the balloon reaches its target.
    w.borrow_mut().reserve = 0;
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 900);
    clean(&w);
}

#[test]
fn a_host_that_never_acks_times_out_and_nothing_hangs() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1000);
    w.borrow_mut().ack = Ack::Never;
    let start = w.borrow().now_ms;
    assert_eq!(b.step(&mut dev, &mut mem), Step::Failed(Error::Timeout));
    let waited = w.borrow().now_ms - start;
    assert_eq!(waited, u64::from(Tunables::default().host_timeout_ms));
    assert_eq!(b.counters().host_timeouts.get(), 1);
    // Detach: bounded, reports the failure, then the device is reset and
    // every page comes back.
    assert_eq!(b.shutdown(&mut dev, &mut mem), Err(Error::Timeout));
    w.borrow_mut().reset();
    b.abandon(&dev, &mut mem);
    assert_eq!(w.borrow().free_pages(), 4096);
    assert_eq!(b.actual(), 0);
    clean(&w);
}

#[test]
fn a_late_ack_is_completed_on_the_next_step() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 256);
    w.borrow_mut().ack = Ack::AfterMs(8_000);
    assert_eq!(b.step(&mut dev, &mut mem), Step::Failed(Error::Timeout));
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 256);
    assert_eq!(w.borrow().host_units(), 256);
    clean(&w);
}

#[test]
fn a_full_queue_gives_the_pages_back() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 256);
    w.borrow_mut().fail_posts = 1;
    assert_eq!(b.step(&mut dev, &mut mem), Step::Failed(Error::QueueFull));
    assert_eq!(
        w.borrow().free_pages(),
        4096,
        "allocated pages were freed again"
    );
    assert_eq!(b.counters().errors.get(), 1);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 256);
    clean(&w);
}

#[test]
fn shutdown_returns_every_page() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 3000);
    w.borrow_mut().ack = Ack::AfterMs(2);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.shutdown(&mut dev, &mut mem), Ok(()));
    assert_eq!(b.actual(), 0);
    let world = w.borrow();
    assert_eq!(world.free_pages(), 4096);
    assert_eq!(world.host_units(), 0);
    assert_eq!(world.actual, 0);
    drop(world);
    clean(&w);
}

#[test]
fn large_guest_pages_send_every_4k_pfn() {
    let w = World::new(MTH, 1024, 16384);
    let (mut dev, mut mem) = (SimDevice::new(w.clone()), SimMemory(w.clone()));
    w.borrow_mut().num_pages = 1000; // 4 KiB units: 250 guest pages
    let mut b = Balloon::new(MTH, Tunables::default());
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 1000);
    assert_eq!(w.borrow().guest_list().len(), 250);
    assert_eq!(w.borrow().host_units(), 1000);
    w.borrow_mut().num_pages = 0;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(w.borrow().free_pages(), 1024);
    clean(&w);
}

/// The host's ballooned PFNs as maximal runs of consecutive PFNs.
fn host_runs(w: &Shared) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut prev: Option<u32> = None;
    for &pfn in &w.borrow().ballooned {
        match prev {
            Some(p) if p + 1 == pfn => *runs.last_mut().unwrap() += 1,
            _ => runs.push(1),
        }
        prev = Some(pfn);
    }
    runs
}

#[test]
fn inflate_takes_contiguous_runs_of_one_buffer_each() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1024);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 1024);
    let world = w.borrow();
    assert_eq!(world.runs_given, 4, "1024 pages = 4 runs of 256");
    assert_eq!(world.alloc_calls, 0, "no page-by-page allocation");
    assert_eq!(world.inflate_buffers, 4);
    drop(world);
    assert_eq!(b.counters().alloc_runs.get(), 4);
    assert_eq!(b.counters().alloc_single_pages.get(), 0);
    assert!(
        host_runs(&w).iter().all(|&n| n % 256 == 0),
        "{:?}",
        host_runs(&w)
    );
    clean(&w);
}

#[test]
fn inflate_uses_smaller_runs_then_single_pages_as_memory_fragments() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 1000);
    w.borrow_mut().max_run_order = 3;
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 1000);
    let world = w.borrow();
    assert_eq!(world.runs_given, 125, "1000 pages = 125 runs of 8");
    // One failed try at each of orders 8..4, then runs of 8 only.
    assert_eq!(world.run_calls, 125 + 5);
    assert_eq!(world.alloc_calls, 0);
    drop(world);

    // No runs at all: page by page, and a new target tries runs again.
    w.borrow_mut().max_run_order = 0;
    w.borrow_mut().num_pages = 1300;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 1300);
    assert_eq!(w.borrow().alloc_calls, 300);
    clean(&w);
}

#[test]
fn a_run_of_one_page_allocates_page_by_page_like_the_c_driver() {
    let tun = Tunables {
        inflate_run_pages: 1,
        ..Tunables::default()
    };
    let (w, mut dev, mut mem, mut b) = setup_with(MTH, 4096, 600, tun);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 600);
    assert_eq!(w.borrow().run_calls, 0);
    assert_eq!(w.borrow().alloc_calls, 600);
    assert_eq!(b.counters().alloc_single_pages.get(), 600);
    assert_eq!(b.counters().alloc_runs.get(), 0);
    clean(&w);
}

#[test]
fn inflate_run_setting_accepts_powers_of_two_up_to_a_buffer() {
    let mut b = Balloon::new(MTH, Tunables::default());
    assert_eq!(b.tunables().inflate_run_pages, 256);
    for bad in [0, 3, 100, 512] {
        assert!(!b.set_inflate_run(bad), "{bad}");
        assert_eq!(b.tunables().inflate_run_pages, 256);
    }
    for good in [1, 2, 64, 256] {
        assert!(b.set_inflate_run(good), "{good}");
        assert_eq!(b.tunables().inflate_run_pages, good);
    }
    let b = Balloon::new(
        MTH,
        Tunables {
            inflate_run_pages: 7,
            ..Tunables::default()
        },
    );
    assert_eq!(b.tunables().inflate_run_pages, 256, "bad value at attach");
}

#[test]
fn runs_deflate_and_return_every_page_after_the_ack() {
    let (w, mut dev, mut mem, mut b) = setup(MTH, 4096, 2048);
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(w.borrow().free_pages(), 2048);
    w.borrow_mut().ack = Ack::AfterMs(5);
    w.borrow_mut().num_pages = 100;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 100);
    assert_eq!(w.borrow().free_pages(), 4096 - 100);
    assert_eq!(w.borrow().host_units(), 100);
    clean(&w);
}

#[test]
fn a_returned_deflate_is_freed_after_its_replacement_is_posted() {
    // The host works on the next buffers while the guest frees pages.
    let tun = Tunables {
        inflight_buffers: 2,
        ..Tunables::default()
    };
    let (w, mut dev, mut mem, mut b) = setup_with(MTH, 4096, 1024, tun);
    run(&mut b, &w, &mut dev, &mut mem);
    let freed0 = w.borrow().freed_total;
    w.borrow_mut().num_pages = 0;
    b.config_changed();
    run(&mut b, &w, &mut dev, &mut mem);
    assert_eq!(b.actual(), 0);
    let posts: Vec<u64> = w
        .borrow()
        .freed_at_deflate_post
        .iter()
        .map(|f| f - freed0)
        .collect();
    // Buffers 3 and 4 go out while buffer 2's pages are still held.
    assert_eq!(posts, [0, 0, 256, 256]);
    clean(&w);
}

// The simulator itself must catch a broken driver. These drive the device
// directly the way a buggy driver would and check the violation is reported.

#[test]
fn sim_catches_a_page_reused_before_its_deflate_ack() {
    let (w, mut dev, mut mem) = sim(MTH, 16);
    let page = mem.alloc_page().unwrap();
    let pfn = w.borrow().pfn_of_page(page);
    dev.post(Queue::Inflate, 0, &pfn.to_le_bytes()).unwrap();
    dev.wait_used(Queue::Inflate, 100).unwrap();
    w.borrow_mut().ack = Ack::AfterMs(10);
    dev.post(Queue::Deflate, 0, &pfn.to_le_bytes()).unwrap();
    mem.free_page(page); // bug: before the ack
    let v = &w.borrow().violations;
    assert_eq!(v.len(), 1);
    assert!(v[0].contains("reused before the host acked"), "{v:?}");
}

#[test]
fn sim_catches_double_inflate_unknown_deflate_and_early_notify() {
    let (w, mut dev, _mem) = sim(MTH, 16);
    w.borrow_mut().driver_ok = false;
    dev.post(Queue::Inflate, 0, &7u32.to_le_bytes()).unwrap();
    dev.wait_used(Queue::Inflate, 0).unwrap();
    w.borrow_mut().driver_ok = true;
    dev.post(Queue::Inflate, 0, &7u32.to_le_bytes()).unwrap();
    dev.wait_used(Queue::Inflate, 0).unwrap();
    dev.post(Queue::Deflate, 0, &9u32.to_le_bytes()).unwrap();
    dev.wait_used(Queue::Deflate, 0).unwrap();
    dev.post(Queue::Stats, 0, &[0u8; 10]).unwrap(); // no STATS_VQ negotiated
    let v = w.borrow().violations.clone();
    assert!(v[0].contains("before DRIVER_OK"), "{v:?}");
    assert!(v[1].contains("inflated twice"), "{v:?}");
    assert!(v[2].contains("never inflated"), "{v:?}");
    assert!(v[3].contains("absent queue"), "{v:?}");
}

#[test]
fn sim_catches_a_free_page_listed_as_ballooned() {
    let (w, _dev, mut mem) = sim(MTH, 16);
    mem.push_ballooned(3, 2); // bug: never allocated
    let v = &w.borrow().violations;
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("not allocated"), "{v:?}");
}

#[test]
fn counters_may_live_outside_the_balloon() {
    // The kernel keeps them beside the balloon's lock: the sysctl tree reads
    // them while the balloon thread holds the lock and counts.
    let counters = vtballoon::counters::BalloonCounters::default();
    let (w, mut dev, mut mem) = sim(MTH, 1024);
    w.borrow_mut().num_pages = 300;
    let mut b = Balloon::with_counters(MTH, Tunables::default(), &counters);
    while b.step(&mut dev, &mut mem) != Step::Idle {}
    assert_eq!(counters.inflated_pages.get(), 300);
    assert_eq!(counters.actual_pages.get(), 300);
    assert_eq!(
        b.counters().buffers_posted.get(),
        counters.buffers_posted.get()
    );
    clean(&w);
}
