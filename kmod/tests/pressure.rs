//! Deflate-on-OOM against a model of FreeBSD's page daemon: does a process
//! that needs the memory the balloon holds survive, with FreeBSD's default
//! rate limits, and does the balloon keep what was not needed?
//!
//! The model (FreeBSD 14.2 `sys/vm/vm_pageout.c`, `uma_core.c`), one step a
//! millisecond:
//! - a process takes `rate` pages a millisecond until it has what it wants;
//!   it stalls while free memory is at `v_free_severe` (page faults wait
//!   while the domain is severe, `vm_fault.c`), so free memory does not go
//!   below it by the process alone;
//! - the page daemon runs every 100 ms while free memory is below 90% of
//!   `v_free_target`. A pass first raises `vm_lowmem` if none was raised in
//!   the last `vm.lowmem_period` (10 s), and counts what the handler freed
//!   against its shortage; the UMA reclaim worker raises another
//!   (`VM_LOW_KMEM`) at most once a second while free memory is below
//!   `v_free_severe`. Nothing else is reclaimable (anonymous memory, no
//!   swap), so a pass that still has a shortage makes no progress; after
//!   `vm.pageout_oom_seq` (12) such passes in a row the process is killed;
//! - the driver acts on the events and, between them, on its own watch
//!   (the balloon thread in the kernel);
//! - the instance may be new (kldunload and kldload): the kernel raised its
//!   last event for the one before, just now, and raises none for 10 s.

mod sim;

use sim::{sim, Shared, SimDevice, SimMemory};
use vtballoon::balloon::{Balloon, InflateLimit, Relief, Step, Tunables};
use vtballoon::pressure::{OomTunables, Pressure};
use vtballoon::protocol::Features;

const PAGES: usize = 262_144; // 1 GiB of 4 KiB pages
const FREE_TARGET: u64 = 6_000;
const LOWMEM_PERIOD_MS: u64 = 10_000;
const OOM_SEQ: u32 = 12;

struct Outcome {
    killed: bool,
    /// Pages the process got.
    got: usize,
    /// Balloon (4 KiB units) before and at the end.
    before: u32,
    after: u32,
    events: u64,
    guard_events: u64,
    deflates: u64,
}

fn guest(balloon_pages: u32) -> (Shared, SimDevice, SimMemory, Balloon) {
    let features = Features::MUST_TELL_HOST | Features::DEFLATE_ON_OOM;
    let (w, mut dev, mut mem) = sim(features, PAGES);
    {
        let mut world = w.borrow_mut();
        world.num_pages = balloon_pages;
        world.free_target = FREE_TARGET;
        world.max_run_order = 0; // page by page: keeps the model fast
    }
    let mut b = Balloon::new(features, Tunables::default());
    while b.step(&mut dev, &mut mem) != Step::Idle {}
    assert_eq!(b.actual(), balloon_pages);
    (w, dev, mem, b)
}

/// How the driver answers memory pressure.
enum Driver {
    /// This driver's policy with these tunables.
    Ours(OomTunables),
    /// The in-tree driver and the posted FreeBSD patches: a fixed batch per
    /// vm_lowmem event, nothing in between.
    FixedBatch(u32),
}

/// Whether the driver was just loaded, its predecessor having had the
/// kernel's last `vm_lowmem` event at time 0.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// Loaded long ago: the kernel may raise an event at once.
    Settled,
    /// Just loaded, as the driver attaches ([`Pressure::attached`]).
    Reloaded,
    /// Just loaded, without the guard after attach (what the soak found).
    ReloadedUnguarded,
}

/// Runs one process wanting `want` pages at `rate` pages/ms for at most
/// `ms` milliseconds.
fn run(driver: Driver, balloon_pages: u32, want: usize, rate: usize, ms: u64) -> Outcome {
    run_from(Start::Settled, driver, balloon_pages, want, rate, ms)
}

fn run_from(
    start: Start,
    driver: Driver,
    balloon_pages: u32,
    want: usize,
    rate: usize,
    ms: u64,
) -> Outcome {
    let (tun, fixed) = match driver {
        Driver::Ours(t) => (t, None),
        Driver::FixedBatch(n) => (OomTunables::default(), Some(n)),
    };
    let tun = &tun;
    let (w, mut dev, mut mem, mut b) = guest(balloon_pages);
    let before = b.actual();
    let mut p = Pressure::new();
    let mut got = 0;
    let mut last_lowmem: Option<u64> = (start != Start::Settled).then_some(0);
    if start == Start::Reloaded {
        p.attached(tun, 0);
    }
    let mut last_kmem = 0u64;
    let mut no_progress = 0;
    let mut next_look: Option<u64> = None;
    let mut killed = false;
    let mut lowmem_events = 0;
    for now in 1..=ms {
        w.borrow_mut().now_ms = now;
        // The process, down to the severe level.
        let severe = (w.borrow().vm().free_min / 2) as usize;
        let room = w.borrow().free_pages().saturating_sub(severe);
        got += w
            .borrow_mut()
            .workload_alloc(rate.min(want - got).min(room));
        let mut event = |b: &mut Balloon, dev: &mut SimDevice, mem: &mut SimMemory| {
            if let Some(n) = fixed {
                return b.give_back(dev, mem, n);
            }
            let vm = w.borrow().vm();
            b.relieve(&mut p, tun, Relief::LowmemEvent, dev, mem, &vm, now)
        };
        if now % 100 == 0 {
            let vm = w.borrow().vm();
            if vm.free < FREE_TARGET * 9 / 10 {
                let mut shortage = FREE_TARGET - vm.free;
                if last_lowmem.is_none_or(|t| now - t >= LOWMEM_PERIOD_MS) {
                    last_lowmem = Some(now);
                    lowmem_events += 1;
                    let freed = u64::from(event(&mut b, &mut dev, &mut mem));
                    shortage = shortage.saturating_sub(freed);
                }
                if vm.free < vm.free_min / 2 && now - last_kmem >= 1000 {
                    last_kmem = now;
                    lowmem_events += 1;
                    event(&mut b, &mut dev, &mut mem);
                }
                no_progress = if shortage > 0 { no_progress + 1 } else { 0 };
                if no_progress >= OOM_SEQ {
                    killed = true;
                    break;
                }
            }
        }
        // The balloon thread's watch: it sleeps `next_look_ms` between looks.
        match next_look {
            Some(t) if now < t => {}
            Some(_) => {
                let vm = w.borrow().vm();
                b.relieve(&mut p, tun, Relief::Watch, &mut dev, &mut mem, &vm, now);
                next_look = p
                    .next_look_ms(tun, now, u64::from(b.actual()))
                    .map(|d| now + u64::from(d));
            }
            None => {
                next_look = p
                    .next_look_ms(tun, now, u64::from(b.actual()))
                    .map(|d| now + u64::from(d))
            }
        }
        if got == want && next_look.is_none() {
            break;
        }
    }
    // The watch never lets the balloon inflate again by itself.
    b.set_inflate_limit(InflateLimit::None);
    assert_eq!(b.step(&mut dev, &mut mem), Step::Idle, "no re-inflation");
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
    Outcome {
        killed,
        got,
        before,
        after: b.actual(),
        events: b.counters().lowmem_events.get().max(lowmem_events),
        guard_events: b.counters().guard_events.get(),
        deflates: b.counters().oom_deflates.get(),
    }
}

/// Pages free when the process starts: what it needs beyond them must come
/// from the balloon.
fn initially_free(balloon_pages: u32) -> usize {
    PAGES - balloon_pages as usize
}

/// The process of `want` pages at 50 pages/ms got it all, and the balloon
/// gave back what was needed, less a bounded margin: the free target, the
/// headroom, two intervals of consumption, rounding.
fn assert_gave_what_was_needed(o: &Outcome, tun: &OomTunables, balloon: u32, want: usize) {
    assert!(!o.killed, "killed after getting {} of {want} pages", o.got);
    assert_eq!(o.got, want);
    let needed = want - (initially_free(balloon) - FREE_TARGET as usize);
    let given = (o.before - o.after) as usize;
    let margin = FREE_TARGET as usize + tun.headroom_pages as usize + 2 * 10 * 50 + 1024;
    assert!(
        (needed..=needed + margin).contains(&given),
        "gave {given}, needed {needed} (+{margin})"
    );
}

#[test]
fn a_process_needing_the_balloons_memory_survives_with_defaults() {
    let tun = OomTunables::default();
    let balloon = (PAGES * 3 / 4) as u32;
    let want = PAGES / 2;
    // 50 pages/ms: 200 MiB/s, faster than a process faults under TCG.
    let o = run(Driver::Ours(tun), balloon, want, 50, 60_000);
    assert_gave_what_was_needed(&o, &tun, balloon, want);
    assert!(o.events >= 1);
    assert!(o.deflates > o.events, "the watch kept up between events");
}

#[test]
fn a_fixed_batch_per_event_loses_the_process_as_freebsd_drivers_did() {
    let balloon = (PAGES * 3 / 4) as u32;
    let o = run(Driver::FixedBatch(256), balloon, PAGES / 2, 50, 60_000);
    assert!(o.killed, "the model must show the failure the fix is for");
    assert!(
        o.after > o.before - 4096,
        "the balloon still held almost everything"
    );
}

#[test]
fn events_alone_are_not_enough_between_rate_limited_events() {
    // Sized events but no watch: the second half of a long allocation falls
    // into the 10 s in which FreeBSD raises no event.
    let tun = OomTunables {
        watch_ms: 0,
        ..Default::default()
    };
    let balloon = (PAGES * 3 / 4) as u32;
    let o = run(Driver::Ours(tun), balloon, PAGES / 2, 5, 120_000);
    assert!(o.killed);
}

#[test]
fn a_slow_steady_allocator_survives_too() {
    let tun = OomTunables::default();
    let balloon = (PAGES * 3 / 4) as u32;
    // 2 pages/ms: the watch is extended again and again over ~100 s.
    let o = run(Driver::Ours(tun), balloon, PAGES / 2, 2, 200_000);
    assert!(!o.killed, "killed after {} pages", o.got);
    assert_eq!(o.got, PAGES / 2);
}

#[test]
fn a_process_that_fits_in_free_memory_takes_nothing_from_the_balloon() {
    let tun = OomTunables::default();
    let balloon = (PAGES / 2) as u32;
    let o = run(Driver::Ours(tun), balloon, PAGES / 4, 50, 10_000);
    assert!(!o.killed);
    assert_eq!(o.after, o.before);
    assert_eq!(o.events, 0);
}

#[test]
fn a_just_loaded_driver_guards_the_span_the_kernel_raises_no_event() {
    let tun = OomTunables::default();
    let balloon = (PAGES * 3 / 4) as u32;
    let want = PAGES / 2;
    let run = |start| run_from(start, Driver::Ours(tun), balloon, want, 50, 60_000);
    // Without the guard the process is killed before the kernel may raise
    // another event (the soak's kills, right after a kldload).
    assert!(
        run(Start::ReloadedUnguarded).killed,
        "the model must show the failure the guard is for"
    );
    let o = run(Start::Reloaded);
    assert_gave_what_was_needed(&o, &tun, balloon, want);
    assert_eq!(o.guard_events, 1, "the guard took the first shortage");
}

#[test]
fn the_guard_takes_nothing_from_a_process_that_fits() {
    let tun = OomTunables::default();
    let balloon = (PAGES / 2) as u32;
    let o = run_from(
        Start::Reloaded,
        Driver::Ours(tun),
        balloon,
        PAGES / 4,
        50,
        20_000,
    );
    assert!(!o.killed);
    assert_eq!(o.after, o.before);
    assert_eq!(o.guard_events, 0);
}
