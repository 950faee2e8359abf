//! vtbtest: checks vtballoonrs from inside a FreeBSD amd64 guest through
//! its sysctl interface. Static and libc-free: it runs as /sbin/init of a
//! minimal image (then powers the guest off) or as a root program on any
//! FreeBSD 14.x guest:
//!
//! ```text
//! vtbtest [--no-host] [--module PATH] [phase ...]
//! ```
//!
//! As init it reads its phases from /etc/vtbtest.mode. Each check prints
//! `ok - <name>` or `not ok - <name>: <why>`; the last line is exactly
//! `N passed, N failed`. Checks that need the host (see [`host`]) are
//! skipped with `--no-host`, and say so.
#![no_std]
#![no_main]

mod host;
mod out;
mod proto;
mod sys;

use host::Host;
use out::{note, Line};
use proto::Reply;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const PAGES_PER_MIB: u64 = MIB / PAGE;
const NODE: &[u8] = b"dev.vtballoonrs.0.";
const OURS_DEFAULT: &[u8] = b"/boot/modules/vtballoonrs.ko\0";
const THEIRS: &[u8] = b"/boot/modules/virtio_balloon.ko\0";
const THEIRS_DESC: &[u8] = b"dev.vtballoon.0.%desc";
const OURS_DESC: &[u8] = b"dev.vtballoonrs.0.%desc";

/// Counters of the run and the host channel.
struct Ctx {
    passed: u32,
    failed: u32,
    skipped: u32,
    host: Host,
    /// Our module's path, NUL-terminated.
    ours: &'static [u8],
}

impl Ctx {
    fn check(&mut self, name: &str, ok: bool, why: &str) -> bool {
        self.check_n(name, ok, why, None)
    }

    /// A check whose failure message carries a number (what was seen).
    fn check_n(&mut self, name: &str, ok: bool, why: &str, seen: Option<u64>) -> bool {
        let mut l = Line::new();
        if ok {
            self.passed += 1;
            l.s("ok - ").s(name);
        } else {
            self.failed += 1;
            l.s("not ok - ").s(name).s(": ").s(why);
            if let Some(v) = seen {
                l.s(" (").u(v).s(")");
            }
        }
        l.end();
        ok
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        Line::new().s("# skip - ").s(name).s(": ").s(why).end();
    }

    /// A check on a host reply: skipped without a host, failed if the host
    /// refused or never answered.
    fn check_host(&mut self, name: &str, r: Reply, ok: impl Fn(u64) -> bool, why: &str) -> bool {
        match r {
            Reply::NoHost => {
                self.skip(name, "no host");
                false
            }
            Reply::Lost => self.check(name, false, "the host did not answer"),
            Reply::Fail => self.check(name, false, "the host reported a failure"),
            Reply::Ok(v) => self.check_n(name, ok(v), why, Some(v)),
        }
    }
}

/// Asks the host for an action that has no check of its own: records a
/// failed (or skipped) `name` unless the host did it.
fn ask_ok(c: &mut Ctx, name: &str, cmd: &str, arg: u64, secs: u64) -> bool {
    match c.host.ask(cmd, arg, secs) {
        Reply::Ok(_) => true,
        r => c.check_host(name, r, |_| true, ""),
    }
}

/// Name buffer: `prefix` + `leaf` without NUL (sysctlbyname takes a length).
struct Name {
    buf: [u8; 96],
    len: usize,
}

impl Name {
    fn new(prefix: &[u8], leaf: &str) -> Name {
        let mut n = Name {
            buf: [0; 96],
            len: 0,
        };
        for &b in prefix.iter().chain(leaf.as_bytes()) {
            if n.len < n.buf.len() {
                n.buf[n.len] = b;
                n.len += 1;
            }
        }
        n
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn node(leaf: &str) -> Name {
    Name::new(NODE, leaf)
}

/// Reads an integer sysctl of 4 or 8 bytes.
fn get_u64(name: &[u8]) -> Option<u64> {
    let mut b = [0u8; 8];
    let n = sys::sysctlbyname(name, Some(&mut b), None).ok()?;
    match n {
        4 => Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        8 => Some(u64::from_le_bytes(b)),
        _ => None,
    }
}

fn get(leaf: &str) -> Option<u64> {
    get_u64(node(leaf).bytes())
}

fn set_int(name: &[u8], v: i32) -> Result<usize, i64> {
    sys::sysctlbyname(name, None, Some(&v.to_le_bytes()))
}

fn set(leaf: &str, v: i32) -> bool {
    set_int(node(leaf).bytes(), v).is_ok()
}

fn get_str<'a>(name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let n = sys::sysctlbyname(name, Some(buf), None).ok()?;
    let s = &buf[..n];
    Some(s.split(|&b| b == 0).next().unwrap_or(s))
}

fn exists(name: &[u8]) -> bool {
    let mut b = [0u8; 128];
    get_str(name, &mut b).is_some()
}

/// The description of a sysctl node: sysctl.name2oid ({0,3}), then
/// sysctl.oiddescr ({0,5,<oid>}), as sysctl(8) -d does.
fn description(name: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut oid = [0u8; 24 * 4];
    let n = sys::sysctl(&[0, 3], &mut oid, Some(name)).ok()?;
    let len = (n / 4).min(24);
    let mut mib = [0i32; 26];
    mib[1] = 5;
    for i in 0..len {
        let w = [oid[4 * i], oid[4 * i + 1], oid[4 * i + 2], oid[4 * i + 3]];
        mib[2 + i] = i32::from_le_bytes(w);
    }
    let d = sys::sysctl(&mib[..2 + len], buf, None).ok()?;
    Some(d.saturating_sub(1))
}

fn page_size() -> u64 {
    get_u64(b"hw.pagesize").unwrap_or(PAGE)
}

fn free_bytes() -> u64 {
    get_u64(b"vm.stats.vm.v_free_count").unwrap_or(0) * page_size()
}

fn mib_of(bytes: u64) -> u64 {
    bytes / MIB
}

/// Polls `leaf` every 100 ms until `pred` holds or `secs` pass; the last
/// value read either way.
fn wait_for(leaf: &str, secs: u64, pred: impl Fn(u64) -> bool) -> Result<u64, Option<u64>> {
    let deadline = sys::now_ms() + secs * 1000;
    let mut last = None;
    loop {
        last = get(leaf).or(last);
        if let Some(v) = last {
            if pred(v) {
                return Ok(v);
            }
        }
        if sys::now_ms() >= deadline {
            return Err(last);
        }
        sys::sleep_ms(100);
    }
}

fn wait_exists(name: &[u8], secs: u64) -> bool {
    let deadline = sys::now_ms() + secs * 1000;
    while !exists(name) {
        if sys::now_ms() >= deadline {
            return false;
        }
        sys::sleep_ms(100);
    }
    true
}

// ---------------------------------------------------------------- modules

/// kldunload of the file `path` if loaded; true when it is gone.
fn unload(path: &[u8]) -> bool {
    match sys::kldfind(path) {
        Ok(id) => sys::kldunload(id).is_ok(),
        Err(_) => true,
    }
}

/// Loads our module (unloading the in-tree one first) and waits for the
/// device to attach. Err: what went wrong.
fn ensure_ours(c: &Ctx) -> Result<(), &'static str> {
    if exists(OURS_DESC) {
        return Ok(());
    }
    if !unload(THEIRS) {
        return Err("the in-tree driver would not unload");
    }
    match sys::kldload(c.ours) {
        Ok(_) | Err(sys::EEXIST) => {}
        Err(_) => return Err("kldload failed"),
    }
    if wait_exists(OURS_DESC, 30) {
        Ok(())
    } else if exists(THEIRS_DESC) {
        // A kernel with `device virtio_balloon` (GENERIC): the README's way.
        Err("vtballoon0 has the device: devctl set driver -f vtballoon0 vtballoonrs first")
    } else {
        Err("dev.vtballoonrs.0 did not appear")
    }
}

/// No balloon driver loaded; true on success.
fn ensure_none(c: &Ctx) -> bool {
    unload(c.ours) && unload(THEIRS)
}

// ----------------------------------------------------------------- phases

const RO_NODES: &[&str] = &[
    "target_pages",
    "actual_pages",
    "target_bytes",
    "actual_bytes",
    "held_bytes",
    "memory_accounting",
    "inflated_pages",
    "deflated_pages",
    "lowmem_events",
    "lowmem_pages",
    "config_changes",
    "alloc_failures",
    "host_timeouts",
    "errors",
    "buffers_posted",
    "stats_requests",
    "stats_pushes",
    "stats_errors",
    "stats_push_interval_ms",
    "features",
    "report_blocks",
    "report_bytes",
    "report_inflight",
    "report_acks",
    "report_errors",
    "report_passes",
    "report_time_ms",
    "lowmem_last_us",
    "thread_wakeups",
    "report_wakeups",
    "memory_bytes",
    "notify_us",
];
const RW_NODES: &[&str] = &[
    "debug",
    "oom_batch_pages",
    "inflate_run_pages",
    "kick_thread",
    "stats_linux_tags",
    "report_enabled",
];
/// RW nodes with values they must refuse.
const BAD_VALUES: &[(&str, &[i32])] = &[
    ("debug", &[2, -1]),
    ("oom_batch_pages", &[0, 65_537, -1]),
    ("inflate_run_pages", &[0, 3, 512, -1]),
    ("kick_thread", &[2, -1]),
    ("stats_linux_tags", &[2, -1]),
    ("report_enabled", &[2, -1]),
];

/// The raw bytes of any node (integer or string) for before/after compares.
fn raw(leaf: &str, buf: &mut [u8; 128]) -> Option<usize> {
    sys::sysctlbyname(node(leaf).bytes(), Some(buf), None).ok()
}

fn phase_nodes(c: &mut Ctx) {
    let mut missing: Option<&str> = None;
    let mut undescribed: Option<&str> = None;
    for leaf in RO_NODES.iter().chain(RW_NODES) {
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
    for leaf in RO_NODES {
        let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
        let before = raw(leaf, &mut a);
        let refused = set_int(node(leaf).bytes(), 5) == Err(sys::EPERM);
        let after = raw(leaf, &mut b);
        // Counters that move on their own (the balloon thread may still be
        // settling right after attach).
        let volatile =
            leaf.starts_with("report_") || leaf.starts_with("stats_") || *leaf == "thread_wakeups";
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
    for (leaf, values) in BAD_VALUES {
        let before = get(leaf);
        for &v in *values {
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
    let on = set("debug", 1) && get("debug") == Some(1);
    let off = set("debug", 0) && get("debug") == Some(0);
    c.check("debug toggle round-trips", on && off, "did not stick");
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
    let mut a = [0u8; 128];
    let acct = get_str(node("memory_accounting").bytes(), &mut a).unwrap_or(&[]);
    c.check(
        "memory_accounting: ballooned memory counts as used (DEFLATE_ON_OOM)",
        acct.starts_with(b"used"),
        "unexpected text",
    );
}

/// Loader tunable set by the harness: dev.vtballoonrs.0.oom_batch_pages=4096.
fn phase_tunable(c: &mut Ctx) {
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

/// Stops free page reporting (so free memory stays put) and waits until
/// no reported block is held; returns the old setting.
fn pause_reporting() -> Option<i32> {
    let old = get("report_enabled")? as i32;
    set("report_enabled", 0);
    let _ = wait_for("report_inflight", 10, |v| v == 0);
    Some(old)
}

fn resume_reporting(old: Option<i32>) {
    if let Some(v) = old {
        set("report_enabled", v);
    }
}

/// Sets the balloon to `mib` through the host and waits for the driver:
/// target_pages shows it, then actual_pages reaches it.
fn resize(c: &mut Ctx, name: &str, mib: u64, secs: u64) -> bool {
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
fn host_agrees(c: &mut Ctx, name: &str, mib: u64) -> bool {
    let r = c.host.ask("host-actual", 0, 30);
    c.check_host(
        name,
        r,
        |v| v == mib * PAGES_PER_MIB,
        "host sees another size",
    )
}

fn phase_resize(c: &mut Ctx) {
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
    // The last acks may still wake it once right after actual_pages moved.
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

/// `a` + `b` in `buf`, as a str (ASCII inputs).
fn concat<'a>(buf: &'a mut [u8], a: &[u8], b: &[u8]) -> &'a str {
    let mut n = 0;
    for &x in a.iter().chain(b) {
        if n < buf.len() {
            buf[n] = x;
            n += 1;
        }
    }
    core::str::from_utf8(&buf[..n]).unwrap_or("?")
}

fn phase_stats(c: &mut Ctx) {
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

fn toucher(mib: u64, step_ms: u64, flag: Option<u64>) -> u64 {
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
                if step_ms > 0 {
                    sys::sleep_ms(step_ms);
                }
            }
            if let Some(f) = flag {
                // SAFETY: `f` is a shared page mapped by the parent before
                // the fork: two u64 words, written by one side each.
                unsafe {
                    core::ptr::write_volatile(f as *mut u64, 1);
                    while core::ptr::read_volatile((f + 8) as *const u64) == 0 {
                        sys::sleep_ms(50);
                    }
                }
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// Waits up to `secs` for the child; kills it after that. The raw status,
/// or None if it had to be killed or was never there.
fn reap(pid: u64, secs: u64) -> Option<i32> {
    if pid == 0 {
        return None;
    }
    let deadline = sys::now_ms() + secs * 1000;
    loop {
        match sys::wait(pid, true) {
            Ok(Some(st)) => return Some(st),
            Ok(None) if sys::now_ms() < deadline => sys::sleep_ms(100),
            Ok(None) => {
                let _ = sys::kill(pid, 9);
                let _ = sys::wait(pid, false);
                return None;
            }
            Err(_) => return None,
        }
    }
}

fn phase_pressure(c: &mut Ctx) {
    let batch = get("oom_batch_pages").unwrap_or(256) as i32;
    let period = get_u64(b"vm.lowmem_period").unwrap_or(10) as i32;
    let oom_seq = get_u64(b"vm.pageout_oom_seq").unwrap_or(12) as i32;
    // vm_lowmem fires at most once per vm.lowmem_period: make it 1 s and
    // the batch 64 MiB so the balloon can keep ahead of the child; give the
    // page daemon more passes before the OOM killer.
    set("oom_batch_pages", 16_384);
    let _ = set_int(b"vm.lowmem_period", 1);
    let _ = set_int(b"vm.pageout_oom_seq", 120);
    let phys = mib_of(get_u64(b"hw.physmem").unwrap_or(0));
    let balloon = phys / 2;
    if resize(c, "inflate to half of memory before pressure", balloon, 300) {
        let events0 = get("lowmem_events").unwrap_or(0);
        let lowmem0 = get("lowmem_pages").unwrap_or(0);
        let pages0 = get("actual_pages").unwrap_or(0);
        // More than the guest has outside the balloon: only deflating saves it.
        let pid = toucher(phys - balloon / 4, 40, None);
        let status = reap(pid, 600);
        let events = get("lowmem_events").unwrap_or(0);
        let pages = get("actual_pages").unwrap_or(0);
        let lowmem = get("lowmem_pages").unwrap_or(0) - lowmem0;
        Line::new()
            .s("# pressure: balloon ")
            .u(pages0 / PAGES_PER_MIB)
            .s(" -> ")
            .u(pages / PAGES_PER_MIB)
            .s(" MiB, lowmem events ")
            .u(events - events0)
            .s(", child status ")
            .u(status.map_or(u64::MAX, |s| s as u64))
            .end();
        c.check(
            "memory pressure raises vm_lowmem events",
            events > events0,
            "no lowmem event",
        );
        c.check_n(
            "the balloon deflated under pressure",
            pages < pages0,
            "actual_pages",
            Some(pages),
        );
        c.check_n(
            "lowmem_pages counts what was given back",
            lowmem >= pages0 - pages && lowmem > 0,
            "lowmem_pages",
            Some(lowmem),
        );
        c.check(
            "the child was not killed while the balloon held pages",
            status == Some(0) || (status.is_some() && pages == 0),
            "child killed or stuck",
        );
        // WANTSIZE: the host did not speak, so no re-inflation.
        sys::sleep_ms(10_000);
        let later = get("actual_pages").unwrap_or(u64::MAX);
        c.check_n(
            "no re-inflation until the host changes its target",
            later <= pages,
            "actual_pages",
            Some(later),
        );
        let target = get("target_pages").unwrap_or(0);
        c.check_n(
            "the host's target is unchanged meanwhile",
            target == balloon * PAGES_PER_MIB,
            "target_pages",
            Some(target),
        );
        resize(c, "the host's next target is followed", 64, 240);
    }
    resize(c, "back to 0 after pressure", 0, 240);
    set("oom_batch_pages", batch);
    let _ = set_int(b"vm.lowmem_period", period);
    let _ = set_int(b"vm.pageout_oom_seq", oom_seq);
}

fn phase_report(c: &mut Ctx) {
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

fn phase_unload(c: &mut Ctx) {
    let paused = pause_reporting();
    // Free memory with an empty balloon, as the baseline.
    resize(c, "empty balloon before unload", 0, 120);
    let free0 = free_bytes();
    if !resize(c, "inflate to 512 MiB before unload", 512, 240) {
        resume_reporting(paused);
        return;
    }
    let t0 = sys::now_ms();
    let unloaded = unload(c.ours);
    let ms = sys::now_ms() - t0;
    c.check_n(
        "kldunload with the balloon inflated (took ms)",
        unloaded && !exists(OURS_DESC),
        "unload failed",
        Some(ms),
    );
    Line::new().s("# kldunload took ").u(ms).s(" ms").end();
    let back = {
        let deadline = sys::now_ms() + 10_000;
        while free_bytes() + 16 * MIB < free0 && sys::now_ms() < deadline {
            sys::sleep_ms(100);
        }
        free_bytes()
    };
    c.check_n(
        "unload gives all balloon memory back",
        back + 16 * MIB >= free0,
        "short by (MiB)",
        Some(mib_of(free0.saturating_sub(back))),
    );
    let r = c.host.ask("wait-actual", 0, 60);
    c.check_host("the host sees an empty balloon", r, |v| v == 0, "pages");
    // The setting went away with the device: nothing to resume.
}

fn phase_cycles(c: &mut Ctx) {
    const N: u64 = 20;
    const MIB_CYCLE: u64 = 64;
    if !ensure_none(c) {
        c.check("20 load/unload cycles", false, "could not unload first");
        return;
    }
    if !ask_ok(
        c,
        "20 load/unload cycles",
        "set-target",
        MIB_CYCLE * PAGES_PER_MIB,
        30,
    ) {
        return;
    }
    let free0 = free_bytes();
    let mut failed_at = None;
    let t0 = sys::now_ms();
    for i in 0..N {
        let ok = match sys::kldload(c.ours) {
            Ok(id) => {
                let full = wait_for("actual_pages", 60, |v| v == MIB_CYCLE * PAGES_PER_MIB).is_ok();
                sys::kldunload(id).is_ok() && full
            }
            Err(_) => false,
        };
        if !ok {
            failed_at = Some(i + 1);
            break;
        }
    }
    Line::new()
        .s("# ")
        .u(N)
        .s(" cycles in ")
        .u((sys::now_ms() - t0) / 1000)
        .s(" s")
        .end();
    c.check_n(
        "20 load/unload cycles, each inflating 64 MiB",
        failed_at.is_none(),
        "failed at cycle",
        failed_at,
    );
    let deadline = sys::now_ms() + 10_000;
    while free_bytes() + 16 * MIB < free0 && sys::now_ms() < deadline {
        sys::sleep_ms(100);
    }
    let short = free0.saturating_sub(free_bytes());
    c.check_n(
        "no memory lost over the cycles",
        short <= 16 * MIB,
        "short by (MiB)",
        Some(mib_of(short)),
    );
    let _ = c.host.ask("set-target", 0, 30);
}

/// Loads the in-tree module; None (and a skip) if the image has none.
fn load_theirs(c: &mut Ctx, name: &str) -> Option<bool> {
    match sys::kldload(THEIRS) {
        Err(sys::ENOENT) => {
            c.skip(name, "virtio_balloon.ko is not on this system");
            None
        }
        Ok(_) | Err(sys::EEXIST) => Some(wait_exists(THEIRS_DESC, 30)),
        Err(_) => Some(false),
    }
}

/// The in-tree driver follows the host to `mib` (seen by the host: it has
/// no sysctl for its balloon).
fn theirs_follow(c: &mut Ctx, name: &str, mib: u64) -> bool {
    let pages = mib * PAGES_PER_MIB;
    if !ask_ok(c, name, "set-target", pages, 30) {
        return false;
    }
    let r = c.host.ask("wait-actual", pages, 150);
    c.check_host(name, r, |v| v == pages, "pages")
}

fn phase_intree(c: &mut Ctx) {
    if !ensure_none(c) {
        c.check(
            "the in-tree driver attaches",
            false,
            "could not unload ours",
        );
        return;
    }
    let Some(attached) = load_theirs(c, "the in-tree driver attaches") else {
        return;
    };
    if c.check("the in-tree driver attaches", attached, "no vtballoon0") {
        theirs_follow(c, "the in-tree driver inflates to 64 MiB", 64);
        theirs_follow(c, "the in-tree driver deflates to 0", 0);
    }
    c.check(
        "the in-tree module unloads",
        unload(THEIRS),
        "kldunload failed",
    );
}

fn phase_swap(c: &mut Ctx) {
    const SWAP_MIB: u64 = 32;
    let pages = SWAP_MIB * PAGES_PER_MIB;
    if !ensure_none(c) {
        c.check(
            "the device moves between drivers",
            false,
            "could not unload ours",
        );
        return;
    }
    if !ask_ok(
        c,
        "the device moves between drivers",
        "set-target",
        pages,
        30,
    ) {
        return;
    }
    for round in 0..2 {
        let Some(theirs) = load_theirs(c, "the device moves to the in-tree driver") else {
            break;
        };
        if c.check(
            "the device moves to the in-tree driver",
            theirs,
            "no vtballoon0",
        ) {
            let r = c.host.ask("wait-actual", pages, 150);
            c.check_host(
                "the in-tree driver inflates to the target",
                r,
                |v| v == pages,
                "pages",
            );
        }
        c.check(
            "the in-tree module unloads",
            unload(THEIRS),
            "kldunload failed",
        );
        // virtio_balloon(4) frees its pages after resetting the device at
        // detach, without telling the host: QEMU keeps counting them.
        if let Reply::Ok(v) = c.host.ask("host-actual", 0, 30) {
            Line::new()
                .s("# after the in-tree driver left, QEMU counts ")
                .u(v / PAGES_PER_MIB)
                .s(" MiB in the balloon")
                .end();
        }
        let ours = ensure_ours(c);
        c.check(
            "the device moves back to vtballoonrs",
            ours.is_ok(),
            ours.err().unwrap_or(""),
        );
        let reached = wait_for("actual_pages", 120, |v| v == pages);
        if c.check_n(
            "vtballoonrs inflates to the target it finds at attach",
            reached.is_ok(),
            "actual_pages",
            reached.err().flatten(),
        ) {
            host_agrees(c, "and the host sees it", SWAP_MIB);
        }
        if round == 0 && !unload(c.ours) {
            c.check(
                "vtballoonrs unloads for the next round",
                false,
                "kldunload failed",
            );
            break;
        }
    }
    swap_devctl(c, pages);
    resize(c, "back to 0 after the swap", 0, 120);
}

/// Both modules loaded: the device stays with the driver that has it, and
/// devctl(8) `set driver -f` moves it either way (what the README tells
/// administrators of a GENERIC kernel, where virtio_balloon is built in).
fn swap_devctl(c: &mut Ctx, pages: u64) {
    const NAME: &str = "devctl set driver moves the device";
    if let Err(why) = ensure_ours(c) {
        c.check(NAME, false, why);
        return;
    }
    match sys::kldload(THEIRS) {
        Ok(_) | Err(sys::EEXIST) => {}
        Err(sys::ENOENT) => return c.skip(NAME, "virtio_balloon.ko is not on this system"),
        Err(_) => {
            c.check(NAME, false, "kldload virtio_balloon.ko failed");
            return;
        }
    }
    c.check(
        "vtballoonrs keeps the device when virtio_balloon.ko loads",
        exists(OURS_DESC) && !exists(THEIRS_DESC),
        "the device changed hands",
    );
    let to_theirs = sys::devctl_set_driver(b"vtballoonrs0\0", b"vtballoon\0", true);
    c.check_n(
        "devctl set driver -f vtballoonrs0 vtballoon",
        to_theirs.is_ok() && wait_exists(THEIRS_DESC, 30) && !exists(OURS_DESC),
        "errno",
        to_theirs.err().map(|e| e as u64),
    );
    let r = c.host.ask("wait-actual", pages, 150);
    c.check_host(
        "the in-tree driver follows the target after devctl",
        r,
        |v| v == pages,
        "pages",
    );
    let to_ours = sys::devctl_set_driver(b"vtballoon0\0", b"vtballoonrs\0", true);
    c.check_n(
        "devctl set driver -f vtballoon0 vtballoonrs",
        to_ours.is_ok() && wait_exists(OURS_DESC, 30) && !exists(THEIRS_DESC),
        "errno",
        to_ours.err().map(|e| e as u64),
    );
    let reached = wait_for("actual_pages", 120, |v| v == pages);
    c.check_n(
        "vtballoonrs follows the target after devctl",
        reached.is_ok(),
        "actual_pages",
        reached.err().flatten(),
    );
    c.check(
        "virtio_balloon.ko unloads while vtballoonrs has the device",
        unload(THEIRS) && exists(OURS_DESC),
        "kldunload failed",
    );
}

/// Runs of each benchmark operation (the host reports the median).
const BENCH_RUNS: u32 = 3;

/// The bench phase measures and reports figures to the host, which prints
/// them; its checks only say whether each measurement could be taken,
/// never whether a figure met its target.
fn phase_bench(c: &mut Ctx) {
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
        if driver == 0 {
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

// ------------------------------------------------------------------- main

struct Phase {
    name: &'static str,
    run: fn(&mut Ctx),
    /// Loads our driver first.
    ours: bool,
    /// Skipped as a whole with --no-host.
    host: bool,
}

const fn phase(name: &'static str, run: fn(&mut Ctx), ours: bool, host: bool) -> Phase {
    Phase {
        name,
        run,
        ours,
        host,
    }
}

const PHASES: &[Phase] = &[
    phase("tunable", phase_tunable, true, false),
    phase("nodes", phase_nodes, true, false),
    phase("resize", phase_resize, true, true),
    phase("stats", phase_stats, true, true),
    phase("pressure", phase_pressure, true, true),
    phase("report", phase_report, true, true),
    phase("unload", phase_unload, true, true),
    phase("cycles", phase_cycles, false, true),
    phase("swap", phase_swap, false, true),
    phase("intree", phase_intree, false, true),
    phase("bench", phase_bench, false, true),
];

/// Without phase arguments.
const DEFAULT_PHASES: &[&str] = &[
    "nodes", "resize", "stats", "pressure", "report", "unload", "cycles", "swap",
];

#[derive(Default)]
struct Args {
    no_host: bool,
    /// NUL-terminated.
    module: Option<&'static [u8]>,
    phases: [&'static [u8]; 16],
    n: usize,
}

impl Args {
    /// Takes options and phases from `words`, each NUL-terminated:
    /// `--no-host`, `--module PATH`, phase names.
    fn parse(&mut self, words: &[&'static [u8]]) {
        let mut it = words.iter();
        while let Some(&w) = it.next() {
            match &w[..w.len() - 1] {
                b"--no-host" => self.no_host = true,
                b"--module" => self.module = it.next().copied(),
                b"" => {}
                x if x.starts_with(b"-") => {}
                x if self.n < self.phases.len() => {
                    self.phases[self.n] = x;
                    self.n += 1;
                }
                _ => {}
            }
        }
    }
}

/// The words of argv (NUL included) from the initial stack: argc, then the
/// argv pointers.
///
/// # Safety
/// `sp` is the process's initial stack pointer.
unsafe fn argv(sp: *const u64, out: &mut [&'static [u8]; 16]) -> usize {
    // SAFETY: the exec ABI: argc at sp, then argc pointers.
    let argc = unsafe { *sp } as usize;
    let mut n = 0;
    for i in 1..argc.min(out.len() + 1) {
        // SAFETY: argv[i], i < argc, is a NUL-terminated string on the stack,
        // which lives as long as the program.
        let p = unsafe { *sp.add(1 + i) } as *const u8;
        let mut len = 0;
        // SAFETY: bytes up to the NUL are readable.
        while unsafe { *p.add(len) } != 0 {
            len += 1;
        }
        // SAFETY: the string and its NUL.
        out[n] = unsafe { core::slice::from_raw_parts(p, len + 1) };
        n += 1;
    }
    n
}

static mut MODE: [u8; 256] = [0; 256];

/// The words of the image's /etc/vtbtest.mode (as argv: options, phases),
/// each NUL-terminated in place.
fn read_mode(out: &mut [&'static [u8]; 16]) -> usize {
    // SAFETY: single-threaded program; MODE is written here, once, before
    // any reference into it is handed out.
    let m: &'static mut [u8; 256] = unsafe { &mut *core::ptr::addr_of_mut!(MODE) };
    let Ok(fd) = sys::open(b"/etc/vtbtest.mode\0", sys::O_RDONLY) else {
        return 0;
    };
    let len = sys::read(fd, &mut m[..255]).unwrap_or(0) as usize;
    sys::close(fd);
    for b in m[..len].iter_mut() {
        if b.is_ascii_whitespace() {
            *b = 0;
        }
    }
    let text: &'static [u8] = &m[..=len];
    let mut n = 0;
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == 0 {
            if i > start && n < out.len() {
                out[n] = &text[start..=i];
                n += 1;
            }
            start = i + 1;
        }
    }
    n
}

#[no_mangle]
extern "C" fn main_rust(sp: *const u64) -> ! {
    let init = sys::getpid() == 1;
    if init {
        out::open_console();
    }
    let mut words: [&'static [u8]; 16] = [&[]; 16];
    // SAFETY: sp is the initial stack pointer handed over by _start.
    let n = unsafe { argv(sp, &mut words) };
    let mut args = Args::default();
    args.parse(&words[..n]);
    if init {
        let n = read_mode(&mut words);
        args.parse(&words[..n]);
    }
    let mut c = Ctx {
        passed: 0,
        failed: 0,
        skipped: 0,
        host: Host::new(!args.no_host),
        ours: args.module.unwrap_or(OURS_DEFAULT),
    };
    let mut list: [&[u8]; 16] = [&[]; 16];
    let n = if args.n == 0 {
        for (i, p) in DEFAULT_PHASES.iter().enumerate() {
            list[i] = p.as_bytes();
        }
        DEFAULT_PHASES.len()
    } else {
        list[..args.n].copy_from_slice(&args.phases[..args.n]);
        args.n
    };
    let mut l = Line::new();
    l.s("# vtbtest phases:");
    for p in &list[..n] {
        l.s(" ").b(p);
    }
    l.end();

    let find = |p: &[u8]| PHASES.iter().find(|ph| ph.name.as_bytes() == p);
    let needs_ours = list[..n].iter().any(|p| find(p).is_some_and(|ph| ph.ours));
    let mut ours_ok = true;
    if needs_ours {
        let already = exists(OURS_DESC);
        let loaded = ensure_ours(&c);
        ours_ok = loaded.is_ok();
        if already {
            note("vtballoonrs was already attached");
        }
        c.check(
            "kldload vtballoonrs.ko and the device attaches (dev.vtballoonrs.0)",
            ours_ok,
            loaded.err().unwrap_or(""),
        );
    }
    for p in &list[..n] {
        let Some(ph) = find(p) else {
            Line::new().s("not ok - unknown phase ").b(p).end();
            c.failed += 1;
            continue;
        };
        Line::new().s("# phase ").s(ph.name).end();
        if ph.host && !c.host.on {
            c.skip(ph.name, "no host");
            continue;
        }
        if ph.ours {
            if !ours_ok {
                c.skip(ph.name, "vtballoonrs is not attached");
                continue;
            }
            if let Err(why) = ensure_ours(&c) {
                c.check(ph.name, false, why);
                continue;
            }
        }
        (ph.run)(&mut c);
    }
    if c.skipped > 0 {
        Line::new()
            .s("# ")
            .u(u64::from(c.skipped))
            .s(" skipped")
            .end();
    }
    Line::new()
        .u(u64::from(c.passed))
        .s(" passed, ")
        .u(u64::from(c.failed))
        .s(" failed")
        .end();
    if init {
        sys::poweroff()
    }
    sys::exit(u64::from(c.failed > 0))
}

/// Entry point: hand the initial stack pointer (argc, argv) to main_rust on
/// an aligned stack.
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("mov rdi, rsp", "and rsp, -16", "call main_rust", "ud2")
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    Line::new().s("not ok - vtbtest panicked").end();
    sys::exit(3)
}
