//! The floor boot (phase floor): a 2 GiB guest with DEFLATE_ON_OOM under a
//! host that wants all but 1 MiB of it (QMP `balloon 1M`), as a new user
//! would try it. The guest-side floor holds the balloon back; a process
//! allocating and freeing 256 MiB in a loop runs for 90 s; nobody is
//! killed; `actual` tells the host the truth throughout.

use crate::balloon::{counters_agree, why_here};
use crate::check::Ctx;
use crate::out::Line;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{free_bytes, get, get_u64, mib_of, wait_for, MIB, PAGE, PAGES_PER_MIB};

/// How long the allocating loop runs.
const LOOP_MS: u64 = 90_000;
/// What it allocates and frees each time round.
const LOOP_MIB: u64 = 256;

/// A child that maps, touches and unmaps LOOP_MIB until told to stop,
/// counting rounds in word 0 of the shared page `flag`; word 1 is the stop.
fn looper(flag: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let len = LOOP_MIB * MIB;
            // SAFETY: word 1 of the page shared with the parent.
            while unsafe { core::ptr::read_volatile((flag + 8) as *const u64) } == 0 {
                let Ok(p) = sys::mmap_anon(len, false) else {
                    sys::exit(2)
                };
                let mut off = 0;
                while off < len {
                    // SAFETY: inside the fresh private mapping of `len` bytes.
                    unsafe { core::ptr::write_volatile((p + off) as *mut u8, 1) };
                    off += PAGE;
                }
                // SAFETY: the child's own mapping, not used after this.
                let _ = unsafe { sys::munmap(p, len) };
                // SAFETY: word 0 of the shared page, written only here.
                unsafe {
                    let n = core::ptr::read_volatile(flag as *const u64);
                    core::ptr::write_volatile(flag as *mut u64, n + 1);
                }
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

pub fn phase_floor(c: &mut Ctx) {
    let page_count = get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0);
    let free_target = get_u64(b"vm.stats.vm.v_free_target").unwrap_or(0);
    let floor = get("floor_pages").unwrap_or(0);
    let expect = free_target + (page_count / 50).max(4096);
    Line::new()
        .s("# floor_pages ")
        .u(floor)
        .s(" (")
        .u(floor / PAGES_PER_MIB)
        .s(" MiB): v_free_target ")
        .u(free_target)
        .s(" + 2% of ")
        .u(page_count)
        .s(" pages")
        .end();
    c.check_n(
        "floor: the default floor is v_free_target + 2% of memory (at least 16 MiB)",
        floor == expect,
        "floor_pages",
        Some(floor),
    );
    let stops0 = get("floor_stops").unwrap_or(0);
    // The host's guest size: 1 MiB.
    let r = c.host.ask("balloon-mib", 1, 30);
    if !c.check_host("floor: the host sets the guest to 1 MiB", r, |_| true, "") {
        return;
    }
    // The balloon grows until the floor holds it, then stays.
    let held = wait_for("floor_refused_pages", 300, |v| v > 0);
    let mut last = get("actual_pages").unwrap_or(0);
    let deadline = sys::now_ms() + 120_000;
    loop {
        sys::sleep_ms(3_000);
        let now = get("actual_pages").unwrap_or(0);
        if now == last || sys::now_ms() > deadline {
            break;
        }
        last = now;
    }
    let target = get("target_pages").unwrap_or(0);
    let refused = get("floor_refused_pages").unwrap_or(0);
    Line::new()
        .s("# floor: target ")
        .u(target / PAGES_PER_MIB)
        .s(" MiB, balloon ")
        .u(last / PAGES_PER_MIB)
        .s(" MiB, refused ")
        .u(refused / PAGES_PER_MIB)
        .s(" MiB, free ")
        .u(mib_of(free_bytes()))
        .s(" MiB, floor stops ")
        .u(get("floor_stops").unwrap_or(0))
        .s(", inactive ")
        .u(get_u64(b"vm.stats.vm.v_inactive_count").unwrap_or(0) / PAGES_PER_MIB)
        .s(" MiB, laundry ")
        .u(get_u64(b"vm.stats.vm.v_laundry_count").unwrap_or(0) / PAGES_PER_MIB)
        .s(" MiB, alloc failures ")
        .u(get("alloc_failures").unwrap_or(0))
        .s(", vm_lowmem events ")
        .u(get("lowmem_events").unwrap_or(0))
        .s(", pressure deflates ")
        .u(get("oom_deflates").unwrap_or(0))
        .end();
    c.check_n(
        "floor: the floor holds the balloon back (floor_refused_pages > 0)",
        held.is_ok() && refused > 0 && last < target,
        "floor_refused_pages",
        Some(refused),
    );
    c.check(
        "floor: floor_stops counts the stop",
        get("floor_stops").unwrap_or(0) > stops0,
        "did not move",
    );
    host_matches(c, "floor: the host sees what the balloon holds");

    // The loop.
    let kills0 = match c.host.ask("kills", 0, 30) {
        Reply::Ok(k) => k,
        _ => 0,
    };
    let Ok(flag) = sys::mmap_anon(4096, true) else {
        c.check("floor: the loop starts", false, "no shared page");
        return;
    };
    let events0 = get("lowmem_events").unwrap_or(0);
    let pid = looper(flag);
    let t0 = sys::now_ms();
    let (mut free_low, mut balloon_low) = (u64::MAX, u64::MAX);
    let mut exited = None;
    while sys::now_ms() - t0 < LOOP_MS {
        free_low = free_low.min(free_bytes());
        balloon_low = balloon_low.min(get("actual_pages").unwrap_or(0));
        if let Ok(Some(st)) = sys::wait(pid, true) {
            exited = Some(st);
            break;
        }
        sys::sleep_ms(100);
    }
    // SAFETY: word 0 of the shared page: the child's round count.
    let rounds = unsafe { core::ptr::read_volatile(flag as *const u64) };
    // SAFETY: word 1: stop.
    unsafe { core::ptr::write_volatile((flag + 8) as *mut u64, 1) };
    let status = match exited {
        Some(st) => Some(st),
        None => crate::child::reap(pid, 60),
    };
    let kills = match c.host.ask("kills", 0, 30) {
        Reply::Ok(k) => k.saturating_sub(kills0),
        _ => u64::MAX,
    };
    Line::new()
        .s("# floor: the loop ran ")
        .u(rounds)
        .s(" rounds of ")
        .u(LOOP_MIB)
        .s(" MiB in ")
        .u((sys::now_ms() - t0) / 1000)
        .s(" s; lowest free ")
        .u(mib_of(free_low))
        .s(" MiB; balloon ")
        .u(last / PAGES_PER_MIB)
        .s(" -> lowest ")
        .u(balloon_low / PAGES_PER_MIB)
        .s(" -> ")
        .u(get("actual_pages").unwrap_or(0) / PAGES_PER_MIB)
        .s(" MiB; vm_lowmem events ")
        .u(get("lowmem_events").unwrap_or(0) - events0)
        .s(", kill lines ")
        .u(kills)
        .end();
    c.check_n(
        "floor: the loop kept running until told to stop (exit 0)",
        exited.is_none() && status == Some(0),
        "status",
        status.map(|s| s as u64),
    );
    c.check_n(
        "floor: it went round (at least once)",
        rounds >= 1,
        "rounds",
        Some(rounds),
    );
    c.check_n(
        "floor: nobody killed",
        kills == 0,
        "kill lines",
        Some(kills),
    );
    let _ = wait_for("oom_watching", 60, |v| v == 0);
    why_here("floor: after the loop");
    host_matches(
        c,
        "floor: after the loop the host sees what the balloon holds",
    );
    if let Some((i, d, a)) = counters_agree() {
        c.check_n(
            "floor: inflated - deflated = actual",
            i - d == a,
            "inflated - deflated",
            Some(i - d),
        );
    }
    let _ = c.host.ask("set-target", 0, 30);
    let empty = wait_for("actual_pages", 300, |v| v == 0);
    c.check(
        "floor: the host's next target (0) is followed",
        empty.is_ok(),
        "actual_pages",
    );
}

/// The host's view of the balloon equals actual_pages (asked again if the
/// floor let the balloon move meanwhile).
fn host_matches(c: &mut Ctx, name: &str) {
    let mut r = Reply::Lost;
    let mut actual = 0;
    for _ in 0..3 {
        let before = get("actual_pages").unwrap_or(0);
        r = c.host.ask("host-actual", 0, 30);
        actual = get("actual_pages").unwrap_or(0);
        // A mismatch counts only if the balloon did not move meanwhile.
        if r == Reply::Ok(actual) || actual == before {
            break;
        }
    }
    c.check_host(name, r, |v| v == actual, "host pages");
}
