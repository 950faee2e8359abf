//! The bench boot: each driver in turn, timed by the host (which prints
//! the table); the guest touches memory first and reports its own figures.

use crate::balloon::resize;
use crate::check::{concat, Ctx};
use crate::child::{reap, toucher};
use crate::kld::{ensure_none, OURS_DESC, THEIRS, THEIRS_DESC};
use crate::out::{note, Line};
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{
    free_bytes, get, get_u64, mib_of, page_size, set, set_int, wait_exists, wait_for, PAGES_PER_MIB,
};

/// Runs of each benchmark operation (the host reports the median).
const BENCH_RUNS: u32 = 3;

/// The bench phase measures and reports figures to the host, which prints
/// them; its checks only say whether each measurement could be taken,
/// never whether a figure met its reference figure.
pub fn phase_bench(c: &mut Ctx) {
    // Memory is touched before each inflate so the host has pages to drop.
    let phys = mib_of(get_u64(b"hw.physmem").unwrap_or(0));
    for (driver, path) in [(0u64, c.ours), (1, THEIRS)] {
        let name = if driver == 0 {
            "bench vtballoonrs"
        } else {
            "bench virtio_balloon"
        };
        if !ensure_none(c) {
            c.check(name, false, "could not unload the drivers");
            return;
        }
        match sys::kldload(path) {
            Ok(_) => {}
            Err(sys::ENOENT) => {
                c.skip(name, "module not on this system");
                continue;
            }
            Err(_) => {
                c.check(name, false, "kldload failed");
                continue;
            }
        }
        let desc = if driver == 0 { OURS_DESC } else { THEIRS_DESC };
        if !c.check(name, wait_exists(desc, 30), "did not attach") {
            continue;
        }
        if driver == 0 {
            // The in-tree driver does not report free pages: compare like with like.
            set("report_enabled", 0);
            let _ = wait_for("report_inflight", 10, |v| v == 0);
        }
        sys::sleep_ms(2_000);
        let _ = c.host.ask("bench-driver", driver, 30);
        for mib in [1024u64, 3072] {
            let mut ok = true;
            for _ in 0..BENCH_RUNS {
                let touch = (mib + 256).min(phys.saturating_sub(512));
                if reap(toucher(touch, 0, None), 600) != Some(0) {
                    note("bench: the toucher failed");
                }
                ok &= bench_timed(c, "bench-inflate", mib);
                ok &= bench_timed(c, "bench-deflate", mib);
            }
            let mut n = [0u8; 40];
            let what = concat(
                &mut n,
                name.as_bytes(),
                if mib == 1024 { b" 1 GiB" } else { b" 3 GiB" },
            );
            c.check(what, ok, "the host could not time it");
        }
        bench_resident(c, name);
        let who = if driver == 0 {
            crate::pressure::Driver::Ours
        } else {
            crate::pressure::Driver::InTree
        };
        crate::pressure::bench_oom(c, who);
        if driver == 0 {
            // After the pressure watch the oom bench started has ended.
            let watch_s = get("oom_watch_ms").unwrap_or(0) / 1000;
            let _ = wait_for("oom_watching", watch_s + 15, |v| v == 0);
            bench_ours_at_rest(c);
        }
    }
    ensure_none(c);
}

/// Asks the host to time one operation; with our driver, then tells it how
/// long the driver spent inside queue notifications meanwhile (the host's
/// own work on the pages, which QEMU does before the notification returns).
fn bench_timed(c: &mut Ctx, cmd: &str, mib: u64) -> bool {
    let before = get("notify_us");
    let ok = matches!(c.host.ask(cmd, mib, 900), Reply::Ok(_));
    if let (Some(b), Some(a)) = (before, get("notify_us")) {
        let _ = c.host.ask("bench-notify-us", a.saturating_sub(b), 30);
    }
    ok
}

/// Inflates 1 GiB of host-resident memory. Before each run a child
/// touches all the free memory the guest can safely spare and exits. FreeBSD
/// puts freed blocks at the tail of its free lists, so the balloon would
/// take the free memory the child did not reach (never touched, or
/// discarded by an earlier inflate: not resident on the host) first: an
/// untimed inflate takes that much, then the timed one takes 1 GiB of
/// what the child touched (the host records the RSS released). The deflate
/// after it is not timed.
fn bench_resident(c: &mut Ctx, name: &str) {
    const MIB_RESIDENT: u64 = 1024;
    let mut ok = true;
    for _ in 0..BENCH_RUNS {
        // Leave the page daemon's free target and 64 MiB more: the page
        // daemon does not even wake (it does below v_free_min), nothing is
        // paged out or killed.
        let target = get_u64(b"vm.stats.vm.v_free_target").unwrap_or(25_600) * page_size();
        let free0 = mib_of(free_bytes());
        let touch = free0.saturating_sub(mib_of(target) + 64);
        if reap(toucher(touch, 0, None), 900) != Some(0) {
            note("bench: the toucher failed");
        }
        let untouched = mib_of(free_bytes()).saturating_sub(touch);
        Line::new()
            .s("# bench: free ")
            .u(free0)
            .s(" MiB, a child touched ")
            .u(touch)
            .s(" MiB; untimed inflate of the ")
            .u(untouched)
            .s(" MiB it did not reach, then a timed 1 GiB")
            .end();
        let pages = untouched * PAGES_PER_MIB;
        ok &= matches!(c.host.ask("set-target", pages, 30), Reply::Ok(_));
        ok &= matches!(c.host.ask("wait-actual", pages, 150), Reply::Ok(_));
        ok &= bench_timed(c, "bench-resident", MIB_RESIDENT);
        ok &= matches!(c.host.ask("set-target", 0, 30), Reply::Ok(_));
        ok &= matches!(c.host.ask("wait-actual", 0, 150), Reply::Ok(0));
    }
    let mut n = [0u8; 48];
    let what = concat(&mut n, name.as_bytes(), b" resident 1 GiB");
    c.check(what, ok, "the host could not time it");
}

/// Ours with the balloon at 256 MiB: idle wakeups of both threads over
/// 10 s, then the time our vm_lowmem handler takes for 256 pages.
fn bench_ours_at_rest(c: &mut Ctx) {
    if !resize(c, "bench vtballoonrs: inflate to 256 MiB", 256, 240) {
        return;
    }
    bench_idle(c);
    bench_lowmem(c);
    resize(c, "bench vtballoonrs: back to 0", 0, 240);
}

/// Wakeups of the balloon and reporting threads over 10 s with the target
/// reached, no config change and report_enabled=0 (both should sleep).
fn bench_idle(c: &mut Ctx) {
    const NAME: &str = "bench vtballoonrs idle wakeups";
    const WINDOW_MS: u64 = 10_000;
    // The last acks may wake the thread once more right after the target.
    sys::sleep_ms(1_000);
    let (Some(t0), r0) = (get("thread_wakeups"), get("report_wakeups")) else {
        c.skip(NAME, "no thread_wakeups node (older driver)");
        return;
    };
    let start = sys::now_ms();
    sys::sleep_ms(WINDOW_MS);
    let thread = get("thread_wakeups").unwrap_or(t0).saturating_sub(t0);
    let report = r0.and_then(|r0| Some(get("report_wakeups")?.saturating_sub(r0)));
    let ms = sys::now_ms() - start;
    let mut l = Line::new();
    l.s("# bench: ")
        .u(ms)
        .s(" ms at rest: balloon thread ")
        .u(thread)
        .s(" wakeups, reporting thread ");
    match report {
        Some(n) => l.u(n).s(" wakeups").end(),
        None => l.s("(no report_wakeups node)").end(),
    }
    let mut ok = matches!(c.host.ask("bench-idle-ms", ms, 30), Reply::Ok(_));
    ok &= matches!(c.host.ask("bench-idle-thread", thread, 30), Reply::Ok(_));
    if let Some(n) = report {
        ok &= matches!(c.host.ask("bench-idle-report", n, 30), Reply::Ok(_));
    }
    c.check(NAME, ok, "the host did not record it");
}

/// Five vm_lowmem events (debug.vm_lowmem=1 runs the handlers at once, in
/// this thread) with oom_batch_pages=256; lowmem_last_us after each goes to
/// the host, and the time the whole write took here (every vm_lowmem
/// handler, ours included: an upper bound, on the guest's precise clock).
fn bench_lowmem(c: &mut Ctx) {
    const NAME: &str = "bench vtballoonrs lowmem latency";
    const EVENTS: u32 = 5;
    if get("lowmem_last_us").is_none() {
        c.skip(NAME, "no lowmem_last_us node (older driver)");
        return;
    }
    let batch = get("oom_batch_pages").unwrap_or(256) as i32;
    if !set("oom_batch_pages", 256) {
        c.check(NAME, false, "cannot set oom_batch_pages=256");
        return;
    }
    let mut ok = true;
    let mut why = "the host did not record it";
    for _ in 0..EVENTS {
        let events0 = get("lowmem_events").unwrap_or(0);
        let pages0 = get("lowmem_pages").unwrap_or(0);
        let t0 = sys::now_us();
        let fired = set_int(b"debug.vm_lowmem", 1).is_ok();
        let call_us = sys::now_us() - t0;
        if !fired {
            ok = false;
            why = "cannot write debug.vm_lowmem";
            break;
        }
        let us = get("lowmem_last_us").unwrap_or(0);
        let pages = get("lowmem_pages").unwrap_or(0).saturating_sub(pages0);
        Line::new()
            .s("# bench: vm_lowmem deflated ")
            .u(pages)
            .s(" pages in ")
            .u(us)
            .s(" us (lowmem_last_us); the debug.vm_lowmem write took ")
            .u(call_us)
            .s(" us")
            .end();
        if get("lowmem_events").unwrap_or(0) == events0 {
            ok = false;
            why = "the handler counted no lowmem event";
            break;
        }
        ok &= matches!(c.host.ask("bench-lowmem", us, 30), Reply::Ok(_));
        ok &= matches!(c.host.ask("bench-lowmem-call", call_us, 30), Reply::Ok(_));
        sys::sleep_ms(200);
    }
    set("oom_batch_pages", batch);
    c.check(NAME, ok, why);
}
