//! The q35 boot (phases hotplug, stall; after transport-modern): the
//! device going away, as real hosts do it.
//!
//! - hotplug: q35, PCIe native hot-plug. `device_del` while the balloon
//!   holds 1 GiB, then while the host keeps changing its target (an
//!   inflate in flight when the slot goes), each time `device_add` a new
//!   balloon and use it. FreeBSD's pcib powers the slot off before it
//!   detaches the driver, and QEMU removes the device at that moment: the
//!   driver detaches from a device that is already gone (surprise removal:
//!   nothing it posts is answered). Checked: the detach ends, every page
//!   is back on the free lists (within 1% of before inflating), no thread
//!   of ours is left, our malloc type holds nothing. FreeBSD 14.2 does not
//!   hear the first `device_del` ([`crate::rootport`] says why): that is a
//!   skip with the reason, and the root port is kicked;
//! - stall: the host stops answering while the device is still there (bus
//!   mastering off: QEMU stops processing the queues), then kldunload:
//!   bounded waits, the device is reset, every page freed; then the device
//!   is given back to a fresh load of the driver.

use crate::balloon::{host_agrees, pause_reporting, resize, resume_reporting};
use crate::check::{ask_ok, Ctx};
use crate::kinfo::{kernel_threads, malloc_type, msgbuf_count};
use crate::kld::OURS_DESC;
use crate::out::Line;
use crate::proto::Reply;
use crate::rootport::RootPort;
use crate::sys;
use crate::sysctl::{exists, free_bytes, get, get_str, mib_of, wait_exists, PAGES_PER_MIB};

/// Our threads' names start with this (balloon, reporting, kick).
const THREADS: &[u8] = b"vtballoonrs";
/// Our malloc(9) type.
const MTYPE: &[u8] = b"vtballoonrs";
/// What detach logs when the host did not take the balloon back.
const RESET_LINE: &[u8] = b"host did not take the balloon back in time";

/// What is left of the driver once its device is gone: pages, threads,
/// memory. `free0`: free bytes with an empty balloon before inflating.
fn nothing_left(c: &mut Ctx, what: &str, free0: u64, module_loaded: bool) {
    let mut b = [0u8; 120];
    let name = |b: &mut [u8; 120], s: &str| -> usize {
        let mut n = 0;
        for &x in what.as_bytes().iter().chain(b": ").chain(s.as_bytes()) {
            if n < b.len() {
                b[n] = x;
                n += 1;
            }
        }
        n
    };
    // Freed pages may take a moment to show in the count.
    let deadline = sys::now_ms() + 20_000;
    while free_bytes() < free0 - free0 / 100 && sys::now_ms() < deadline {
        sys::sleep_ms(100);
    }
    let free = free_bytes();
    let short = free0.saturating_sub(free);
    Line::new()
        .s("# ")
        .s(what)
        .s(": free ")
        .u(mib_of(free))
        .s(" MiB, before inflating ")
        .u(mib_of(free0))
        .s(" MiB")
        .end();
    let n = name(
        &mut b,
        "every ballooned page is back (free within 1% of before)",
    );
    c.check_n(
        core::str::from_utf8(&b[..n]).unwrap_or("?"),
        short <= free0 / 100,
        "short by (MiB)",
        Some(mib_of(short)),
    );
    let t = kernel_threads(THREADS);
    let n = name(&mut b, "no vtballoonrs thread is left");
    c.check_n(
        core::str::from_utf8(&b[..n]).unwrap_or("?"),
        t == Some(0),
        "threads",
        t,
    );
    let m = malloc_type(MTYPE);
    if module_loaded {
        let n = name(
            &mut b,
            "our malloc type holds nothing (module still loaded)",
        );
        c.check_n(
            core::str::from_utf8(&b[..n]).unwrap_or("?"),
            m.is_some_and(|(allocs, bytes)| allocs == 0 && bytes == 0),
            "bytes",
            m.map(|(_, bytes)| bytes),
        );
    } else {
        let n = name(&mut b, "our malloc type is gone with the module");
        c.check(
            core::str::from_utf8(&b[..n]).unwrap_or("?"),
            m.is_none(),
            "still registered",
        );
    }
}

/// How long a `device_del` is given before the guest is taken not to act
/// on it: FreeBSD's pcib waits 5 s after the Attention Button, then powers
/// the slot off; TCG adds a little.
const UNPLUG_WAIT_S: u64 = 30;

/// Asks the host to unplug the balloon, as a user would (`device_del`);
/// true once the driver's device is gone. When FreeBSD does not act on it
/// and the root port shows why ([`crate::rootport`]: Command Completed
/// never acknowledged since boot), that is a skip with the reason, and the
/// port is kicked: the pending `device_del` then goes through, and that is
/// what is checked (named so). Without that sign the unplug fails.
pub fn unplug(c: &mut Ctx, name: &str, cmd: &str, port: Option<&RootPort>) -> bool {
    let t0 = sys::now_ms();
    let r = c.host.ask(cmd, UNPLUG_WAIT_S, 240);
    let (r, kicked) = match (r, port) {
        (Reply::Ok(_), _) | (Reply::NoHost, _) | (_, None) => (r, false),
        (_, Some(port)) => {
            let regs = port.show("after device_del");
            if !regs.is_some_and(|r| r.completion_stuck()) {
                (r, false)
            } else {
                let mut b = [0u8; 120];
                let user = crate::check::concat(&mut b, name.as_bytes(), b" (as a user gets it)");
                c.skip(
                    user,
                    "FreeBSD 14.2 does not act on device_del: pcib's first slot command \
                     completed while its bus mastering was still off, QEMU's MSI-X was \
                     lost and no later event interrupts (see rootport.rs)",
                );
                let kicked = port.kick();
                port.show("kicked (HPIE off and on)");
                (c.host.ask("unplug-wait", UNPLUG_WAIT_S, 240), kicked)
            }
        }
    };
    let gone = wait_exists_not(OURS_DESC, 60);
    let ms = sys::now_ms() - t0;
    Line::new()
        .s("# ")
        .s(name)
        .s(": device gone after ")
        .u(ms)
        .s(" ms (QMP device_del to DEVICE_DELETED ")
        .u(match r {
            Reply::Ok(v) => v,
            _ => 0,
        })
        .s(" ms")
        .s(if kicked { " after the kick)" } else { ")" })
        .end();
    let mut b = [0u8; 120];
    let name = if kicked {
        crate::check::concat(&mut b, name.as_bytes(), b" (root port kicked)")
    } else {
        name
    };
    c.check_host(name, r, |_| gone, "dev.vtballoonrs.0 still there")
}

fn wait_exists_not(name: &[u8], secs: u64) -> bool {
    let deadline = sys::now_ms() + secs * 1000;
    while exists(name) {
        if sys::now_ms() >= deadline {
            return false;
        }
        sys::sleep_ms(100);
    }
    true
}

/// The host plugs a new balloon; the loaded driver attaches and works.
fn replug(c: &mut Ctx, what: &str) {
    let mut b = [0u8; 100];
    let name = crate::check::concat(
        &mut b,
        what.as_bytes(),
        b": device_add, the driver attaches",
    );
    if !ask_ok(c, name, "plug", 0, 60) {
        return;
    }
    let attached = wait_exists(OURS_DESC, 60);
    if !c.check(name, attached, "no dev.vtballoonrs.0") {
        return;
    }
    let mut b = [0u8; 100];
    let name = crate::check::concat(
        &mut b,
        what.as_bytes(),
        b": the new balloon inflates to 256 MiB",
    );
    if resize(c, name, 256, 120) {
        host_agrees(c, "and the host sees it", 256);
    }
    resize(c, "and deflates to 0", 0, 120);
}

pub fn phase_hotplug(c: &mut Ctx) {
    let port = RootPort::of_balloon();
    c.check(
        "the balloon's root port is found (/dev/pci)",
        port.is_some(),
        "no PCI Express bridge above virtio_pci0",
    );
    if let Some(p) = &port {
        p.show("at the start");
    }
    let before = malloc_type(MTYPE);
    let threads = kernel_threads(THREADS);
    Line::new()
        .s("# attached: vtballoonrs threads ")
        .u(threads.unwrap_or(0))
        .s(", malloc type holds ")
        .u(before.map_or(0, |m| m.1))
        .s(" bytes in ")
        .u(before.map_or(0, |m| m.0))
        .s(" allocations")
        .end();
    c.check(
        "the thread and malloc checks see the attached driver",
        threads.is_some_and(|t| t >= 2) && before.is_some_and(|m| m.0 > 0),
        "no threads or no allocations seen",
    );

    // 1. Unplugged while the balloon holds 1 GiB. (Reporting is paused so
    // free memory stays put; the setting goes with the device.)
    let _ = pause_reporting();
    resize(c, "hotplug: empty balloon", 0, 120);
    let free0 = free_bytes();
    let resets = msgbuf_count(RESET_LINE).unwrap_or(0);
    if resize(c, "hotplug: inflate to 1 GiB", 1024, 240)
        && unplug(
            c,
            "hot-unplug while the balloon holds 1 GiB",
            "unplug",
            port.as_ref(),
        )
    {
        let seen = msgbuf_count(RESET_LINE).unwrap_or(0) > resets;
        Line::new()
            .s("# the driver ")
            .s(if seen {
                "timed out waiting for the gone device and reset it"
            } else {
                "got its pages back from the host before the device went"
            })
            .end();
        nothing_left(c, "hot-unplug at 1 GiB", free0, true);
    }
    replug(c, "re-plug");

    // 2. Unplugged while the host keeps moving its target: the slot goes
    // in the middle of an inflate or deflate.
    let _ = pause_reporting();
    let free0 = free_bytes();
    let watch = Watcher::start();
    if let Some(p) = &port {
        p.show("before the second device_del");
    }
    if unplug(
        c,
        "hot-unplug while the balloon resizes",
        "unplug-busy",
        port.as_ref(),
    ) {
        if let Some(w) = watch {
            let (actual, target, samples) = w.last();
            Line::new()
                .s("# the device went with actual ")
                .u(actual / PAGES_PER_MIB)
                .s(" MiB, target ")
                .u(target / PAGES_PER_MIB)
                .s(" MiB (")
                .s(if target > actual {
                    "inflating"
                } else if target < actual {
                    "deflating"
                } else {
                    "at the target"
                })
                .s("), last of ")
                .u(samples)
                .s(" samples")
                .end();
            c.check(
                "the balloon held pages when the device went",
                actual > 0,
                "empty",
            );
            w.stop();
        }
        nothing_left(c, "hot-unplug while resizing", free0, true);
    }
    replug(c, "second re-plug");
}

/// A child that samples actual_pages and target_pages every 5 ms into a
/// shared page until the node is gone or it is told to stop.
struct Watcher {
    pid: u64,
    page: u64,
}

impl Watcher {
    fn start() -> Option<Watcher> {
        let page = sys::mmap_anon(4096, true).ok()?;
        match sys::fork() {
            Ok(0) => {
                let slot = |i: u64| (page + 8 * i) as *mut u64;
                loop {
                    // SAFETY: slot 3 of the page shared with the parent.
                    if unsafe { core::ptr::read_volatile(slot(3)) } != 0 {
                        sys::exit(0);
                    }
                    match (get("actual_pages"), get("target_pages")) {
                        (Some(a), Some(t)) => {
                            // SAFETY: slots 0-2 of the shared page, written
                            // only by this child.
                            unsafe {
                                core::ptr::write_volatile(slot(0), a);
                                core::ptr::write_volatile(slot(1), t);
                                let n = core::ptr::read_volatile(slot(2));
                                core::ptr::write_volatile(slot(2), n + 1);
                            }
                        }
                        _ => sys::exit(0),
                    }
                    sys::sleep_ms(5);
                }
            }
            Ok(pid) => Some(Watcher { pid, page }),
            Err(_) => None,
        }
    }

    /// The last actual and target seen, and the number of samples.
    fn last(&self) -> (u64, u64, u64) {
        let slot = |i: u64| (self.page + 8 * i) as *const u64;
        // SAFETY: the shared page mapped in `start`.
        unsafe {
            (
                core::ptr::read_volatile(slot(0)),
                core::ptr::read_volatile(slot(1)),
                core::ptr::read_volatile(slot(2)),
            )
        }
    }

    fn stop(self) {
        // SAFETY: slot 3 of the shared page: the stop flag.
        unsafe { core::ptr::write_volatile((self.page + 24) as *mut u64, 1) };
        let _ = crate::child::reap(self.pid, 10);
    }
}

/// The PCI selector (domain, bus, slot, function) of virtio_pci0.
fn virtio_pci_sel() -> Option<[u32; 4]> {
    let mut b = [0u8; 160];
    crate::rootport::dbsf(get_str(b"dev.virtio_pci.0.%location", &mut b)?)
}

/// PCI command register and its bus master enable bit.
const PCIR_COMMAND: u32 = 0x04;
const PCIM_CMD_BUSMASTEREN: u32 = 0x4;

pub fn phase_stall(c: &mut Ctx) {
    const NAME: &str = "stall: the host stops answering (bus mastering off)";
    let Some(sel) = virtio_pci_sel() else {
        c.check(NAME, false, "no dbsf in dev.virtio_pci.0.%location");
        return;
    };
    let paused = pause_reporting();
    resize(c, "stall: empty balloon", 0, 120);
    let free0 = free_bytes();
    if !resize(c, "stall: inflate to 512 MiB", 512, 240) {
        resume_reporting(paused);
        return;
    }
    let Ok(cmd) = sys::pci_config(sel, PCIR_COMMAND, 2, None) else {
        c.check(NAME, false, "cannot read the command register (/dev/pci)");
        return;
    };
    let cmd = cmd as u32;
    let off = sys::pci_config(sel, PCIR_COMMAND, 2, Some(cmd & !PCIM_CMD_BUSMASTEREN));
    if !c.check(NAME, off.is_ok(), "cannot write the command register") {
        return;
    }
    // The host no longer takes buffers: a new target goes unanswered.
    let _ = c.host.ask("set-target", 768 * PAGES_PER_MIB, 30);
    sys::sleep_ms(2_000);
    let resets = msgbuf_count(RESET_LINE).unwrap_or(0);
    let t0 = sys::now_ms();
    let unloaded = crate::kld::unload(c.ours);
    let ms = sys::now_ms() - t0;
    Line::new()
        .s("# stall: kldunload took ")
        .u(ms)
        .s(" ms with a host that does not answer")
        .end();
    c.check(
        "stall: kldunload ends (bounded waits for the host)",
        unloaded && !exists(OURS_DESC),
        "kldunload failed",
    );
    let reset = msgbuf_count(RESET_LINE).unwrap_or(0) > resets;
    c.check(
        "stall: detach gave up waiting and reset the device",
        reset,
        "no reset logged",
    );
    nothing_left(c, "stall", free0, false);
    // The device is given back to a fresh driver.
    let _ = sys::pci_config(sel, PCIR_COMMAND, 2, Some(cmd));
    let _ = c.host.ask("set-target", 0, 30);
    let loaded = crate::kld::ensure_ours(c);
    c.check(
        "stall: bus mastering back on, kldload attaches again",
        loaded.is_ok(),
        loaded.err().unwrap_or(""),
    );
    if loaded.is_ok() {
        if resize(c, "stall: the fresh driver inflates to 64 MiB", 64, 120) {
            host_agrees(c, "stall: and the host sees it", 64);
        }
        resize(c, "stall: back to 0", 0, 120);
    }
}
