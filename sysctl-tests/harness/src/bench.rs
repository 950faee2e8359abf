//! The benchmark's model and report: the rows the host timed, the
//! figures the guest sent, medians, ratios, the table and its footer, and
//! the host's own discard rate as a reference.

use crate::discard::{self, HostDiscard};
use crate::vm::CpuMs;

pub struct BenchRow {
    pub driver: &'static str,
    pub what: &'static str,
    pub mib: u64,
    pub secs: f64,
    pub cpu: CpuMs,
    /// QEMU RSS released during the operation.
    pub rss_drop_mib: u64,
    /// Time our driver spent inside queue notifications (`bench-notify-us`):
    /// QEMU's own work on the buffers.
    pub notify_ms: Option<u64>,
}

/// What a bench boot measured.
#[derive(Default)]
pub struct Bench {
    pub rows: Vec<BenchRow>,
    /// Our vm_lowmem handler, µs of guest time per event (`bench-lowmem`).
    pub lowmem_us: Vec<u64>,
    /// The whole `debug.vm_lowmem` write, every handler, timed by the guest
    /// (`bench-lowmem-call`): an upper bound to cross-check `lowmem_us`.
    pub lowmem_call_us: Vec<u64>,
    /// The idle window (guest ms) and the wakeups of our balloon and
    /// reporting threads in it (`bench-idle-*`).
    pub idle_ms: Option<u64>,
    pub thread_wakeups: Option<u64>,
    pub report_wakeups: Option<u64>,
    /// The pressure scenario per driver (`bench-oom-*`): field, value.
    pub oom: Vec<(&'static str, String, u64)>,
}

impl Bench {
    pub fn is_empty(&self) -> bool {
        self.oom.is_empty()
            && self.rows.is_empty()
            && self.lowmem_us.is_empty()
            && self.thread_wakeups.is_none()
            && self.report_wakeups.is_none()
    }
}

/// Runs of the host's discard measurement (the median is shown).
const HOST_DISCARD_RUNS: usize = 3;
/// Size of the host's discard measurement.
const HOST_DISCARD_MIB: usize = 1024;

/// The host's discard rate; None (and why, printed) if it could not be measured.
pub fn measure_host_discard() -> Option<HostDiscard> {
    match discard::measure(HOST_DISCARD_MIB, HOST_DISCARD_RUNS) {
        Ok(d) => {
            println!("{}", host_discard_line(&d));
            Some(d)
        }
        Err(e) => {
            println!("host discard rate not measured: {e}");
            None
        }
    }
}

/// The run with the median time of `driver` doing `what` to `mib`.
pub fn median<'a>(
    rows: &'a [BenchRow],
    driver: &str,
    what: &str,
    mib: u64,
) -> Option<&'a BenchRow> {
    let mut m: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.driver == driver && r.what == what && r.mib == mib)
        .collect();
    m.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    m.get(m.len() / 2).copied()
}

/// The order of a size's rows in the table.
fn op_rank(what: &str) -> u8 {
    match what {
        "inflate" => 0,
        "deflate" => 1,
        _ => 2,
    }
}

pub fn print_bench(b: &Bench, host: Option<&HostDiscard>) {
    for line in bench_report(b, host) {
        println!("{line}");
    }
}

/// MiB/s of a row.
fn row_rate(r: &BenchRow) -> f64 {
    r.mib as f64 / r.secs
}

/// The table, its footer and the figures besides it.
fn bench_report(b: &Bench, host: Option<&HostDiscard>) -> Vec<String> {
    let rows = &b.rows[..];
    let mut out = vec![
        String::new(),
        format!(
            "{:<8} {:>5} | {:>8} {:>8} {:>6} | {:>9} {:>9} {:>6} | {:>9} {:>9} | {:>8} {:>8}",
            "op",
            "MiB",
            "ours",
            "in-tree",
            "ratio",
            "ours",
            "in-tree",
            "ratio",
            "ours",
            "in-tree",
            "ours",
            "in-tree"
        ),
        format!(
            "{:<8} {:>5} | {:>24} | {:>26} | {:>19} | {:>17}",
            "", "", "MiB/s", "vCPU ms per GiB", "QEMU other ms/GiB", "discard MiB/s"
        ),
    ];
    let mut ops: Vec<(&str, u64)> = rows.iter().map(|r| (r.what, r.mib)).collect();
    ops.sort_by_key(|&(what, mib)| (mib, op_rank(what)));
    ops.dedup();
    for &(what, mib) in &ops {
        let (Some(ours), Some(theirs)) = (
            median(rows, "ours", what, mib),
            median(rows, "theirs", what, mib),
        ) else {
            continue;
        };
        let runs = rows
            .iter()
            .filter(|r| r.what == what && r.mib == mib && r.driver == "ours")
            .count();
        let per_gib = |ms: u64, r: &BenchRow| ms as f64 * 1024.0 / r.mib as f64;
        let discard = |r: &BenchRow| {
            if r.what == "deflate" {
                "-".into()
            } else {
                format!("{:.0}", r.rss_drop_mib as f64 / r.secs)
            }
        };
        out.push(format!(
            "{:<8} {:>5} | {:>8.0} {:>8.0} {:>6.2} | {:>9.0} {:>9.0} {:>6.2} | {:>9.0} {:>9.0} | {:>8} {:>8}  (median of {runs})",
            what,
            mib,
            row_rate(ours),
            row_rate(theirs),
            row_rate(ours) / row_rate(theirs),
            per_gib(ours.cpu.vcpu, ours),
            per_gib(theirs.cpu.vcpu, theirs),
            per_gib(ours.cpu.vcpu, ours) / per_gib(theirs.cpu.vcpu, theirs).max(1.0),
            per_gib(ours.cpu.other, ours),
            per_gib(theirs.cpu.other, theirs),
            discard(ours),
            discard(theirs),
        ));
    }
    out.push(
        "MiB/s: host-observed, from the QMP balloon command until query-balloon shows the target.\n\
         vCPU: user+system time of QEMU's vCPU threads (/proc/<pid>/task/*/stat, threads named \
         CPU n/TCG): the guest's work, TCG-emulated.\n\
         QEMU other: QEMU's other threads (device emulation, madvise discards).\n\
         discard: QEMU RSS released per second during inflate (the guest touched memory first).\n\
         resident: inflate by 1 GiB of host-resident pages: the guest touched all the memory it \
         could spare, and an untimed inflate first took the free memory it did not reach."
            .into(),
    );
    out.extend(host_share_lines(rows, &ops));
    match host {
        Some(h) => out.push(host_discard_line(h)),
        None => out.push("host discard rate: not measured".into()),
    }
    out.extend(resident_line(rows, host));
    out.push(lowmem_line(&b.lowmem_us, &b.lowmem_call_us));
    out.push(idle_line(b));
    out.extend(oom_lines(&b.oom));
    out
}

/// The pressure scenario (balloon at 3/4 of a 4 GiB guest, a child touching
/// 2 GiB, every setting at its default), per driver.
fn oom_lines(oom: &[(&'static str, String, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    for driver in ["ours", "theirs"] {
        let get = |f: &str| {
            oom.iter()
                .find(|(d, k, _)| *d == driver && k == f)
                .map(|(_, _, v)| *v)
        };
        let Some(killed) = get("killed") else {
            continue;
        };
        let who = if driver == "ours" { "ours" } else { "in-tree" };
        let got = get("got-mib").unwrap_or(0);
        let mut line = format!(
            "pressure (balloon 3/4 of memory, a child touching 2048 MiB, defaults), {who}: child {}, got {got} MiB in {} ms",
            if killed == 1 { "KILLED" } else { "not killed" },
            get("child-ms").unwrap_or(0)
        );
        match get("relief-ms") {
            Some(ms) if ms != u64::MAX => {
                line += &format!("; from the first vm_lowmem to the child having it all: {ms} ms")
            }
            _ => {}
        }
        if let Some(r) = get("given-x100").filter(|&r| r > 0) {
            line += &format!(
                "; balloon memory given back per MiB needed beyond free memory: {}.{:02}",
                r / 100,
                r % 100
            );
        }
        out.push(line);
    }
    out
}

/// How much of our time was QEMU's own work inside the notifications, and
/// the best any driver could do against the in-tree one on this host.
fn host_share_lines(rows: &[BenchRow], ops: &[(&str, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    for &(what, mib) in ops {
        let (Some(ours), Some(theirs)) = (
            median(rows, "ours", what, mib),
            median(rows, "theirs", what, mib),
        ) else {
            continue;
        };
        let Some(host_ms) = ours.notify_ms else {
            continue;
        };
        let per_gib = |ms: f64| ms * 1024.0 / mib as f64;
        let host = per_gib(host_ms as f64);
        let total = per_gib(ours.secs * 1000.0);
        let theirs_ms = per_gib(theirs.secs * 1000.0);
        // The host does the same work for the same PFNs (when the RSS
        // released matches, for inflates): the rest is each driver's own.
        let ours_own = total - host;
        let theirs_own = theirs_ms - host;
        let (a, b) = (ours.rss_drop_mib as f64, theirs.rss_drop_mib as f64);
        let caveat = if (a - b).abs() > 0.2 * a.max(b) {
            format!(
                " (not like for like: QEMU released {a:.0} MiB for ours, {b:.0} MiB for \
                 in-tree, so the host's work differed)"
            )
        } else {
            String::new()
        };
        out.push(format!(
            "host share {what} {mib}: ours {total:.0} ms/GiB, of which {host:.0} inside notifications \
             (QEMU's work on the pages); in-tree {theirs_ms:.0} ms/GiB: a driver costing nothing \
             itself could be at most {:.2}x the in-tree rate here. Guest's own work: ours \
             {ours_own:.0} ms/GiB, in-tree ~{theirs_own:.0} (its time less the same host share), \
             ratio {:.2}{caveat}",
            best_ratio(theirs_ms, host),
            ours_own / theirs_own.max(1.0)
        ));
    }
    out
}

/// In-tree time over the host's share of ours: the rate ratio a driver
/// whose own work were free (or fully overlapped) would reach.
fn best_ratio(theirs_ms: f64, host_ms: f64) -> f64 {
    if host_ms > 0.0 {
        theirs_ms / host_ms
    } else {
        f64::INFINITY
    }
}

/// The host's reference rates.
fn host_discard_line(h: &HostDiscard) -> String {
    let thp = h
        .resident_thp
        .map_or(String::new(), |t| format!(", resident in THP {t:.0} MiB/s"));
    format!(
        "host discard, QEMU not running (madvise MADV_DONTNEED 4 KiB at a time over {} MiB, median of {}): \
         resident {:.0} MiB/s (RSS -{} MiB), untouched {:.0} MiB/s{thp}",
        h.mib, h.runs, h.resident, h.rss_drop_mib, h.untouched
    )
}

/// The resident inflate against the host's resident discard rate.
fn resident_line(rows: &[BenchRow], host: Option<&HostDiscard>) -> Option<String> {
    let mib = rows.iter().find(|r| r.what == "resident")?.mib;
    let ours = median(rows, "ours", "resident", mib);
    let theirs = median(rows, "theirs", "resident", mib);
    let rate = |r: Option<&BenchRow>| r.map_or("-".into(), |r| format!("{:.0}", row_rate(r)));
    let rss = |r: Option<&BenchRow>| r.map_or("-".into(), |r| r.rss_drop_mib.to_string());
    let ratio = match (ours, host) {
        (Some(o), Some(h)) if h.resident > 0.0 => format!("{:.2}", row_rate(o) / h.resident),
        _ => "-".into(),
    };
    Some(format!(
        "resident inflate {mib} MiB: ours {} MiB/s, in-tree {} MiB/s; ours / host resident discard rate {ratio} \
         (reference figure >= 0.90); QEMU RSS released: ours {} MiB, in-tree {} MiB",
        rate(ours),
        rate(theirs),
        rss(ours),
        rss(theirs)
    ))
}

/// The middle value once sorted (the upper middle of an even count).
fn median_u64(v: &[u64]) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Our vm_lowmem handler's times, and the guest's own timing of the
/// whole `debug.vm_lowmem` write.
fn lowmem_line(us: &[u64], call_us: &[u64]) -> String {
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let Some(m) = median_u64(us) else {
        return "lowmem deflate of 256 pages: no figures (the driver has no lowmem_last_us)".into();
    };
    let mut l = format!(
        "lowmem deflate of 256 pages: median {m} µs of guest time (reference figure < 1000); runs: {} µs",
        list(us)
    );
    if let Some(c) = median_u64(call_us) {
        l += &format!(
            "; the whole debug.vm_lowmem write (every handler, guest clock): median {c} µs, runs: {} µs",
            list(call_us)
        );
    }
    l
}

/// Wakeups per second of our threads while idle.
fn idle_line(b: &Bench) -> String {
    let Some(ms) = b.idle_ms.filter(|&ms| ms > 0) else {
        return "balloon thread idle wakeups/s: no figures (the driver has no thread_wakeups)"
            .into();
    };
    let per_s = |n: Option<u64>| {
        n.map_or("-".to_string(), |n| {
            format!("{:.2}", n as f64 * 1000.0 / ms as f64)
        })
    };
    format!(
        "balloon thread idle wakeups/s: {} (reference figure 0); reporting thread (report_enabled=0): {}/s; over {:.1} s, target reached",
        per_s(b.thread_wakeups),
        per_s(b.report_wakeups),
        ms as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_takes_the_median_run() {
        let row = |driver, secs| BenchRow {
            driver,
            what: "inflate",
            mib: 1024,
            secs,
            cpu: CpuMs::default(),
            rss_drop_mib: 0,
            notify_ms: None,
        };
        let rows = [
            row("ours", 3.0),
            row("ours", 1.0),
            row("theirs", 9.0),
            row("ours", 2.0),
        ];
        assert_eq!(
            median(&rows, "ours", "inflate", 1024).map(|r| r.secs),
            Some(2.0)
        );
        assert_eq!(
            median(&rows, "theirs", "inflate", 1024).map(|r| r.secs),
            Some(9.0)
        );
        assert!(median(&rows, "ours", "deflate", 1024).is_none());
    }

    fn row(driver: &'static str, what: &'static str, mib: u64, secs: f64, rss: u64) -> BenchRow {
        BenchRow {
            driver,
            what,
            mib,
            secs,
            cpu: CpuMs {
                vcpu: 2000,
                other: 500,
            },
            rss_drop_mib: rss,
            notify_ms: None,
        }
    }

    fn host() -> HostDiscard {
        HostDiscard {
            mib: 1024,
            runs: 3,
            resident: 2048.0,
            untouched: 40_000.0,
            resident_thp: None,
            rss_drop_mib: 1024,
        }
    }

    #[test]
    fn host_share_bounds_what_any_driver_could_reach() {
        // Ours: 0.5 s per GiB, 0.2 s of it inside notifications; in-tree 0.6 s.
        let mut ours = row("ours", "inflate", 1024, 0.5, 0);
        ours.notify_ms = Some(200);
        let rows = [ours, row("theirs", "inflate", 1024, 0.6, 0)];
        let lines = host_share_lines(&rows, &[("inflate", 1024)]);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("ours 500 ms/GiB, of which 200 inside"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("in-tree 600 ms/GiB"), "{}", lines[0]);
        assert!(lines[0].contains("at most 3.00x"), "{}", lines[0]);
        assert!(
            lines[0].contains("ours 300 ms/GiB, in-tree ~400"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("ratio 0.75"), "{}", lines[0]);
        assert!(!lines[0].contains("not like for like"), "{}", lines[0]);
        // Ours discarded resident pages, in-tree untouched ones: flagged.
        let mut ours = row("ours", "inflate", 1024, 0.5, 700);
        ours.notify_ms = Some(200);
        let rows = [ours, row("theirs", "inflate", 1024, 0.6, 5)];
        let lines = host_share_lines(&rows, &[("inflate", 1024)]);
        assert!(lines[0].contains("not like for like"), "{}", lines[0]);
        // No figure from the guest (older driver): no line.
        let rows = [
            row("ours", "inflate", 1024, 0.5, 0),
            row("theirs", "inflate", 1024, 0.6, 0),
        ];
        assert!(host_share_lines(&rows, &[("inflate", 1024)]).is_empty());
        assert_eq!(best_ratio(600.0, 0.0), f64::INFINITY);
    }

    #[test]
    fn medians_of_figures() {
        assert_eq!(median_u64(&[900, 700, 800, 1200, 750]), Some(800));
        assert_eq!(median_u64(&[5, 1]), Some(5));
        assert_eq!(median_u64(&[]), None);
    }

    #[test]
    fn resident_row_against_the_host() {
        let rows = [
            row("ours", "resident", 1024, 1.0, 1000),
            row("ours", "resident", 1024, 2.0, 900),
            row("ours", "resident", 1024, 4.0, 800),
            row("theirs", "resident", 1024, 8.0, 1010),
        ];
        let l = resident_line(&rows, Some(&host())).unwrap();
        assert_eq!(
            l,
            "resident inflate 1024 MiB: ours 512 MiB/s, in-tree 128 MiB/s; ours / host resident \
             discard rate 0.25 (reference figure >= 0.90); QEMU RSS released: ours 900 MiB, in-tree 1010 MiB"
        );
        let l = resident_line(&rows[..1], None).unwrap();
        assert!(l.contains("in-tree - MiB/s"), "{l}");
        assert!(l.contains("discard rate - (reference figure"), "{l}");
        assert!(resident_line(&[row("ours", "inflate", 1024, 1.0, 0)], None).is_none());
    }

    #[test]
    fn pressure_lines() {
        let oom = vec![
            ("ours", "killed".to_string(), 0),
            ("ours", "got-mib".to_string(), 2048),
            ("ours", "child-ms".to_string(), 15000),
            ("ours", "relief-ms".to_string(), 14200),
            ("ours", "given-x100".to_string(), 102),
            ("theirs", "killed".to_string(), 1),
            ("theirs", "got-mib".to_string(), 900),
            ("theirs", "child-ms".to_string(), 4000),
            ("theirs", "relief-ms".to_string(), u64::MAX),
        ];
        let l = oom_lines(&oom);
        assert_eq!(l.len(), 2);
        assert!(l[0].contains("ours: child not killed, got 2048 MiB in 15000 ms"));
        assert!(l[0].contains("to the child having it all: 14200 ms"));
        assert!(l[0].ends_with("beyond free memory: 1.02"));
        assert!(l[1].contains("in-tree: child KILLED, got 900 MiB"));
        assert!(!l[1].contains("first vm_lowmem"));
        assert!(oom_lines(&[]).is_empty());
    }

    #[test]
    fn lowmem_and_idle_lines() {
        assert_eq!(
            lowmem_line(&[900, 700, 800, 1200, 750], &[]),
            "lowmem deflate of 256 pages: median 800 µs of guest time (reference figure < 1000); \
             runs: 900 700 800 1200 750 µs"
        );
        assert!(lowmem_line(&[0, 0, 0], &[2100, 1900, 2000]).ends_with(
            "runs: 0 0 0 µs; the whole debug.vm_lowmem write (every handler, guest clock): \
             median 2000 µs, runs: 2100 1900 2000 µs"
        ));
        assert!(lowmem_line(&[], &[5]).contains("no figures"));
        let mut b = Bench {
            idle_ms: Some(10_000),
            thread_wakeups: Some(0),
            report_wakeups: Some(3),
            ..Bench::default()
        };
        assert_eq!(
            idle_line(&b),
            "balloon thread idle wakeups/s: 0.00 (reference figure 0); reporting thread \
             (report_enabled=0): 0.30/s; over 10.0 s, target reached"
        );
        b.report_wakeups = None;
        assert!(idle_line(&b).contains("reporting thread (report_enabled=0): -/s"));
        assert!(idle_line(&Bench::default()).contains("no figures"));
        assert!(Bench::default().is_empty());
        assert!(!b.is_empty());
    }

    #[test]
    fn bench_table() {
        let b = Bench {
            rows: vec![
                row("ours", "deflate", 1024, 1.0, 0),
                row("theirs", "deflate", 1024, 2.0, 0),
                row("ours", "resident", 1024, 2.0, 1000),
                row("theirs", "resident", 1024, 4.0, 1000),
                row("ours", "inflate", 1024, 1.0, 6),
                row("theirs", "inflate", 1024, 4.0, 8),
                row("ours", "inflate", 3072, 3.0, 0),
            ],
            lowmem_us: vec![400],
            ..Bench::default()
        };
        let out = bench_report(&b, Some(&host()));
        let ops: Vec<&str> = out
            .iter()
            .filter(|l| l.contains("(median of"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        // Inflate, deflate, resident by size; 3 GiB has no in-tree figure.
        assert_eq!(ops, ["inflate", "deflate", "resident"]);
        let resident = out.iter().find(|l| l.starts_with("resident ")).unwrap();
        assert!(resident.contains(" 512 "), "{resident}");
        assert!(resident.contains(" 2.00 "), "{resident}");
        let deflate = out.iter().find(|l| l.starts_with("deflate ")).unwrap();
        assert!(
            deflate.contains(" - "),
            "no discard figure on a deflate: {deflate}"
        );
        assert!(out
            .iter()
            .any(|l| l.starts_with("host discard, QEMU not running")
                && l.contains("resident 2048 MiB/s (RSS -1024 MiB), untouched 40000 MiB/s")));
        assert!(out
            .iter()
            .any(|l| l.contains("discard rate 0.25 (reference figure >= 0.90)")));
        assert!(out.iter().any(|l| l.contains("median 400 µs")));
        assert!(out
            .iter()
            .any(|l| l.starts_with("balloon thread idle wakeups/s: no figures")));
        let none = bench_report(&b, None);
        assert!(none.iter().any(|l| l == "host discard rate: not measured"));
        let thp = HostDiscard {
            resident_thp: Some(900.0),
            ..host()
        };
        assert!(host_discard_line(&thp).ends_with(", resident in THP 900 MiB/s"));
    }
}
