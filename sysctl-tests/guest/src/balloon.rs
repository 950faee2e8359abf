//! Steps several boots share: resizing the balloon through the host, the
//! host's view of it, pausing free page reporting.

use crate::check::{ask_ok, Ctx};
use crate::out::Line;
use crate::sys;
use crate::sysctl::{get, set, wait_for, PAGES_PER_MIB};

/// Stops free page reporting (so free memory stays put) and waits until
/// no reported block is held; returns the old setting.
pub fn pause_reporting() -> Option<i32> {
    let old = get("report_enabled")? as i32;
    set("report_enabled", 0);
    let _ = wait_for("report_inflight", 10, |v| v == 0);
    Some(old)
}

pub fn resume_reporting(old: Option<i32>) {
    if let Some(v) = old {
        set("report_enabled", v);
    }
}

/// Sets the balloon to `mib` through the host and waits for the driver:
/// target_pages shows it, then actual_pages reaches it.
pub fn resize(c: &mut Ctx, name: &str, mib: u64, secs: u64) -> bool {
    let pages = mib * PAGES_PER_MIB;
    if !ask_ok(c, name, "set-target", pages, 30) {
        return false;
    }
    if let Err(seen) = wait_for("target_pages", 30, |v| v == pages) {
        return c.check_n(name, false, "target_pages never showed the target", seen);
    }
    match wait_for("actual_pages", secs, |v| v == pages) {
        Ok(_) => c.check(name, true, ""),
        Err(seen) => c.check_n(name, false, "actual_pages did not reach the target", seen),
    }
}

/// The host's view of the balloon (pages) matches `mib`.
pub fn host_agrees(c: &mut Ctx, name: &str, mib: u64) -> bool {
    let r = c.host.ask("host-actual", 0, 30);
    c.check_host(
        name,
        r,
        |v| v == mib * PAGES_PER_MIB,
        "host sees another size",
    )
}

/// inflated - deflated = actual, read while nothing moves.
pub fn counters_agree() -> Option<(u64, u64, u64)> {
    for _ in 0..50 {
        let a = get("actual_pages")?;
        let i = get("inflated_pages")?;
        let d = get("deflated_pages")?;
        if get("actual_pages")? == a && get("inflated_pages")? == i {
            return Some((i, d, a));
        }
        sys::sleep_ms(20);
    }
    None
}

/// One line with what holds the balloon where it is: target, actual, the
/// floor's refusal, allocation failures, memory pressure, free memory.
pub fn why_here(what: &str) {
    let mib = |leaf: &str| get(leaf).unwrap_or(0) / PAGES_PER_MIB;
    Line::new()
        .s("# ")
        .s(what)
        .s(": target ")
        .u(mib("target_pages"))
        .s(" MiB, actual ")
        .u(mib("actual_pages"))
        .s(" MiB, floor refuses ")
        .u(mib("floor_refused_pages"))
        .s(" MiB (stops ")
        .u(get("floor_stops").unwrap_or(0))
        .s("), alloc failures ")
        .u(get("alloc_failures").unwrap_or(0))
        .s(", vm_lowmem ")
        .u(get("lowmem_events").unwrap_or(0))
        .s(", pressure deflates ")
        .u(get("oom_deflates").unwrap_or(0))
        .s(", watching ")
        .u(get("oom_watching").unwrap_or(0))
        .s(", free ")
        .u(crate::sysctl::mib_of(crate::sysctl::free_bytes()))
        .s(" MiB, reporting holds ")
        .u(get("report_inflight").unwrap_or(0))
        .s(" blocks")
        .end();
}
