//! The pressure boot: the balloon at half of RAM, a child touching more
//! than is left; vm_lowmem deflates the balloon, no re-inflation until the
//! host sets a new target.

use crate::balloon::resize;
use crate::check::Ctx;
use crate::child::{reap, toucher};
use crate::out::Line;
use crate::sys;
use crate::sysctl::{get, get_u64, mib_of, set, set_int, PAGES_PER_MIB};

pub fn phase_pressure(c: &mut Ctx) {
    let batch = get("oom_batch_pages").unwrap_or(256) as i32;
    let period = get_u64(b"vm.lowmem_period").unwrap_or(10) as i32;
    let oom_seq = get_u64(b"vm.pageout_oom_seq").unwrap_or(12) as i32;
    // vm_lowmem fires at most once per vm.lowmem_period: make it 1 s and
    // the batch 64 MiB so the balloon can keep ahead of the child; give the
    // page daemon more passes before the OOM killer.
    set("oom_batch_pages", 16_384);
    let _ = set_int(b"vm.lowmem_period", 1);
    let _ = set_int(b"vm.pageout_oom_seq", 120);
    let phys = mib_of(get_u64(b"hw.physmem").unwrap_or(0));
    let balloon = phys / 2;
    if resize(c, "inflate to half of memory before pressure", balloon, 300) {
        let events0 = get("lowmem_events").unwrap_or(0);
        let lowmem0 = get("lowmem_pages").unwrap_or(0);
        let pages0 = get("actual_pages").unwrap_or(0);
        // More than the guest has outside the balloon: only deflating saves it.
        let pid = toucher(phys - balloon / 4, 40, None);
        let status = reap(pid, 600);
        let events = get("lowmem_events").unwrap_or(0);
        let pages = get("actual_pages").unwrap_or(0);
        let lowmem = get("lowmem_pages").unwrap_or(0) - lowmem0;
        Line::new()
            .s("# pressure: balloon ")
            .u(pages0 / PAGES_PER_MIB)
            .s(" -> ")
            .u(pages / PAGES_PER_MIB)
            .s(" MiB, lowmem events ")
            .u(events - events0)
            .s(", child status ")
            .u(status.map_or(u64::MAX, |s| s as u64))
            .end();
        c.check(
            "memory pressure raises vm_lowmem events",
            events > events0,
            "no lowmem event",
        );
        c.check_n(
            "the balloon deflated under pressure",
            pages < pages0,
            "actual_pages",
            Some(pages),
        );
        c.check_n(
            "lowmem_pages counts what was given back",
            lowmem >= pages0 - pages && lowmem > 0,
            "lowmem_pages",
            Some(lowmem),
        );
        c.check(
            "the child was not killed while the balloon held pages",
            status == Some(0) || (status.is_some() && pages == 0),
            "child killed or stuck",
        );
        // WANTSIZE: the host did not speak, so no re-inflation.
        sys::sleep_ms(10_000);
        let later = get("actual_pages").unwrap_or(u64::MAX);
        c.check_n(
            "no re-inflation until the host changes its target",
            later <= pages,
            "actual_pages",
            Some(later),
        );
        let target = get("target_pages").unwrap_or(0);
        c.check_n(
            "the host's target is unchanged meanwhile",
            target == balloon * PAGES_PER_MIB,
            "target_pages",
            Some(target),
        );
        resize(c, "the host's next target is followed", 64, 240);
    }
    resize(c, "back to 0 after pressure", 0, 240);
    set("oom_batch_pages", batch);
    let _ = set_int(b"vm.lowmem_period", period);
    let _ = set_int(b"vm.pageout_oom_seq", oom_seq);
}
