//! The bench boot: our driver and the in-tree one (and any variants of
//! ours the host asked for) interleaved operation by operation in the same
//! guest, timed by the host (which prints the table); after each timed
//! operation the guest reports its own figures: our driver's breakdown of
//! its guest time, and each driver's threads' processor time.

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
use crate::threads;

/// What the bench runs: `--reps N`, `--sizes MIB,MIB`, `--variants V,V`,
/// `--extras 0|1` in the boot's mode (the harness writes them).
#[derive(Clone, Copy)]
pub struct Opts {
    /// Repetitions of each row per variant.
    pub reps: u32,
    /// Sizes of the timed inflates and deflates, MiB.
    pub sizes: [u64; 4],
    pub nsizes: usize,
    /// `ours`, `theirs`, or `ours+NODE=VALUE+...`: ours with those loader
    /// tunables. The host numbers them in this order.
    pub variants: [&'static [u8]; 8],
    pub nvariants: usize,
    /// The pressure scenario per driver, our vm_lowmem latency and idle
    /// wakeups after the rows.
    pub extras: bool,
}

impl Default for Opts {
    fn default() -> Self {
        let mut variants: [&'static [u8]; 8] = [b""; 8];
        variants[0] = b"ours";
        variants[1] = b"theirs";
        Opts {
            reps: 5,
            sizes: [1024, 3072, 0, 0],
            nsizes: 2,
            variants,
            nvariants: 2,
            extras: true,
        }
    }
}

/// A decimal number.
fn number(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 18 {
        return None;
    }
    w.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

impl Opts {
    /// Takes one option and its value (without NUL); false if not one of ours.
    pub fn set(&mut self, opt: &[u8], value: &'static [u8]) -> bool {
        match opt {
            b"--reps" => {
                if let Some(n) = number(value).filter(|&n| (1..=50).contains(&n)) {
                    self.reps = n as u32;
                }
            }
            b"--sizes" => {
                let mut n = 0;
                for w in value.split(|&b| b == b',') {
                    if let Some(mib) = number(w).filter(|&m| m > 0) {
                        if n < self.sizes.len() {
                            self.sizes[n] = mib;
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    self.nsizes = n;
                }
            }
            b"--variants" => {
                let mut n = 0;
                for w in value.split(|&b| b == b',') {
                    if (w == b"theirs" || w.starts_with(b"ours")) && n < self.variants.len() {
                        self.variants[n] = w;
                        n += 1;
                    }
                }
                if n > 0 {
                    self.nvariants = n;
                }
            }
            b"--extras" => self.extras = value != b"0",
            _ => return false,
        }
        true
    }
}

/// Our settings a variant may change, each reset before a variant loads.
const KNOBS: &[&str] = &["kick_thread", "inflate_run_pages", "inflight_buffers"];

/// Our nodes read before and after each timed operation, sent to the host
/// as `bench-cost-<node>` with the difference.
const COST_NODES: &[&str] = &[
    "notify_us",
    "step_us",
    "alloc_us",
    "free_us",
    "post_us",
    "wait_us",
    "kick_us",
    "kick_wait_us",
    "alloc_runs",
    "alloc_single_pages",
    "buffers_posted",
];

/// Threads of each driver (kernel thread names start with it).
const OURS_THREADS: &[u8] = b"vtballoonrs";
const THEIRS_THREADS: &[u8] = b"virtio_balloon";

fn is_ours(v: &[u8]) -> bool {
    v.starts_with(b"ours")
}

/// `dev.vtballoonrs.0.<leaf>` NUL-terminated, in `buf`.
fn tunable<'a>(buf: &'a mut [u8; 64], leaf: &[u8]) -> &'a [u8] {
    let prefix = crate::sysctl::NODE;
    let n = (prefix.len() + leaf.len()).min(buf.len() - 1);
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..n].copy_from_slice(&leaf[..n - prefix.len()]);
    buf[n] = 0;
    &buf[..=n]
}

/// Loads variant `v` alone: its loader tunables set in the kernel
/// environment first (ours always without free page reporting: the in-tree
/// driver has none). False (and a failed check) if it did not attach.
fn load_variant(c: &mut Ctx, v: &'static [u8]) -> bool {
    let mut n = [0u8; 64];
    let name = concat(&mut n, b"bench: load ", v);
    if !ensure_none(c) {
        return c.check(name, false, "could not unload the drivers");
    }
    let mut key = [0u8; 64];
    for k in KNOBS {
        let _ = sys::kenv_unset(tunable(&mut key, k.as_bytes()));
    }
    let _ = sys::kenv_set(tunable(&mut key, b"report_enabled"), b"0\0");
    if is_ours(v) {
        for setting in v.split(|&b| b == b'+').skip(1) {
            let mut parts = setting.splitn(2, |&b| b == b'=');
            let (Some(k), Some(val)) = (parts.next(), parts.next()) else {
                continue;
            };
            let mut value = [0u8; 16];
            let len = val.len().min(15);
            value[..len].copy_from_slice(&val[..len]);
            if sys::kenv_set(tunable(&mut key, k), &value[..=len]).is_err() {
                return c.check(name, false, "kenv refused a setting");
            }
        }
    }
    let (path, desc) = if is_ours(v) {
        (c.ours, OURS_DESC)
    } else {
        (THEIRS, THEIRS_DESC)
    };
    match sys::kldload(path) {
        Ok(_) => {}
        Err(sys::ENOENT) => {
            c.skip(name, "module not on this system");
            return false;
        }
        Err(_) => return c.check(name, false, "kldload failed"),
    }
    if !wait_exists(desc, 30) {
        return c.check(name, false, "did not attach");
    }
    if is_ours(v) {
        let _ = wait_for("report_inflight", 10, |v| v == 0);
        let mut l = Line::new();
        l.s("# bench: ").b(v).s(" attached:");
        for k in KNOBS {
            l.s(" ").s(k).s("=");
            match get(k) {
                Some(x) => l.u(x),
                None => l.s("-"),
            };
        }
        l.end();
    }
    // Let the attach's own work (first stats, the thread's first look) pass.
    sys::sleep_ms(1_000);
    true
}

/// The bench phase measures and reports figures to the host, which prints
/// them; its checks only say whether each measurement could be taken,
/// never whether a figure met its reference figure.
///
/// Each repetition runs every size once per variant, the variants in an
/// order rotated by repetition and size (with two: ours first, then the
/// in-tree driver first), and each timed pair (inflate by the size, deflate
/// it again) starts from the same state for every driver: a child has just
/// touched all the free memory the guest can spare, and an untimed inflate
/// has taken what it did not reach, so both drivers inflate host-resident
/// memory only (the host records the RSS released) and deflate what the
/// host has just discarded.
pub fn phase_bench(c: &mut Ctx) {
    let o = c.bench;
    let mut loaded: Option<usize> = None;
    let mut dead = [false; 8];
    for rep in 0..o.reps {
        for si in 0..o.nsizes {
            let mib = o.sizes[si];
            for k in 0..o.nvariants {
                let v = (k + rep as usize + si) % o.nvariants;
                if dead[v] {
                    continue;
                }
                let variant = o.variants[v];
                if loaded != Some(v) {
                    loaded = None;
                    if !load_variant(c, variant) {
                        dead[v] = true;
                        continue;
                    }
                    loaded = Some(v);
                }
                let _ = c.host.ask("bench-driver", v as u64, 30);
                let _ = c.host.ask("bench-rep", u64::from(rep), 30);
                let ok = bench_pair(c, variant, mib);
                let mut n = [0u8; 64];
                let mut m = [0u8; 80];
                let mut d = [0u8; 20];
                let what = concat(&mut n, b"bench ", variant);
                let what = concat(&mut m, what.as_bytes(), b" ");
                let mut k = [0u8; 96];
                let what = concat(&mut k, what.as_bytes(), crate::proto::decimal(mib, &mut d));
                let mut j = [0u8; 112];
                let what = concat(&mut j, what.as_bytes(), b" MiB");
                c.check(what, ok, "the host could not time it");
            }
        }
    }
    if o.extras {
        for (v, driver) in [(0usize, b"ours" as &[u8]), (1, b"theirs")] {
            let Some(idx) = o.variants[..o.nvariants].iter().position(|x| *x == driver) else {
                continue;
            };
            if dead[idx] || (loaded != Some(idx) && !load_variant(c, driver)) {
                loaded = None;
                continue;
            }
            loaded = Some(idx);
            let _ = c.host.ask("bench-driver", idx as u64, 30);
            let who = if v == 0 {
                crate::pressure::Driver::Ours
            } else {
                crate::pressure::Driver::InTree
            };
            crate::pressure::bench_oom(c, who);
            if v == 0 {
                // After the pressure watch the oom bench started has ended.
                let watch_s = get("oom_watch_ms").unwrap_or(0) / 1000;
                let _ = wait_for("oom_watching", watch_s + 15, |v| v == 0);
                bench_ours_at_rest(c);
            }
        }
    }
    ensure_none(c);
}

/// One timed pair from the common starting state (see [`phase_bench`]):
/// inflate by `mib` of memory a child just touched, deflate it again.
fn bench_pair(c: &mut Ctx, variant: &[u8], mib: u64) -> bool {
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
        .s("# bench: ")
        .b(variant)
        .s(": free ")
        .u(free0)
        .s(" MiB, a child touched ")
        .u(touch)
        .s(" MiB; untimed inflate of the ")
        .u(untouched)
        .s(" MiB it did not reach, then ")
        .u(mib)
        .s(" MiB timed each way")
        .end();
    let pages = untouched * PAGES_PER_MIB;
    let mut ok = matches!(c.host.ask("set-target", pages, 30), Reply::Ok(_));
    ok &= matches!(c.host.ask("wait-actual", pages, 150), Reply::Ok(_));
    ok &= bench_timed(c, variant, "bench-inflate", mib);
    ok &= bench_timed(c, variant, "bench-deflate", mib);
    ok &= matches!(c.host.ask("set-target", 0, 30), Reply::Ok(_));
    ok &= matches!(c.host.ask("wait-actual", 0, 150), Reply::Ok(0));
    ok
}

/// What the guest reads before and after a timed operation.
struct Snapshot {
    cpu_us: Option<u64>,
    nodes: [Option<u64>; COST_NODES.len()],
}

fn snapshot(ours: bool) -> Snapshot {
    let mut nodes = [None; COST_NODES.len()];
    if ours {
        for (v, n) in nodes.iter_mut().zip(COST_NODES) {
            *v = get(n);
        }
    }
    let threads = if ours { OURS_THREADS } else { THEIRS_THREADS };
    Snapshot {
        cpu_us: threads::runtime_us(threads),
        nodes,
    }
}

/// Asks the host to time one operation (`cmd` by `mib` from the current
/// size), then sends it the guest's own figures for it: the driver's
/// threads' processor time (`bench-cost-cpu_us`) and, for ours, the
/// difference of each of [`COST_NODES`].
fn bench_timed(c: &mut Ctx, variant: &[u8], cmd: &str, mib: u64) -> bool {
    let ours = is_ours(variant);
    let before = snapshot(ours);
    let ok = matches!(c.host.ask(cmd, mib, 900), Reply::Ok(_));
    // The driver's last bookkeeping after the host saw the target.
    sys::sleep_ms(100);
    let after = snapshot(ours);
    if let (Some(b), Some(a)) = (before.cpu_us, after.cpu_us) {
        let _ = c.host.ask("bench-cost-cpu_us", a.saturating_sub(b), 30);
    }
    for (i, node) in COST_NODES.iter().enumerate() {
        if let (Some(b), Some(a)) = (before.nodes[i], after.nodes[i]) {
            let mut n = [0u8; 48];
            let cmd = concat(&mut n, b"bench-cost-", node.as_bytes());
            let _ = c.host.ask(cmd, a.saturating_sub(b), 30);
        }
    }
    if ours {
        if let Some(k) = get("kick_thread") {
            let _ = c.host.ask("bench-cost-kick_thread", k, 30);
        }
    }
    ok
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
    // The pressure guard after the previous row's events ends first
    // (oom_watching 2: it looks at free memory every 10 ms for 15 s); the
    // last acks may wake the thread once more right after the target.
    let _ = crate::sysctl::wait_for("oom_watching", 60, |v| v == 0);
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
