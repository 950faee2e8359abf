//! Statistics: pull, push, tag sets, against the simulated device.

mod sim;

use sim::{sim, Ack};
use vtballoon::avail::available_bytes;
use vtballoon::counters::StatsCounters;
use vtballoon::platform::VmCounters;
use vtballoon::protocol::{Features, Queue, StatTag};
use vtballoon::stats::{PushTimer, Stats, MIN_PUSH_INTERVAL_MS};

const STATS: Features = Features::STATS_VQ;
const PUSH: Features = Features::STATS_PUSH;

fn vm() -> VmCounters {
    VmCounters {
        page_size: 4096,
        page_count: 262_144,
        free: 100_000,
        free_reserved: 1_000,
        free_min: 2_000,
        inactive: 50_000,
        laundry: 0,
        active: 80_000,
        wired: 30_000,
        swap_in: 10,
        swap_out: 20,
        major_faults: 5,
        faults: 1_005,
        pd_scanned: 777,
        pd_freed: 333,
        ..Default::default()
    }
}

fn value(entries: &[(u16, u64)], tag: StatTag) -> Option<u64> {
    entries.iter().find(|e| e.0 == tag as u16).map(|e| e.1)
}

#[test]
fn first_buffer_goes_out_at_start_with_real_values() {
    let (w, mut dev, _) = sim(STATS, 16);
    let mut s = Stats::new(STATS, false);
    assert_eq!(s.start(&mut dev, &vm()), Ok(PushTimer::Off));
    assert_eq!(w.borrow().outstanding(Queue::Stats), 1);
    assert!(w.borrow_mut().request_stats());
    s.interrupt(&mut dev, &vm()).unwrap();
    let world = w.borrow();
    let e = &world.last_stats;
    assert_eq!(value(e, StatTag::MemFree), Some(100_000 * 4096));
    assert_eq!(value(e, StatTag::MemTot), Some(262_144 * 4096));
    assert_eq!(value(e, StatTag::Avail), Some(available_bytes(&vm())));
    assert_eq!(value(e, StatTag::SwapIn), Some(10 * 4096));
    assert_eq!(value(e, StatTag::SwapOut), Some(20 * 4096));
    assert_eq!(value(e, StatTag::MajFlt), Some(5));
    assert_eq!(value(e, StatTag::MinFlt), Some(1_000));
    assert_eq!(value(e, StatTag::Caches), Some(50_000 * 4096));
    assert!(world.violations.is_empty(), "{:?}", world.violations);
}

#[test]
fn each_host_request_is_answered_with_fresh_values_and_the_same_tags() {
    let (w, mut dev, _) = sim(STATS, 16);
    let mut s = Stats::new(STATS, false);
    let mut v = vm();
    s.start(&mut dev, &v).unwrap();
    for i in 0..5 {
        v.free = 1000 + i;
        w.borrow_mut().request_stats();
        s.interrupt(&mut dev, &v).unwrap();
        assert_eq!(w.borrow().outstanding(Queue::Stats), 1, "buffer re-queued");
    }
    assert_eq!(s.counters().requests.get(), 5);
    // The buffer returned for request i carried the values of request i-1.
    assert_eq!(
        value(&w.borrow().last_stats, StatTag::MemFree),
        Some(1003 * 4096)
    );
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
}

#[test]
fn linux_tags_are_off_by_default_and_firecracker_accepts_the_set() {
    let (w, mut dev, _) = sim(STATS, 16);
    w.borrow_mut().strict_tags = true;
    let mut s = Stats::new(STATS, false);
    assert!(s.tags().all(|t| !t.is_extension()));
    s.start(&mut dev, &vm()).unwrap();
    w.borrow_mut().request_stats();
    s.interrupt(&mut dev, &vm()).unwrap();
    assert!(w.borrow().violations.is_empty());
}

#[test]
fn linux_tags_when_enabled_carry_page_daemon_counters() {
    let (w, mut dev, _) = sim(STATS, 16);
    let mut s = Stats::new(STATS, true);
    s.start(&mut dev, &vm()).unwrap();
    w.borrow_mut().request_stats();
    s.interrupt(&mut dev, &vm()).unwrap();
    let e = w.borrow().last_stats.clone();
    assert_eq!(value(&e, StatTag::AsyncScan), Some(777));
    assert_eq!(value(&e, StatTag::AsyncReclaim), Some(333));
    assert_eq!(
        value(&e, StatTag::OomKill),
        None,
        "no honest FreeBSD analogue"
    );
    // A strict host (Firecracker) would refuse this set.
    let (w2, mut dev2, _) = sim(STATS, 16);
    w2.borrow_mut().strict_tags = true;
    Stats::new(STATS, true).start(&mut dev2, &vm()).unwrap();
    w2.borrow_mut().request_stats();
    let mut s2 = Stats::new(STATS, true);
    s2.interrupt(&mut dev2, &vm()).unwrap();
    assert!(w2.borrow().violations[0].contains("unknown stats tag"));
}

#[test]
fn no_stats_queue_means_no_buffers_and_no_push() {
    let (w, mut dev, _) = sim(Features::empty(), 16);
    let offered = PUSH | Features::MUST_TELL_HOST;
    assert_eq!(Stats::filter_features(offered), Features::MUST_TELL_HOST);
    assert_eq!(Stats::filter_features(offered | STATS), offered | STATS);
    let mut s = Stats::new(Features::empty(), false);
    assert_eq!(s.start(&mut dev, &vm()), Ok(PushTimer::Off));
    s.push_tick(&mut dev, &vm()).unwrap();
    assert_eq!(w.borrow().notifications, 0);
}

#[test]
fn push_follows_the_host_interval_and_its_changes() {
    let (w, mut dev, _) = sim(STATS | PUSH, 16);
    w.borrow_mut().push_interval_ms = 1000;
    let mut s = Stats::new(STATS | PUSH, false);
    assert_eq!(s.start(&mut dev, &vm()), Ok(PushTimer::Every(1000)));
    for _ in 0..3 {
        s.push_tick(&mut dev, &vm()).unwrap();
        s.interrupt(&mut dev, &vm()).unwrap(); // host consumed the push
    }
    assert_eq!(s.counters().pushes.get(), 3);
    // Retimed at runtime.
    w.borrow_mut().push_interval_ms = 250;
    assert_eq!(s.config_changed(&mut dev, &vm()), PushTimer::Every(250));
    // A silly value is clamped.
    w.borrow_mut().push_interval_ms = 1;
    assert_eq!(
        s.config_changed(&mut dev, &vm()),
        PushTimer::Every(MIN_PUSH_INTERVAL_MS)
    );
    // Stopped: pull only.
    w.borrow_mut().push_interval_ms = 0;
    assert_eq!(s.config_changed(&mut dev, &vm()), PushTimer::Off);
    let before = w.borrow().stats_buffers;
    s.push_tick(&mut dev, &vm()).unwrap(); // a stale callout does nothing
    s.interrupt(&mut dev, &vm()).unwrap();
    assert_eq!(w.borrow().stats_buffers, before);
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
}

#[test]
fn pull_requests_are_ignored_while_pushing_and_resume_after() {
    let (w, mut dev, _) = sim(STATS | PUSH, 16);
    let mut s = Stats::new(STATS | PUSH, false);
    s.start(&mut dev, &vm()).unwrap();
    w.borrow_mut().push_interval_ms = 500;
    assert_eq!(s.config_changed(&mut dev, &vm()), PushTimer::Every(500));
    w.borrow_mut().request_stats();
    s.interrupt(&mut dev, &vm()).unwrap();
    assert_eq!(s.counters().requests.get(), 1, "counted, not answered");
    assert_eq!(
        w.borrow().outstanding(Queue::Stats),
        0,
        "pull buffer kept idle"
    );
    w.borrow_mut().push_interval_ms = 0;
    s.config_changed(&mut dev, &vm());
    assert_eq!(
        w.borrow().outstanding(Queue::Stats),
        1,
        "pull buffer back with the host"
    );
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
}

#[test]
fn a_push_the_host_still_holds_is_skipped_not_stacked() {
    let (w, mut dev, _) = sim(STATS | PUSH, 16);
    w.borrow_mut().push_interval_ms = 100;
    w.borrow_mut().ack = Ack::Never;
    let mut s = Stats::new(STATS | PUSH, false);
    s.start(&mut dev, &vm()).unwrap();
    for _ in 0..4 {
        s.push_tick(&mut dev, &vm()).unwrap();
    }
    assert_eq!(s.counters().pushes.get(), 1);
    assert_eq!(
        w.borrow().notifications,
        2,
        "the pull buffer and one push: three ticks skipped"
    );
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
}

#[test]
fn push_without_the_feature_stays_pull_only() {
    let (w, mut dev, _) = sim(STATS, 16);
    w.borrow_mut().push_interval_ms = 1000;
    let mut s = Stats::new(STATS, false);
    assert_eq!(s.start(&mut dev, &vm()), Ok(PushTimer::Off));
    assert_eq!(s.config_changed(&mut dev, &vm()), PushTimer::Off);
}

#[test]
fn linux_tags_are_chosen_before_start_only() {
    let (w, mut dev, _) = sim(STATS, 16);
    let mut s = Stats::new(STATS, false);
    assert!(s.set_linux_tags(true));
    s.start(&mut dev, &vm()).unwrap();
    assert!(
        !s.set_linux_tags(false),
        "the tag set is fixed once started"
    );
    assert!(s.linux_tags());
    w.borrow_mut().request_stats();
    s.interrupt(&mut dev, &vm()).unwrap();
    let e = w.borrow().last_stats.clone();
    assert_eq!(value(&e, StatTag::AsyncScan), Some(777));
}

#[test]
fn counters_may_live_outside_the_stats_object() {
    // The kernel keeps them beside the lock that guards the object, so the
    // sysctl tree reads them without taking it.
    let counters = StatsCounters::default();
    let (w, mut dev, _) = sim(STATS, 16);
    let mut s = Stats::with_counters(STATS, false, &counters);
    s.start(&mut dev, &vm()).unwrap();
    w.borrow_mut().request_stats();
    s.interrupt(&mut dev, &vm()).unwrap();
    assert_eq!(counters.requests.get(), 1);
    assert_eq!(s.counters().requests.get(), 1);
}

#[test]
fn a_one_ms_push_interval_is_held_at_the_floor_from_the_start() {
    // A hostile host asks for a push every millisecond from the first
    // config read, and again on every config change: the timer never runs
    // faster than MIN_PUSH_INTERVAL_MS, and pushes the host has not taken
    // back are not stacked.
    let (w, mut dev, _) = sim(STATS | PUSH, 16);
    w.borrow_mut().push_interval_ms = 1;
    let mut s = Stats::new(STATS | PUSH, false);
    assert_eq!(
        s.start(&mut dev, &vm()),
        Ok(PushTimer::Every(MIN_PUSH_INTERVAL_MS))
    );
    for ms in [1, 0, 1, 2, 99, 1] {
        w.borrow_mut().push_interval_ms = ms;
        let t = s.config_changed(&mut dev, &vm());
        match ms {
            0 => assert_eq!(t, PushTimer::Off),
            _ => assert_eq!(t, PushTimer::Every(MIN_PUSH_INTERVAL_MS)),
        }
    }
    w.borrow_mut().ack = Ack::Never;
    for _ in 0..1_000 {
        s.push_tick(&mut dev, &vm()).unwrap();
    }
    assert!(
        s.counters().pushes.get() <= 1,
        "one push outstanding at most"
    );
    let outstanding = w.borrow().outstanding(Queue::Stats);
    assert!(outstanding <= 2, "pull + push buffers only: {outstanding}");
    assert!(
        w.borrow().violations.is_empty(),
        "{:?}",
        w.borrow().violations
    );
}
