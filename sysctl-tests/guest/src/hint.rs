//! The boots with QEMU's free page hinting device
//! (`free-page-hint=on,iothread=io0`): report-hint (phase hint-features,
//! then the report boot's phase on this device; not the nodes phase, which
//! checks that the default device leaves FREE_PAGE_HINT unnegotiated).

use crate::check::Ctx;
use crate::out::Line;
use crate::sysctl::{get_str, node};

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
