//! The intree boot: the in-tree driver alone follows the host.

use crate::check::{ask_ok, Ctx};
use crate::kld::{ensure_none, load_theirs, unload, THEIRS};
use crate::sysctl::PAGES_PER_MIB;

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

pub fn phase_intree(c: &mut Ctx) {
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
