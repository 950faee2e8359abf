//! The host's own discard rate, the benchmark's reference: QEMU's balloon
//! drops each inflated 4 KiB PFN on its own (virtio-balloon ->
//! `ram_block_discard_range` -> `madvise(MADV_DONTNEED)` on anonymous private
//! guest RAM), so no driver can inflate faster than this host can discard
//! 4 KiB pages one by one. Measured with QEMU not running: an anonymous
//! private mapping, every page touched (host-resident, as guest memory the
//! guest has used) or untouched (never faulted in, as guest memory the guest
//! never used), then `madvise(MADV_DONTNEED)` page by page, timed.

use std::time::{Duration, Instant};

use crate::vm::parse_status_kib;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

/// Rates in MiB/s, each the median of the runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostDiscard {
    pub mib: usize,
    pub runs: usize,
    /// Touched pages (4 KiB pages: MADV_NOHUGEPAGE).
    pub resident: f64,
    /// Pages never touched.
    pub untouched: f64,
    /// Touched pages in transparent huge pages (MADV_HUGEPAGE), as QEMU
    /// asks for its guest RAM; None where the host has THP off.
    pub resident_thp: Option<f64>,
    /// Our RSS released by the median resident run, MiB: shows the pages
    /// were resident.
    pub rss_drop_mib: u64,
}

/// What backs the touched mapping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    Small,
    Huge,
}

/// An anonymous private read/write mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, pages: Pages) -> Result<Mapping, String> {
        // SAFETY: a new anonymous mapping at an address the kernel picks:
        // no file, nothing of ours is replaced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of {} MiB: {}", len / MIB, last_error()));
        }
        let m = Mapping { ptr: p.cast(), len };
        let advice = match pages {
            Pages::Small => libc::MADV_NOHUGEPAGE,
            Pages::Huge => libc::MADV_HUGEPAGE,
        };
        // SAFETY: the whole of our own mapping; this advice changes how
        // later faults are served, not its contents.
        if unsafe { libc::madvise(p, len, advice) } != 0 {
            return Err(format!("madvise(THP advice): {}", last_error()));
        }
        Ok(m)
    }

    /// Writes a byte to every 4 KiB page, so each is resident.
    fn touch(&mut self) {
        // SAFETY: `len` readable and writable bytes at `ptr`, mapped until
        // drop and reached by no other reference while this slice lives.
        let mem = unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) };
        for b in mem.iter_mut().step_by(PAGE) {
            *b = 1;
        }
        std::hint::black_box(mem);
    }

    /// `madvise(MADV_DONTNEED)` on each 4 KiB page in turn: the time it took.
    fn discard_pages(&mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        for off in (0..self.len).step_by(PAGE) {
            let page = self.ptr.wrapping_add(off).cast();
            // SAFETY: one page inside our own mapping (off + PAGE <= len);
            // no reference into the mapping is alive, so dropping its
            // contents (they read back as zeros) breaks nothing.
            if unsafe { libc::madvise(page, PAGE, libc::MADV_DONTNEED) } != 0 {
                return Err(format!("madvise(MADV_DONTNEED): {}", last_error()));
            }
        }
        Ok(t0.elapsed())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once, here; no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn own_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_status_kib(&s, "VmRSS:") * 1024
}

/// Transparent huge pages can back a MADV_HUGEPAGE mapping here.
fn thp_available() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"))
}

/// MiB/s of one run: `mib` discarded in `t`.
pub fn rate(mib: usize, t: Duration) -> f64 {
    mib as f64 / t.as_secs_f64().max(1e-9)
}

/// The middle value once sorted (the upper middle of an even count).
pub fn median_f64(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// One run: MiB/s, and the RSS it released.
fn run(mib: usize, touch: bool, pages: Pages) -> Result<(f64, u64), String> {
    let mut m = Mapping::new(mib * MIB, pages)?;
    if touch {
        m.touch();
    }
    let rss0 = own_rss();
    let t = m.discard_pages()?;
    let drop = rss0.saturating_sub(own_rss()) / MIB as u64;
    Ok((rate(mib, t), drop))
}

/// Medians of `runs` runs of each kind over `mib` MiB.
pub fn measure(mib: usize, runs: usize) -> Result<HostDiscard, String> {
    let mut resident = Vec::new();
    let mut untouched = Vec::new();
    let mut thp = Vec::new();
    let with_thp = thp_available();
    for _ in 0..runs {
        resident.push(run(mib, true, Pages::Small)?);
        untouched.push(run(mib, false, Pages::Small)?.0);
        if with_thp {
            thp.push(run(mib, true, Pages::Huge)?.0);
        }
    }
    resident.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (res, rss_drop_mib) = resident.get(resident.len() / 2).copied().ok_or("no runs")?;
    Ok(HostDiscard {
        mib,
        runs,
        resident: res,
        untouched: median_f64(&untouched).ok_or("no runs")?,
        resident_thp: median_f64(&thp),
        rss_drop_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_f64(&[4.0, 1.0]), Some(4.0));
        assert_eq!(median_f64(&[7.5]), Some(7.5));
        assert_eq!(median_f64(&[]), None);
    }

    #[test]
    fn rates() {
        assert_eq!(rate(1024, Duration::from_millis(500)), 2048.0);
        assert!(rate(1, Duration::ZERO).is_finite());
    }

    /// A small real run: touched pages are resident and go away.
    #[test]
    fn discards_a_small_mapping() {
        // 64 MiB: other tests run alongside in this process and may
        // allocate or free a few MiB meanwhile (8 MiB was seen to drown).
        let (r, drop) = run(64, true, Pages::Small).unwrap();
        assert!(r > 0.0);
        assert!(drop >= 32, "RSS fell by {drop} MiB only");
        let (u, _) = run(8, false, Pages::Small).unwrap();
        assert!(u > 0.0);
    }
}
