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
//!   pressure has passed, then the raise is followed).

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
    let reached = wait_for("actual_pages", 300, |v| v == full * PAGES_PER_MIB);
    why_here("oom-retarget: after the raise");
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
    resize(c, "oom-retarget: back to 0", 0, 300);
    resume_reporting(paused);
}
