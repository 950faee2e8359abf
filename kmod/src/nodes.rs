//! The sysctl nodes under `dev.vtballoonrs.<unit>.`: one table of plain
//! data. The kernel glue registers every node from it (one handler reads
//! and writes them by [`Id`]); the in-guest test program includes this file
//! by `#[path]` and checks the same list (presence, descriptions, read-only
//! nodes refusing writes, settings refusing what [`Accepts`] refuses).
//!
//! Self-contained on purpose: `core` only, nothing from the rest of the
//! driver crate, so another crate can include it as a module.

use core::ffi::CStr;

/// What a node holds and who may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read-only 64-bit number (`QU`).
    U64,
    /// Read-only text (`A`).
    Text,
    /// A setting: a read-write integer (`I`), also a loader tunable, taking
    /// the values it [`Accepts`]; anything else gets EINVAL and changes
    /// nothing.
    Setting(Accepts),
}

/// The values a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// 0 or 1.
    Flag,
    /// `min..=max`.
    Range { min: u32, max: u32 },
    /// A power of two from 1 to `max`.
    PowerOfTwo { max: u32 },
    /// A number of pages from 0 to all of the guest's memory.
    Pages,
}

impl Accepts {
    /// The setting value for `v`, if it is one this setting takes, on a
    /// guest with `memory_pages` pages of memory.
    pub fn check(self, v: i64, memory_pages: u64) -> Option<u32> {
        let v = u32::try_from(v).ok()?;
        let ok = match self {
            Accepts::Flag => v <= 1,
            Accepts::Range { min, max } => (min..=max).contains(&v),
            Accepts::PowerOfTwo { max } => v.is_power_of_two() && v <= max,
            Accepts::Pages => u64::from(v) <= memory_pages,
        };
        ok.then_some(v)
    }

    /// Values next to the accepted ones that must be refused: for the
    /// in-guest test's EINVAL checks.
    pub fn refused(self) -> impl Iterator<Item = i64> {
        let edge = match self {
            Accepts::Flag => [Some(2), None, None],
            Accepts::Range { min, max } => [
                min.checked_sub(1).map(i64::from),
                Some(i64::from(max) + 1),
                None,
            ],
            Accepts::PowerOfTwo { max } => [Some(0), Some(3), Some(i64::from(max) * 2)],
            // More than any guest this runs on has (8 TiB).
            Accepts::Pages => [Some(i64::from(i32::MAX)), None, None],
        };
        edge.into_iter().flatten().chain([-1])
    }
}

/// Why a setting's loader tunable was not taken (the setting keeps the
/// value it had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a number as the kernel reads one: `strtoq` base 0 (`0x` hex,
    /// leading `0` octal), an optional `k`, `m`, `g` or `t` suffix.
    NotANumber,
    /// A list (the kernel reads `1,2` or `1 2` as two ints); a setting is one.
    NotOne,
    /// A number outside what the setting takes, or beyond an int.
    OutOfRange,
}

impl Refusal {
    /// For the console line.
    pub fn reason(self) -> &'static CStr {
        match self {
            Refusal::NotANumber => c"not a number",
            Refusal::NotOne => c"more than one value",
            Refusal::OutOfRange => c"out of range",
        }
    }
}

impl Accepts {
    /// The setting value loader tunable `text` gives, read as the kernel's
    /// `getenv_array()` reads an int node's tunable, or why it is refused.
    /// The kernel itself drops text it cannot read without a word and
    /// hands a list or an out-of-range number to the handler, which
    /// refuses it: either way the setting keeps its value, and this tells
    /// the driver what to say about it.
    pub fn tunable(self, text: &[u8], memory_pages: u64) -> Result<u32, Refusal> {
        let mut rest = text;
        let mut value = None;
        while !rest.is_empty() {
            let (v, after) = tunable_number(rest).ok_or(Refusal::NotANumber)?;
            if value.is_some() {
                return Err(Refusal::NotOne);
            }
            value = Some(v);
            rest = after;
            while let [b' ' | b'\t' | b',', tail @ ..] = rest {
                rest = tail;
            }
        }
        let v = value.ok_or(Refusal::NotANumber)?;
        let v = i64::try_from(v).map_err(|_| Refusal::OutOfRange)?;
        self.check(v, memory_pages).ok_or(Refusal::OutOfRange)
    }
}

/// One number of a tunable list and what follows it (`strtoq(ptr, &end, 0)`
/// and the suffix, as `getenv_array()`); `None` where the kernel gives up.
/// Wide enough that nothing a kenv value holds (128 bytes) wraps.
fn tunable_number(text: &[u8]) -> Option<(i128, &[u8])> {
    let mut s = text;
    while let [b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r', tail @ ..] = s {
        s = tail;
    }
    let negative = matches!(s, [b'-', ..]);
    if let [b'-' | b'+', tail @ ..] = s {
        s = tail;
    }
    let (base, digits) = match s {
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => (16, &s[2..]),
        [b'0', ..] => (8, s),
        _ => (10, s),
    };
    let mut v: i128 = 0;
    let mut n = 0;
    for &b in digits {
        let Some(d) = char::from(b).to_digit(base) else {
            break;
        };
        // Saturates where strtoq clamps: far beyond any setting either way.
        v = v
            .saturating_mul(i128::from(base))
            .saturating_add(i128::from(d));
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let mut rest = &digits[n..];
    let shift = match rest {
        [b't' | b'T', ..] => 40,
        [b'g' | b'G', ..] => 30,
        [b'm' | b'M', ..] => 20,
        [b'k' | b'K', ..] => 10,
        _ => 0,
    };
    if shift != 0 {
        rest = &rest[1..];
    }
    if !matches!(rest, [] | [b' ' | b'\t' | b',', ..]) {
        return None;
    }
    let v = if negative { -v } else { v };
    Some((v.saturating_mul(1 << shift), rest))
}

/// Which value a node shows (the glue maps each to its source).
#[rustfmt::skip]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    TargetPages, ActualPages, TargetBytes, ActualBytes, HeldBytes, MemoryAccounting,
    InflatedPages, DeflatedPages, LowmemEvents, GuardEvents, LowmemPages, OomDeflates, OomWatching,
    FloorRefusedPages, FloorStops, ConfigChanges, AllocFailures, HostTimeouts, Errors,
    BuffersPosted, StatsRequests, StatsPushes, StatsErrors, StatsPushIntervalMs, Features, Debug,
    OomBatchPages, OomHeadroomPages, OomWatchMs, OomWatchIntervalMs, FloorPages, InflateRunPages,
    InflightBuffers, AllocRuns, AllocSinglePages, StepUs, AllocUs, FreeUs, PostUs, WaitUs,
    KickUs, KickWaitUs,
    MemoryBytes, NotifyUs, LowmemLastUs, ThreadWakeups, ReportWakeups, KickThread, StatsLinuxTags,
    ReportEnabled, ReportBlocks, ReportBytes, ReportInflight, ReportAcks, ReportErrors,
    ReportPasses, ReportTimeMs, HintRounds, HintPages, HintHeldPages, HintPressurePages,
    HintDonePages, HintErrors, HintEnabled,
}

/// One node.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    /// The leaf name under `dev.vtballoonrs.<unit>.`.
    pub name: &'static CStr,
    /// What `sysctl -d` shows.
    pub descr: &'static CStr,
    pub kind: Kind,
    pub id: Id,
    /// Only when free page reporting is negotiated (and set up).
    pub reporting: bool,
}

impl Node {
    pub fn writable(&self) -> bool {
        matches!(self.kind, Kind::Setting(_))
    }
}

/// A node (`r`: one only with free page reporting).
const fn n(name: &'static CStr, kind: Kind, id: Id, descr: &'static CStr) -> Node {
    Node {
        name,
        descr,
        kind,
        id,
        reporting: false,
    }
}

const fn r(name: &'static CStr, kind: Kind, id: Id, descr: &'static CStr) -> Node {
    Node {
        reporting: true,
        ..n(name, kind, id, descr)
    }
}

use self::Accepts::{Pages, PowerOfTwo, Range};
use self::Kind::{Setting, Text, U64};
const FLAG: Kind = Setting(Accepts::Flag);

/// Every node, in registration order.
#[rustfmt::skip]
pub const NODES: &[Node] = &[
    n(c"target_pages", U64, Id::TargetPages, c"Host's balloon target (4 KiB pages)"),
    n(c"actual_pages", U64, Id::ActualPages, c"Pages the host holds now (4 KiB pages)"),
    n(c"target_bytes", U64, Id::TargetBytes, c"Host's balloon target in bytes"),
    n(c"actual_bytes", U64, Id::ActualBytes, c"Balloon size in bytes"),
    n(c"held_bytes", U64, Id::HeldBytes,
        c"Guest memory the balloon holds (not free, not on any page queue)"),
    n(c"memory_accounting", Text, Id::MemoryAccounting,
        c"How ballooned memory counts for the guest"),
    n(c"inflated_pages", U64, Id::InflatedPages, c"Pages given to the host since attach"),
    n(c"deflated_pages", U64, Id::DeflatedPages, c"Pages taken back from the host since attach"),
    n(c"lowmem_events", U64, Id::LowmemEvents, c"vm_lowmem events handled (DEFLATE_ON_OOM)"),
    n(c"oom_guard_events", U64, Id::GuardEvents,
        c"Shortages found by the guard (after attach or an event), taken for a vm_lowmem event the kernel held back"),
    n(c"lowmem_pages", U64, Id::LowmemPages,
        c"Pages given back because of memory pressure (vm_lowmem events and the pressure watch)"),
    n(c"oom_deflates", U64, Id::OomDeflates,
        c"Deflates done for memory pressure (vm_lowmem events and watch looks that gave memory back)"),
    n(c"oom_watching", U64, Id::OomWatching,
        c"1 while free memory is watched after memory pressure (no inflating meanwhile), 2 while the guard looks at it (after attach or an event)"),
    n(c"floor_refused_pages", U64, Id::FloorRefusedPages,
        c"Pages of the host's target the guest-side floor holds back now"),
    n(c"floor_stops", U64, Id::FloorStops,
        c"Times the guest-side floor stopped an inflate short of the host's target"),
    n(c"config_changes", U64, Id::ConfigChanges, c"Host configuration changes seen"),
    n(c"alloc_failures", U64, Id::AllocFailures, c"Page allocations that failed while inflating"),
    n(c"host_timeouts", U64, Id::HostTimeouts, c"Waits for the host that timed out"),
    n(c"errors", U64, Id::Errors, c"Queue errors and unusable pages"),
    n(c"buffers_posted", U64, Id::BuffersPosted, c"PFN buffers posted to the host"),
    n(c"stats_requests", U64, Id::StatsRequests, c"Statistics requests from the host"),
    n(c"stats_pushes", U64, Id::StatsPushes, c"Statistics pushed on the STATS_PUSH timer"),
    n(c"stats_errors", U64, Id::StatsErrors, c"Statistics buffers that could not be queued"),
    n(c"stats_push_interval_ms", U64, Id::StatsPushIntervalMs,
        c"STATS_PUSH period set by the host (0: pull only)"),
    n(c"features", Text, Id::Features, c"Negotiated virtio features"),
    n(c"debug", FLAG, Id::Debug, c"Rate-limited diagnostics on the console (0/1)"),
    n(c"oom_batch_pages", Setting(Range { min: 1, max: 65_536 }), Id::OomBatchPages,
        c"Least pages given back per vm_lowmem event (1-65536)"),
    n(c"oom_headroom_pages", Setting(Range { min: 0, max: 262_144 }), Id::OomHeadroomPages,
        c"Free memory beyond the page daemon's target (vm.stats.vm.v_free_target) that a deflate under memory pressure restores, in pages (0-262144)"),
    n(c"oom_watch_ms", Setting(Range { min: 0, max: 600_000 }), Id::OomWatchMs,
        c"How long free memory is watched after the last sign of memory pressure, in ms (0-600000; 0: act on vm_lowmem events only)"),
    n(c"oom_watch_interval_ms", Setting(Range { min: 1, max: 1_000 }), Id::OomWatchIntervalMs,
        c"Pause between looks at free memory while watching, in ms (1-1000)"),
    n(c"floor_pages", Setting(Pages), Id::FloorPages,
        c"The balloon does not inflate while the guest's available memory is below this many pages, whatever the host asks (0: no floor; default v_free_target + 2% of memory)"),
    n(c"inflate_run_pages", Setting(PowerOfTwo { max: 256 }), Id::InflateRunPages,
        c"Largest physically contiguous run taken at once when inflating, in pages (power of two, 1-256; 1: page by page)"),
    n(c"inflight_buffers", Setting(Range { min: 1, max: 8 }), Id::InflightBuffers,
        c"PFN buffers of 256 pages kept in flight at once while resizing (1-8)"),
    n(c"memory_bytes", U64, Id::MemoryBytes,
        c"Memory the driver allocates for this device, whatever the balloon size (0 bytes per ballooned page; kernel thread stacks not counted)"),
    n(c"notify_us", U64, Id::NotifyUs,
        c"Microseconds spent notifying the host of inflate/deflate buffers (QEMU discards the pages before it returns)"),
    n(c"alloc_runs", U64, Id::AllocRuns,
        c"Physically contiguous runs of more than one page taken when inflating"),
    n(c"alloc_single_pages", U64, Id::AllocSinglePages, c"Pages taken one at a time when inflating"),
    n(c"step_us", U64, Id::StepUs,
        c"Microseconds of balloon thread work on resizes (waits for the host included)"),
    n(c"alloc_us", U64, Id::AllocUs, c"Microseconds spent taking pages from the VM"),
    n(c"free_us", U64, Id::FreeUs, c"Microseconds spent giving pages back to the VM"),
    n(c"post_us", U64, Id::PostUs,
        c"Microseconds spent posting PFN buffers (notifications made in place not included)"),
    n(c"wait_us", U64, Id::WaitUs, c"Microseconds the balloon slept waiting for the host"),
    n(c"kick_us", U64, Id::KickUs,
        c"Microseconds of kick thread work besides its notifications (enqueueing, config writes)"),
    n(c"kick_wait_us", U64, Id::KickWaitUs,
        c"Microseconds from a buffer handed to the kick thread until the thread ran (summed)"),
    n(c"lowmem_last_us", U64, Id::LowmemLastUs,
        c"Microseconds the last vm_lowmem deflate took (guest time, host ack included)"),
    n(c"thread_wakeups", U64, Id::ThreadWakeups,
        c"Times the balloon thread woke up (none while the target is reached)"),
    n(c"report_wakeups", U64, Id::ReportWakeups, c"Times the reporting thread woke up"),
    n(c"kick_thread", FLAG, Id::KickThread,
        c"Notify the host from a thread on another CPU (0/1); read when the driver starts: set it as a loader tunable (or with kenv(1) before the device attaches)"),
    n(c"stats_linux_tags", FLAG, Id::StatsLinuxTags,
        c"Also send Linux-only stat tags 12 and 14 (0/1); read when the driver starts: set it as a loader tunable (or with kenv(1) before the device attaches)"),
    n(c"hint_enabled", FLAG, Id::HintEnabled,
        c"Free page hinting during live migration on (0/1; FREE_PAGE_HINT)"),
    n(c"hint_rounds", U64, Id::HintRounds,
        c"Free page hinting rounds started by the host during live migration (FREE_PAGE_HINT)"),
    n(c"hint_pages", U64, Id::HintPages,
        c"Pages hinted to the host as free during live migration, all rounds"),
    n(c"hint_held_pages", U64, Id::HintHeldPages,
        c"Hinted pages held out of the free lists now (until the host says DONE)"),
    n(c"hint_pressure_pages", U64, Id::HintPressurePages,
        c"Hinted pages given back early because of memory pressure (vm_lowmem, or free memory low)"),
    n(c"hint_done_pages", U64, Id::HintDonePages,
        c"Hinted pages given back when the host said DONE"),
    n(c"hint_errors", U64, Id::HintErrors,
        c"Hint buffers that could not be posted, and waits for the host that timed out"),
    r(c"report_enabled", FLAG, Id::ReportEnabled, c"Free page reporting on (0/1)"),
    r(c"report_blocks", U64, Id::ReportBlocks, c"Free 2 MiB blocks reported to the host"),
    r(c"report_bytes", U64, Id::ReportBytes, c"Bytes of free memory reported to the host"),
    r(c"report_inflight", U64, Id::ReportInflight, c"Blocks held out of the free lists right now"),
    r(c"report_acks", U64, Id::ReportAcks, c"Reports the host acknowledged"),
    r(c"report_errors", U64, Id::ReportErrors, c"Reports that failed or timed out"),
    r(c"report_passes", U64, Id::ReportPasses, c"Reporting passes run"),
    r(c"report_time_ms", U64, Id::ReportTimeMs, c"Milliseconds spent reporting"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_tunables_read_as_the_kernel_reads_them() {
        let pages = 1 << 20;
        let range = Accepts::Range {
            min: 0,
            max: 600_000,
        };
        assert_eq!(range.tunable(b"15000", pages), Ok(15_000));
        assert_eq!(range.tunable(b" 0x10", pages), Ok(16));
        assert_eq!(range.tunable(b"010", pages), Ok(8));
        assert_eq!(range.tunable(b"0", pages), Ok(0));
        assert_eq!(range.tunable(b"+4k", pages), Ok(4096));
        assert_eq!(range.tunable(b"1M", pages), Err(Refusal::OutOfRange));
        assert_eq!(range.tunable(b"abc", pages), Err(Refusal::NotANumber));
        assert_eq!(range.tunable(b"", pages), Err(Refusal::NotANumber));
        assert_eq!(range.tunable(b"12x", pages), Err(Refusal::NotANumber));
        assert_eq!(range.tunable(b"0x", pages), Err(Refusal::NotANumber));
        assert_eq!(range.tunable(b"08", pages), Err(Refusal::NotANumber));
        assert_eq!(range.tunable(b"1,2", pages), Err(Refusal::NotOne));
        assert_eq!(range.tunable(b"1 2", pages), Err(Refusal::NotOne));
        assert_eq!(range.tunable(b"7,", pages), Ok(7));
        assert_eq!(range.tunable(b"-5", pages), Err(Refusal::OutOfRange));
        assert_eq!(
            range.tunable(b"99999999999999999999999999", pages),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(
            Accepts::Pages.tunable(b"1T", pages),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(Accepts::Pages.tunable(b"1m", pages), Ok(1 << 20));
        assert_eq!(
            Accepts::Flag.tunable(b"0x10", pages),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(
            Accepts::PowerOfTwo { max: 256 }.tunable(b"3", pages),
            Err(Refusal::OutOfRange)
        );
    }

    #[test]
    fn names_are_unique_and_every_node_is_described() {
        for (i, n) in NODES.iter().enumerate() {
            assert!(!n.descr.is_empty(), "{:?} has no description", n.name);
            assert!(
                NODES[..i].iter().all(|m| m.name != n.name && m.id != n.id),
                "{:?} twice",
                n.name
            );
        }
    }

    #[test]
    fn flags_take_0_and_1_only() {
        assert_eq!(Accepts::Flag.check(0, 0), Some(0));
        assert_eq!(Accepts::Flag.check(1, 0), Some(1));
        assert!(Accepts::Flag
            .refused()
            .all(|v| Accepts::Flag.check(v, 0).is_none()));
        assert_eq!(Accepts::Flag.refused().collect::<Vec<_>>(), [2, -1]);
    }

    #[test]
    fn ranges_and_powers_of_two_refuse_their_neighbours() {
        let r = Accepts::Range {
            min: 1,
            max: 65_536,
        };
        assert_eq!(r.check(1, 0), Some(1));
        assert_eq!(r.check(65_536, 0), Some(65_536));
        assert_eq!(r.refused().collect::<Vec<_>>(), [0, 65_537, -1]);
        assert!(r.refused().all(|v| r.check(v, 0).is_none()));
        let p = Accepts::PowerOfTwo { max: 256 };
        assert!([1, 2, 16, 256]
            .iter()
            .all(|&v| p.check(v, 0) == Some(v as u32)));
        assert_eq!(p.refused().collect::<Vec<_>>(), [0, 3, 512, -1]);
        assert!(p.refused().all(|v| p.check(v, 0).is_none()));
        assert_eq!(p.check(i64::from(u32::MAX) + 1, 0), None, "no wrap-around");
        let m = Accepts::Pages;
        assert_eq!(m.check(0, 1_000), Some(0));
        assert_eq!(m.check(1_000, 1_000), Some(1_000));
        assert_eq!(m.check(1_001, 1_000), None);
        assert!(m.refused().all(|v| m.check(v, 1 << 30).is_none()));
    }
}
