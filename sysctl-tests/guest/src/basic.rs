//! The basic boot (phases tunable, nodes, resize, stats): the loader
//! tunable, every node and its description, writes refused or taken,
//! features, inflate and deflate with the host, guest-stats.

use crate::balloon::{host_agrees, pause_reporting, resize, resume_reporting};
use crate::check::{ask_ok, concat, Ctx};
use crate::kinfo::msgbuf_count;
use crate::kld::OURS_DESC;
use crate::nodes::{bad_values, ro_nodes, rw_nodes};
use crate::out::Line;
use crate::sys;
use crate::sysctl::{
    description, free_bytes, get, get_str, get_u64, mib_of, node, page_size, set, set_int,
    wait_for, MIB, PAGES_PER_MIB,
};

/// The raw bytes of any node (integer or string) for before/after compares.
fn raw(leaf: &str, buf: &mut [u8; 128]) -> Option<usize> {
    sys::sysctlbyname(node(leaf).bytes(), Some(buf), None).ok()
}

pub fn phase_nodes(c: &mut Ctx) {
    c.check(
        "attaching raised a devd ATTACH event",
        crate::devctl::count(b"ATTACH") > 0,
        "no !system=VTBALLOON type=ATTACH on /dev/devctl",
    );
    let mut missing: Option<&str> = None;
    let mut undescribed: Option<&str> = None;
    for leaf in ro_nodes().chain(rw_nodes()) {
        let mut d = [0u8; 256];
        match description(node(leaf).bytes(), &mut d) {
            None => missing = missing.or(Some(leaf)),
            Some(0) => undescribed = undescribed.or(Some(leaf)),
            Some(_) => {}
        }
    }
    c.check(
        "every sysctl node is present",
        missing.is_none(),
        missing.unwrap_or(""),
    );
    c.check(
        "every sysctl node has a description",
        undescribed.is_none(),
        undescribed.unwrap_or(""),
    );
    let mut desc = [0u8; 128];
    let d = get_str(OURS_DESC, &mut desc).unwrap_or(&[]);
    c.check("the device has a %desc", !d.is_empty(), "empty");
    let mem = get("memory_bytes");
    Line::new()
        .s("# memory_bytes: ")
        .u(mem.unwrap_or(0))
        .s(" (fixed per device)")
        .end();
    c.check(
        "memory_bytes states the device's fixed memory (8 KiB to 1 MiB)",
        mem.is_some_and(|m| ((8 << 10)..(1 << 20)).contains(&m)),
        "missing or out of range",
    );

    // Read-only nodes: EPERM and no change, whatever is written.
    let mut bad: Option<&str> = None;
    for leaf in ro_nodes() {
        let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
        let before = raw(leaf, &mut a);
        let refused = set_int(node(leaf).bytes(), 5) == Err(sys::EPERM);
        let after = raw(leaf, &mut b);
        // Counters that move on their own (the balloon thread may still be
        // settling right after attach).
        let volatile =
            leaf.starts_with("report_") || leaf.starts_with("stats_") || leaf == "thread_wakeups";
        let unchanged = volatile || (before == after && a == b);
        if !(refused && unchanged) {
            bad = bad.or(Some(leaf));
        }
    }
    c.check(
        "read-only nodes refuse writes with EPERM",
        bad.is_none(),
        bad.unwrap_or(""),
    );

    // Settings: bad values get EINVAL and change nothing.
    let mut bad: Option<&str> = None;
    for (leaf, values) in bad_values() {
        let before = get(leaf);
        for v in values {
            if set_int(node(leaf).bytes(), v) != Err(sys::EINVAL) || get(leaf) != before {
                bad = bad.or(Some(leaf));
            }
        }
    }
    c.check(
        "bad values get EINVAL and change nothing",
        bad.is_none(),
        bad.unwrap_or(""),
    );
    // What sysctl(2) can carry besides a good int: text, too few or too many
    // bytes (a 64-bit value whose low half alone would be valid), nothing.
    let huge_one = ((1u64 << 32) | 1).to_le_bytes();
    let huge_zero = (1u64 << 32).to_le_bytes();
    let max = u64::MAX.to_le_bytes();
    let raw_bad: [&[u8]; 8] = [
        b"abc",
        b"12345678",
        b"1\0",
        b"",
        &huge_one,
        &huge_zero,
        &max,
        &[1, 0, 0, 0, 0],
    ];
    let mut bad: Option<&str> = None;
    let mut which = 0;
    for leaf in rw_nodes() {
        let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
        let before = raw(leaf, &mut a);
        for (i, v) in raw_bad.iter().enumerate() {
            let r = sys::sysctlbyname(node(leaf).bytes(), None, Some(v));
            let after = raw(leaf, &mut b);
            if r != Err(sys::EINVAL) || after != before || a != b {
                bad = bad.or(Some(leaf));
                which = i as u64;
            }
        }
    }
    c.check_n(
        "non-numeric, short and oversized writes get EINVAL and change nothing",
        bad.is_none(),
        bad.unwrap_or(""),
        bad.map(|_| which),
    );
    let on = set("debug", 1) && get("debug") == Some(1);
    let off = set("debug", 0) && get("debug") == Some(0);
    c.check("debug toggle round-trips", on && off, "did not stick");
    // The pressure settings take their range's ends; restored after.
    for (leaf, lo, hi) in [
        ("oom_headroom_pages", 0, 262_144),
        ("oom_watch_ms", 0, 600_000),
        ("oom_watch_interval_ms", 1, 1_000),
        ("floor_pages", 0, 1_024),
    ] {
        let old = get(leaf).unwrap_or(0) as i32;
        let rt = set(leaf, lo) && get(leaf) == Some(lo as u64);
        let rt = rt && set(leaf, hi) && get(leaf) == Some(hi as u64);
        let restored = set(leaf, old) && get(leaf) == Some(old as u64);
        let mut b = [0u8; 64];
        c.check(
            crate::check::concat(&mut b, leaf.as_bytes(), b" takes both ends of its range"),
            rt && restored,
            "did not stick",
        );
    }
    let batch = get("oom_batch_pages").unwrap_or(256) as i32;
    let rt = set("oom_batch_pages", 1) && get("oom_batch_pages") == Some(1);
    let rt = rt && set("oom_batch_pages", 65_536) && get("oom_batch_pages") == Some(65_536);
    let restored = set("oom_batch_pages", batch);
    c.check(
        "oom_batch_pages takes 1 and 65536",
        rt && restored,
        "did not stick",
    );
    let run = get("inflate_run_pages");
    c.check_n(
        "inflate_run_pages defaults to 256",
        run == Some(256),
        "value",
        run,
    );
    let rt = [1, 16, 256]
        .iter()
        .all(|&v| set("inflate_run_pages", v) && get("inflate_run_pages") == Some(v as u64));
    let restored = set("inflate_run_pages", run.unwrap_or(256) as i32);
    c.check(
        "inflate_run_pages takes 1, 16 and 256",
        rt && restored,
        "did not stick",
    );
    let tags = get("stats_linux_tags").unwrap_or(0) as i32;
    let rt =
        set("stats_linux_tags", 1 - tags) && get("stats_linux_tags") == Some((1 - tags) as u64);
    let restored = set("stats_linux_tags", tags);
    c.check(
        "stats_linux_tags round-trips",
        rt && restored,
        "did not stick",
    );

    let mut f = [0u8; 200];
    let feats = get_str(node("features").bytes(), &mut f).unwrap_or(&[]);
    Line::new().s("# features: ").b(feats).end();
    let has = |w: &[u8]| feats.split(|&b| b == b',' || b == b' ').any(|x| x == w);
    // What QEMU 7.2 offers with deflate-on-oom=on,free-page-reporting=on
    // (no MUST_TELL_HOST; STATS_PUSH is not a QEMU feature).
    c.check(
        "negotiated STATS_VQ, DEFLATE_ON_OOM, REPORTING",
        has(b"STATS_VQ") && has(b"DEFLATE_ON_OOM") && has(b"REPORTING"),
        "feature missing",
    );
    c.check(
        "no STATS_PUSH with a device that does not offer it",
        !has(b"STATS_PUSH"),
        "negotiated",
    );
    c.check(
        "no PAGE_POISON (QEMU offers it by default; FreeBSD does not poison freed pages)",
        !has(b"PAGE_POISON"),
        "negotiated",
    );
    c.check(
        "no FREE_PAGE_HINT with a device that does not offer it",
        !has(b"FREE_PAGE_HINT"),
        "negotiated",
    );
    let mut a = [0u8; 128];
    let acct = get_str(node("memory_accounting").bytes(), &mut a).unwrap_or(&[]);
    c.check(
        "memory_accounting: ballooned memory counts as used (DEFLATE_ON_OOM)",
        acct.starts_with(b"used"),
        "unexpected text",
    );
}

/// Bad loader tunables the harness sets wherever this phase runs (harness
/// BAD_TUNABLES in boots.rs), the value each setting must keep (its
/// default), and what the driver's console line gives as the reason.
pub const BAD_TUNABLES: &[(&str, &str, u64, &str)] = &[
    ("oom_watch_ms", "abc", 15_000, "not a number"),
    ("oom_headroom_pages", "-5", 4_096, "out of range"),
    ("oom_watch_interval_ms", "1,2", 10, "more than one value"),
    ("inflate_run_pages", "3", 256, "out of range"),
    ("debug", "7", 0, "out of range"),
    ("kick_thread", "0x10", 0, "out of range"),
    ("stats_linux_tags", "99999999999", 0, "out of range"),
];

/// The driver's console line for a refused tunable, up to the value kept:
/// `loader tunable dev.vtballoonrs.0.<leaf>="<text>" refused (<why>): <leaf> stays `.
fn refused_line<'a>(buf: &'a mut [u8; 200], leaf: &str, text: &str, why: &str) -> &'a [u8] {
    let mut n = 0;
    for part in [
        "loader tunable dev.vtballoonrs.0.",
        leaf,
        "=\"",
        text,
        "\" refused (",
        why,
        "): ",
        leaf,
        " stays ",
    ] {
        for &b in part.as_bytes() {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    }
    &buf[..n]
}

/// Loader tunables set by the harness: dev.vtballoonrs.0.oom_batch_pages=4096,
/// and the bad ones in [`BAD_TUNABLES`] plus `floor_pages=1T`.
pub fn phase_tunable(c: &mut Ctx) {
    let mut kept: Option<&str> = None;
    let mut silent: Option<&str> = None;
    for (leaf, text, default, why) in BAD_TUNABLES {
        if get(leaf) != Some(*default) {
            kept = kept.or(Some(leaf));
        }
        let mut b = [0u8; 200];
        if msgbuf_count(refused_line(&mut b, leaf, text, why)).unwrap_or(0) == 0 {
            silent = silent.or(Some(leaf));
        }
    }
    c.check(
        "bad loader tunables are refused at load, the defaults stay",
        kept.is_none(),
        kept.unwrap_or(""),
    );
    c.check(
        "and the driver says so on the console (which, why, the value kept)",
        silent.is_none(),
        silent.unwrap_or(""),
    );
    // The floor's default depends on memory: v_free_target + 2% (16 MiB at
    // least), as pressure.rs computes it.
    let page_count = get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0);
    let free_target = get_u64(b"vm.stats.vm.v_free_target").unwrap_or(0);
    let page = get_u64(b"hw.pagesize").unwrap_or(4096).max(1);
    let floor = get("floor_pages");
    let mut b = [0u8; 200];
    let said = msgbuf_count(refused_line(&mut b, "floor_pages", "1T", "out of range")).unwrap_or(0);
    c.check_n(
        "floor_pages=1T is refused, the default floor stays, the console says so",
        floor == Some(free_target + (page_count / 50).max((16 << 20) / page)) && said > 0,
        "floor_pages",
        floor,
    );
    let v = get("oom_batch_pages");
    let ok = c.check_n(
        "a loader tunable sets oom_batch_pages (RWTUN)",
        v == Some(4096),
        "not 4096",
        v,
    );
    if !ok {
        // Tell a driver that ignored the tunable from an image without it.
        let mut k = [0u8; 32];
        let kenv = sys::kenv_get(b"dev.vtballoonrs.0.oom_batch_pages\0", &mut k);
        Line::new()
            .s("# kenv dev.vtballoonrs.0.oom_batch_pages=")
            .b(kenv.unwrap_or(b"(unset)"))
            .end();
    }
}

/// The guest-side floor, set above all of memory: the host's 64 MiB are
/// refused and counted, devd hears of it, the host sees the truth; with the
/// floor back the target is met.
fn floor_holds(c: &mut Ctx) {
    let old = get("floor_pages").unwrap_or(0) as i32;
    let all = (get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0) as i32).max(1);
    let events = crate::devctl::count(b"FLOOR");
    if !set("floor_pages", all) {
        c.check(
            "floor_pages above memory holds the balloon back",
            false,
            "cannot set",
        );
        return;
    }
    let pages = 64 * PAGES_PER_MIB;
    let _ = c.host.ask("set-target", pages, 30);
    let refused = wait_for("floor_refused_pages", 30, |v| v == pages);
    let actual = get("actual_pages").unwrap_or(u64::MAX);
    c.check_n(
        "floor_pages above memory holds the balloon back (floor_refused_pages)",
        refused.is_ok() && actual == 0,
        "actual_pages",
        Some(actual),
    );
    c.check(
        "the floor raises a devd FLOOR event",
        crate::devctl::count(b"FLOOR") > events,
        "no !system=VTBALLOON type=FLOOR on /dev/devctl",
    );
    let r = c.host.ask("host-actual", 0, 30);
    c.check_host(
        "the host sees the balloon the floor allowed",
        r,
        |v| v == 0,
        "pages",
    );
    set("floor_pages", old);
    let met = wait_for("actual_pages", 120, |v| v == pages);
    c.check_n(
        "with the floor back the host's target is met",
        met.is_ok(),
        "actual_pages",
        met.err().flatten(),
    );
    resize(c, "back to 0 after the floor", 0, 120);
}

pub fn phase_resize(c: &mut Ctx) {
    floor_holds(c);
    let paused = pause_reporting();
    let free0 = free_bytes();
    let inflated0 = get("inflated_pages").unwrap_or(0);
    let deflated0 = get("deflated_pages").unwrap_or(0);
    let changes0 = get("config_changes").unwrap_or(0);
    if resize(c, "inflate to 256 MiB", 256, 120) {
        let drop = free0.saturating_sub(free_bytes());
        c.check_n(
            "free memory fell by 256 MiB",
            drop >= 248 * MIB && drop <= 272 * MIB,
            "fell by (MiB)",
            Some(mib_of(drop)),
        );
        c.check(
            "target_bytes and actual_bytes in bytes",
            get("target_bytes") == Some(256 * MIB) && get("actual_bytes") == Some(256 * MIB),
            "wrong value",
        );
        c.check(
            "held_bytes shows the balloon",
            get("held_bytes") == Some(256 * MIB),
            "held_bytes wrong",
        );
        host_agrees(c, "the host sees 256 MiB", 256);
        thread_stays_asleep(c);
    }
    if resize(c, "inflate to 1 GiB", 1024, 240) {
        host_agrees(c, "the host sees 1 GiB", 1024);
    }
    if resize(c, "deflate to 0", 0, 240) {
        let back = free_bytes() + 8 * MIB >= free0;
        c.check_n(
            "free memory is back",
            back,
            "short by (MiB)",
            Some(mib_of(free0.saturating_sub(free_bytes()))),
        );
        host_agrees(c, "the host sees an empty balloon", 0);
    }
    let inflated = get("inflated_pages").unwrap_or(0) - inflated0;
    let deflated = get("deflated_pages").unwrap_or(0) - deflated0;
    c.check_n(
        "inflated_pages counted 1 GiB",
        inflated == 1024 * PAGES_PER_MIB,
        "counted",
        Some(inflated),
    );
    c.check_n(
        "deflated_pages counted 1 GiB",
        deflated == 1024 * PAGES_PER_MIB,
        "counted",
        Some(deflated),
    );
    let changes = get("config_changes").unwrap_or(0) - changes0;
    c.check_n(
        "config_changes counted the host's changes",
        changes >= 3,
        "counted",
        Some(changes),
    );
    if ask_ok(c, "rapid target changes", "rapid", 128 * PAGES_PER_MIB, 60) {
        let settled = wait_for("actual_pages", 240, |v| v == 128 * PAGES_PER_MIB);
        c.check_n(
            "rapid target changes settle on the last one",
            settled.is_ok(),
            "actual_pages",
            settled.err().flatten(),
        );
        host_agrees(c, "the host agrees after the burst", 128);
    }
    resize(c, "back to 0", 0, 120);
    for leaf in ["errors", "host_timeouts", "alloc_failures"] {
        let v = get(leaf);
        let mut n = [0u8; 40];
        let name = concat(&mut n, b"no ", leaf.as_bytes());
        c.check_n(name, v == Some(0), "counted", v);
    }
    resume_reporting(paused);
}

/// WANTSIZE: with the target reached and no config change, the balloon
/// thread sleeps without a timer, so `thread_wakeups` stays put.
fn thread_stays_asleep(c: &mut Ctx) {
    const NAME: &str = "the balloon thread does not wake while the target is reached (5 s)";
    // The guard (oom_watching 2, after attach) ends first;
    // the last acks may still wake it once right after actual_pages moved.
    let _ = wait_for("oom_watching", 60, |v| v == 0);
    sys::sleep_ms(1_000);
    let Some(before) = get("thread_wakeups") else {
        c.check(NAME, false, "no thread_wakeups node");
        return;
    };
    sys::sleep_ms(5_000);
    let after = get("thread_wakeups").unwrap_or(u64::MAX);
    c.check_n(
        NAME,
        after == before,
        "thread_wakeups moved by",
        Some(after.wrapping_sub(before)),
    );
}

pub fn phase_stats(c: &mut Ctx) {
    const MEMFREE: u64 = 4;
    const MEMTOT: u64 = 5;
    const AVAIL: u64 = 6;
    // A reporting pass holds free blocks off the free lists while it scans,
    // which moves free memory by up to hundreds of MiB: compare without one.
    let paused = pause_reporting();
    sys::sleep_ms(2_500);
    let before = get("stats_requests").unwrap_or(0);
    let free_lo = free_bytes();
    let r = c.host.ask("stats-poll", 2, 60);
    let free_hi = free_bytes();
    if !c.check_host("the host receives guest-stats", r, |_| true, "") {
        resume_reporting(paused);
        return;
    }
    let (lo, hi) = (free_lo.min(free_hi) / 1024, free_lo.max(free_hi) / 1024);
    let r = c.host.ask("stats-get", MEMFREE, 30);
    c.check_host(
        "stat-free-memory is the guest's free memory",
        r,
        |v| v + 16 * 1024 >= lo && v <= hi + 16 * 1024,
        "KiB",
    );
    let total = get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0) * page_size() / 1024;
    let r = c.host.ask("stats-get", MEMTOT, 30);
    c.check_host(
        "stat-total-memory is v_page_count",
        r,
        |v| v == total,
        "KiB",
    );
    let r = c.host.ask("stats-get", AVAIL, 30);
    c.check_host(
        "stat-available-memory is between free/2 and total",
        r,
        |v| v >= lo / 2 && v <= total,
        "KiB",
    );
    let after = get("stats_requests").unwrap_or(0);
    c.check_n(
        "stats_requests counts the host's requests",
        after > before,
        "did not move",
        Some(after),
    );
    let e = get("stats_errors");
    c.check_n("no stats_errors", e == Some(0), "counted", e);
    resume_reporting(paused);
}

/// Who tries to write the settings from a child process.
#[derive(Clone, Copy)]
enum Outsider {
    /// A user other than root.
    Nobody,
    /// Root inside a jail (none of our nodes is meant for jails).
    Jailed,
}

/// A child that becomes `who` and writes every writable node its current
/// value: exit 0 if each write got EPERM and each read still worked, 10 +
/// the node's index at the first write that was not refused, 100 + errno
/// if it could not become `who`.
fn outsider(who: Outsider) -> Option<i32> {
    match sys::fork() {
        Ok(0) => {
            let became = match who {
                Outsider::Nobody => sys::setuid(65_534),
                Outsider::Jailed => sys::jail(b"/\0", b"vtbtest\0"),
            };
            if let Err(e) = became {
                sys::exit(100 + e as u64);
            }
            for (i, leaf) in rw_nodes().enumerate() {
                let Some(v) = get(leaf) else {
                    sys::exit(50 + i as u64)
                };
                if set_int(node(leaf).bytes(), v as i32) != Err(sys::EPERM) {
                    sys::exit(10 + i as u64);
                }
            }
            sys::exit(0)
        }
        Ok(pid) => crate::child::reap(pid, 30),
        Err(_) => None,
    }
}

/// Writable nodes are root's, and not a jail's.
pub fn phase_jail(c: &mut Ctx) {
    let mut before = [0u64; 32];
    for (i, leaf) in rw_nodes().enumerate().take(32) {
        before[i] = get(leaf).unwrap_or(u64::MAX);
    }
    for (who, name) in [
        (
            Outsider::Nobody,
            "a non-root user gets EPERM writing any setting (and can still read it)",
        ),
        (
            Outsider::Jailed,
            "root in a jail gets EPERM writing any setting (and can still read it)",
        ),
    ] {
        // The exit status: WEXITSTATUS in bits 8-15.
        let st = outsider(who).map(|s| (s >> 8) & 0xff);
        let which = st
            .and_then(|s| usize::try_from(s - 10).ok())
            .and_then(|i| rw_nodes().nth(i));
        c.check_n(
            name,
            st == Some(0),
            which.unwrap_or("the child's exit status"),
            st.map(|s| s as u64),
        );
    }
    let mut changed: Option<&str> = None;
    for (i, leaf) in rw_nodes().enumerate().take(32) {
        if get(leaf).unwrap_or(u64::MAX) != before[i] {
            changed = changed.or(Some(leaf));
        }
    }
    c.check(
        "the settings are as they were",
        changed.is_none(),
        changed.unwrap_or(""),
    );
    // And root outside a jail may.
    let v = get("debug").unwrap_or(0) as i32;
    c.check(
        "root outside a jail may write them",
        set("debug", v),
        "refused",
    );
}
