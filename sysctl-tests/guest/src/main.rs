//! vtbtest: checks vtballoonrs from inside a FreeBSD guest through its
//! sysctl interface. Static, libc-free: runs as /sbin/init of a minimal
//! image (then powers the guest off) or as a normal root program.
//!
//! Host protocol (serial console): the guest prints `HOST: <command>` and
//! reads one reply line, `OK [value]` or `FAIL <why>`. Commands:
//! `balloon-mib N` (set the balloon to N MiB), `rapid N` (a burst of
//! targets ending at N MiB), `check-stats` (host polls guest-stats and checks
//! them), `rss-peak`, `rss-drop N` (host checks QEMU's RSS fell by 90% of
//! N MiB since rss-peak), `actual` (host's query-balloon in MiB), `bench
//! <driver>` (host times inflate/deflate). It ends with `N passed, N failed`.
#![no_std]
#![no_main]

mod out;
mod sys;

use out::{Out, CONSOLE};

const MIB: u64 = 1 << 20;
const NODE: &[u8] = b"dev.vtballoonrs.0.";
const OURS: &[u8] = b"/boot/modules/vtballoonrs.ko\0";
const THEIRS: &[u8] = b"/boot/modules/virtio_balloon.ko\0";

struct Tests {
    passed: u32,
    failed: u32,
}

impl Tests {
    fn check(&mut self, name: &str, ok: bool, why: &str) {
        let o = Out::new();
        if ok {
            self.passed += 1;
            o.s("ok - ").s(name).nl();
        } else {
            self.failed += 1;
            o.s("not ok - ").s(name).s(": ").s(why).nl();
        }
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

fn get_str<'a>(name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let n = sys::sysctlbyname(name, Some(buf), None).ok()?;
    let s = &buf[..n];
    Some(s.split(|&b| b == 0).next().unwrap_or(s))
}

/// The description of a sysctl node (name2oid, then oiddescr).
fn description(name: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut oid = [0u8; 24 * 4];
    let n = sys::sysctl(&[0, 3], &mut oid, Some(name)).ok()?;
    let mut mib = [0i32; 26];
    mib[0] = 0;
    mib[1] = 5;
    let len = n / 4;
    for i in 0..len {
        mib[2 + i] =
            i32::from_le_bytes([oid[4 * i], oid[4 * i + 1], oid[4 * i + 2], oid[4 * i + 3]]);
    }
    let d = sys::sysctl(&mib[..2 + len], buf, None).ok()?;
    Some(d.saturating_sub(1))
}

fn free_bytes() -> u64 {
    get_u64(b"vm.stats.vm.v_free_count").unwrap_or(0) * get_u64(b"hw.pagesize").unwrap_or(4096)
}

/// Polls `leaf` until `pred` holds or `secs` pass.
fn wait_for(leaf: &str, secs: u64, pred: impl Fn(u64) -> bool) -> Option<u64> {
    for _ in 0..secs * 10 {
        if let Some(v) = get(leaf) {
            if pred(v) {
                return Some(v);
            }
        }
        sys::sleep_ms(100);
    }
    None
}

/// Asks the host to act and reads its reply: Ok(value) or Err.
fn host(cmd: &str, arg: u64) -> Result<u64, ()> {
    Out::new().s("HOST: ").s(cmd).s(" ").u(arg).nl();
    let mut line = [0u8; 128];
    let mut n = 0;
    loop {
        let mut c = [0u8; 1];
        match sys::read(CONSOLE.get(), &mut c) {
            Ok(1) => {}
            _ => return Err(()),
        }
        if c[0] == b'\n' || c[0] == b'\r' {
            if n == 0 {
                continue;
            }
            break;
        }
        if n < line.len() {
            line[n] = c[0];
            n += 1;
        }
    }
    let l = &line[..n];
    if !l.starts_with(b"OK") {
        return Err(());
    }
    let mut v = 0u64;
    for &b in l.iter().skip(2).skip_while(|b| **b == b' ') {
        if !b.is_ascii_digit() {
            break;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Ok(v)
}

fn load(path: &[u8]) -> Result<u64, i64> {
    sys::kldload(path)
}

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
];
const RW_NODES: &[&str] = &[
    "debug",
    "oom_batch_pages",
    "stats_linux_tags",
    "report_enabled",
];

/// A comment line on the console (TAP style).
fn note(s: &str) {
    Out::new().s("# ").s(s).nl();
}

fn check_nodes(t: &mut Tests) {
    let mut missing = 0;
    let mut undescribed = 0;
    for leaf in RO_NODES.iter().chain(RW_NODES) {
        let n = node(leaf);
        let mut d = [0u8; 256];
        match description(n.bytes(), &mut d) {
            None => missing += 1,
            Some(0) => undescribed += 1,
            Some(_) => {}
        }
    }
    t.check(
        "every sysctl node is present",
        missing == 0,
        "missing nodes",
    );
    t.check(
        "every sysctl node has a description",
        undescribed == 0,
        "empty descriptions",
    );
    let mut refused = true;
    for leaf in [
        "actual_pages",
        "inflated_pages",
        "lowmem_events",
        "target_bytes",
    ] {
        if set_int(node(leaf).bytes(), 5).is_ok() {
            refused = false;
        }
    }
    t.check(
        "read-only nodes refuse writes",
        refused,
        "a write succeeded",
    );
    let before = get("oom_batch_pages");
    let bad = [0, 70_000, -1]
        .iter()
        .all(|&v| set_int(node("oom_batch_pages").bytes(), v) == Err(sys::EINVAL));
    t.check("bad oom_batch_pages gets EINVAL", bad, "accepted");
    t.check(
        "a refused write changes nothing",
        get("oom_batch_pages") == before,
        "value changed",
    );
    let debug_bad = set_int(node("debug").bytes(), 2) == Err(sys::EINVAL);
    t.check("bad debug value gets EINVAL", debug_bad, "accepted");
    let on = set_int(node("debug").bytes(), 1).is_ok() && get("debug") == Some(1);
    let off = set_int(node("debug").bytes(), 0).is_ok() && get("debug") == Some(0);
    t.check("debug toggle round-trips", on && off, "did not stick");
    let mut f = [0u8; 200];
    let feats = get_str(node("features").bytes(), &mut f).unwrap_or(&[]);
    Out::new()
        .s("# features: ")
        .s(core::str::from_utf8(feats).unwrap_or("?"))
        .nl();
    let has = |w: &[u8]| feats.windows(w.len()).any(|x| x == w);
    // QEMU offers no MUST_TELL_HOST; the driver keeps tell-before-free anyway.
    t.check(
        "negotiated STATS_VQ, DEFLATE_ON_OOM, REPORTING (what QEMU offers)",
        has(b"STATS_VQ") && has(b"DEFLATE_ON_OOM") && has(b"REPORTING"),
        "feature missing",
    );
    let mut a = [0u8; 128];
    let acct = get_str(node("memory_accounting").bytes(), &mut a).unwrap_or(&[]);
    t.check(
        "accounting says ballooned memory counts as used",
        acct.starts_with(b"used"),
        "unexpected text",
    );
}

/// Sets the balloon to `mib` and waits for the driver to follow.
fn resize(t: &mut Tests, name: &str, mib: u64, secs: u64) -> bool {
    let pages = mib * MIB / 4096;
    let asked = host("balloon-mib", mib).is_ok();
    let reached = wait_for("actual_pages", secs, |v| v == pages).is_some();
    t.check(
        name,
        asked && reached,
        "actual_pages did not reach the target",
    );
    asked && reached
}

fn check_resizing(t: &mut Tests) {
    let free0 = free_bytes();
    let inflated0 = get("inflated_pages").unwrap_or(0);
    if resize(t, "inflate to 256 MiB", 256, 120) {
        let drop = free0.saturating_sub(free_bytes());
        t.check(
            "free memory fell by about 256 MiB",
            drop >= 240 * MIB,
            "free memory did not fall",
        );
        t.check(
            "target_bytes matches",
            get("target_bytes") == Some(256 * MIB),
            "wrong target",
        );
        t.check(
            "held_bytes shows the balloon",
            get("held_bytes") == Some(256 * MIB),
            "held_bytes wrong",
        );
    }
    resize(t, "inflate to 1 GiB", 1024, 240);
    resize(t, "deflate to 0", 0, 240);
    let moved = get("inflated_pages").unwrap_or(0) >= inflated0 + 262_144
        && get("deflated_pages").unwrap_or(0) >= 262_144;
    t.check(
        "inflated/deflated counters moved",
        moved,
        "counters did not move",
    );
    let asked = host("rapid", 128).is_ok();
    let reached = wait_for("actual_pages", 240, |v| v == 128 * MIB / 4096).is_some();
    t.check(
        "rapid target changes settle on the last one",
        asked && reached,
        "did not settle",
    );
    let host_mib = host("actual", 0).unwrap_or(u64::MAX);
    t.check(
        "the host sees the same balloon size",
        host_mib == 128,
        "host disagrees",
    );
    resize(t, "back to 0", 0, 120);
}

fn check_stats(t: &mut Tests) {
    let before = get("stats_requests").unwrap_or(0);
    let host_ok = host("check-stats", 0).is_ok();
    t.check(
        "host sees real memfree/memtot/avail in guest-stats",
        host_ok,
        "host check failed",
    );
    let after = get("stats_requests").unwrap_or(0);
    t.check(
        "stats requests are counted",
        after > before,
        "stats_requests did not move",
    );
}

/// A child touches memory in steps until it has `mib` MiB, then exits 0.
fn toucher(mib: u64, step_ms: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let step = 4 * MIB;
            for _ in 0..mib / 4 {
                let Ok(p) = sys::mmap_anon(step) else {
                    sys::exit(2)
                };
                let mut off = 0;
                while off < step {
                    // SAFETY: inside a fresh private mapping of `step` bytes.
                    unsafe { core::ptr::write_volatile((p + off) as *mut u8, 1) };
                    off += 4096;
                }
                sys::sleep_ms(step_ms);
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

fn check_pressure(t: &mut Tests) {
    note("pressure: tuning");
    let _ = set_int(node("oom_batch_pages").bytes(), 16_384);
    note("pressure: batch set");
    let _ = set_int(b"vm.lowmem_period", 1);
    note("pressure: period set");
    let _ = set_int(b"vm.pageout_oom_seq", 120);
    note("pressure: tuned");
    let phys = get_u64(b"hw.physmem").unwrap_or(0) / MIB;
    let balloon = phys / 2;
    if !resize(t, "inflate before pressure", balloon, 300) {
        return;
    }
    let events0 = get("lowmem_events").unwrap_or(0);
    let pages0 = get("actual_pages").unwrap_or(0);
    // More than the guest has outside the balloon: only deflating saves it.
    let pid = toucher(phys - balloon / 4, 40);
    let status = sys::wait(pid).unwrap_or(-1);
    let events = get("lowmem_events").unwrap_or(0);
    let pages = get("actual_pages").unwrap_or(0);
    t.check(
        "memory pressure is seen as vm_lowmem events",
        events > events0,
        "no lowmem event",
    );
    t.check(
        "the balloon deflated under pressure",
        pages < pages0,
        "balloon did not shrink",
    );
    t.check(
        "the child was not killed while the balloon held pages",
        status == 0 || pages == 0,
        "child killed",
    );
    sys::sleep_ms(5_000);
    let later = get("actual_pages").unwrap_or(0);
    t.check(
        "no re-inflation until the host changes its target",
        later <= pages,
        "re-inflated by itself",
    );
    resize(t, "the host's new target is followed", 0, 240);
}

fn check_reporting(t: &mut Tests) {
    let blocks0 = get("report_blocks").unwrap_or(0);
    let mib = 512;
    match sys::fork() {
        Ok(0) => {
            let len = mib * MIB;
            let Ok(p) = sys::mmap_anon(len) else {
                sys::exit(2)
            };
            let mut off = 0;
            while off < len {
                // SAFETY: inside our fresh mapping.
                unsafe { core::ptr::write_volatile((p + off) as *mut u8, 7) };
                off += 4096;
            }
            let _ = host("rss-peak", mib);
            sys::exit(0)
        }
        Ok(pid) => {
            let _ = sys::wait(pid);
        }
        Err(_) => {}
    }
    let host_ok = host("rss-drop", mib).is_ok();
    for leaf in ["report_blocks", "report_passes", "report_acks", "report_errors", "report_time_ms"] {
        Out::new().s("# ").s(leaf).s(" ").u(get(leaf).unwrap_or(0)).nl();
    }
    t.check(
        "freed memory goes back to the host (QEMU RSS drops 90%)",
        host_ok,
        "RSS did not drop",
    );
    t.check(
        "reported blocks are counted",
        get("report_blocks").unwrap_or(0) > blocks0,
        "report_blocks did not move",
    );
    t.check(
        "no reporting errors",
        get("report_errors") == Some(0),
        "report_errors",
    );
}

/// Finds the kld file id of a loaded module file by name (kldfind, 306).
fn kldfind(name: &[u8]) -> Option<u64> {
    // SAFETY: NUL-terminated name.
    unsafe { sys::syscall6(306, [name.as_ptr() as u64, 0, 0, 0, 0, 0]) }.ok()
}

fn check_unload(t: &mut Tests) {
    if !resize(t, "inflate before unload", 512, 240) {
        return;
    }
    let free0 = free_bytes();
    let id = kldfind(b"vtballoonrs.ko\0");
    let unloaded = id.is_some_and(|id| sys::kldunload(id).is_ok());
    t.check(
        "kldunload with the balloon inflated",
        unloaded,
        "unload failed",
    );
    let gained = free_bytes().saturating_sub(free0);
    t.check(
        "unload gives all balloon memory back",
        gained >= 500 * MIB,
        "memory not returned",
    );
    t.check(
        "the host sees an empty balloon",
        host("actual", 0) == Ok(0),
        "host still ballooned",
    );
    let _ = host("balloon-mib", 64);
    let mut ok = true;
    for _ in 0..20 {
        let Ok(id) = load(OURS) else {
            ok = false;
            break;
        };
        if wait_for("actual_pages", 60, |v| v == 64 * MIB / 4096).is_none()
            || sys::kldunload(id).is_err()
        {
            ok = false;
            break;
        }
    }
    t.check(
        "20 load/unload cycles with a 64 MiB balloon",
        ok,
        "a cycle failed",
    );
    let _ = host("balloon-mib", 0);
}

fn check_in_tree_swap(t: &mut Tests) {
    let Ok(id) = load(THEIRS) else {
        Out::new()
            .s("# skipped: in-tree virtio_balloon.ko not on the image")
            .nl();
        return;
    };
    let mut d = [0u8; 64];
    let theirs = get_str(b"dev.vtballoon.0.%desc", &mut d).is_some();
    t.check(
        "the in-tree driver takes the device",
        theirs,
        "vtballoon0 missing",
    );
    let back = sys::kldunload(id).is_ok();
    let ours = load(OURS);
    let attached = wait_for("actual_pages", 30, |_| true).is_some();
    t.check(
        "and the device moves back to ours",
        back && ours.is_ok() && attached,
        "vtballoonrs0 missing",
    );
}

/// The image's /etc/vtbtest.mode: "bench" selects the benchmark.
fn read_mode() -> [u8; 16] {
    let mut m = [0u8; 16];
    if let Ok(fd) = sys::open(b"/etc/vtbtest.mode\0", 0) {
        let _ = sys::read(fd, &mut m);
    }
    m
}

fn bench() {
    for (path, name) in [(OURS, "ours"), (THEIRS, "theirs")] {
        let Ok(id) = load(path) else { continue };
        sys::sleep_ms(2_000);
        let _ = host(
            if name == "ours" {
                "bench-ours"
            } else {
                "bench-theirs"
            },
            0,
        );
        let _ = sys::kldunload(id);
        sys::sleep_ms(1_000);
    }
}

#[no_mangle]
extern "C" fn main_rust() -> ! {
    out::open_console();
    let init = sys::getpid() == 1;
    let bench_mode = read_mode().starts_with(b"bench");
    if bench_mode {
        bench();
        Out::new().s("bench done").nl();
    } else {
        let mut t = Tests {
            passed: 0,
            failed: 0,
        };
        let loaded = load(OURS).is_ok() || get("actual_pages").is_some();
        t.check("kldload vtballoonrs.ko", loaded, "kldload failed");
        let attached = wait_for("actual_pages", 30, |_| true).is_some();
        t.check(
            "the device attaches (dev.vtballoonrs.0)",
            attached,
            "no device",
        );
        let only = read_mode();
        if attached && only.starts_with(b"report") {
            let _ = set_int(node("debug").bytes(), 1);
            check_reporting(&mut t);
        } else if attached && only.starts_with(b"pressure") {
            check_pressure(&mut t);
            check_reporting(&mut t);
        } else if attached {
            check_nodes(&mut t);
            check_resizing(&mut t);
            check_stats(&mut t);
            check_pressure(&mut t);
            check_reporting(&mut t);
            check_unload(&mut t);
            check_in_tree_swap(&mut t);
        }
        Out::new()
            .u(u64::from(t.passed))
            .s(" passed, ")
            .u(u64::from(t.failed))
            .s(" failed")
            .nl();
    }
    if init {
        sys::poweroff()
    }
    sys::exit(0)
}

/// Entry point: align the stack and call main_rust.
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("and rsp, -16", "call main_rust", "ud2")
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    Out::new().s("vtbtest: panic").nl();
    sys::exit(3)
}
