//! The sysctl tree under the device (`dev.vtballoonrs.<unit>.*`). Counters
//! are read straight from the logic's atomics; settings go through
//! [`vtbrs_rs_sysctl_set`], which validates before changing anything.

use core::ffi::{c_void, CStr};
use core::sync::atomic::Ordering;

use super::driver::State;
use super::sync::wakeup;
use super::{cstr, sys};
use crate::balloon::Tunables;
use crate::pressure::OomTunables;
use crate::protocol::BALLOON_PAGE_SIZE;

/// Settings and computed values behind SYSCTL_ADD_PROC nodes.
#[repr(i32)]
#[derive(Clone, Copy)]
enum Node {
    Debug = 1,
    OomBatch = 2,
    LinuxTags = 3,
    ReportEnabled = 4,
    InflateRun = 5,
    KickThread = 6,
    TargetBytes = 10,
    ActualBytes = 11,
    PushInterval = 12,
    MemoryBytes = 13,
    OomHeadroom = 14,
    OomWatch = 15,
    OomInterval = 16,
    Floor = 17,
    OomWatching = 18,
}

impl Node {
    fn from(which: i32) -> Option<Node> {
        [
            Node::Debug,
            Node::OomBatch,
            Node::LinuxTags,
            Node::ReportEnabled,
            Node::InflateRun,
            Node::KickThread,
            Node::TargetBytes,
            Node::ActualBytes,
            Node::PushInterval,
            Node::MemoryBytes,
            Node::OomHeadroom,
            Node::OomWatch,
            Node::OomInterval,
            Node::Floor,
            Node::OomWatching,
        ]
        .into_iter()
        .find(|n| *n as i32 == which)
    }
}

// Every node lives in the State's own sysctl context, which detach frees
// (waiting for running handlers) before it frees the State: what a node
// points at outlives the node.

fn u64_node(st: &State, name: &CStr, p: *mut u64, descr: &CStr) {
    // SAFETY: `p` points into the State (see above); names and descriptions
    // are static strings.
    unsafe {
        sys::vtbrs_sysctl_u64(
            st.dev,
            st.sysctl_ctx.get(),
            name.as_ptr(),
            p,
            descr.as_ptr(),
        )
    }
}

fn proc_node(st: &State, name: &CStr, node: Node, rw: bool, descr: &CStr) {
    let state = (st as *const State).cast_mut().cast::<c_void>();
    let ctx = st.sysctl_ctx.get();
    // SAFETY: registers a handler called with the State and `which` (see above).
    unsafe {
        if rw {
            sys::vtbrs_sysctl_rw_int(
                st.dev,
                ctx,
                name.as_ptr(),
                state,
                node as i32,
                descr.as_ptr(),
            );
        } else {
            sys::vtbrs_sysctl_ro_u64(
                st.dev,
                ctx,
                name.as_ptr(),
                state,
                node as i32,
                descr.as_ptr(),
            );
        }
    }
}

fn text_node(st: &State, name: &CStr, text: &[u8], descr: &CStr) {
    // SAFETY: `text` is a NUL-terminated buffer inside the State (see above).
    unsafe {
        sys::vtbrs_sysctl_string(
            st.dev,
            st.sysctl_ctx.get(),
            name.as_ptr(),
            text.as_ptr().cast(),
            descr.as_ptr(),
        )
    }
}

pub fn register(st: &State) {
    // SAFETY: the balloon counters are atomics inside the State; reading them
    // needs no lock, and their address is stable.
    let b = unsafe { &(*st.balloon.value_ptr()).balloon }.counters();
    // SAFETY: as above for the stats counters.
    let s = unsafe { &(*st.stats.value_ptr()).stats }.counters();
    u64_node(
        st,
        cstr!("target_pages"),
        b.target_pages.as_ptr(),
        cstr!("Host's balloon target (4 KiB pages)"),
    );
    u64_node(
        st,
        cstr!("actual_pages"),
        b.actual_pages.as_ptr(),
        cstr!("Pages the host holds now (4 KiB pages)"),
    );
    proc_node(
        st,
        cstr!("target_bytes"),
        Node::TargetBytes,
        false,
        cstr!("Host's balloon target in bytes"),
    );
    proc_node(
        st,
        cstr!("actual_bytes"),
        Node::ActualBytes,
        false,
        cstr!("Balloon size in bytes"),
    );
    proc_node(
        st,
        cstr!("held_bytes"),
        Node::ActualBytes,
        false,
        cstr!("Guest memory the balloon holds (not free, not on any page queue)"),
    );
    text_node(
        st,
        cstr!("memory_accounting"),
        &st.accounting_text,
        cstr!("How ballooned memory counts for the guest"),
    );
    u64_node(
        st,
        cstr!("inflated_pages"),
        b.inflated_pages.as_ptr(),
        cstr!("Pages given to the host since attach"),
    );
    u64_node(
        st,
        cstr!("deflated_pages"),
        b.deflated_pages.as_ptr(),
        cstr!("Pages taken back from the host since attach"),
    );
    u64_node(
        st,
        cstr!("lowmem_events"),
        b.lowmem_events.as_ptr(),
        cstr!("vm_lowmem events handled (DEFLATE_ON_OOM)"),
    );
    u64_node(
        st,
        cstr!("lowmem_pages"),
        b.lowmem_pages.as_ptr(),
        cstr!(
            "Pages given back because of memory pressure (vm_lowmem events and the pressure watch)"
        ),
    );
    u64_node(
        st,
        cstr!("oom_deflates"),
        b.oom_deflates.as_ptr(),
        cstr!("Deflates done for memory pressure (vm_lowmem events and watch looks that gave memory back)"),
    );
    proc_node(
        st,
        cstr!("oom_watching"),
        Node::OomWatching,
        false,
        cstr!("1 while free memory is watched after memory pressure (no inflating meanwhile)"),
    );
    u64_node(
        st,
        cstr!("floor_refused_pages"),
        b.floor_refused_pages.as_ptr(),
        cstr!("Pages of the host's target the guest-side floor holds back now"),
    );
    u64_node(
        st,
        cstr!("floor_stops"),
        b.floor_stops.as_ptr(),
        cstr!("Times the guest-side floor stopped an inflate short of the host's target"),
    );
    u64_node(
        st,
        cstr!("config_changes"),
        b.config_changes.as_ptr(),
        cstr!("Host configuration changes seen"),
    );
    u64_node(
        st,
        cstr!("alloc_failures"),
        b.alloc_failures.as_ptr(),
        cstr!("Page allocations that failed while inflating"),
    );
    u64_node(
        st,
        cstr!("host_timeouts"),
        b.host_timeouts.as_ptr(),
        cstr!("Waits for the host that timed out"),
    );
    u64_node(
        st,
        cstr!("errors"),
        b.errors.as_ptr(),
        cstr!("Queue errors and unusable pages"),
    );
    u64_node(
        st,
        cstr!("buffers_posted"),
        b.buffers_posted.as_ptr(),
        cstr!("PFN buffers posted to the host"),
    );
    u64_node(
        st,
        cstr!("stats_requests"),
        s.requests.as_ptr(),
        cstr!("Statistics requests from the host"),
    );
    u64_node(
        st,
        cstr!("stats_pushes"),
        s.pushes.as_ptr(),
        cstr!("Statistics pushed on the STATS_PUSH timer"),
    );
    u64_node(
        st,
        cstr!("stats_errors"),
        s.errors.as_ptr(),
        cstr!("Statistics buffers that could not be queued"),
    );
    proc_node(
        st,
        cstr!("stats_push_interval_ms"),
        Node::PushInterval,
        false,
        cstr!("STATS_PUSH period set by the host (0: pull only)"),
    );
    text_node(
        st,
        cstr!("features"),
        &st.features_text,
        cstr!("Negotiated virtio features"),
    );
    proc_node(
        st,
        cstr!("debug"),
        Node::Debug,
        true,
        cstr!("Rate-limited diagnostics on the console (0/1)"),
    );
    proc_node(
        st,
        cstr!("oom_batch_pages"),
        Node::OomBatch,
        true,
        cstr!("Least pages given back per vm_lowmem event (1-65536)"),
    );
    proc_node(
        st,
        cstr!("oom_headroom_pages"),
        Node::OomHeadroom,
        true,
        cstr!("Free memory beyond the page daemon's target (vm.stats.vm.v_free_target) that a deflate under memory pressure restores, in pages (0-262144)"),
    );
    proc_node(
        st,
        cstr!("oom_watch_ms"),
        Node::OomWatch,
        true,
        cstr!("How long free memory is watched after the last sign of memory pressure, in ms (0-600000; 0: act on vm_lowmem events only)"),
    );
    proc_node(
        st,
        cstr!("oom_watch_interval_ms"),
        Node::OomInterval,
        true,
        cstr!("Pause between looks at free memory while watching, in ms (1-1000)"),
    );
    proc_node(
        st,
        cstr!("floor_pages"),
        Node::Floor,
        true,
        cstr!("The balloon does not inflate while the guest's available memory is below this many pages, whatever the host asks (0: no floor; default v_free_target + 2% of memory)"),
    );
    proc_node(
        st,
        cstr!("inflate_run_pages"),
        Node::InflateRun,
        true,
        cstr!("Largest physically contiguous run taken at once when inflating, in pages (power of two, 1-256; 1: page by page)"),
    );
    proc_node(
        st,
        cstr!("memory_bytes"),
        Node::MemoryBytes,
        false,
        cstr!("Memory the driver allocates for this device, whatever the balloon size (0 bytes per ballooned page; kernel thread stacks not counted)"),
    );
    u64_node(
        st,
        cstr!("notify_us"),
        st.kick.notify_us.as_ptr(),
        cstr!("Microseconds spent notifying the host of inflate/deflate buffers (QEMU discards the pages before it returns)"),
    );
    u64_node(
        st,
        cstr!("lowmem_last_us"),
        st.lowmem_last_us.as_ptr(),
        cstr!("Microseconds the last vm_lowmem deflate took (guest time, host ack included)"),
    );
    u64_node(
        st,
        cstr!("thread_wakeups"),
        st.thread_wakeups.as_ptr(),
        cstr!("Times the balloon thread woke up (none while the target is reached)"),
    );
    u64_node(
        st,
        cstr!("report_wakeups"),
        st.report_wakeups.as_ptr(),
        cstr!("Times the reporting thread woke up"),
    );
    proc_node(
        st,
        cstr!("kick_thread"),
        Node::KickThread,
        true,
        cstr!("Notify the host from a thread on another CPU (0/1); applies at next attach"),
    );
    proc_node(
        st,
        cstr!("stats_linux_tags"),
        Node::LinuxTags,
        true,
        cstr!("Also send Linux-only stat tags 12 and 14 (0/1); applies at next attach"),
    );
    if st.features.contains(crate::protocol::Features::REPORTING) {
        register_reporting(st);
    }
}

fn register_reporting(st: &State) {
    proc_node(
        st,
        cstr!("report_enabled"),
        Node::ReportEnabled,
        true,
        cstr!("Free page reporting on (0/1)"),
    );
    // SAFETY: the reporter was created in attach before this and stays in
    // place until detach; its counters are atomics.
    let Some(rep) = (unsafe { (*st.report.value_ptr()).reporter.as_ref() }) else {
        return;
    };
    let c = rep.counters();
    u64_node(
        st,
        cstr!("report_blocks"),
        c.blocks.as_ptr(),
        cstr!("Free 2 MiB blocks reported to the host"),
    );
    u64_node(
        st,
        cstr!("report_bytes"),
        c.bytes.as_ptr(),
        cstr!("Bytes of free memory reported to the host"),
    );
    u64_node(
        st,
        cstr!("report_inflight"),
        c.inflight.as_ptr(),
        cstr!("Blocks held out of the free lists right now"),
    );
    u64_node(
        st,
        cstr!("report_acks"),
        c.acks.as_ptr(),
        cstr!("Reports the host acknowledged"),
    );
    u64_node(
        st,
        cstr!("report_errors"),
        c.errors.as_ptr(),
        cstr!("Reports that failed or timed out"),
    );
    u64_node(
        st,
        cstr!("report_passes"),
        c.passes.as_ptr(),
        cstr!("Reporting passes run"),
    );
    u64_node(
        st,
        cstr!("report_time_ms"),
        c.time_ms.as_ptr(),
        cstr!("Milliseconds spent reporting"),
    );
}

/// Reads a computed or settable node.
///
/// # Safety
/// `state` is the State registered with the node.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_sysctl_get(state: *mut c_void, which: i32, out: *mut u64) -> i32 {
    // SAFETY: per the contract.
    let Some(st) = (unsafe { state.cast::<State>().as_ref() }) else {
        return sys::ENXIO as i32;
    };
    // SAFETY: counters are atomics; no lock needed to read them.
    let b = unsafe { &(*st.balloon.value_ptr()).balloon }.counters();
    let v = match Node::from(which) {
        Some(Node::Debug) => u64::from(st.debug.load(Ordering::Relaxed)),
        Some(Node::OomBatch) => u64::from(st.oom_batch.load(Ordering::Relaxed)),
        Some(Node::OomHeadroom) => u64::from(st.oom_headroom.load(Ordering::Relaxed)),
        Some(Node::OomWatch) => u64::from(st.oom_watch_ms.load(Ordering::Relaxed)),
        Some(Node::OomInterval) => u64::from(st.oom_interval_ms.load(Ordering::Relaxed)),
        Some(Node::Floor) => st.floor_pages.load(Ordering::Relaxed),
        Some(Node::OomWatching) => u64::from(st.oom_watching.load(Ordering::Relaxed)),
        Some(Node::InflateRun) => u64::from(st.inflate_run.load(Ordering::Relaxed)),
        Some(Node::LinuxTags) => u64::from(st.linux_tags.load(Ordering::Relaxed)),
        Some(Node::KickThread) => u64::from(st.kick_thread.load(Ordering::Relaxed)),
        Some(Node::ReportEnabled) => u64::from(st.report_enabled.load(Ordering::Relaxed)),
        Some(Node::TargetBytes) => b.target_pages.get() * BALLOON_PAGE_SIZE,
        Some(Node::ActualBytes) => b.actual_pages.get() * BALLOON_PAGE_SIZE,
        Some(Node::PushInterval) => st.push_interval.load(Ordering::Relaxed),
        Some(Node::MemoryBytes) => st.fixed_bytes(),
        None => return sys::EINVAL as i32,
    };
    // SAFETY: `out` is the handler's local.
    unsafe { *out = v };
    0
}

/// Validates and applies a write; EINVAL and no change on a bad value.
///
/// # Safety
/// `state` is the State registered with the node.
#[no_mangle]
unsafe extern "C" fn vtbrs_rs_sysctl_set(state: *mut c_void, which: i32, value: u64) -> i32 {
    // SAFETY: per the contract.
    let Some(st) = (unsafe { state.cast::<State>().as_ref() }) else {
        return sys::ENXIO as i32;
    };
    let flag = |v: u64| if v <= 1 { Some(v == 1) } else { None };
    match Node::from(which) {
        Some(Node::Debug) => match flag(value) {
            Some(on) => st.debug.store(u32::from(on), Ordering::Relaxed),
            None => return sys::EINVAL as i32,
        },
        Some(Node::LinuxTags) => match flag(value) {
            Some(on) => st.linux_tags.store(on, Ordering::Relaxed),
            None => return sys::EINVAL as i32,
        },
        Some(Node::KickThread) => match flag(value) {
            Some(on) => st.kick_thread.store(on, Ordering::Relaxed),
            None => return sys::EINVAL as i32,
        },
        Some(Node::ReportEnabled) => match flag(value) {
            Some(on) => {
                // Under the lock the reporter decides to sleep with: it
                // cannot miss being switched on.
                let _g = st.wait.lock();
                st.report_enabled.store(on, Ordering::Release);
                wakeup(st.report_chan());
            }
            None => return sys::EINVAL as i32,
        },
        Some(Node::InflateRun) => match u32::try_from(value) {
            Ok(v) if Tunables::valid_inflate_run(v) => st.inflate_run.store(v, Ordering::Relaxed),
            _ => return sys::EINVAL as i32,
        },
        Some(Node::OomBatch) => match u32::try_from(value) {
            Ok(v) if OomTunables::valid_batch(v) => st.oom_batch.store(v, Ordering::Relaxed),
            _ => return sys::EINVAL as i32,
        },
        Some(Node::OomHeadroom) => match u32::try_from(value) {
            Ok(v) if OomTunables::valid_headroom(v) => st.oom_headroom.store(v, Ordering::Relaxed),
            _ => return sys::EINVAL as i32,
        },
        Some(Node::OomWatch) => match u32::try_from(value) {
            Ok(v) if OomTunables::valid_watch(v) => st.oom_watch_ms.store(v, Ordering::Relaxed),
            _ => return sys::EINVAL as i32,
        },
        Some(Node::OomInterval) => match u32::try_from(value) {
            Ok(v) if OomTunables::valid_interval(v) => {
                st.oom_interval_ms.store(v, Ordering::Relaxed)
            }
            _ => return sys::EINVAL as i32,
        },
        Some(Node::Floor) => {
            // At most all of memory; the node is an int, so below 2^31 pages.
            let total = crate::freebsd::memory::vm_counters().page_count;
            if value > total {
                return sys::EINVAL as i32;
            }
            st.floor_pages.store(value, Ordering::Relaxed);
        }
        _ => return sys::EINVAL as i32,
    }
    0
}
