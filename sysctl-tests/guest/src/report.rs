//! The report boot: free page reporting gives a child's freed memory back
//! to the host.

use crate::check::{ask_ok, Ctx};
use crate::child::{reap, toucher};
use crate::out::Line;
use crate::sys;
use crate::sysctl::{get, set, wait_for, PAGE};

pub fn phase_report(c: &mut Ctx) {
    if get("report_enabled") != Some(1) {
        c.skip("free page reporting", "report_enabled is not 1");
        return;
    }
    // The driver's diagnostics go to the console log for this phase.
    let debug = get("debug").unwrap_or(0) as i32;
    set("debug", 1);
    let blocks0 = get("report_blocks").unwrap_or(0);
    let acks0 = get("report_acks").unwrap_or(0);
    let mib = 512;
    // A shared page for the handshake: the child touches `mib` MiB, says so,
    // and exits when told, after the host has taken QEMU's RSS.
    let Ok(flag) = sys::mmap_anon(PAGE, true) else {
        c.check("free page reporting", false, "mmap failed");
        return;
    };
    let pid = toucher(mib, 0, Some(flag));
    let deadline = sys::now_ms() + 300_000;
    // SAFETY: `flag` is our shared page (two u64 words).
    while unsafe { core::ptr::read_volatile(flag as *const u64) } == 0 && sys::now_ms() < deadline {
        sys::sleep_ms(100);
    }
    let marked = ask_ok(c, "the host marks QEMU's RSS", "rss-mark", 0, 30);
    // SAFETY: as above; the second word tells the child to exit.
    unsafe { core::ptr::write_volatile((flag + 8) as *mut u64, 1) };
    let status = reap(pid, 60);
    c.check(
        "a child touched 512 MiB and exited",
        status == Some(0),
        "child failed",
    );
    if marked {
        let r = c.host.ask("rss-drop", mib, 200);
        c.check_host(
            "freed memory goes back to the host (QEMU RSS drops 90%)",
            r,
            |_| true,
            "",
        );
    }
    for leaf in [
        "report_blocks",
        "report_bytes",
        "report_passes",
        "report_acks",
        "report_time_ms",
    ] {
        Line::new()
            .s("# ")
            .s(leaf)
            .s(" ")
            .u(get(leaf).unwrap_or(0))
            .end();
    }
    let blocks = get("report_blocks").unwrap_or(0);
    c.check_n(
        "reported blocks are counted",
        blocks > blocks0,
        "report_blocks",
        Some(blocks),
    );
    let acks = get("report_acks").unwrap_or(0);
    c.check_n(
        "the host acked reports",
        acks > acks0,
        "report_acks",
        Some(acks),
    );
    let e = get("report_errors");
    c.check_n("no report_errors", e == Some(0), "report_errors", e);
    let _ = wait_for("report_inflight", 10, |v| v == 0);
    let held = get("report_inflight");
    c.check_n(
        "no reported block is held when idle",
        held == Some(0),
        "report_inflight",
        held,
    );
    set("debug", debug);
}
