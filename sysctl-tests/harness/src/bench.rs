//! The benchmark's model and report: the operations the host timed (each
//! with the guest's own figures for it), medians and spreads over the
//! repetitions, ratios paired by repetition, the tables and their footer,
//! and the host's own discard rate as a reference.

use crate::discard::{self, HostDiscard};
use crate::vm::CpuMs;

/// One timed operation.
pub struct BenchRow {
    /// The variant (`ours`, `theirs`, `ours+NODE=N...`).
    pub driver: String,
    pub what: &'static str,
    pub mib: u64,
    /// The repetition it belongs to.
    pub rep: u32,
    pub secs: f64,
    pub cpu: CpuMs,
    /// QEMU RSS released during the operation.
    pub rss_drop_mib: u64,
    /// The guest's figures for it (`bench-cost-NAME V`): `cpu_us`, the
    /// driver's threads' processor time; for ours the differences of its
    /// cost nodes (`notify_us`, `step_us`, `alloc_us`, ...).
    pub guest: Vec<(String, u64)>,
}

impl BenchRow {
    /// MiB/s.
    fn rate(&self) -> f64 {
        self.mib as f64 / self.secs
    }

    /// A guest figure.
    fn g(&self, name: &str) -> Option<u64> {
        self.guest.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Milliseconds per GiB of a figure in microseconds.
    fn us_per_gib(&self, us: u64) -> f64 {
        us as f64 / 1000.0 * 1024.0 / self.mib as f64
    }

    /// Count per GiB.
    fn per_gib(&self, n: u64) -> f64 {
        n as f64 * 1024.0 / self.mib as f64
    }
}

/// What a bench boot measured.
#[derive(Default)]
pub struct Bench {
    /// The variants in the guest's numbering (`bench-driver D`).
    pub variants: Vec<String>,
    /// The repetition running now (`bench-rep`).
    pub rep: u32,
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
    /// The pressure scenario per driver (`bench-oom-*`): driver, field, value.
    pub oom: Vec<(String, String, u64)>,
    /// The boot ran the figures after the rows (not `--extras 0`).
    pub extras: bool,
}

impl Bench {
    /// The model for a boot running `phases`: the variants are those after
    /// `--variants` (the bench's mode), else ours and the in-tree driver.
    pub fn for_boot(phases: &str) -> Bench {
        let mut words = phases.split_whitespace();
        let mut variants = vec!["ours".to_string(), "theirs".to_string()];
        let mut extras = true;
        while let Some(w) = words.next() {
            if w == "--variants" {
                if let Some(v) = words.next() {
                    variants = v.split(',').map(String::from).collect();
                }
            } else if w == "--extras" {
                extras = words.next() != Some("0");
            }
        }
        Bench {
            variants,
            extras,
            ..Bench::default()
        }
    }

    /// The name of variant `i`.
    pub fn variant(&self, i: u64) -> String {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.variants.get(i))
            .cloned()
            .unwrap_or_else(|| format!("variant{i}"))
    }

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

/// Median, least and greatest of some figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median [min-max]` with `prec` decimals.
    fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}-{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }
}

/// The rows of `driver` doing `what` to `mib`, in repetition order.
fn rows_of<'a>(rows: &'a [BenchRow], driver: &str, what: &str, mib: u64) -> Vec<&'a BenchRow> {
    let mut v: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.driver == driver && r.what == what && r.mib == mib)
        .collect();
    v.sort_by_key(|r| r.rep);
    v
}

/// A figure over the rows, as a spread.
fn spread(rows: &[&BenchRow], f: impl Fn(&BenchRow) -> Option<f64>) -> Option<Spread> {
    Spread::of(rows.iter().filter_map(|r| f(r)).collect())
}

/// Rate ratios `a / b`, repetition by repetition (the two ran one after the
/// other from the same state).
fn paired_ratios(a: &[&BenchRow], b: &[&BenchRow]) -> Vec<f64> {
    a.iter()
        .filter_map(|x| {
            let y = b.iter().find(|y| y.rep == x.rep)?;
            Some(x.rate() / y.rate())
        })
        .collect()
}

/// How the paired ratios compare with 1 (ours against the in-tree driver).
fn verdict(ratios: &[f64]) -> String {
    let Some(s) = Spread::of(ratios.to_vec()) else {
        return "no pairs".into();
    };
    let ahead = ratios.iter().filter(|&&r| r > 1.0).count();
    let n = ratios.len();
    if s.min > 1.0 {
        format!("ahead in every rep ({ahead}/{n})")
    } else if s.median >= 1.0 {
        format!("ahead in {ahead}/{n} reps: not beyond the noise")
    } else if s.max < 1.0 {
        format!("BEHIND in every rep ({}/{n})", n - ahead)
    } else {
        format!("BEHIND at the median, ahead in {ahead}/{n} reps")
    }
}

/// The order of a size's rows in the table.
fn op_rank(what: &str) -> u8 {
    match what {
        "inflate" => 0,
        "deflate" => 1,
        _ => 2,
    }
}

/// What the table calls a variant.
fn label(driver: &str) -> &str {
    if driver == "theirs" {
        "in-tree"
    } else {
        driver
    }
}

pub fn print_bench(b: &Bench, host: Option<&HostDiscard>) {
    for line in bench_report(b, host) {
        println!("{line}");
    }
}

/// The rows' operations, by size then inflate before deflate.
fn ops_of(rows: &[BenchRow]) -> Vec<(&'static str, u64)> {
    let mut ops: Vec<(&str, u64)> = rows.iter().map(|r| (r.what, r.mib)).collect();
    ops.sort_by_key(|&(what, mib)| (mib, op_rank(what)));
    ops.dedup();
    ops
}

/// Our guest time in notifications for `what` of `mib`, ms/GiB: the host's
/// own work on those pages (QEMU discards or re-validates each page inside
/// the notification). The in-tree driver cannot be timed from inside: the
/// same pages cost the host the same, so ours stands for it.
fn host_share(rows: &[BenchRow], variants: &[String], what: &str, mib: u64) -> Option<f64> {
    let ours = variants.iter().find(|v| v.as_str() == "ours")?;
    spread(&rows_of(rows, ours, what, mib), |r| {
        Some(r.us_per_gib(r.g("notify_us")?))
    })
    .map(|s| s.median)
}

/// A driver's own guest time per GiB in one operation: its threads'
/// processor time less the host's work inside its notifications (ours
/// measured; the in-tree driver's as `share`).
fn own_ms(r: &BenchRow, share: Option<f64>) -> Option<f64> {
    let cpu = r.us_per_gib(r.g("cpu_us")?);
    let host = match r.g("notify_us") {
        Some(n) => r.us_per_gib(n),
        None => share?,
    };
    Some(cpu - host)
}

/// The table, its footer and the figures besides it.
fn bench_report(b: &Bench, host: Option<&HostDiscard>) -> Vec<String> {
    let rows = &b.rows[..];
    let ops = ops_of(rows);
    let reps = rows.iter().map(|r| r.rep + 1).max().unwrap_or(0);
    let mut out = vec![
        String::new(),
        format!(
            "bench: {reps} repetitions of each row per driver, drivers interleaved pair by pair in one \
             boot (the order rotated by repetition and size); every inflate takes host-resident memory \
             (a child touched all the memory the guest could spare, an untimed inflate took what it did \
             not reach), every deflate gives back what the host just discarded"
        ),
    ];
    if b.variants.iter().any(|v| v == "ours") && b.variants.iter().any(|v| v == "theirs") {
        out.extend(main_table(rows, &ops, &b.variants));
    }
    out.extend(variants_table(rows, &ops, &b.variants));
    out.extend(guest_table(rows, &ops, &b.variants));
    out.push(
        "MiB/s: host-observed, from the QMP balloon command until query-balloon shows the target; \
         median [least-most] over the repetitions; paired: ours / in-tree within each repetition.\n\
         guest ms per GiB, each the median over the repetitions, on the guest's clock: wall = the host's \
         time; cpu = processor time of the driver's kernel threads (kern.proc, ki_runtime; ours: \
         balloon and kick threads); notify = inside notifications, where QEMU does its work on the \
         pages (ours measured; in-tree ~: ours for the same pages); own = cpu - notify; ours' cpu \
         split: alloc (taking pages), build (the rest of the balloon thread's steps: buffers, lists, \
         bookkeeping), post (copying and queueing or handing over buffers), free (giving pages back), \
         kick (the kick thread's own work), hand-off (the kick thread's latency, not cpu); wait = \
         the balloon thread asleep for the host (not cpu). vCPU: QEMU's vCPU threads on the host."
            .into(),
    );
    match host {
        Some(h) => out.push(host_discard_line(h)),
        None => out.push("host discard rate: not measured".into()),
    }
    out.extend(resident_lines(rows, &ops, host));
    if b.extras {
        out.push(lowmem_line(&b.lowmem_us, &b.lowmem_call_us));
        out.push(idle_line(b));
        out.extend(oom_lines(&b.oom));
    } else {
        out.push(
            "lowmem latency, idle wakeups, pressure: not measured (VTB_BENCH_EXTRAS=0)".into(),
        );
    }
    out
}

/// Ours against the in-tree driver: rates, paired ratios, RSS released,
/// own work, and whether ours is ahead beyond the noise.
fn main_table(rows: &[BenchRow], ops: &[(&str, u64)], variants: &[String]) -> Vec<String> {
    let mut out = vec![
        format!(
            "{:<8} {:>5} | {:>22} | {:>22} | {:>18} {:<34} | {:>13} | {:>15}",
            "op",
            "MiB",
            "ours MiB/s",
            "in-tree MiB/s",
            "ours/in-tree",
            "paired by rep",
            "RSS -MiB",
            "own ms/GiB"
        ),
        format!(
            "{:<8} {:>5} | {:>22} | {:>22} | {:>18} {:<34} | {:>13} | {:>15}",
            "",
            "",
            "median [min-max]",
            "median [min-max]",
            "median [min-max]",
            "",
            "ours in-tree",
            "ours in-tree"
        ),
    ];
    for &(what, mib) in ops {
        let ours = rows_of(rows, "ours", what, mib);
        let theirs = rows_of(rows, "theirs", what, mib);
        let (Some(o), Some(t)) = (
            spread(&ours, |r| Some(r.rate())),
            spread(&theirs, |r| Some(r.rate())),
        ) else {
            continue;
        };
        let ratios = paired_ratios(&ours, &theirs);
        let ratio = Spread::of(ratios.clone()).map_or("-".into(), |s| s.show(2));
        let rss = |v: &[&BenchRow]| {
            spread(v, |r| Some(r.rss_drop_mib as f64))
                .map_or("-".into(), |s| format!("{:.0}", s.median))
        };
        let share = host_share(rows, variants, what, mib);
        let own = |v: &[&BenchRow], s| {
            spread(v, |r| own_ms(r, s)).map_or("-".into(), |s| format!("{:.0}", s.median))
        };
        out.push(format!(
            "{:<8} {:>5} | {:>22} | {:>22} | {:>18} {:<34} | {:>6} {:>6} | {:>6} {:>7}",
            what,
            mib,
            o.show(0),
            t.show(0),
            ratio,
            verdict(&ratios),
            rss(&ours),
            rss(&theirs),
            own(&ours, None),
            format!("~{}", own(&theirs, share)),
        ));
    }
    // Own work, ours against the in-tree driver's estimate.
    for &(what, mib) in ops {
        let share = host_share(rows, variants, what, mib);
        let o = spread(&rows_of(rows, "ours", what, mib), |r| own_ms(r, None));
        let t = spread(&rows_of(rows, "theirs", what, mib), |r| own_ms(r, share));
        if let (Some(o), Some(t)) = (o, t) {
            let cmp = if o.median <= t.median {
                "at most"
            } else {
                "MORE than"
            };
            out.push(format!(
                "own work {what} {mib}: ours {} ms/GiB {cmp} in-tree ~{} (its threads' cpu less ours' \
                 time in notifications for the same pages), ratio {:.2}",
                o.show(0),
                t.show(0),
                o.median / t.median.max(1.0)
            ));
        }
    }
    out
}

/// Every variant's rate, and its ratio to the in-tree driver's paired by
/// repetition (when the in-tree driver ran).
fn variants_table(rows: &[BenchRow], ops: &[(&str, u64)], variants: &[String]) -> Vec<String> {
    let standard = variants.len() == 2 && variants[0] == "ours" && variants[1] == "theirs";
    if standard {
        return Vec::new();
    }
    let mut out = vec![format!(
        "{:<8} {:>5} | {:<44} | {:>22} | {:>18} | {:>14}",
        "op", "MiB", "variant", "MiB/s median [min-max]", "/in-tree paired", "own ms/GiB"
    )];
    for &(what, mib) in ops {
        let share = host_share(rows, variants, what, mib);
        let theirs = rows_of(rows, "theirs", what, mib);
        for v in variants {
            let mine = rows_of(rows, v, what, mib);
            let Some(rate) = spread(&mine, |r| Some(r.rate())) else {
                continue;
            };
            let ratio = Spread::of(paired_ratios(&mine, &theirs))
                .filter(|_| v != "theirs")
                .map_or("-".into(), |s| s.show(2));
            let own = spread(&mine, |r| own_ms(r, share)).map_or("-".into(), |s| s.show(0));
            out.push(format!(
                "{:<8} {:>5} | {:<44} | {:>22} | {:>18} | {:>14}",
                what,
                mib,
                label(v),
                rate.show(0),
                ratio,
                own
            ));
        }
    }
    out
}

/// Where each driver's guest time goes, per GiB.
fn guest_table(rows: &[BenchRow], ops: &[(&str, u64)], variants: &[String]) -> Vec<String> {
    let mut out = vec![format!(
        "{:<8} {:>5} {:<28} | {:>5} {:>5} | {:>5} {:>6} {:>5} | {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8} | {:>5} | {:>5} {:>7} {:>4}",
        "guest", "MiB", "ms per GiB", "wall", "vCPU", "cpu", "notify", "own", "alloc", "build",
        "post", "free", "kick", "h-off", "", "wait", "runs", "singles", "bufs"
    )];
    for &(what, mib) in ops {
        let share = host_share(rows, variants, what, mib);
        for v in variants {
            let mine = rows_of(rows, v, what, mib);
            if mine.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&BenchRow) -> Option<f64>| {
                spread(&mine, |r| f(r)).map_or("-".to_string(), |s| format!("{:.0}", s.median))
            };
            let us = |k: &'static str| move |r: &BenchRow| Some(r.us_per_gib(r.g(k)?));
            let n = |k: &'static str| move |r: &BenchRow| Some(r.per_gib(r.g(k)?));
            let ours = mine.iter().any(|r| r.g("step_us").is_some());
            let notify = if ours {
                med(&us("notify_us"))
            } else {
                share.map_or("-".into(), |s| format!("~{s:.0}"))
            };
            let own = med(&|r| own_ms(r, share));
            let own = if ours { own } else { format!("~{own}") };
            // The balloon thread's steps less what the nodes divide out;
            // notifications made in place (no kick thread) are inside.
            let build = |r: &BenchRow| {
                let inplace = if r.g("kick_thread") == Some(0) {
                    r.g("notify_us")?
                } else {
                    0
                };
                let parts = ["alloc_us", "post_us", "free_us", "wait_us"]
                    .iter()
                    .map(|k| r.g(k))
                    .sum::<Option<u64>>()?;
                let step = r.g("step_us")?;
                Some(r.us_per_gib(step.saturating_sub(parts + inplace)))
            };
            let dash = |s: String| if ours { s } else { "-".into() };
            out.push(format!(
                "{:<8} {:>5} {:<28} | {:>5} {:>5} | {:>5} {:>6} {:>5} | {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>8} | {:>5} | {:>5} {:>7} {:>4}",
                what,
                mib,
                label(v),
                med(&|r| Some(r.secs * 1000.0 * 1024.0 / r.mib as f64)),
                med(&|r| Some(r.cpu.vcpu as f64 * 1024.0 / r.mib as f64)),
                med(&us("cpu_us")),
                notify,
                own,
                dash(med(&us("alloc_us"))),
                dash(med(&build)),
                dash(med(&us("post_us"))),
                dash(med(&us("free_us"))),
                dash(med(&us("kick_us"))),
                dash(med(&us("kick_wait_us"))),
                "",
                dash(med(&us("wait_us"))),
                dash(med(&n("alloc_runs"))),
                dash(med(&n("alloc_single_pages"))),
                dash(med(&n("buffers_posted"))),
            ));
        }
    }
    out
}

/// Each inflate row against the host's own resident discard rate.
fn resident_lines(
    rows: &[BenchRow],
    ops: &[(&str, u64)],
    host: Option<&HostDiscard>,
) -> Vec<String> {
    let Some(h) = host.filter(|h| h.resident > 0.0) else {
        return Vec::new();
    };
    ops.iter()
        .filter(|(what, _)| *what == "inflate")
        .filter_map(|&(what, mib)| {
            let o = spread(&rows_of(rows, "ours", what, mib), |r| Some(r.rate()))?;
            Some(format!(
                "inflate {mib} MiB of host-resident memory: ours {:.0} MiB/s = {:.2} of the host's own \
                 resident discard rate (reference figure >= 0.90)",
                o.median,
                o.median / h.resident
            ))
        })
        .collect()
}

/// The pressure scenario (balloon at 3/4 of a 4 GiB guest, a child touching
/// 2 GiB, every setting at its default), per driver.
fn oom_lines(oom: &[(String, String, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    for driver in ["ours", "theirs"] {
        let get = |f: &str| {
            oom.iter()
                .find(|(d, k, _)| d == driver && k == f)
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
        return "lowmem deflate of 256 pages: no figures (the guest sent none: the driver has no \
                lowmem_last_us, or the step failed; see the console)"
            .into();
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
        return "balloon thread idle wakeups/s: no figures (the guest sent none: the driver has no \
                thread_wakeups, or the step failed; see the console)"
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

    fn row(driver: &str, what: &'static str, mib: u64, rep: u32, secs: f64) -> BenchRow {
        BenchRow {
            driver: driver.to_string(),
            what,
            mib,
            rep,
            secs,
            cpu: CpuMs {
                vcpu: 2000,
                other: 500,
            },
            rss_drop_mib: 1000,
            guest: Vec::new(),
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
    fn spreads_and_medians() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(vec![1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(vec![]).is_none());
        assert_eq!(s.show(1), "2.0 [1.0-3.0]");
    }

    #[test]
    fn ratios_pair_by_repetition_and_say_whether_they_beat_the_noise() {
        let ours = [
            row("ours", "inflate", 1024, 0, 1.0),
            row("ours", "inflate", 1024, 1, 2.0),
        ];
        let theirs = [
            row("theirs", "inflate", 1024, 1, 4.0),
            row("theirs", "inflate", 1024, 0, 1.5),
        ];
        let o: Vec<&BenchRow> = ours.iter().collect();
        let t: Vec<&BenchRow> = theirs.iter().collect();
        assert_eq!(paired_ratios(&o, &t), [1.5, 2.0]);
        assert_eq!(verdict(&[1.5, 2.0]), "ahead in every rep (2/2)");
        assert_eq!(
            verdict(&[0.9, 1.1, 1.2]),
            "ahead in 2/3 reps: not beyond the noise"
        );
        assert_eq!(verdict(&[0.9, 0.95]), "BEHIND in every rep (2/2)");
        assert_eq!(
            verdict(&[0.8, 0.9, 1.1]),
            "BEHIND at the median, ahead in 1/3 reps"
        );
        assert_eq!(verdict(&[]), "no pairs");
    }

    #[test]
    fn variants_come_from_the_bench_mode() {
        let b =
            Bench::for_boot("bench --reps 2 --variants ours,theirs,ours+kick_thread=0 --extras 0");
        assert_eq!(b.variants, ["ours", "theirs", "ours+kick_thread=0"]);
        assert_eq!(b.variant(2), "ours+kick_thread=0");
        assert_eq!(b.variant(7), "variant7");
        assert!(!b.extras);
        assert_eq!(Bench::for_boot("basic").variants, ["ours", "theirs"]);
        assert!(Bench::for_boot("bench --reps 2").extras);
    }

    /// Ours at 1 GiB/s with a full breakdown, the in-tree driver at half
    /// that with its threads' time only.
    fn costed(driver: &str, what: &'static str, rep: u32) -> BenchRow {
        let ours = driver == "ours";
        let mut r = row(driver, what, 1024, rep, if ours { 1.0 } else { 2.0 });
        if ours {
            for (k, v) in [
                ("cpu_us", 500_000),
                ("notify_us", 300_000),
                ("step_us", 900_000),
                ("alloc_us", 50_000),
                ("post_us", 20_000),
                ("free_us", 10_000),
                ("wait_us", 700_000),
                ("kick_us", 5_000),
                ("kick_wait_us", 40_000),
                ("alloc_runs", 1024),
                ("alloc_single_pages", 0),
                ("buffers_posted", 1024),
                ("kick_thread", 1),
            ] {
                r.guest.push((k.to_string(), v));
            }
        } else {
            r.guest.push(("cpu_us".to_string(), 1_800_000));
        }
        r
    }

    #[test]
    fn own_work_is_cpu_less_the_host_share() {
        let o = costed("ours", "inflate", 0);
        assert_eq!(own_ms(&o, None), Some(200.0));
        let t = costed("theirs", "inflate", 0);
        assert_eq!(
            own_ms(&t, None),
            None,
            "the in-tree driver needs ours' share"
        );
        assert_eq!(own_ms(&t, Some(300.0)), Some(1500.0));
        let rows = [o, t];
        let v = ["ours".to_string(), "theirs".to_string()];
        assert_eq!(host_share(&rows, &v, "inflate", 1024), Some(300.0));
        assert_eq!(host_share(&rows, &v, "deflate", 1024), None);
    }

    #[test]
    fn bench_report() {
        let mut rows = Vec::new();
        for rep in 0..3 {
            for what in ["deflate", "inflate"] {
                rows.push(costed("ours", what, rep));
                rows.push(costed("theirs", what, rep));
            }
        }
        rows.push(row("ours", "inflate", 3072, 0, 3.0));
        let b = Bench {
            variants: vec!["ours".into(), "theirs".into()],
            rows,
            lowmem_us: vec![400],
            extras: true,
            ..Bench::default()
        };
        let out = super::bench_report(&b, Some(&host()));
        let text = out.join("\n");
        assert!(text.contains("bench: 3 repetitions"), "{text}");
        let ops: Vec<&str> = out
            .iter()
            .filter(|l| l.contains("ahead in every rep"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        // Inflate before deflate; 3 GiB has no in-tree figure.
        assert_eq!(ops, ["inflate", "deflate"], "{text}");
        let inflate = out
            .iter()
            .find(|l| l.starts_with("inflate   1024 |"))
            .unwrap();
        assert!(inflate.contains("1024 [1024-1024]"), "{inflate}");
        assert!(inflate.contains("2.00 [2.00-2.00]"), "{inflate}");
        assert!(inflate.contains("~1500"), "{inflate}");
        assert!(
            text.contains("own work inflate 1024: ours 200 [200-200] ms/GiB at most in-tree ~1500")
        );
        // The guest table: ours divided up, the in-tree driver's total.
        let g = out
            .iter()
            .find(|l| l.starts_with("inflate   1024 ours "))
            .unwrap();
        let cols: Vec<&str> = g.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "inflate", "1024", "ours", "|", "1000", "2000", "|", "500", "300", "200", "|",
                "50", "120", "20", "10", "5", "40", "|", "700", "|", "1024", "0", "1024"
            ],
            "{g}"
        );
        let g = out
            .iter()
            .find(|l| l.starts_with("inflate   1024 in-tree "))
            .unwrap();
        assert!(g.contains("~300") && g.contains("~1500"), "{g}");
        assert!(text.contains("ours 1024 MiB/s = 0.50 of the host's own resident discard rate"));
        assert!(text.contains("median 400 µs"));
        assert!(out
            .iter()
            .any(|l| l.starts_with("balloon thread idle wakeups/s: no figures")));
        let none = super::bench_report(&b, None);
        assert!(none.iter().any(|l| l == "host discard rate: not measured"));
        // Extras off: said once, not as missing figures.
        let off = super::bench_report(&Bench { extras: false, ..b }, None);
        assert!(off
            .iter()
            .any(|l| l.contains("not measured (VTB_BENCH_EXTRAS=0)")));
        assert!(!off.iter().any(|l| l.contains("no figures")));
        let thp = HostDiscard {
            resident_thp: Some(900.0),
            ..host()
        };
        assert!(host_discard_line(&thp).ends_with(", resident in THP 900 MiB/s"));
    }

    #[test]
    fn variants_get_their_own_table() {
        let mut rows = Vec::new();
        for rep in 0..2 {
            rows.push(costed("ours", "inflate", rep));
            rows.push(costed("theirs", "inflate", rep));
            let mut k = costed("ours", "inflate", rep);
            k.driver = "ours+kick_thread=0".into();
            k.secs = 4.0;
            rows.push(k);
        }
        let b = Bench {
            variants: vec!["ours".into(), "theirs".into(), "ours+kick_thread=0".into()],
            rows,
            ..Bench::default()
        };
        let out = super::bench_report(&b, None);
        let k = out
            .iter()
            .find(|l| l.contains("| ours+kick_thread=0 "))
            .unwrap();
        assert!(
            k.contains("256 [256-256]") && k.contains("0.50 [0.50-0.50]"),
            "{k}"
        );
    }

    #[test]
    fn medians_of_figures() {
        assert_eq!(median_u64(&[900, 700, 800, 1200, 750]), Some(800));
        assert_eq!(median_u64(&[5, 1]), Some(5));
        assert_eq!(median_u64(&[]), None);
    }

    #[test]
    fn pressure_lines() {
        let oom = vec![
            ("ours".to_string(), "killed".to_string(), 0),
            ("ours".to_string(), "got-mib".to_string(), 2048),
            ("ours".to_string(), "child-ms".to_string(), 15000),
            ("ours".to_string(), "relief-ms".to_string(), 14200),
            ("ours".to_string(), "given-x100".to_string(), 102),
            ("theirs".to_string(), "killed".to_string(), 1),
            ("theirs".to_string(), "got-mib".to_string(), 900),
            ("theirs".to_string(), "child-ms".to_string(), 4000),
            ("theirs".to_string(), "relief-ms".to_string(), u64::MAX),
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
    fn takes_no_figures_without_rows() {
        assert!(super::bench_report(&Bench::default(), None)
            .iter()
            .all(|l| !l.contains("ahead")));
    }
}
