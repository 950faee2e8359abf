//! The pressure boots: deflate-on-OOM with FreeBSD's default settings
//! (`vm.lowmem_period`, `vm.pageout_oom_seq`, no swap) and the driver's
//! defaults. The balloon holds 3/4 of memory; children touch more than is
//! left. Each scenario prints the balloon before, at its lowest and after,
//! what the children got, who was killed (exit status, and the kernel's
//! "was killed" lines the host counts on the console), the host's view,
//! vm_lowmem events and the driver's pressure deflates.
//!
//! - oom-one: one child touching 2 GiB;
//! - oom-many: three children at once, 700 MiB each;
//! - oom-sequence: a child touches 1.5 GiB and exits, a second follows;
//! - oom-inflating: the child starts while the balloon still inflates;
//! - oom-reload: a child makes the page daemon raise vm_lowmem, the driver
//!   is reloaded at once and the host asks for 95% of memory; a child then
//!   takes what the guest can give (the soak's kills: the kernel raises no
//!   vm_lowmem for `vm.lowmem_period` after the one the old instance got);
//! - oom-control: the same as oom-one on a device without DEFLATE_ON_OOM
//!   (`deflate-on-oom=off`): the kill is expected;
//! - oom-intree: oom-one with the in-tree driver, as a reference.

use crate::balloon::resize;
use crate::check::{concat, Ctx};
use crate::kld::{ensure_none, load_theirs, unload, OURS_DESC, THEIRS};
use crate::out::Line;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{
    get, get_u64, mib_of, page_size, wait_exists, wait_for, MIB, PAGE, PAGES_PER_MIB,
};

/// Most children in one scenario.
const MAX_CHILDREN: usize = 4;
/// Slack on what the balloon keeps beyond the page daemon's target and the
/// headroom: the children's page tables, kernel allocations meanwhile, and
/// the watch's look-ahead of two intervals of consumption.
const KEEP_SLACK_MIB: u64 = 64;

/// Children touching memory; each writes the MiB it has touched into its
/// slot of a page shared with the parent.
struct Children {
    pids: [u64; MAX_CHILDREN],
    want: [u64; MAX_CHILDREN],
    n: usize,
    progress: u64,
}

impl Children {
    fn spawn(mibs: &[u64]) -> Option<Children> {
        let progress = sys::mmap_anon(PAGE, true).ok()?;
        let mut ch = Children {
            pids: [0; MAX_CHILDREN],
            want: [0; MAX_CHILDREN],
            n: 0,
            progress,
        };
        for (i, &mib) in mibs.iter().take(MAX_CHILDREN).enumerate() {
            ch.want[i] = mib;
            ch.pids[i] = touch(mib, progress + 8 * i as u64);
            ch.n += 1;
        }
        Some(ch)
    }

    fn got(&self, i: usize) -> u64 {
        // SAFETY: slot `i` of the shared page mapped in `spawn`.
        unsafe { core::ptr::read_volatile((self.progress + 8 * i as u64) as *const u64) }
    }
}

/// A child that touches `mib` MiB in 4 MiB steps, as fast as it can,
/// recording its progress at `slot`; exits 0 when done, 2 if mmap fails.
fn touch(mib: u64, slot: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let step = 4 * MIB;
            for k in 0..mib / 4 {
                let Ok(p) = sys::mmap_anon(step, false) else {
                    sys::exit(2)
                };
                let mut off = 0;
                while off < step {
                    // SAFETY: inside a fresh private mapping of `step` bytes.
                    unsafe { core::ptr::write_volatile((p + off) as *mut u8, 1) };
                    off += PAGE;
                }
                // SAFETY: our slot of the page shared with the parent.
                unsafe { core::ptr::write_volatile(slot as *mut u64, (k + 1) * 4) };
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// How the balloon's size is read: our sysctl, or the host (in-tree driver).
#[derive(Clone, Copy, PartialEq)]
pub enum Driver {
    Ours,
    InTree,
}

/// What one scenario saw.
#[derive(Default)]
pub struct Outcome {
    before_mib: u64,
    lowest_mib: u64,
    after_mib: u64,
    /// Children killed by a signal, and that finished with status 0.
    killed: u64,
    finished: u64,
    /// Sum of what the children touched and asked for, MiB.
    got_mib: u64,
    want_mib: u64,
    /// The kernel's "was killed" lines during the scenario (host's count).
    console_kills: Option<u64>,
    events: u64,
    /// Shortages the driver's guard took for an event.
    guard_events: u64,
    deflates: u64,
    /// From the children's start to the last one finishing.
    ms: u64,
    /// From the children's start to the first vm_lowmem event our driver
    /// counted (sampled every 100 ms).
    first_event_ms: Option<u64>,
    /// Free memory above the page daemon's target when they started.
    spare_mib: u64,
}

impl Outcome {
    /// MiB the children needed from the balloon.
    pub fn needed_mib(&self) -> u64 {
        self.want_mib.saturating_sub(self.spare_mib)
    }

    pub fn given_mib(&self) -> u64 {
        self.before_mib.saturating_sub(self.after_mib)
    }

    pub fn nobody_killed(&self) -> bool {
        self.killed == 0 && self.console_kills.unwrap_or(0) == 0
    }
}

fn balloon_mib(c: &mut Ctx, driver: Driver) -> u64 {
    match driver {
        Driver::Ours => get("actual_pages").unwrap_or(0) / PAGES_PER_MIB,
        Driver::InTree => match c.host.ask("host-pages", 0, 30) {
            Reply::Ok(v) => v / PAGES_PER_MIB,
            _ => 0,
        },
    }
}

fn console_kills(c: &mut Ctx) -> Option<u64> {
    match c.host.ask("kills", 0, 30) {
        Reply::Ok(v) => Some(v),
        _ => None,
    }
}

fn free_target_mib() -> u64 {
    mib_of(get_u64(b"vm.stats.vm.v_free_target").unwrap_or(0) * page_size())
}

fn free_mib() -> u64 {
    mib_of(get_u64(b"vm.stats.vm.v_free_count").unwrap_or(0) * page_size())
}

/// Children touching `mibs` (started `delay` after the previous ones
/// finished when `one_by_one`); samples the balloon every 100 ms.
pub fn run_children(c: &mut Ctx, driver: Driver, mibs: &[u64], one_by_one: bool) -> Outcome {
    let mut o = Outcome {
        before_mib: balloon_mib(c, driver),
        spare_mib: free_mib().saturating_sub(free_target_mib()),
        console_kills: console_kills(c),
        ..Default::default()
    };
    o.lowest_mib = o.before_mib;
    let events0 = get("lowmem_events").unwrap_or(0);
    let guard0 = get("oom_guard_events").unwrap_or(0);
    let deflates0 = get("oom_deflates").unwrap_or(0);
    let t0 = sys::now_ms();
    let groups: &[&[u64]] = if one_by_one {
        &[&mibs[..1], &mibs[1..]]
    } else {
        &[mibs]
    };
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let Some(mut ch) = Children::spawn(group) else {
            c.check("children start", false, "no shared page");
            return o;
        };
        let mut status: [Option<i32>; MAX_CHILDREN] = [None; MAX_CHILDREN];
        let deadline = sys::now_ms() + 600_000;
        while status[..ch.n].iter().any(Option::is_none) && sys::now_ms() < deadline {
            for i in 0..ch.n {
                if status[i].is_none() {
                    if let Ok(Some(st)) = sys::wait(ch.pids[i], true) {
                        status[i] = Some(st);
                    }
                }
            }
            if driver == Driver::Ours {
                o.lowest_mib = o.lowest_mib.min(balloon_mib(c, driver));
                if o.first_event_ms.is_none() && get("lowmem_events").unwrap_or(0) > events0 {
                    o.first_event_ms = Some(sys::now_ms() - t0);
                }
            }
            sys::sleep_ms(100);
        }
        for i in 0..ch.n {
            if status[i].is_none() {
                let _ = sys::kill(ch.pids[i], 9);
                let _ = sys::wait(ch.pids[i], false);
            }
            match status[i] {
                Some(0) => o.finished += 1,
                // WIFSIGNALED: the low 7 bits are the signal.
                Some(st) if st & 0x7f != 0 && st & 0x7f != 0x7f => o.killed += 1,
                _ => {}
            }
            o.got_mib += ch.got(i);
            o.want_mib += ch.want[i];
            ch.pids[i] = 0;
        }
    }
    o.ms = sys::now_ms() - t0;
    o.after_mib = balloon_mib(c, driver);
    o.lowest_mib = o.lowest_mib.min(o.after_mib);
    o.events = get("lowmem_events").unwrap_or(0) - events0;
    o.guard_events = get("oom_guard_events").unwrap_or(0) - guard0;
    o.deflates = get("oom_deflates").unwrap_or(0) - deflates0;
    o.console_kills = match (o.console_kills, console_kills(c)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    o
}

pub fn report(name: &str, o: &Outcome) {
    let mut l = Line::new();
    l.s("# ")
        .s(name)
        .s(": balloon ")
        .u(o.before_mib)
        .s(" -> lowest ")
        .u(o.lowest_mib)
        .s(" -> after ")
        .u(o.after_mib)
        .s(" MiB; children got ")
        .u(o.got_mib)
        .s(" of ")
        .u(o.want_mib)
        .s(" MiB in ")
        .u(o.ms)
        .s(" ms (first vm_lowmem at ");
    match o.first_event_ms {
        Some(ms) => l.u(ms).s(" ms"),
        None => l.s("-"),
    };
    l.s("); killed ").u(o.killed).s(" (console kill lines ");
    match o.console_kills {
        Some(k) => l.u(k),
        None => l.s("?"),
    };
    l.s(")").end();
    // A second line: one would overflow the console line (240 bytes).
    let mut l = Line::new();
    l.s("# ")
        .s(name)
        .s(": vm_lowmem events ")
        .u(o.events)
        .s(" (+")
        .u(o.guard_events)
        .s(" by the guard), pressure deflates ")
        .u(o.deflates)
        .s("; gave back ")
        .u(o.given_mib())
        .s(" MiB for ")
        .u(o.needed_mib())
        .s(" MiB needed");
    if o.needed_mib() > 0 {
        l.s(" (ratio x100 ")
            .u(o.given_mib() * 100 / o.needed_mib())
            .s(")");
    }
    l.end();
}

/// Check names are "<scenario>: <what>".
fn named<'a>(buf: &'a mut [u8], scenario: &str, what: &str) -> &'a str {
    let mut head = [0u8; 40];
    let h = concat(&mut head, scenario.as_bytes(), b": ").len();
    let head = &head[..h];
    concat(buf, head, what.as_bytes())
}

/// The checks every deflate-on-OOM scenario shares.
fn checks(c: &mut Ctx, scenario: &str, o: &Outcome) {
    let mut b = [0u8; 120];
    let headroom = get("oom_headroom_pages").unwrap_or(0) / PAGES_PER_MIB;
    c.check_n(
        named(
            &mut b,
            scenario,
            "nobody killed while the balloon held pages",
        ),
        o.nobody_killed() || o.lowest_mib == 0,
        "killed",
        Some(o.killed + o.console_kills.unwrap_or(0)),
    );
    c.check_n(
        named(
            &mut b,
            scenario,
            "the children got all the memory they asked for",
        ),
        o.finished as usize > 0 && o.got_mib == o.want_mib,
        "MiB touched",
        Some(o.got_mib),
    );
    if o.needed_mib() > 0 {
        c.check_n(
            named(&mut b, scenario, "the balloon gave memory back"),
            o.lowest_mib < o.before_mib,
            "balloon MiB",
            Some(o.lowest_mib),
        );
    }
    let margin = free_target_mib() + headroom + KEEP_SLACK_MIB;
    c.check_n(
        named(
            &mut b,
            scenario,
            "the balloon kept what was not needed (less the free target, headroom and 64 MiB)",
        ),
        o.given_mib() <= o.needed_mib() + margin,
        "MiB given back",
        Some(o.given_mib()),
    );
    let r = c.host.ask("host-actual", 0, 30);
    let actual = get("actual_pages").unwrap_or(0);
    c.check_host(
        named(&mut b, scenario, "the host sees actual fall with it"),
        r,
        |v| v == actual,
        "host pages",
    );
    if o.needed_mib() > 0 {
        c.check_n(
            named(
                &mut b,
                scenario,
                "vm_lowmem events (or the guard) and pressure deflates counted",
            ),
            o.events + o.guard_events >= 1 && o.deflates >= 1,
            "events",
            Some(o.events),
        );
    }
    settles(c, scenario);
}

/// After the pressure: the watch ends, nothing re-inflates, the thread sleeps.
fn settles(c: &mut Ctx, scenario: &str) {
    let mut b = [0u8; 120];
    let watch_s = get("oom_watch_ms").unwrap_or(0) / 1000;
    let ended = wait_for("oom_watching", watch_s + 15, |v| v == 0);
    Line::new()
        .s("# ")
        .s(scenario)
        .s(": after the pressure: oom_watching ")
        .u(get("oom_watching").unwrap_or(9))
        .s(", lowmem_events ")
        .u(get("lowmem_events").unwrap_or(0))
        .s(", oom_deflates ")
        .u(get("oom_deflates").unwrap_or(0))
        .s(", free ")
        .u(free_mib())
        .s(" MiB, v_free_target ")
        .u(free_target_mib())
        .s(" MiB, report_inflight ")
        .u(get("report_inflight").unwrap_or(0))
        .end();
    c.check_n(
        named(&mut b, scenario, "the pressure watch ends"),
        ended.is_ok(),
        "oom_watching",
        ended.err().flatten(),
    );
    let actual = get("actual_pages").unwrap_or(0);
    let wakeups = get("thread_wakeups").unwrap_or(0);
    sys::sleep_ms(5_000);
    let later = get("actual_pages").unwrap_or(u64::MAX);
    c.check_n(
        named(
            &mut b,
            scenario,
            "no re-inflation until the host sets a new target",
        ),
        later <= actual,
        "actual_pages",
        Some(later),
    );
    let woke = get("thread_wakeups").unwrap_or(u64::MAX) - wakeups;
    c.check_n(
        named(
            &mut b,
            scenario,
            "then the balloon thread sleeps: no wakeups for 5 s",
        ),
        woke == 0,
        "wakeups",
        Some(woke),
    );
}

pub fn three_quarters() -> u64 {
    mib_of(get_u64(b"hw.physmem").unwrap_or(0)) * 3 / 4
}

fn inflated(c: &mut Ctx, scenario: &str) -> bool {
    let mut b = [0u8; 120];
    resize(
        c,
        named(&mut b, scenario, "balloon at 3/4 of memory"),
        three_quarters(),
        300,
    )
}

fn back_to_zero(c: &mut Ctx, scenario: &str) {
    let mut b = [0u8; 120];
    resize(
        c,
        named(&mut b, scenario, "the host's next target (0) is followed"),
        0,
        300,
    );
}

pub fn phase_oom_one(c: &mut Ctx) {
    let s = "oom-one";
    if inflated(c, s) {
        let events = crate::devctl::count(b"LOWMEM");
        let o = run_children(c, Driver::Ours, &[2048], false);
        report(s, &o);
        checks(c, s, &o);
        let mut b = [0u8; 120];
        c.check(
            named(
                &mut b,
                s,
                "a devd LOWMEM event tells of the pressure deflate",
            ),
            crate::devctl::count(b"LOWMEM") > events,
            "no !system=VTBALLOON type=LOWMEM on /dev/devctl",
        );
    }
    back_to_zero(c, s);
}

pub fn phase_oom_many(c: &mut Ctx) {
    let s = "oom-many";
    if inflated(c, s) {
        let o = run_children(c, Driver::Ours, &[700, 700, 700], false);
        report(s, &o);
        checks(c, s, &o);
    }
    back_to_zero(c, s);
}

pub fn phase_oom_sequence(c: &mut Ctx) {
    let s = "oom-sequence";
    if inflated(c, s) {
        let first = run_children(c, Driver::Ours, &[1536], false);
        report("oom-sequence first", &first);
        let second = run_children(c, Driver::Ours, &[1536], false);
        report("oom-sequence second", &second);
        let mut b = [0u8; 120];
        c.check_n(
            named(&mut b, s, "nobody killed"),
            first.nobody_killed() && second.nobody_killed(),
            "killed",
            Some(first.killed + second.killed),
        );
        c.check_n(
            named(&mut b, s, "both children got their memory"),
            first.got_mib == first.want_mib && second.got_mib == second.want_mib,
            "MiB",
            Some(first.got_mib + second.got_mib),
        );
        // The second child reuses what the first freed.
        let slack = free_target_mib() + KEEP_SLACK_MIB;
        c.check_n(
            named(
                &mut b,
                s,
                "the second child took what the first freed, not the balloon",
            ),
            second.given_mib() <= slack,
            "MiB given back for the second",
            Some(second.given_mib()),
        );
        settles(c, s);
    }
    back_to_zero(c, s);
}

pub fn phase_oom_inflating(c: &mut Ctx) {
    let s = "oom-inflating";
    let mut b = [0u8; 120];
    let target = three_quarters() * PAGES_PER_MIB;
    let r = c.host.ask("set-target", target, 30);
    if !c.check_host(
        named(&mut b, s, "the host asks for 3/4 of memory"),
        r,
        |_| true,
        "",
    ) {
        return;
    }
    // The children start while the balloon is still on its way.
    let _ = wait_for("actual_pages", 10, |v| v > 0);
    let o = run_children(c, Driver::Ours, &[2048], false);
    report(s, &o);
    c.check_n(
        named(&mut b, s, "nobody killed while the balloon held pages"),
        o.nobody_killed() || o.lowest_mib == 0,
        "killed",
        Some(o.killed),
    );
    c.check_n(
        named(&mut b, s, "the child got all the memory it asked for"),
        o.got_mib == o.want_mib,
        "MiB touched",
        Some(o.got_mib),
    );
    settles(c, s);
    let actual = get("actual_pages").unwrap_or(0);
    let host_target = get("target_pages").unwrap_or(0);
    c.check_n(
        named(
            &mut b,
            s,
            "the inflate stopped short of the host's target and stays so",
        ),
        actual < host_target && host_target == target,
        "actual_pages",
        Some(actual),
    );
    back_to_zero(c, s);
}

pub fn phase_oom_reload(c: &mut Ctx) {
    let s = "oom-reload";
    let mut b = [0u8; 120];
    for round in 0..2 {
        if !inflated(c, s) {
            break;
        }
        // The page daemon raises vm_lowmem for this instance...
        let first = run_children(c, Driver::Ours, &[1024], false);
        report("oom-reload first", &first);
        // ...and the next one starts within vm.lowmem_period of it.
        let back = unload(c.ours)
            && matches!(sys::kldload(c.ours), Ok(_) | Err(sys::EEXIST))
            && wait_exists(OURS_DESC, 30);
        if !c.check(
            named(&mut b, s, "the driver reloads"),
            back,
            "no dev.vtballoonrs.0",
        ) {
            return;
        }
        // Round 0: the child starts while the balloon inflates; round 1:
        // once the floor has stopped it.
        let ram = get_u64(b"hw.physmem").unwrap_or(0) / PAGE;
        let _ = c.host.ask("set-target", ram * 95 / 100, 30);
        let _ = wait_for("actual_pages", 10, |v| v > 0);
        if round == 1 {
            // The floor holds the rest back once the balloon stops growing.
            let mut last = u64::MAX;
            let deadline = sys::now_ms() + 120_000;
            while sys::now_ms() < deadline {
                let now = get("actual_pages").unwrap_or(0);
                if now == last && get("floor_refused_pages").unwrap_or(0) > 0 {
                    break;
                }
                last = now;
                sys::sleep_ms(500);
            }
        }
        // What the guest can give, as the soak sizes its children.
        let have = free_mib() + get("actual_pages").unwrap_or(0) / PAGES_PER_MIB;
        let mib = have.saturating_sub(free_target_mib() + 256) / 4 * 4;
        let o = run_children(c, Driver::Ours, &[mib], false);
        report(
            if round == 0 {
                "oom-reload inflating"
            } else {
                "oom-reload at the floor"
            },
            &o,
        );
        c.check_n(
            named(&mut b, s, "nobody killed while the balloon held pages"),
            o.nobody_killed() || o.lowest_mib == 0,
            "killed",
            Some(o.killed + o.console_kills.unwrap_or(0)),
        );
        c.check_n(
            named(&mut b, s, "the child got all the memory it asked for"),
            o.got_mib == o.want_mib,
            "MiB touched",
            Some(o.got_mib),
        );
        let _ = wait_for("oom_watching", 60, |v| v == 0);
        back_to_zero(c, s);
    }
}

pub fn phase_oom_control(c: &mut Ctx) {
    let s = "oom-control";
    let mut b = [0u8; 120];
    let mut feats = [0u8; 160];
    let name = crate::sysctl::node("features");
    let has_oom = crate::sysctl::get_str(name.bytes(), &mut feats)
        .is_some_and(|f| f.windows(14).any(|w| w == b"DEFLATE_ON_OOM"));
    c.check(
        named(&mut b, s, "the device offers no DEFLATE_ON_OOM"),
        !has_oom,
        "negotiated",
    );
    if inflated(c, s) {
        let o = run_children(c, Driver::Ours, &[2048], false);
        report(s, &o);
        c.check_n(
            named(
                &mut b,
                s,
                "the child is killed, as expected: the host did not allow deflating",
            ),
            !o.nobody_killed(),
            "not killed",
            Some(o.got_mib),
        );
        c.check_n(
            named(&mut b, s, "the balloon did not give anything back"),
            o.after_mib == o.before_mib && o.events == 0,
            "balloon MiB",
            Some(o.after_mib),
        );
    }
    back_to_zero(c, s);
}

pub fn phase_oom_intree(c: &mut Ctx) {
    let s = "oom-intree";
    let mut b = [0u8; 120];
    if !ensure_none(c) {
        c.check(
            named(&mut b, s, "the in-tree driver attaches"),
            false,
            "could not unload ours",
        );
        return;
    }
    let Some(attached) = load_theirs(c, named(&mut b, s, "the in-tree driver attaches")) else {
        return;
    };
    if !c.check(
        named(&mut b, s, "the in-tree driver attaches"),
        attached,
        "no vtballoon0",
    ) {
        return;
    }
    let pages = three_quarters() * PAGES_PER_MIB;
    let r = c.host.ask("set-target", pages, 30);
    let _ = r;
    let r = c.host.ask("wait-actual", pages, 300);
    if c.check_host(
        named(&mut b, s, "balloon at 3/4 of memory"),
        r,
        |v| v == pages,
        "pages",
    ) {
        let o = run_children(c, Driver::InTree, &[2048], false);
        report("oom-intree (reference: the in-tree driver)", &o);
        Line::new()
            .s("# oom-intree: the in-tree driver's child was ")
            .s(if o.nobody_killed() {
                "NOT killed"
            } else {
                "killed"
            })
            .s(" after touching ")
            .u(o.got_mib)
            .s(" of ")
            .u(o.want_mib)
            .s(" MiB")
            .end();
        c.check(
            named(&mut b, s, "the reference scenario ran to its end"),
            o.finished + o.killed > 0,
            "the child neither finished nor was killed",
        );
    }
    let _ = c.host.ask("set-target", 0, 30);
    let _ = c.host.ask("wait-actual", 0, 300);
    c.check(
        named(&mut b, s, "the in-tree module unloads"),
        unload(THEIRS),
        "kldunload failed",
    );
}

/// The bench's pressure figures for one driver: oom-one's scenario, sent to
/// the host (`bench-oom-*`), which prints them beside the table.
pub fn bench_oom(c: &mut Ctx, driver: Driver) {
    let name = if driver == Driver::Ours {
        "bench vtballoonrs pressure"
    } else {
        "bench virtio_balloon pressure"
    };
    let pages = three_quarters() * PAGES_PER_MIB;
    let _ = c.host.ask("set-target", pages, 30);
    if !matches!(c.host.ask("wait-actual", pages, 300), Reply::Ok(_)) {
        c.check(name, false, "the balloon never reached 3/4 of memory");
        return;
    }
    let o = run_children(c, driver, &[2048], false);
    report(name, &o);
    let relief = match (o.first_event_ms, o.got_mib == o.want_mib) {
        (Some(first), true) => o.ms.saturating_sub(first),
        _ => u64::MAX,
    };
    let ratio = if o.needed_mib() > 0 {
        o.given_mib() * 100 / o.needed_mib()
    } else {
        0
    };
    let mut ok = true;
    for (cmd, v) in [
        ("bench-oom-killed", u64::from(!o.nobody_killed())),
        ("bench-oom-got-mib", o.got_mib),
        ("bench-oom-child-ms", o.ms),
        ("bench-oom-relief-ms", relief),
        ("bench-oom-given-x100", ratio),
    ] {
        ok &= matches!(c.host.ask(cmd, v, 30), Reply::Ok(_));
    }
    c.check(name, ok, "the host did not take the figures");
    let _ = c.host.ask("set-target", 0, 30);
    let _ = c.host.ask("wait-actual", 0, 300);
}
