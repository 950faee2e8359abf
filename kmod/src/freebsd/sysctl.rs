//! The sysctl tree under the device (`dev.vtballoonrs.<unit>.*`), made from
//! the node table ([`crate::nodes`]): one handler reads every node from the
//! State and writes settings after the table's check (EINVAL and no change
//! otherwise).

use core::ffi::{c_int, c_void, CStr};
use core::ptr::{addr_of_mut, null};
use core::sync::atomic::Ordering;

use super::driver::State;
use super::kern::{log, ticks_to_us, write_text};
use super::memory::vm_counters;
use super::sync::wakeup;
use super::sys;
use crate::nodes::{Id, Kind, NODES};
use crate::protocol::{feature_names, Features, BALLOON_PAGE_SIZE};

/// What a node shows.
enum Value<'a> {
    Number(u64),
    Text(&'a [u8]),
}

/// The value of node `id`; text is made in `buf` when it is not static.
fn read<'a>(st: &'a State, id: Id, buf: &'a mut [u8; 160]) -> Value<'a> {
    let b = &st.balloon_counters;
    let s = &st.stats_counters;
    let r = &st.report_counters;
    let h = &st.hint_counters;
    let flag = |on: bool| Value::Number(u64::from(on));
    let n = match id {
        Id::MemoryAccounting => {
            let text = if st.features.contains(Features::DEFLATE_ON_OOM) {
                c"used: the guest takes it back under memory pressure (deflate-on-oom)"
            } else {
                c"removed: the guest has it back only when the host lowers its target"
            };
            return Value::Text(text.to_bytes_with_nul());
        }
        Id::Features => {
            write_text(buf, b',', feature_names(st.features));
            return Value::Text(buf);
        }
        Id::Debug => return flag(st.debug.load(Ordering::Relaxed)),
        Id::KickThread => return flag(st.kick_thread.load(Ordering::Relaxed)),
        Id::StatsLinuxTags => return flag(st.linux_tags.load(Ordering::Relaxed)),
        Id::ReportEnabled => return flag(st.report_enabled.load(Ordering::Relaxed)),
        Id::HintEnabled => return flag(st.hint_enabled.load(Ordering::Relaxed)),
        Id::OomBatchPages => u64::from(st.oom_batch.load(Ordering::Relaxed)),
        Id::OomHeadroomPages => u64::from(st.oom_headroom.load(Ordering::Relaxed)),
        Id::OomWatchMs => u64::from(st.oom_watch_ms.load(Ordering::Relaxed)),
        Id::OomWatchIntervalMs => u64::from(st.oom_interval_ms.load(Ordering::Relaxed)),
        Id::FloorPages => st.floor_pages.load(Ordering::Relaxed),
        Id::OomWatching => match (
            st.oom_watching.load(Ordering::Relaxed),
            st.oom_guarding.load(Ordering::Relaxed),
        ) {
            (true, _) => 1,
            (false, true) => 2,
            (false, false) => 0,
        },
        Id::InflateRunPages => u64::from(st.inflate_run.load(Ordering::Relaxed)),
        Id::InflightBuffers => u64::from(st.inflight.load(Ordering::Relaxed)),
        Id::AllocRuns => b.alloc_runs.get(),
        Id::AllocSinglePages => b.alloc_single_pages.get(),
        Id::StepUs => ticks_to_us(st.clocks.step_us.get()),
        Id::AllocUs => ticks_to_us(st.clocks.alloc_us.get()),
        Id::FreeUs => ticks_to_us(st.clocks.free_us.get()),
        Id::PostUs => ticks_to_us(st.clocks.post_us.get()),
        Id::WaitUs => ticks_to_us(st.clocks.wait_us.get()),
        Id::KickUs => ticks_to_us(st.kick.task_us.get()),
        Id::KickWaitUs => ticks_to_us(st.kick.handoff_us.get()),
        Id::TargetPages => b.target_pages.get(),
        Id::ActualPages => b.actual_pages.get(),
        Id::TargetBytes => b.target_pages.get() * BALLOON_PAGE_SIZE,
        Id::ActualBytes | Id::HeldBytes => b.actual_pages.get() * BALLOON_PAGE_SIZE,
        Id::InflatedPages => b.inflated_pages.get(),
        Id::DeflatedPages => b.deflated_pages.get(),
        Id::LowmemEvents => b.lowmem_events.get(),
        Id::GuardEvents => b.guard_events.get(),
        Id::LowmemPages => b.lowmem_pages.get(),
        Id::OomDeflates => b.oom_deflates.get(),
        Id::FloorRefusedPages => b.floor_refused_pages.get(),
        Id::FloorStops => b.floor_stops.get(),
        Id::ConfigChanges => b.config_changes.get(),
        Id::AllocFailures => b.alloc_failures.get(),
        Id::HostTimeouts => b.host_timeouts.get(),
        Id::Errors => b.errors.get(),
        Id::BuffersPosted => b.buffers_posted.get(),
        Id::StatsRequests => s.requests.get(),
        Id::StatsPushes => s.pushes.get(),
        Id::StatsErrors => s.errors.get(),
        Id::StatsPushIntervalMs => st.push_interval.load(Ordering::Relaxed),
        Id::MemoryBytes => st.fixed_bytes(),
        Id::NotifyUs => ticks_to_us(st.kick.notify_us.get()),
        Id::LowmemLastUs => st.lowmem_last_us.get(),
        Id::ThreadWakeups => st.thread_wakeups.get(),
        Id::ReportWakeups => st.report_wakeups.get(),
        Id::ReportBlocks => r.blocks.get(),
        Id::ReportBytes => r.bytes.get(),
        Id::ReportInflight => r.inflight.get(),
        Id::ReportAcks => r.acks.get(),
        Id::ReportErrors => r.errors.get(),
        Id::ReportPasses => r.passes.get(),
        Id::ReportTimeMs => r.time_ms.get(),
        Id::HintRounds => h.rounds.get(),
        Id::HintPages => h.hinted_pages.get(),
        Id::HintHeldPages => h.held_pages.get(),
        Id::HintPressurePages => h.pressure_pages.get(),
        Id::HintDonePages => h.done_pages.get(),
        Id::HintErrors => h.errors.get() + h.host_timeouts.get(),
    };
    Value::Number(n)
}

/// Applies a setting the table accepted.
fn write(st: &State, id: Id, v: u32) {
    match id {
        Id::Debug => st.debug.store(v == 1, Ordering::Relaxed),
        Id::KickThread => st.kick_thread.store(v == 1, Ordering::Relaxed),
        Id::StatsLinuxTags => st.linux_tags.store(v == 1, Ordering::Relaxed),
        Id::OomBatchPages => st.oom_batch.store(v, Ordering::Relaxed),
        Id::OomHeadroomPages => st.oom_headroom.store(v, Ordering::Relaxed),
        Id::OomWatchMs => st.oom_watch_ms.store(v, Ordering::Relaxed),
        Id::OomWatchIntervalMs => st.oom_interval_ms.store(v, Ordering::Relaxed),
        Id::FloorPages => st.floor_pages.store(u64::from(v), Ordering::Relaxed),
        Id::InflateRunPages => st.inflate_run.store(v, Ordering::Relaxed),
        Id::HintEnabled => {
            st.hint_enabled.store(v == 1, Ordering::Relaxed);
            st.kick_hinter();
        }
        Id::InflightBuffers => st.inflight.store(v, Ordering::Relaxed),
        Id::ReportEnabled => {
            // Under the lock the reporter decides to sleep with: it cannot
            // miss being switched on.
            let _g = st.wait.lock();
            st.report_enabled.store(v == 1, Ordering::Release);
            wakeup(st.report_chan());
        }
        _ => {}
    }
}

/// Adds every node that applies to this device, in the State's own sysctl
/// context, which detach frees (waiting for running handlers) before it
/// frees the State: what a node points at outlives the node.
pub fn register(st: &State, reporting: bool) {
    // SAFETY: our attached device's tree, which newbus made at attach.
    let children =
        unsafe { addr_of_mut!((*sys::device_get_sysctl_tree(st.dev.raw())).oid_children) };
    let arg = (st as *const State).cast_mut().cast::<c_void>();
    for (i, node) in NODES.iter().enumerate() {
        if node.reporting && !reporting {
            continue;
        }
        let (kind, fmt) = match node.kind {
            Kind::U64 => (
                sys::CTLTYPE_U64 | sys::CTLFLAG_RD | sys::CTLFLAG_STATS,
                c"QU",
            ),
            Kind::Text => (sys::CTLTYPE_STRING | sys::CTLFLAG_RD, c"A"),
            Kind::Setting(_) => (sys::CTLTYPE_INT | sys::CTLFLAG_RWTUN, c"I"),
        };
        // SAFETY: the handler gets the State (see above) and the node's
        // index; names and descriptions are copied, formats are static.
        let oid = unsafe {
            sys::sysctl_add_oid(
                st.sysctl_ctx.get(),
                children,
                sys::OID_AUTO,
                node.name.as_ptr(),
                (kind | sys::CTLFLAG_MPSAFE) as i32,
                arg,
                i as sys::intmax_t,
                Some(handler),
                fmt.as_ptr(),
                node.descr.as_ptr(),
                null(),
            )
        };
        if oid.is_null() {
            log(st.dev, c"cannot add a sysctl node");
        }
    }
}

/// Says on the console which of this device's settings had a loader
/// tunable that was not taken, and the value the setting kept: the kernel
/// drops text it cannot read as an int (`abc`, `1T`) without a word, and
/// the handler refuses a list or a value out of range with only a bare
/// errno in the kernel's line. Called after [`register`], which applied
/// the tunables.
pub fn report_refused_tunables(st: &State, reporting: bool) {
    // SAFETY: our attached device's names, NUL-terminated strings that
    // live as long as the device.
    let (name, nameunit) = unsafe {
        (
            CStr::from_ptr(sys::device_get_name(st.dev.raw())),
            CStr::from_ptr(sys::device_get_nameunit(st.dev.raw())),
        )
    };
    let name = name.to_bytes();
    let unit = nameunit.to_bytes().get(name.len()..).unwrap_or(b"0");
    let memory = vm_counters().page_count;
    for node in NODES.iter().filter(|n| reporting || !n.reporting) {
        let Kind::Setting(accepts) = node.kind else {
            continue;
        };
        // dev.<name>.<unit>.<leaf>: what the kernel looked the tunable up by.
        let mut path = [0u8; 96];
        let parts: [&[u8]; 6] = [b"dev.", name, b".", unit, b".", node.name.to_bytes()];
        let mut n = 0;
        for &b in parts.iter().flat_map(|p| p.iter()) {
            if n + 1 < path.len() {
                path[n] = b;
                n += 1;
            }
        }
        // KENV_MVALLEN (128) and the NUL.
        let mut text = [0u8; 129];
        // SAFETY: `path` is NUL-terminated (zeroed, written short of its
        // end); getenv_string copies at most `text.len()` bytes, NUL
        // included, into our buffer.
        let found = unsafe {
            sys::getenv_string(
                path.as_ptr().cast(),
                text.as_mut_ptr().cast(),
                text.len() as c_int,
            )
        };
        if found == 0 {
            continue;
        }
        let len = text.iter().position(|&b| b == 0).unwrap_or(text.len() - 1);
        let Err(why) = accepts.tunable(&text[..len], memory) else {
            continue;
        };
        let mut buf = [0; 160];
        let kept = match read(st, node.id, &mut buf) {
            Value::Number(v) => v,
            Value::Text(_) => continue,
        };
        // SAFETY: our device; every %s is a NUL-terminated string alive for
        // the call, %ju a u64.
        unsafe {
            sys::device_printf(
                st.dev.raw(),
                c"loader tunable %s=\"%s\" refused (%s): %s stays %ju\n".as_ptr(),
                path.as_ptr(),
                text.as_ptr(),
                why.reason().as_ptr(),
                node.name.as_ptr(),
                kept,
            )
        };
    }
}

/// Every node's handler (SYSCTL_HANDLER_ARGS).
///
/// # Safety
/// Called by sysctl(9) with the arguments [`register`] gave.
unsafe extern "C" fn handler(
    oidp: *mut sys::sysctl_oid,
    arg1: *mut c_void,
    arg2: sys::intmax_t,
    req: *mut sys::sysctl_req,
) -> c_int {
    // SAFETY: `arg1` is the State, alive while the node exists (see register).
    let st = unsafe { &*arg1.cast::<State>() };
    let Some(node) = usize::try_from(arg2).ok().and_then(|i| NODES.get(i)) else {
        return sys::EINVAL as c_int;
    };
    let mut buf = [0; 160];
    match (node.kind, read(st, node.id, &mut buf)) {
        (Kind::Text, Value::Text(text)) => {
            // SAFETY: a NUL-terminated string that outlives the call; arg2 0
            // makes it read-only to sysctl_handle_string (the node is RD).
            unsafe { sys::sysctl_handle_string(oidp, text.as_ptr().cast_mut().cast(), 0, req) }
        }
        (Kind::U64, Value::Number(mut v)) => {
            // SAFETY: `v` is our local; read-only node.
            unsafe { sys::sysctl_handle_64(oidp, (&mut v as *mut u64).cast(), 0, req) }
        }
        (Kind::Setting(accepts), Value::Number(v)) => {
            // SAFETY: `req` is the request sysctl passed us, valid for the
            // call; only its plain fields are read.
            let (newptr, newlen, newidx) = unsafe { ((*req).newptr, (*req).newlen, (*req).newidx) };
            // Exactly one int: sysctl_handle_int() takes the first four
            // bytes of a longer write (a 64-bit value whose low half is in
            // range, text, "1,2") and refuses only a shorter one.
            if !newptr.is_null() && newlen.wrapping_sub(newidx) != size_of::<c_int>() {
                return sys::EINVAL as c_int;
            }
            let mut val = v as c_int;
            // SAFETY: `val` is our local; sysctl copies the new value into it.
            let error =
                unsafe { sys::sysctl_handle_int(oidp, (&mut val as *mut c_int).cast(), 0, req) };
            // SAFETY: `req` is the request sysctl passed us.
            if error != 0 || unsafe { (*req).newptr }.is_null() {
                return error;
            }
            let memory = vm_counters().page_count;
            match accepts.check(i64::from(val), memory) {
                Some(v) => {
                    write(st, node.id, v);
                    0
                }
                None => sys::EINVAL as c_int,
            }
        }
        _ => sys::EINVAL as c_int,
    }
}
