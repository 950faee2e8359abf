//! Child processes that touch memory, and waiting for them.

use crate::sys;
use crate::sysctl::{MIB, PAGE};

pub fn toucher(mib: u64, step_ms: u64, flag: Option<u64>) -> u64 {
    match sys::fork() {
        Ok(0) => {
            let step = 4 * MIB;
            for _ in 0..mib / 4 {
                let Ok(p) = sys::mmap_anon(step, false) else {
                    sys::exit(2)
                };
                let mut off = 0;
                while off < step {
                    // SAFETY: inside a fresh private mapping of `step` bytes.
                    unsafe { core::ptr::write_volatile((p + off) as *mut u8, 1) };
                    off += PAGE;
                }
                if step_ms > 0 {
                    sys::sleep_ms(step_ms);
                }
            }
            if let Some(f) = flag {
                // SAFETY: `f` is a shared page mapped by the parent before
                // the fork: two u64 words, written by one side each.
                unsafe {
                    core::ptr::write_volatile(f as *mut u64, 1);
                    while core::ptr::read_volatile((f + 8) as *const u64) == 0 {
                        sys::sleep_ms(50);
                    }
                }
            }
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(_) => 0,
    }
}

/// Waits up to `secs` for the child; kills it after that. The raw status,
/// or None if it had to be killed or was never there.
pub fn reap(pid: u64, secs: u64) -> Option<i32> {
    if pid == 0 {
        return None;
    }
    let deadline = sys::now_ms() + secs * 1000;
    loop {
        match sys::wait(pid, true) {
            Ok(Some(st)) => return Some(st),
            Ok(None) if sys::now_ms() < deadline => sys::sleep_ms(100),
            Ok(None) => {
                let _ = sys::kill(pid, 9);
                let _ = sys::wait(pid, false);
                return None;
            }
            Err(_) => return None,
        }
    }
}
