//! The basic scenario on each virtio-pci transport (phases
//! transport-legacy, in the hostile boot, and transport-modern, in the
//! hotplug boot): a `disable-modern=on` or `disable-legacy=on` device, with
//! a target whose four bytes all differ, so that a config field read or
//! written in the wrong byte order (the legacy transport is guest-endian,
//! the modern one little-endian) or only in part shows.

use crate::balloon::{host_agrees, pause_reporting, resize, resume_reporting};
use crate::check::{ask_ok, Ctx};
use crate::out::Line;
use crate::proto::Reply;
use crate::sysctl::{free_bytes, get, get_str, get_u64, mib_of, node, wait_for, MIB};

fn has_feature(name: &[u8]) -> bool {
    let mut f = [0u8; 200];
    let feats = get_str(node("features").bytes(), &mut f).unwrap_or(&[]);
    feats.split(|&b| b == b',').any(|w| w == name)
}

/// The transport virtio_pci reports: `dev.virtio_pci.0.%desc` says
/// "(modern)" or "(legacy)".
fn transport_desc(buf: &mut [u8; 128]) -> &[u8] {
    get_str(b"dev.virtio_pci.0.%desc", buf).unwrap_or(&[])
}

pub fn phase_transport_legacy(c: &mut Ctx) {
    transport(c, false);
}

pub fn phase_transport_modern(c: &mut Ctx) {
    transport(c, true);
}

/// The basic scenario on one transport.
fn transport(c: &mut Ctx, modern: bool) {
    let want: &[u8] = if modern { b"(modern)" } else { b"(legacy)" };
    let mut d = [0u8; 128];
    let desc = transport_desc(&mut d);
    Line::new().s("# virtio_pci0: ").b(desc).end();
    c.check(
        if modern {
            "the device is modern-only virtio-pci (disable-legacy=on)"
        } else {
            "the device is legacy virtio-pci (disable-modern=on)"
        },
        desc.windows(want.len()).any(|w| w == want),
        "virtio_pci reports another transport",
    );
    c.check(
        "VERSION_1 is negotiated exactly on the modern transport",
        has_feature(b"VERSION_1") == modern,
        "VERSION_1",
    );
    let paused = pause_reporting();
    let free0 = free_bytes();
    if resize(c, "transport: inflate to 256 MiB", 256, 120) {
        host_agrees(c, "transport: the host sees 256 MiB", 256);
        let drop = free0.saturating_sub(free_bytes());
        c.check_n(
            "transport: free memory fell by 256 MiB",
            (248 * MIB..=272 * MIB).contains(&drop),
            "fell by (MiB)",
            Some(mib_of(drop)),
        );
    }
    // Four different bytes: a field read or written byte-swapped, or only
    // in part, shows as another number.
    const ODD: u64 = 0x0001_2345;
    if ask_ok(c, "transport: target 0x12345 pages", "set-target", ODD, 30) {
        let t = wait_for("target_pages", 30, |v| v == ODD);
        c.check_n(
            "transport: num_pages read as the host wrote it (0x12345)",
            t.is_ok(),
            "target_pages",
            t.err().flatten(),
        );
        let a = wait_for("actual_pages", 120, |v| v == ODD);
        c.check_n(
            "transport: actual_pages reaches 0x12345",
            a.is_ok(),
            "actual_pages",
            a.err().flatten(),
        );
        let r = c.host.ask("host-actual", 0, 30);
        c.check_host(
            "transport: the host reads actual as the driver wrote it (0x12345)",
            r,
            |v| v == ODD,
            "host pages",
        );
    }
    if c.host.ask("stats-poll", 2, 60) == Reply::Ok(0) {
        let total = get_u64(b"vm.stats.vm.v_page_count").unwrap_or(0) * 4;
        let r = c.host.ask("stats-get", 5, 30);
        c.check_host(
            "transport: stat-total-memory is v_page_count",
            r,
            |v| v == total,
            "KiB",
        );
    }
    if resize(c, "transport: back to 0", 0, 120) {
        host_agrees(c, "transport: the host sees an empty balloon", 0);
    }
    for leaf in ["errors", "host_timeouts"] {
        let v = get(leaf);
        c.check_n(
            if leaf == "errors" {
                "transport: no errors"
            } else {
                "transport: no host timeouts"
            },
            v == Some(0),
            "counted",
            v,
        );
    }
    resume_reporting(paused);
}
