//! Loading and unloading the balloon drivers: ours (vtballoonrs.ko) and
//! the in-tree one (virtio_balloon.ko).

use crate::check::Ctx;
use crate::sys;
use crate::sysctl::{exists, wait_exists};

pub const OURS_DEFAULT: &[u8] = b"/boot/modules/vtballoonrs.ko\0";
pub const THEIRS: &[u8] = b"/boot/modules/virtio_balloon.ko\0";
pub const THEIRS_DESC: &[u8] = b"dev.vtballoon.0.%desc";
pub const OURS_DESC: &[u8] = b"dev.vtballoonrs.0.%desc";

/// kldunload of the file `path` if loaded; true when it is gone.
pub fn unload(path: &[u8]) -> bool {
    match sys::kldfind(path) {
        Ok(id) => sys::kldunload(id).is_ok(),
        Err(_) => true,
    }
}

/// Loads our module (unloading the in-tree one first) and waits for the
/// device to attach. Err: what went wrong.
pub fn ensure_ours(c: &Ctx) -> Result<(), &'static str> {
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
pub fn ensure_none(c: &Ctx) -> bool {
    unload(c.ours) && unload(THEIRS)
}

/// Loads the in-tree module; None (and a skip) if the image has none.
pub fn load_theirs(c: &mut Ctx, name: &str) -> Option<bool> {
    match sys::kldload(THEIRS) {
        Err(sys::ENOENT) => {
            c.skip(name, "virtio_balloon.ko is not on this system");
            None
        }
        Ok(_) | Err(sys::EEXIST) => Some(wait_exists(THEIRS_DESC, 30)),
        Err(_) => Some(false),
    }
}
