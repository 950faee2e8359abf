//! The libvirt boot (phase libvirt): libvirt plays the host. The harness
//! answers the usual requests through `virsh setmem` (set-target) and
//! `virsh dommemstat` (host-actual, stats-poll, stats-get, stats-updated),
//! so this phase checks what the administrator of a libvirt host sees: the
//! domain XML's `autodeflate` and `freePageReporting` as negotiated
//! features, the balloon moved by `setmem` and back, and every figure of
//! `dommemstat` against the guest's own counters, with the tolerances of
//! the QMP guest-stats check (basic boot, phase stats).

use crate::balloon::{pause_reporting, resize, resume_reporting};
use crate::check::Ctx;
use crate::child::{reap, toucher};
use crate::out::Line;
use crate::sys;
use crate::sysctl::{exists, free_bytes, get, get_str, get_u64, node, page_size, PAGE};

pub fn phase_libvirt(c: &mut Ctx) {
    features(c);
    setmem(c);
    dommemstat(c);
}

fn features(c: &mut Ctx) {
    let mut f = [0u8; 200];
    let feats = get_str(node("features").bytes(), &mut f).unwrap_or(&[]);
    Line::new().s("# features: ").b(feats).end();
    let has = |w: &[u8]| feats.split(|&b| b == b',').any(|x| x == w);
    c.check(
        "autodeflate='on' is negotiated as DEFLATE_ON_OOM",
        has(b"DEFLATE_ON_OOM"),
        "not negotiated",
    );
    c.check(
        "freePageReporting='on' is negotiated as REPORTING (report_enabled exists)",
        has(b"REPORTING") && exists(node("report_enabled").bytes()),
        "not negotiated",
    );
    c.check(
        "<stats period='2'/>: STATS_VQ is negotiated",
        has(b"STATS_VQ"),
        "not negotiated",
    );
    let mut a = [0u8; 128];
    let acct = get_str(node("memory_accounting").bytes(), &mut a).unwrap_or(&[]);
    c.check(
        "memory_accounting: ballooned memory counts as used (autodeflate)",
        acct.starts_with(b"used"),
        "unexpected text",
    );
}

/// `virsh setmem` to a target and back; `dommemstat`'s `actual` (the
/// guest's memory less the balloon, turned into the balloon by the host)
/// agrees with `actual_bytes` each time.
fn setmem(c: &mut Ctx) {
    let paused = pause_reporting();
    if resize(c, "virsh setmem: the balloon inflates to 512 MiB", 512, 240) {
        actual_agrees(
            c,
            "virsh dommemstat actual agrees with actual_bytes (512 MiB)",
        );
    }
    if resize(c, "virsh setmem: the balloon deflates back to 0", 0, 240) {
        actual_agrees(
            c,
            "virsh dommemstat actual agrees with actual_bytes (empty)",
        );
    }
    resume_reporting(paused);
}

fn actual_agrees(c: &mut Ctx, name: &str) {
    let mine = get("actual_bytes");
    Line::new().s("# actual_bytes ").u(mine.unwrap_or(0)).end();
    let r = c.host.ask("host-actual", 0, 30);
    c.check_host(
        name,
        r,
        |pages| Some(pages * PAGE) == mine,
        "the host's balloon (4 KiB pages) differs",
    );
}

/// The guest's own counters behind the statistics.
#[derive(Clone, Copy)]
struct Own {
    free_kib: u64,
    swap_in_kib: u64,
    swap_out_kib: u64,
    major: u64,
    minor: u64,
    clock_s: u64,
}

impl Own {
    fn read() -> Own {
        let v = |n: &[u8]| get_u64(n).unwrap_or(0);
        let pg = page_size();
        let faults = v(b"vm.stats.vm.v_vm_faults");
        let io = v(b"vm.stats.vm.v_io_faults");
        Own {
            free_kib: free_bytes() / 1024,
            swap_in_kib: v(b"vm.stats.vm.v_swappgsin") * pg / 1024,
            swap_out_kib: v(b"vm.stats.vm.v_swappgsout") * pg / 1024,
            major: io,
            minor: faults.saturating_sub(io),
            clock_s: sys::realtime_s(),
        }
    }

    fn show(&self, when: &str) {
        Line::new()
            .s("# guest ")
            .s(when)
            .s(": free ")
            .u(self.free_kib)
            .s(" KiB, swap in ")
            .u(self.swap_in_kib)
            .s(" KiB, swap out ")
            .u(self.swap_out_kib)
            .s(" KiB, major faults ")
            .u(self.major)
            .s(", minor faults ")
            .u(self.minor)
            .s(", clock ")
            .u(self.clock_s)
            .end();
    }
}

/// Fault counters are read before and after the sample; the two that make
/// up minor faults are not read at one instant: a few faults either way.
const FAULT_SLACK: u64 = 64;
/// As in the QMP check: free memory moves by up to this much meanwhile.
const FREE_SLACK_KIB: u64 = 16 * 1024;
/// last_update is the host's clock, the guest's comes from the RTC the host
/// gave it at boot: they agree to within this.
const CLOCK_SLACK_S: u64 = 30;

fn dommemstat(c: &mut Ctx) {
    const SWAP_IN: u64 = 0;
    const SWAP_OUT: u64 = 1;
    const MAJFLT: u64 = 2;
    const MINFLT: u64 = 3;
    const MEMFREE: u64 = 4;
    const MEMTOT: u64 = 5;
    const AVAIL: u64 = 6;
    // A reporting pass holds free blocks off the free lists while it scans:
    // compare without one (as the QMP check does).
    let paused = pause_reporting();
    // A child touches 32 MiB first, so the fault counters have moved by
    // thousands and a figure the driver did not refresh cannot match.
    let f0 = Own::read();
    let status = reap(toucher(32, 0, None), 60);
    c.check(
        "a child touches 32 MiB and exits",
        status == Some(0),
        "fork or the child failed",
    );
    sys::sleep_ms(2_500);
    let lo = Own::read();
    Line::new()
        .s("# the child's faults: ")
        .u(lo.minor.saturating_sub(f0.minor))
        .s(" minor, ")
        .u(lo.major.saturating_sub(f0.major))
        .s(" major")
        .end();
    let r = c.host.ask("stats-poll", 2, 60);
    let hi = Own::read();
    lo.show("before");
    hi.show("after");
    if !c.check_host(
        "virsh dommemstat has a sample newer than the request",
        r,
        |_| true,
        "",
    ) {
        resume_reporting(paused);
        return;
    }
    // Each figure lies between the guest's own before and after, widened
    // by its slack.
    let within =
        |v: u64, a: u64, b: u64, slack: u64| v + slack >= a.min(b) && v <= a.max(b) + slack;
    let r = c.host.ask("stats-get", MEMFREE, 30);
    c.check_host(
        "dommemstat unused is the guest's free memory (KiB)",
        r,
        |v| within(v, lo.free_kib, hi.free_kib, FREE_SLACK_KIB),
        "KiB",
    );
    let total = get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0) * page_size() / 1024;
    let r = c.host.ask("stats-get", MEMTOT, 30);
    c.check_host(
        "dommemstat available is v_page_count (KiB)",
        r,
        |v| v == total,
        "KiB",
    );
    let r = c.host.ask("stats-get", AVAIL, 30);
    c.check_host(
        "dommemstat usable is between free/2 and total (KiB)",
        r,
        |v| v >= lo.free_kib.min(hi.free_kib) / 2 && v <= total,
        "KiB",
    );
    let r = c.host.ask("stats-get", MAJFLT, 30);
    c.check_host(
        "dommemstat major_fault is v_io_faults",
        r,
        |v| within(v, lo.major, hi.major, FAULT_SLACK),
        "faults",
    );
    let r = c.host.ask("stats-get", MINFLT, 30);
    c.check_host(
        "dommemstat minor_fault is v_vm_faults - v_io_faults",
        r,
        |v| within(v, lo.minor, hi.minor, FAULT_SLACK),
        "faults",
    );
    let r = c.host.ask("stats-get", SWAP_IN, 30);
    c.check_host(
        "dommemstat swap_in is v_swappgsin (KiB)",
        r,
        |v| within(v, lo.swap_in_kib, hi.swap_in_kib, 0),
        "KiB",
    );
    let r = c.host.ask("stats-get", SWAP_OUT, 30);
    c.check_host(
        "dommemstat swap_out is v_swappgsout (KiB)",
        r,
        |v| within(v, lo.swap_out_kib, hi.swap_out_kib, 0),
        "KiB",
    );
    let r = c.host.ask("stats-updated", 0, 30);
    c.check_host(
        "dommemstat last_update is the guest's clock at the sample (within 30 s)",
        r,
        |v| within(v, lo.clock_s, hi.clock_s, CLOCK_SLACK_S),
        "seconds since the epoch",
    );
    let after = get("stats_requests").unwrap_or(0);
    c.check_n(
        "stats_requests counts libvirt's polls",
        after > 0,
        "none",
        Some(after),
    );
    let e = get("stats_errors");
    c.check_n("no stats_errors", e == Some(0), "counted", e);
    resume_reporting(paused);
}
