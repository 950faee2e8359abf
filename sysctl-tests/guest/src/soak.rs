//! The soak (`make vmsoak`, phase soak; not part of `make test`): for
//! `VTB_SOAK_S` seconds (default 1200) on q35, random host targets (about
//! one every 1.2 s, some absurd), children that touch and free random
//! amounts of memory, guest-stats polled every second, free page reporting
//! on, at least 100 kldunload/kldload cycles (some with the balloon
//! inflated, some under pressure) and one hot-unplug and re-plug. Every
//! random choice
//! comes from the seed the host hands out (printed by both sides), so a
//! failure can be replayed with `VTB_SOAK_SEED`.
//!
//! Invariants, checked throughout: whenever the target is reached the host
//! and the driver agree on `actual`; inflated - deflated = actual whenever
//! the counters hold still; no child killed while the balloon held pages;
//! at the end (after the last unload) free memory within 1% of where it
//! started. The figures go to the host, which prints the table.

use crate::check::Ctx;
use crate::kld::{unload, OURS_DESC};
use crate::out::Line;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{exists, free_bytes, get, get_u64, mib_of, page_size, wait_exists, MIB, PAGE};

/// xorshift64*: small, and the same on every run for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo + 1)
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What the soak counts and the worst it saw.
#[derive(Default)]
struct Figures {
    targets: u64,
    absurd: u64,
    reached: u64,
    unloads: u64,
    unloads_inflated: u64,
    unloads_pressure: u64,
    plugs: u64,
    children: u64,
    child_mib: u64,
    inflated: u64,
    deflated: u64,
    /// What the balloon held each time its driver went (kldunload, the
    /// unplug): detach gives those pages back, and the driver's counters
    /// go with it, so `deflated` never sees them.
    detach_pages: u64,
    lowmem: u64,
    oom_deflates: u64,
    stats_requests: u64,
    host_checks: u64,
    host_worst: u64,
    counter_checks: u64,
    counter_worst: u64,
    kills: u64,
    kills_held: u64,
    free_start: u64,
    free_end: u64,
}

/// A child touching memory: `mib` MiB in 4 MiB steps, then holding it for
/// `hold_ms`, then exiting.
struct Child {
    pid: u64,
    mib: u64,
    /// Fewest pages the balloon held while it ran (a kill is only allowed
    /// once the balloon had nothing left to give).
    balloon_low: u64,
    kills0: u64,
}

fn spawn(mib: u64, hold_ms: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let step = 4 * MIB;
            for _ in 0..mib / 4 {
                let Ok(p) = sys::mmap_anon(step, false) else {
                    sys::exit(2)
                };
                let mut off = 0;
                while off < step {
                    // SAFETY: inside a fresh private mapping of `step` bytes.
                    unsafe { core::ptr::write_volatile((p + off) as *mut u8, 1) };
                    off += PAGE;
                }
            }
            sys::sleep_ms(hold_ms);
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// The driver's lifetime counters, added up over attaches; read just
/// before the driver goes.
fn take_counters(f: &mut Figures) {
    let inflated = get("inflated_pages").unwrap_or(0);
    let deflated = get("deflated_pages").unwrap_or(0);
    f.inflated += inflated;
    f.deflated += deflated;
    f.detach_pages += inflated.saturating_sub(deflated);
    f.lowmem += get("lowmem_events").unwrap_or(0);
    f.oom_deflates += get("oom_deflates").unwrap_or(0);
    f.stats_requests += get("stats_requests").unwrap_or(0);
}

/// inflated - deflated against actual, when they hold still; the
/// difference if it persists over several reads, 0 if it does not.
fn counter_diff() -> Option<u64> {
    let mut last = None;
    for _ in 0..5 {
        let a = get("actual_pages")?;
        let i = get("inflated_pages")?;
        let d = get("deflated_pages")?;
        if get("actual_pages")? != a || get("inflated_pages")? != i || get("deflated_pages")? != d {
            sys::sleep_ms(20);
            continue;
        }
        let diff = (i - d).abs_diff(a);
        if diff == 0 {
            return Some(0);
        }
        last = Some(diff);
        sys::sleep_ms(20);
    }
    last
}

fn ask(c: &mut Ctx, cmd: &str, arg: u64) -> Option<u64> {
    match c.host.ask(cmd, arg, 60) {
        Reply::Ok(v) => Some(v),
        _ => None,
    }
}

/// kldunload + kldload of our driver; true when it is back.
fn reload(c: &mut Ctx, f: &mut Figures, pressure: bool) -> bool {
    if get("actual_pages").unwrap_or(0) > 0 {
        f.unloads_inflated += 1;
    }
    if pressure {
        f.unloads_pressure += 1;
    }
    take_counters(f);
    f.unloads += 1;
    if !unload(c.ours) || exists(OURS_DESC) {
        return false;
    }
    matches!(sys::kldload(c.ours), Ok(_) | Err(sys::EEXIST)) && wait_exists(OURS_DESC, 30)
}

pub fn phase_soak(c: &mut Ctx) {
    let seed = ask(c, "soak-seed", 0).unwrap_or(1);
    let secs = ask(c, "soak-secs", 0).unwrap_or(1200);
    let ram_pages = ask(c, "host-ram", 0).unwrap_or(0);
    Line::new()
        .s("# soak: seed ")
        .u(seed)
        .s(", ")
        .u(secs)
        .s(" s, guest RAM ")
        .u(ram_pages * PAGE / MIB)
        .s(" MiB")
        .end();
    let mut rng = Rng::new(seed);
    let mut f = Figures::default();
    // Free memory with no driver at all: the reference for the end.
    let _ = unload(c.ours);
    sys::sleep_ms(2_000);
    f.free_start = free_bytes();
    if !(matches!(sys::kldload(c.ours), Ok(_) | Err(sys::EEXIST)) && wait_exists(OURS_DESC, 30)) {
        c.check("soak: the driver loads", false, "no dev.vtballoonrs.0");
        return;
    }
    let _ = ask(c, "stats-poll", 1);
    // Found while the balloon is there (the unplug half way needs it).
    let port = crate::rootport::RootPort::of_balloon();
    let failed0 = c.failed;
    let recorder = crate::sampler::Sampler::start();
    let page = page_size();
    let free_target = get_u64(b"vm.stats.vm.v_free_target").unwrap_or(0) * page;

    let t0 = sys::now_ms();
    let end = t0 + secs * 1000;
    // 110 slots for the 100 cycles: the unplug (about 40 s on 14.2, see
    // faults::unplug) and slow cycles cost slots (the default soak made 98
    // with exactly 100).
    let unload_every = secs * 1000 / 110;
    let mut next_target = t0 + 1_000;
    let mut next_unload = t0 + unload_every / 2;
    let mut unplug_at = Some(t0 + secs * 1000 / 2);
    let mut next_child = t0 + rng.range(2_000, 15_000);
    let mut child: Option<Child> = None;
    let mut target = 0u64;
    let mut checked_target = u64::MAX;
    let mut reached_since: Option<u64> = None;
    let mut kills = ask(c, "kills", 0).unwrap_or(0);
    let mut last_note = t0;
    let mut reload_failed = 0;

    while sys::now_ms() < end || child.is_some() {
        let now = sys::now_ms();
        let running = now < end;
        // The child: still there, done, or killed.
        if let Some(ch) = child.as_mut() {
            ch.balloon_low = ch.balloon_low.min(get("actual_pages").unwrap_or(0));
            if let Ok(Some(st)) = sys::wait(ch.pid, true) {
                let signaled = st & 0x7f != 0 && st & 0x7f != 0x7f;
                let k = ask(c, "kills", 0).unwrap_or(kills);
                let killed = signaled || k > ch.kills0;
                kills = k;
                if killed {
                    f.kills += 1;
                    if let Some(r) = recorder.as_ref() {
                        r.dump("a child was killed", 4_000);
                    }
                    if ch.balloon_low > 0 {
                        f.kills_held += 1;
                        c.check_n(
                            "soak: no child killed while the balloon held pages",
                            false,
                            "the balloon held (pages)",
                            Some(ch.balloon_low),
                        );
                    }
                }
                f.child_mib += ch.mib;
                child = None;
                next_child = now + rng.range(1_000, 20_000);
            }
        } else if running && now >= next_child {
            // What the guest can give without anyone being killed: free
            // memory and the balloon, less the page daemon's target and a
            // margin for the kernel.
            let have = free_bytes() + get("actual_pages").unwrap_or(0) * PAGE;
            let spare = mib_of(have.saturating_sub(free_target + 256 * MIB));
            if spare >= 64 {
                let mib = rng.range(64, spare) / 4 * 4;
                let hold = rng.range(0, 8_000);
                let pid = spawn(mib, hold);
                if pid != 0 {
                    f.children += 1;
                    child = Some(Child {
                        pid,
                        mib,
                        balloon_low: get("actual_pages").unwrap_or(0),
                        kills0: kills,
                    });
                }
            } else {
                next_child = now + 5_000;
            }
        }
        // A new host target.
        if running && now >= next_target {
            let max = ram_pages * 95 / 100;
            let r = rng.next() % 100;
            target = match r {
                0..=44 => rng.range(0, ram_pages * 60 / 100),
                45..=69 => rng.range(ram_pages * 60 / 100, max),
                70..=79 => 0,
                80..=89 => {
                    // Absurd: all but 1 MiB of the guest.
                    f.absurd += 1;
                    ram_pages - 256
                }
                _ => {
                    let d = rng.range(0, 64 * 256);
                    if rng.chance(50) {
                        target.saturating_sub(d)
                    } else {
                        (target + d).min(max)
                    }
                }
            };
            if ask(c, "set-target", target).is_some() {
                f.targets += 1;
            }
            reached_since = None;
            next_target = now + rng.range(600, 1_800);
        }
        // Reached: the host and the driver agree on actual.
        let actual = get("actual_pages");
        let reached = actual.is_some()
            && actual == get("target_pages")
            && get("target_pages") == Some(target)
            && checked_target != target;
        if reached {
            match reached_since {
                None => reached_since = Some(now),
                Some(t) if now - t >= 300 => {
                    let a = get("actual_pages").unwrap_or(0);
                    if let Some(host) = ask(c, "host-pages", 0) {
                        if get("actual_pages") == Some(a) {
                            f.host_checks += 1;
                            f.host_worst = f.host_worst.max(host.abs_diff(a));
                            f.reached += 1;
                            checked_target = target;
                        }
                    }
                }
                Some(_) => {}
            }
        }
        if let Some(d) = counter_diff() {
            f.counter_checks += 1;
            f.counter_worst = f.counter_worst.max(d);
        }
        // kldunload / kldload.
        if running && now >= next_unload {
            let pressure = child.is_some();
            if !reload(c, &mut f, pressure) {
                reload_failed += 1;
            }
            checked_target = u64::MAX;
            reached_since = None;
            // On a grid from the start, so a slow cycle or the unplug does
            // not cost cycles: late ones follow at least 2 s apart.
            next_unload = (next_unload + unload_every).max(sys::now_ms() + 2_000);
        }
        // The hot-unplug and re-plug.
        if running && unplug_at.is_some_and(|t| now >= t) {
            unplug_at = None;
            take_counters(&mut f);
            // Bounded: 30 s for the host's DEVICE_DELETED, and as long
            // again after kicking a root port FreeBSD 14.2 does not hear
            // (faults::unplug); the loop stands still meanwhile (about 6 s
            // once the port works).
            let gone = crate::faults::unplug(c, "soak: hot-unplug", "unplug", port.as_ref());
            let back = gone && ask(c, "plug", 0).is_some() && wait_exists(OURS_DESC, 60);
            c.check(
                "soak: hot-unplug and re-plug",
                back,
                "the device did not come back",
            );
            if back {
                f.plugs += 1;
            }
            // The new device starts with an empty target.
            target = 0;
            checked_target = u64::MAX;
            next_target = sys::now_ms();
        }
        if now - last_note >= 60_000 {
            last_note = now;
            Line::new()
                .s("# soak: ")
                .u((now - t0) / 1000)
                .s(" s: targets ")
                .u(f.targets)
                .s(", reached ")
                .u(f.reached)
                .s(", unloads ")
                .u(f.unloads)
                .s(", children ")
                .u(f.children)
                .s(", balloon ")
                .u(get("actual_pages").unwrap_or(0) * PAGE / MIB)
                .s(" MiB, free ")
                .u(mib_of(free_bytes()))
                .s(" MiB")
                .end();
        }
        sys::sleep_ms(100);
    }
    // The end: an empty balloon, the last unload, free memory as it was.
    if let Some(r) = recorder {
        r.stop();
    }
    let _ = ask(c, "set-target", 0);
    let _ = crate::sysctl::wait_for("actual_pages", 300, |v| v == 0);
    take_counters(&mut f);
    let unloaded = unload(c.ours);
    sys::sleep_ms(2_000);
    f.free_end = free_bytes();
    c.check(
        "soak: the last kldunload",
        unloaded && !exists(OURS_DESC),
        "kldunload failed",
    );
    c.check_n(
        "soak: every kldunload/kldload cycle worked",
        reload_failed == 0,
        "failed cycles",
        Some(reload_failed),
    );
    c.check_n(
        "soak: 100 kldunload/kldload cycles",
        f.unloads >= 100 || secs < 600,
        "cycles",
        Some(f.unloads),
    );
    c.check_n(
        "soak: the host and the driver agree on actual whenever the target is reached",
        f.host_worst == 0,
        "worst difference (pages)",
        Some(f.host_worst),
    );
    c.check_n(
        "soak: inflated - deflated = actual",
        f.counter_worst == 0,
        "worst difference (pages)",
        Some(f.counter_worst),
    );
    let diff = f.free_start.abs_diff(f.free_end);
    let ppm = diff * 1_000_000 / f.free_start.max(1);
    c.check_n(
        "soak: after the last unload free memory is within 1% of the start",
        ppm <= 10_000,
        "parts per million",
        Some(ppm),
    );
    c.check_n(
        "soak: no child killed while the balloon held pages",
        f.kills_held == 0,
        "kills",
        Some(f.kills_held),
    );
    let faults = f.absurd + f.unloads_inflated + f.unloads_pressure + f.plugs;
    let ops = f.targets + f.unloads + f.plugs + f.children;
    for (name, v) in [
        ("soak-ops", ops),
        ("soak-targets", f.targets),
        ("soak-absurd", f.absurd),
        ("soak-reached", f.reached),
        ("soak-unloads", f.unloads),
        ("soak-unloads-inflated", f.unloads_inflated),
        ("soak-unloads-pressure", f.unloads_pressure),
        ("soak-plugs", f.plugs),
        ("soak-children", f.children),
        ("soak-child-mib", f.child_mib),
        ("soak-inflated", f.inflated),
        ("soak-deflated", f.deflated),
        ("soak-detach-pages", f.detach_pages),
        ("soak-lowmem", f.lowmem),
        ("soak-oom-deflates", f.oom_deflates),
        ("soak-stats-requests", f.stats_requests),
        ("soak-faults", faults),
        ("soak-host-checks", f.host_checks),
        ("soak-host-worst", f.host_worst),
        ("soak-counter-checks", f.counter_checks),
        ("soak-counter-worst", f.counter_worst),
        ("soak-free-start", mib_of(f.free_start)),
        ("soak-free-end", mib_of(f.free_end)),
        ("soak-free-ppm", ppm),
        ("soak-kills", f.kills),
        ("soak-kills-held", f.kills_held),
        ("soak-not-ok", u64::from(c.failed - failed0)),
    ] {
        let _ = c.host.ask(name, v, 30);
    }
}
