//! Processor time of kernel threads, as the guest's kernel counts it
//! (`kern.proc.pid.0` with its threads: one `struct kinfo_proc` per
//! thread, `ki_runtime` in microseconds of the guest's clock). The bench
//! reads the balloon drivers' threads with it, the in-tree one's too,
//! whose code cannot be timed from inside.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// `struct kinfo_proc` on amd64 (`KINFO_PROC_SIZE`, sys/user.h) and the
/// offsets of the fields read here (FreeBSD 14, amd64: `ki_structsize`
/// first, `ki_runtime` a u_int64_t, `ki_tdname` TDNAMLEN+1 bytes).
const KINFO_PROC_SIZE: usize = 1088;
const KI_RUNTIME: usize = 328;
const KI_TDNAME: usize = 394;
const TDNAME_LEN: usize = 17;

/// CTL_KERN, KERN_PROC, KERN_PROC_PID | KERN_PROC_INC_THREAD, pid 0 (the
/// kernel, whose threads kthread_add(9) makes without a process).
const MIB: [i32; 4] = [1, 14, 1 | 0x10, 0];

/// Room for this many threads of the kernel process.
const MAX_THREADS: usize = 960;

/// The buffer, mapped at the first use (0: not yet).
static BUF: AtomicU64 = AtomicU64::new(0);

fn buffer() -> Option<&'static mut [u8]> {
    let len = MAX_THREADS * KINFO_PROC_SIZE;
    let mut p = BUF.load(Ordering::Relaxed);
    if p == 0 {
        p = sys::mmap_anon(len as u64, false).ok()?;
        BUF.store(p, Ordering::Relaxed);
    }
    // SAFETY: a private mapping of `len` bytes, made above once and never
    // unmapped; this single-threaded program holds one reference at a time
    // (callers do not keep it).
    Some(unsafe { core::slice::from_raw_parts_mut(p as *mut u8, len) })
}

/// Microseconds of processor time of the kernel's threads whose name starts
/// with `prefix`, summed; None if the kernel would not say.
pub fn runtime_us(prefix: &[u8]) -> Option<u64> {
    let buf = buffer()?;
    let n = sys::sysctl(&MIB, buf, None).ok()?;
    let mut total = 0;
    let mut found = false;
    for kp in buf[..n].chunks_exact(KINFO_PROC_SIZE) {
        let size = i32::from_ne_bytes(kp[..4].try_into().ok()?);
        if size as usize != KINFO_PROC_SIZE {
            return None;
        }
        let name = &kp[KI_TDNAME..KI_TDNAME + TDNAME_LEN];
        if name.starts_with(prefix) {
            let rt = &kp[KI_RUNTIME..KI_RUNTIME + 8];
            total += u64::from_ne_bytes(rt.try_into().ok()?);
            found = true;
        }
    }
    found.then_some(total)
}
