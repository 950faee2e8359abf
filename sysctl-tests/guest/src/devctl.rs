//! The driver's devd(8) events, read from /dev/devctl (what devd would
//! read; no devd runs in the test image). The kernel queues events only
//! while someone has the device open, so it is opened before the driver is
//! loaded and kept open; [`seen`] reads what came since and looks for a
//! `!system=VTBALLOON ... type=<TYPE>` line.

use crate::sys;

/// What was read so far (the last lines, if more came than fit).
static mut LOG: [u8; 16384] = [0; 16384];
static mut LEN: usize = 0;
static mut FD: Option<u64> = None;

/// Opens /dev/devctl; false if it cannot be (then [`seen`] finds nothing).
pub fn open() -> bool {
    let fd = sys::open(b"/dev/devctl\0", sys::O_RDONLY).ok();
    // SAFETY: single-threaded program; only this module touches FD.
    unsafe { *core::ptr::addr_of_mut!(FD) = fd };
    fd.is_some()
}

/// Takes what the kernel queued since the last call.
fn drain() {
    // SAFETY: single-threaded program; only this module touches these, and
    // no reference into LOG outlives a call.
    let (fd, log, len) = unsafe {
        (
            *core::ptr::addr_of!(FD),
            &mut *core::ptr::addr_of_mut!(LOG),
            &mut *core::ptr::addr_of_mut!(LEN),
        )
    };
    let Some(fd) = fd else { return };
    loop {
        if *len > log.len() - 1024 {
            // Keep the newer half.
            let half = log.len() / 2;
            log.copy_within(*len - half..*len, 0);
            *len = half;
        }
        // devctl's read blocks whatever the open flags (only FIONBIO makes
        // it return): read only what poll says is there.
        if !sys::poll_in(fd, 0) {
            return;
        }
        match sys::read(fd, &mut log[*len..]) {
            Ok(n) if n > 0 => *len += n as usize,
            _ => return,
        }
    }
}

/// Number of VTBALLOON events of `kind` (e.g. `b"LOWMEM"`) read so far.
pub fn count(kind: &[u8]) -> usize {
    drain();
    // SAFETY: as in `drain`; a shared view for this call only.
    let (all, len) = unsafe { (&*core::ptr::addr_of!(LOG), *core::ptr::addr_of!(LEN)) };
    let log = &all[..len];
    let mut want = [0u8; 24];
    let t = b"type=";
    want[..t.len()].copy_from_slice(t);
    let n = t.len() + kind.len().min(want.len() - t.len());
    want[t.len()..n].copy_from_slice(&kind[..n - t.len()]);
    log.split(|&b| b == b'\n')
        .filter(|l| contains(l, b"system=VTBALLOON") && contains_word(l, &want[..n]))
        .count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `needle` followed by a space or the end of the line.
fn contains_word(hay: &[u8], needle: &[u8]) -> bool {
    (0..hay.len().saturating_sub(needle.len() - 1)).any(|i| {
        hay[i..].starts_with(needle) && hay.get(i + needle.len()).is_none_or(|&b| b == b' ')
    })
}
