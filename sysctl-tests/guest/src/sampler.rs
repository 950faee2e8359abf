//! A flight recorder for the soak: a child process samples the VM counters,
//! the page daemon's controller and the driver's pressure nodes every
//! 20 ms into a ring in memory shared with the soak, which prints the last
//! seconds before it when a process was killed. The page daemon kills after
//! `vm.pageout_oom_seq` passes that wanted pages and freed none, so what
//! its controller asked for, beside free memory and what the driver did,
//! is what explains a kill.

use crate::out::Line;
use crate::sys;
use crate::sysctl::{get, get_u64};

const EVERY_MS: u64 = 20;
const SLOTS: usize = 256;

/// What one sample holds, in order; names as printed.
const FIELDS: [&str; 14] = [
    "t", "free", "inact", "laund", "act", "tgt", "watch", "lowmem", "guard", "oomdef", "refused",
    "pidout", "pidint", "piderr",
];
const N: usize = FIELDS.len();

/// Signed fields (the controller's are C ints): printed with a sign.
const SIGNED_FROM: usize = 11;

#[repr(C)]
struct Ring {
    next: u64,
    slots: [[u64; N]; SLOTS],
}

pub struct Sampler {
    ring: *mut Ring,
    pid: u64,
}

fn signed(name: &[u8]) -> u64 {
    // A 4-byte C int, kept as its i64 bits.
    get_u64(name).map_or(0, |v| i64::from(v as u32 as i32) as u64)
}

fn sample(t0: u64) -> [u64; N] {
    [
        sys::now_ms() - t0,
        get_u64(b"vm.stats.vm.v_free_count").unwrap_or(0),
        get_u64(b"vm.stats.vm.v_inactive_count").unwrap_or(0),
        get_u64(b"vm.stats.vm.v_laundry_count").unwrap_or(0),
        get("actual_pages").unwrap_or(0),
        get("target_pages").unwrap_or(0),
        get("oom_watching").unwrap_or(0),
        get("lowmem_events").unwrap_or(0),
        get("oom_guard_events").unwrap_or(0),
        get("oom_deflates").unwrap_or(0),
        get("floor_refused_pages").unwrap_or(0),
        signed(b"vm.domain.0.pidctrl.output"),
        signed(b"vm.domain.0.pidctrl.integral"),
        signed(b"vm.domain.0.pidctrl.error"),
    ]
}

impl Sampler {
    /// Forks the sampling child; `None` if memory or a process is short.
    pub fn start() -> Option<Sampler> {
        let len = core::mem::size_of::<Ring>() as u64;
        let ring = sys::mmap_anon(len, true).ok()? as *mut Ring;
        let t0 = sys::now_ms();
        match sys::fork() {
            Ok(0) => {
                // The OOM killer would pick this process when no child
                // runs, and the record would end at the first kill.
                let _ = sys::protect_me();
                loop {
                    let s = sample(t0);
                    // SAFETY: the ring is a shared mapping of size_of::<Ring>()
                    // bytes that lives as long as this process; the soak only
                    // reads it, and a torn slot only garbles a diagnostic.
                    unsafe {
                        let r = &mut *ring;
                        r.slots[(r.next as usize) % SLOTS] = s;
                        r.next += 1;
                    }
                    sys::sleep_ms(EVERY_MS);
                }
            }
            Ok(pid) => Some(Sampler { ring, pid }),
            Err(_) => None,
        }
    }

    /// Prints the samples of the last `ms` milliseconds.
    pub fn dump(&self, why: &str, ms: u64) {
        // SAFETY: as in start(); the child writes, this reads a copy.
        let (next, slots) = unsafe { ((*self.ring).next, (*self.ring).slots) };
        let n = (next as usize).min(SLOTS);
        let last = slots[(next as usize + SLOTS - 1) % SLOTS][0];
        Line::new().s("# flight recorder: ").s(why).end();
        for i in (0..n).rev() {
            let s = &slots[(next as usize + SLOTS - 1 - i) % SLOTS];
            if last.saturating_sub(s[0]) > ms {
                continue;
            }
            let mut l = Line::new();
            l.s("#  ");
            for (k, name) in FIELDS.iter().enumerate() {
                l.s(name).s("=");
                if k >= SIGNED_FROM && (s[k] as i64) < 0 {
                    l.s("-").u((s[k] as i64).unsigned_abs());
                } else {
                    l.u(s[k]);
                }
                l.s(" ");
            }
            l.end();
        }
    }

    pub fn stop(self) {
        let _ = sys::kill(self.pid, 9);
        let _ = sys::wait(self.pid, false);
    }
}
