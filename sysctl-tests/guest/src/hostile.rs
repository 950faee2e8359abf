//! The hostile boot (phases flip, oom-retarget; after transport-legacy):
//! targets no well-behaved host sends.
//!
//! - flip: for a minute the host flips its target between 0 and 90% of
//!   memory every 5 ms, then asks for 256 MiB: the balloon settles on it,
//!   the host agrees, the counters add up, nothing failed;
//! - oom-retarget: the balloon at 3/4 of memory, a child touching 1 GiB;
//!   once the balloon gives memory back under pressure the host lowers its
//!   target (followed at once, even while the pressure watch deflates),
//!   then raises it while the watch runs (nothing inflates until the
//!   pressure has passed, then the raise is followed); a vm_lowmem event
//!   once the target is reached, with free memory plenty (the page daemon
//!   can raise one on the fast fall an inflate makes), gives back its
//!   batch and the balloon is at the target again after its watch.

use crate::balloon::{
    counters_agree, host_agrees, pause_reporting, resize, resume_reporting, why_here,
};
use crate::check::Ctx;
use crate::out::Line;
use crate::pressure::three_quarters;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{get, wait_for, PAGES_PER_MIB};

pub fn phase_flip(c: &mut Ctx) {
    const SECS: u64 = 60;
    let paused = pause_reporting();
    let changes0 = get("config_changes").unwrap_or(0);
    let t0 = sys::now_ms();
    let r = c.host.ask("flip", SECS, SECS + 60);
    let flips = match r {
        Reply::Ok(n) => n,
        _ => 0,
    };
    c.check_host(
        "flip: the host flipped its target between 0 and 90% every 5 ms for a minute",
        r,
        |n| n > 0,
        "changes",
    );
    let seen = get("config_changes").unwrap_or(0) - changes0;
    Line::new()
        .s("# flip: ")
        .u(flips)
        .s(" target changes in ")
        .u((sys::now_ms() - t0) / 1000)
        .s(" s; the driver saw ")
        .u(seen)
        .s(" config changes; buffers posted ")
        .u(get("buffers_posted").unwrap_or(0))
        .s(", balloon thread wakeups ")
        .u(get("thread_wakeups").unwrap_or(0))
        .s(", floor stops ")
        .u(get("floor_stops").unwrap_or(0))
        .end();
    if resize(c, "flip: then the host asks for 256 MiB: reached", 256, 300) {
        host_agrees(c, "flip: the host sees 256 MiB", 256);
    }
    match counters_agree() {
        Some((i, d, a)) => {
            Line::new()
                .s("# flip: inflated ")
                .u(i)
                .s(", deflated ")
                .u(d)
                .s(", actual ")
                .u(a)
                .s(" pages")
                .end();
            c.check_n(
                "flip: inflated - deflated = actual",
                i - d == a,
                "inflated - deflated",
                Some(i - d),
            );
        }
        None => {
            c.check("flip: inflated - deflated = actual", false, "never steady");
        }
    }
    for leaf in ["errors", "host_timeouts", "alloc_failures"] {
        let v = get(leaf);
        let mut b = [0u8; 40];
        c.check_n(
            crate::check::concat(&mut b, b"flip: no ", leaf.as_bytes()),
            v == Some(0),
            "counted",
            v,
        );
    }
    resize(c, "flip: back to 0", 0, 120);
    resume_reporting(paused);
}

pub fn phase_oom_retarget(c: &mut Ctx) {
    let s = "oom-retarget";
    let full = three_quarters();
    if !resize(c, "oom-retarget: balloon at 3/4 of memory", full, 300) {
        return;
    }
    let events0 = get("lowmem_events").unwrap_or(0);
    let kills0 = match c.host.ask("kills", 0, 30) {
        Reply::Ok(k) => k,
        _ => 0,
    };
    // A child touching 1 GiB (more than is free), then holding it until
    // told to go (the flag page).
    let Ok(flag) = sys::mmap_anon(4096, true) else {
        c.check(s, false, "no shared page");
        return;
    };
    let pid = crate::child::toucher(1024, 0, Some(flag));
    let pressure = wait_for("lowmem_events", 120, |v| v > events0);
    c.check(
        "oom-retarget: the child's memory comes from the balloon (vm_lowmem)",
        pressure.is_ok(),
        "no vm_lowmem event",
    );
    // While the balloon deflates for the pressure: a lower target.
    let low = full / 4;
    let at = get("actual_pages").unwrap_or(0) / PAGES_PER_MIB;
    let _ = c.host.ask("set-target", low * PAGES_PER_MIB, 30);
    let followed = wait_for("actual_pages", 120, |v| v <= low * PAGES_PER_MIB);
    Line::new()
        .s("# oom-retarget: the host lowered its target to ")
        .u(low)
        .s(" MiB with the balloon at ")
        .u(at)
        .s(" MiB, oom_watching ")
        .u(get("oom_watching").unwrap_or(9))
        .s(", oom_deflates ")
        .u(get("oom_deflates").unwrap_or(0))
        .end();
    c.check_n(
        "oom-retarget: a lower target set during a pressure deflate is followed",
        followed.is_ok(),
        "actual_pages",
        followed.err().flatten(),
    );
    // The child has its memory.
    let deadline = sys::now_ms() + 120_000;
    // SAFETY: the flag page mapped above: word 0 is the child's "done".
    while unsafe { core::ptr::read_volatile(flag as *const u64) } == 0 && sys::now_ms() < deadline {
        sys::sleep_ms(50);
    }
    // SAFETY: as above.
    let touched = unsafe { core::ptr::read_volatile(flag as *const u64) } != 0;
    c.check(
        "oom-retarget: the child got its 1 GiB",
        touched,
        "not done in 120 s",
    );
    // A raise while the watch still runs: no inflating until it is over.
    let watching = get("oom_watching") == Some(1);
    let before = get("actual_pages").unwrap_or(0);
    let raise_events = get("lowmem_events").unwrap_or(0);
    let raise_deflates = get("oom_deflates").unwrap_or(0);
    let _ = c.host.ask("set-target", full * PAGES_PER_MIB, 30);
    let mut grew_while_watching = false;
    let mut samples = 0;
    while get("oom_watching") == Some(1) && samples < 400 {
        if get("actual_pages").unwrap_or(0) > before {
            grew_while_watching = true;
        }
        samples += 1;
        sys::sleep_ms(50);
    }
    if watching {
        c.check_n(
            "oom-retarget: a raise during the pressure watch inflates nothing while it runs",
            !grew_while_watching,
            "actual_pages",
            get("actual_pages"),
        );
    } else {
        c.skip(
            "oom-retarget: a raise during the pressure watch inflates nothing while it runs",
            "the watch had ended already",
        );
    }
    // The child goes; the pressure is over: the raise is followed.
    // SAFETY: word 1 of the flag page: the parent's "go".
    unsafe { core::ptr::write_volatile((flag + 8) as *mut u64, 1) };
    let status = crate::child::reap(pid, 60);
    let kills = match c.host.ask("kills", 0, 30) {
        Reply::Ok(k) => k - kills0,
        _ => 0,
    };
    c.check_n(
        "oom-retarget: nobody killed",
        status == Some(0) && kills == 0,
        "kill lines",
        Some(kills),
    );
    let ended = wait_for("oom_watching", 60, |v| v == 0);
    c.check(
        "oom-retarget: the watch ends",
        ended.is_ok(),
        "still watching",
    );
    let reached = settled_at(full * PAGES_PER_MIB, 300);
    why_here("oom-retarget: after the raise");
    // The page daemon may raise vm_lowmem once more on the fast fall of
    // free memory that inflate made, with plenty free: its batch goes back,
    // and the balloon is at the target again once that watch has passed.
    Line::new()
        .s("# oom-retarget: since the raise vm_lowmem ")
        .u(get("lowmem_events").unwrap_or(0) - raise_events)
        .s(", pressure deflates ")
        .u(get("oom_deflates").unwrap_or(0) - raise_deflates)
        .end();
    c.check_n(
        "oom-retarget: then the raised target is followed",
        reached.is_ok(),
        "actual_pages",
        reached.err().flatten(),
    );
    host_agrees(c, "oom-retarget: the host agrees", full);
    let paused = pause_reporting();
    if let Some((i, d, a)) = counters_agree() {
        c.check_n(
            "oom-retarget: inflated - deflated = actual",
            i - d == a,
            "inflated - deflated",
            Some(i - d),
        );
    }
    event_at_the_target(c, full);
    resize(c, "oom-retarget: back to 0", 0, 300);
    resume_reporting(paused);
}

/// Waits up to `secs` for the balloon to hold `pages` with the watch over,
/// for 2 s in a row (an event right after reaching the target deflates
/// its batch and starts a watch; the balloon is back after it). The last
/// `actual_pages` seen on failure.
fn settled_at(pages: u64, secs: u64) -> Result<u64, Option<u64>> {
    let deadline = sys::now_ms() + secs * 1000;
    let mut since = None;
    loop {
        let actual = get("actual_pages");
        let now = sys::now_ms();
        if actual == Some(pages) && get("oom_watching") == Some(0) {
            let t = *since.get_or_insert(now);
            if now >= t + 2_000 {
                return Ok(pages);
            }
        } else {
            since = None;
        }
        if now >= deadline {
            return Err(actual);
        }
        sys::sleep_ms(100);
    }
}

/// The failure CI met once, made to happen: a vm_lowmem event (here through
/// `debug.vm_lowmem`) after the balloon reached the host's target, with
/// free memory far above the page daemon's target. The event gets its
/// batch (`oom_batch_pages`) and a watch; it is not a shortage, so once the
/// watch has passed the balloon is at the host's target again (before, it
/// stayed one batch short until the host spoke again).
fn event_at_the_target(c: &mut Ctx, mib: u64) {
    let name = "oom-retarget: a vm_lowmem event at the target, free memory plenty, is made up after its watch";
    let pages = mib * PAGES_PER_MIB;
    let batch = get("oom_batch_pages").unwrap_or(256);
    let events0 = get("lowmem_events").unwrap_or(0);
    if crate::sysctl::set_int(b"debug.vm_lowmem", 1).is_err() {
        c.skip(name, "cannot write debug.vm_lowmem");
        return;
    }
    let after = get("actual_pages").unwrap_or(0);
    Line::new()
        .s("# oom-retarget: debug.vm_lowmem at the target: balloon ")
        .u(after / PAGES_PER_MIB)
        .s(" MiB (")
        .u(pages - after.min(pages))
        .s(" pages given back, batch ")
        .u(batch)
        .s("), vm_lowmem events +")
        .u(get("lowmem_events").unwrap_or(0) - events0)
        .s(", oom_watching ")
        .u(get("oom_watching").unwrap_or(9))
        .end();
    c.check_n(
        "oom-retarget: the event at the target gives back its batch",
        after + batch == pages,
        "actual_pages",
        Some(after),
    );
    let back = settled_at(pages, 120);
    why_here("oom-retarget: after the event at the target");
    c.check_n(name, back.is_ok(), "actual_pages", back.err().flatten());
    host_agrees(c, "oom-retarget: the host agrees after the event", mib);
}
