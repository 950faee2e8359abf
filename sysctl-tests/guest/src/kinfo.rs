//! What the kernel says about itself beyond our nodes: kernel threads by
//! name (kern.proc.pid.0 with KERN_PROC_INC_THREAD) and the memory a
//! malloc(9) type holds (kern.malloc_stats), to show that a detach leaves
//! no thread and no allocation behind. Layouts of FreeBSD 14 amd64
//! (sys/user.h, sys/malloc.h).

use crate::sys;
use crate::sysctl::name2oid;

/// sizeof(struct kinfo_proc) and offsetof(struct kinfo_proc, ki_tdname).
const KINFO_PROC_SIZE: usize = 1088;
const KI_TDNAME: usize = 394;
/// sizeof(struct malloc_type_stream_header), MALLOC_MAX_NAME,
/// sizeof(struct malloc_type_stats).
const MTSH_SIZE: usize = 16;
const MTH_NAME: usize = 32;
const MTS_SIZE: usize = 64;

/// A sysctl's whole value in a fresh mapping, handed to `f`.
fn with_value<R>(mib: &[i32], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    // SAFETY: a size query: no buffer.
    let need = unsafe { sys::sysctl_raw(mib, 0, 0) }.ok()?;
    // Room for what appears between the two calls.
    let len = (need + need / 4 + 65_536).next_multiple_of(4096);
    let buf = sys::mmap_anon(len as u64, false).ok()?;
    // SAFETY: `buf` is a fresh private mapping of `len` bytes.
    let got = unsafe { sys::sysctl_raw(mib, buf, len) };
    let r = got.ok().map(|n| {
        // SAFETY: the kernel wrote `n <= len` bytes at `buf`.
        f(unsafe { core::slice::from_raw_parts(buf as *const u8, n) })
    });
    // SAFETY: `f` has returned: nothing refers to the mapping any more.
    let _ = unsafe { sys::munmap(buf, len as u64) };
    r
}

/// Kernel threads (of proc0, where kthread_add(9) and taskqueue threads
/// live) whose name starts with `prefix`.
pub fn kernel_threads(prefix: &[u8]) -> Option<u64> {
    // CTL_KERN, KERN_PROC, KERN_PROC_PID | KERN_PROC_INC_THREAD, pid 0.
    const MIB: [i32; 4] = [1, 14, 1 | 0x10, 0];
    with_value(&MIB, |v| {
        v.chunks_exact(KINFO_PROC_SIZE)
            .filter(|kp| kp[KI_TDNAME..].starts_with(prefix))
            .count() as u64
    })
}

/// Allocations and bytes malloc(9) type `name` holds now; None when the
/// type does not exist (its module is not loaded).
pub fn malloc_type(name: &[u8]) -> Option<(u64, u64)> {
    let mut mib = [0i32; 26];
    let len = name2oid(b"kern.malloc_stats", &mut mib, 0)?;
    with_value(&mib[..len], |v| {
        let word = |off: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[off..off + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |off: usize| u32::from_le_bytes([v[off], v[off + 1], v[off + 2], v[off + 3]]);
        if v.len() < MTSH_SIZE {
            return None;
        }
        let cpus = u32_at(4) as usize;
        let count = u32_at(8) as usize;
        let rec = MTH_NAME + cpus * MTS_SIZE;
        for i in 0..count {
            let at = MTSH_SIZE + i * rec;
            if at + rec > v.len() {
                break;
            }
            let n = &v[at..at + MTH_NAME];
            let end = n.iter().position(|&b| b == 0).unwrap_or(MTH_NAME);
            if &n[..end] != name {
                continue;
            }
            let (mut allocs, mut bytes) = (0u64, 0u64);
            for c in 0..cpus {
                let s = at + MTH_NAME + c * MTS_SIZE;
                bytes = bytes.wrapping_add(word(s)).wrapping_sub(word(s + 8));
                allocs = allocs.wrapping_add(word(s + 16)).wrapping_sub(word(s + 24));
            }
            return Some((allocs, bytes));
        }
        None
    })
    .flatten()
}

/// Times `needle` occurs in the kernel's message buffer (kern.msgbuf).
pub fn msgbuf_count(needle: &[u8]) -> Option<u64> {
    let mut mib = [0i32; 26];
    let len = name2oid(b"kern.msgbuf", &mut mib, 0)?;
    with_value(&mib[..len], |v| {
        v.windows(needle.len()).filter(|w| *w == needle).count() as u64
    })
}
