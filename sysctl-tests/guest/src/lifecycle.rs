//! The lifecycle boot (phases unload, cycles, swap): kldunload with the
//! balloon inflated, load/unload cycles, the device moving between our
//! driver and the in-tree one.

use crate::balloon::{host_agrees, pause_reporting, resize, resume_reporting};
use crate::check::{ask_ok, Ctx};
use crate::kld::{ensure_none, ensure_ours, load_theirs, unload, OURS_DESC, THEIRS, THEIRS_DESC};
use crate::out::Line;
use crate::proto::Reply;
use crate::sys;
use crate::sysctl::{exists, free_bytes, mib_of, wait_exists, wait_for, MIB, PAGES_PER_MIB};

pub fn phase_unload(c: &mut Ctx) {
    let paused = pause_reporting();
    // Free memory with an empty balloon, as the baseline.
    resize(c, "empty balloon before unload", 0, 120);
    let free0 = free_bytes();
    if !resize(c, "inflate to 512 MiB before unload", 512, 240) {
        resume_reporting(paused);
        return;
    }
    let detaches = crate::devctl::count(b"DETACH");
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
    c.check(
        "kldunload raises a devd DETACH event",
        crate::devctl::count(b"DETACH") > detaches,
        "no !system=VTBALLOON type=DETACH on /dev/devctl",
    );
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

pub fn phase_cycles(c: &mut Ctx) {
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

pub fn phase_swap(c: &mut Ctx) {
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
