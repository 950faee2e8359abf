//! The boots with QEMU's free page hinting device
//! (`free-page-hint=on,iothread=io0`): report-hint (phase hint-features,
//! then the report boot's phase on this device; not the nodes phase, which
//! checks that the default device leaves FREE_PAGE_HINT unnegotiated);
//! hint-migrate, live migration with hinting off and on; the migrate-churn
//! probes).

use crate::check::Ctx;
use crate::child::{reap, toucher};
use crate::out::Line;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{free_bytes, get, get_str, mib_of, node, set, wait_for, PAGE};

/// The negotiated features, as the `features` node lists them.
fn features(buf: &mut [u8; 200]) -> &[u8] {
    get_str(node("features").bytes(), buf).unwrap_or(&[])
}

fn has(feats: &[u8], name: &[u8]) -> bool {
    feats.split(|&b| b == b',').any(|x| x == name)
}

/// On a device offering FREE_PAGE_HINT (and, by QEMU's default,
/// PAGE_POISON): the driver accepts FREE_PAGE_HINT, so its queues are
/// numbered as QEMU numbers them (reporting is queue 4), and never
/// PAGE_POISON.
pub fn phase_hint_features(c: &mut Ctx) {
    c.check_n(
        "hinting is on by default (hint_enabled = 1)",
        get("hint_enabled") == Some(1),
        "hint_enabled",
        get("hint_enabled"),
    );
    let mut f = [0u8; 200];
    let feats = features(&mut f);
    Line::new().s("# features: ").b(feats).end();
    c.check(
        "FREE_PAGE_HINT is negotiated when the device offers it",
        has(feats, b"FREE_PAGE_HINT"),
        "not negotiated",
    );
    c.check(
        "REPORTING is negotiated beside it (reporting on QEMU's queue 4)",
        has(feats, b"REPORTING"),
        "not negotiated",
    );
    c.check(
        "PAGE_POISON is not negotiated (offered by QEMU's default; FreeBSD does not poison freed pages)",
        !has(feats, b"PAGE_POISON"),
        "negotiated",
    );
}

const MIB: u64 = crate::sysctl::MIB;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Writes (or checks) a pseudo-random pattern over `len` bytes at `buf`;
/// the words that differ.
fn pattern(buf: u64, len: u64, write: bool) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut bad = 0;
    let mut off = 0;
    while off < len {
        let v = xorshift(&mut x);
        let p = (buf + off) as *mut u64;
        // SAFETY: inside our private mapping of `len` bytes.
        unsafe {
            if write {
                core::ptr::write_volatile(p, v);
            } else if core::ptr::read_volatile(p) != v {
                bad += 1;
            }
        }
        off += 8;
    }
    bad
}

fn hint_line(what: &str) {
    let mut l = Line::new();
    l.s("# ").s(what);
    for leaf in [
        "hint_rounds",
        "hint_pages",
        "hint_held_pages",
        "hint_done_pages",
        "hint_pressure_pages",
        "hint_errors",
    ] {
        l.s(" ").s(leaf).s("=").u(get(leaf).unwrap_or(u64::MAX));
    }
    l.s(" free_MiB=").u(mib_of(free_bytes()));
    l.end();
}

/// Live migration with free page hinting off, then on (the `hint_enabled`
/// setting: same guest, same free memory, same run). Reporting is off so
/// that free memory keeps what a child wrote into it (reported memory
/// migrates as zero pages whatever hinting does). The host migrates the
/// guest to `/dev/null` (`exec:cat`) and resumes it, then to a second QEMU
/// where it runs on; both replies are QMP's `ram.transferred` in MiB. A
/// pattern written before must be intact on the destination, the hinted
/// pages must come back at DONE, and a child must then be able to take
/// most of free memory.
pub fn phase_hint_migrate(c: &mut Ctx) {
    set("report_enabled", 0);
    let off_set = set("hint_enabled", 0);
    c.check("hint_enabled takes 0", off_set, "refused");
    // A reporting pass under way finishes.
    sys::sleep_ms(3_000);
    let len = 64 * MIB;
    let Ok(buf) = sys::mmap_anon(len, false) else {
        c.check("mmap a 64 MiB pattern", false, "mmap failed");
        return;
    };
    pattern(buf, len, true);
    let dirty = mib_of(free_bytes()).saturating_sub(200) / 4 * 4;
    let st = reap(toucher(dirty, 0, None), 600);
    c.check(
        "a child wrote most of free memory and exited",
        st == Some(0),
        "child failed",
    );
    let free_mib = mib_of(free_bytes());
    hint_line("before the migration with hinting off");
    let off = match c.host.ask("migrate-null", 0, 900) {
        Reply::Ok(v) => Some(v),
        r => {
            c.check_host("the host migrated the guest (hinting off)", r, |_| true, "");
            None
        }
    };
    c.check_n(
        "hinting off: no round was hinted",
        get("hint_pages") == Some(0),
        "pages hinted",
        get("hint_pages"),
    );
    c.check("hint_enabled takes 1", set("hint_enabled", 1), "refused");
    hint_line("before the migration with hinting on");
    let free_on = mib_of(free_bytes());
    let on = match c.host.ask("migrate-dest", 0, 900) {
        Reply::Ok(v) => Some(v),
        r => {
            c.check_host("the host migrated the guest (hinting on)", r, |_| true, "");
            None
        }
    };
    hint_line("on the destination");
    let bad = pattern(buf, len, false);
    c.check_n(
        "the pattern written before the migrations is intact on the destination",
        bad == 0,
        "words differ",
        Some(bad),
    );
    let hinted = get("hint_pages").unwrap_or(0);
    c.check_n(
        "hinting on: the host asked (hint_rounds > 0)",
        get("hint_rounds").is_some_and(|r| r > 0),
        "no round",
        get("hint_rounds"),
    );
    c.check_n(
        "hinting on: free memory was hinted (at least a quarter of it)",
        hinted * PAGE / MIB >= free_on / 4,
        "MiB hinted",
        Some(hinted * PAGE / MIB),
    );
    let back = wait_for("hint_held_pages", 30, |v| v == 0);
    c.check_n(
        "every hinted page came back after DONE",
        back.is_ok(),
        "pages still held",
        back.err().flatten(),
    );
    // The hinter may post blocks on the destination before it reads DONE
    // (the host ignores them): count what it hinted once it holds none.
    let hinted_all = get("hint_pages").unwrap_or(0);
    c.check_n(
        "every hinted page came back, on DONE or under pressure",
        get("hint_done_pages").unwrap_or(0) + get("hint_pressure_pages").unwrap_or(0) == hinted_all,
        "done + pressure pages differ from hinted",
        get("hint_done_pages"),
    );
    c.check_n(
        "no hint errors or host timeouts",
        get("hint_errors") == Some(0),
        "errors",
        get("hint_errors"),
    );
    if let (Some(off), Some(on)) = (off, on) {
        Line::new()
            .s("# migration: hinting off ")
            .u(off)
            .s(" MiB, hinting on ")
            .u(on)
            .s(" MiB transferred; ")
            .u(hinted * PAGE / MIB)
            .s(" MiB hinted; free ")
            .u(free_mib)
            .s(" / ")
            .u(free_on)
            .s(" MiB before each")
            .end();
        // Hinting races QEMU's first pass: under TCG the guest hints about
        // as fast as QEMU sends at its default 128 MiB/s, so part of free
        // memory is sent before its hint arrives (916–1093 MiB of 1852
        // saved in three runs here).
        c.check_n(
            "hinting on transferred less than off by at least a third of the free memory",
            on + free_on / 3 <= off,
            "MiB transferred with hinting on",
            Some(on),
        );
    }
    // The destination's page queues and free lists are sound: a child takes
    // most of free memory, the hinted blocks included.
    let most = mib_of(free_bytes()).saturating_sub(100) / 4 * 4;
    let st = reap(toucher(most, 0, None), 600);
    c.check(
        "after the migration a child took most of free memory and exited",
        st == Some(0),
        "child failed",
    );
    set("report_enabled", 1);
}

/// Maps, touches and unmaps 32 MiB in a loop until `flag` is set: the guest
/// frees memory all the time (so a reporter keeps reporting) while the host
/// migrates it.
fn churn_child(flag: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let n = 32 * MIB;
            // SAFETY: the shared flag page; our own fresh mappings.
            unsafe {
                while core::ptr::read_volatile(flag as *const u64) == 0 {
                    let Ok(p) = sys::mmap_anon(n, false) else {
                        sys::exit(2)
                    };
                    let mut off = 0;
                    while off < n {
                        core::ptr::write_volatile((p + off) as *mut u64, off);
                        off += PAGE;
                    }
                    // The mapping is ours alone and used no more.
                    let _ = sys::munmap(p, n);
                }
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// Exit status of [`writer_child`] when it read back a stale value.
const STALE: i32 = 3;

/// Writes its pass number into every page of 16 MiB in a loop until
/// `flag` is set, first checking that each page still holds the previous
/// pass's number: a write lost in the migration shows as a stale value
/// when the writer comes back to that page on the destination (its last
/// write before the switch is what the host must have carried over).
/// Exits 0, or [`STALE`].
fn writer_child(flag: u64) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let n = 16 * MIB;
            let Ok(p) = sys::mmap_anon(n, false) else {
                sys::exit(2)
            };
            let mut stale = 0u64;
            let mut pass = 1u64;
            // SAFETY: the shared flag page; our own fresh mapping.
            unsafe {
                loop {
                    let mut off = 0;
                    while off < n {
                        let w = (p + off) as *mut u64;
                        if core::ptr::read_volatile(w) != pass - 1 {
                            stale += 1;
                        }
                        core::ptr::write_volatile(w, pass);
                        off += PAGE;
                    }
                    if core::ptr::read_volatile(flag as *const u64) != 0 {
                        break;
                    }
                    pass += 1;
                }
            }
            sys::exit(if stale == 0 { 0 } else { STALE as u64 })
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// Which driver and reporting setting a churn migration runs with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Churn {
    /// Ours, free page reporting on.
    Report,
    /// Ours, reporting off.
    Quiet,
    /// The in-tree driver (no reporting).
    InTree,
}

/// A busy guest migrated to a second QEMU: free memory written, then a
/// child mapping and unmapping memory in a loop during the migration; on
/// the destination the pattern is checked and children take most of free
/// memory twice (the page daemon walks its queues: a corrupted page
/// structure panics there). For the corruption seen after migrations with
/// free page reporting on: run with each driver and setting.
fn migrate_churn(c: &mut Ctx, how: Churn) {
    if how == Churn::InTree {
        if !crate::kld::ensure_none(c) {
            c.check(
                "the in-tree driver attaches",
                false,
                "could not unload ours",
            );
            return;
        }
        let Some(attached) = crate::kld::load_theirs(c, "the in-tree driver attaches") else {
            return;
        };
        if !c.check("the in-tree driver attaches", attached, "no vtballoon0") {
            return;
        }
    } else {
        set("report_enabled", i32::from(how == Churn::Report));
    }
    let len = 64 * MIB;
    let (Ok(buf), Ok(flag)) = (sys::mmap_anon(len, false), sys::mmap_anon(PAGE, true)) else {
        c.check("mmap", false, "mmap failed");
        return;
    };
    pattern(buf, len, true);
    let dirty = mib_of(free_bytes()).saturating_sub(300) / 4 * 4;
    let st = reap(toucher(dirty, 0, None), 600);
    c.check(
        "a child wrote most of free memory and exited",
        st == Some(0),
        "child failed",
    );
    sys::sleep_ms(10_000);
    let pid = churn_child(flag);
    let writer = writer_child(flag);
    sys::sleep_ms(5_000);
    Line::new()
        .s("# before the migration: report_blocks=")
        .u(get("report_blocks").unwrap_or(0))
        .s(" free_MiB=")
        .u(mib_of(free_bytes()))
        .end();
    // At 4 GiB/s: at QEMU's default 128 MiB/s a busy guest never converges.
    let r = c.host.ask("migrate-dest", 4096, 900);
    c.check_host(
        "the host migrated the busy guest to a second QEMU",
        r,
        |_| true,
        "",
    );
    Line::new()
        .s("# on the destination: report_blocks=")
        .u(get("report_blocks").unwrap_or(0))
        .end();
    // SAFETY: the shared flag page.
    unsafe { core::ptr::write_volatile(flag as *mut u64, 1) };
    c.check(
        "the churning child ran on and exited",
        reap(pid, 300) == Some(0),
        "child failed",
    );
    let st = reap(writer, 300);
    c.check(
        "no write was lost: the writing child read back each page's last value across the migration",
        st == Some(0),
        if st == Some(STALE) {
            "a page held a stale value (a write lost)"
        } else {
            "child failed"
        },
    );
    let bad = pattern(buf, len, false);
    c.check_n(
        "the pattern written before the migration is intact",
        bad == 0,
        "words differ",
        Some(bad),
    );
    for round in [
        "a child took most free memory on the destination",
        "and again",
    ] {
        let most = mib_of(free_bytes()).saturating_sub(64) / 4 * 4;
        c.check(
            round,
            reap(toucher(most, 0, None), 600) == Some(0),
            "child failed",
        );
    }
}

pub fn phase_migrate_churn(c: &mut Ctx) {
    migrate_churn(c, Churn::Report)
}

pub fn phase_migrate_churn_off(c: &mut Ctx) {
    migrate_churn(c, Churn::Quiet)
}

pub fn phase_migrate_churn_intree(c: &mut Ctx) {
    migrate_churn(c, Churn::InTree)
}
