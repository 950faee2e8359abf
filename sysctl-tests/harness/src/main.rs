//! vmharness: boots a FreeBSD kernel under QEMU with the real virtio
//! balloon device, runs the in-guest checks (vtbtest as /sbin/init), acts as
//! the host when the guest asks (QMP), and fails on any failed check, kernel
//! panic, WITNESS warning or timeout.
//!
//! ```text
//! vmharness test             every test boot (make vmtest)
//! vmharness bench            throughput, ours against the in-tree driver (make vmbench)
//! vmharness intree           the in-tree driver only (no vtballoonrs.ko needed)
//! vmharness <phase> ...      one boot running these guest phases
//! vmharness host-discard     the bench's host reference alone (no QEMU)
//! ```
//!
//! Environment: FREEBSD_BOOT (a FreeBSD /boot directory: kernel/kernel,
//! loader or loader_simp, cdboot, optionally modules/virtio_balloon.ko;
//! default /opt/freebsd-boot), VTB_MODULE (our .ko, default
//! target/kld/vtballoonrs.ko), VTB_INIT (the test program, default
//! target/vtbtest), VTB_KVM=1 (KVM instead of TCG), VTB_WORK (default
//! target/vmtest).

mod console;
mod discard;
/// The guest's side of the console protocol, compiled here to test both
/// ends together.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../guest/src/proto.rs"]
mod guest_proto;
mod iso;
mod json;
mod qmp;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use console::Line;
use discard::HostDiscard;
use qmp::{GuestStats, Qmp};
use vm::{CpuMs, Vm, VmConfig};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// One boot of the guest.
struct Boot {
    name: String,
    phases: String,
    kenv: Vec<String>,
    mem_mib: u64,
    needs_ours: bool,
    /// Upper bound for the whole boot.
    limit: Duration,
}

impl Boot {
    fn new(name: &str, phases: &str, mem_mib: u64, needs_ours: bool, limit_s: u64) -> Boot {
        let mut kenv = Vec::new();
        if phases.split(' ').any(|p| p == "tunable") {
            // What the guest's `tunable` phase expects to find.
            kenv.push("dev.vtballoonrs.0.oom_batch_pages=4096".into());
        }
        Boot {
            name: name.into(),
            phases: phases.into(),
            kenv,
            mem_mib,
            needs_ours,
            limit: Duration::from_secs(limit_s),
        }
    }
}

/// The boots of `vmharness test`, each a fresh guest so one failure does
/// not hide the next scenario.
fn test_boots() -> Vec<Boot> {
    let mut basic = Boot::new("basic", "tunable nodes resize stats", 2048, true, 900);
    basic
        .kenv
        .push("dev.vtballoonrs.0.oom_batch_pages=4096".into());
    vec![
        basic,
        Boot::new("pressure", "pressure", 2048, true, 1200),
        Boot::new("report", "report", 2048, true, 900),
        Boot::new("lifecycle", "unload cycles swap", 2048, true, 1200),
    ]
}

fn plan(args: &[String]) -> Vec<Boot> {
    match args.first().map(String::as_str) {
        None | Some("test") => test_boots(),
        Some("bench") => vec![Boot::new("bench", "bench", 4096, true, 2400)],
        Some("intree") => vec![Boot::new("intree", "intree", 2048, false, 600)],
        Some(_) => {
            // Options for the guest (--no-host) go along with the phases.
            let phases = args.join(" ");
            let needs = args.iter().any(|a| a != "intree" && !a.starts_with('-'));
            let name: Vec<&str> = args.iter().map(|a| a.trim_start_matches('-')).collect();
            vec![Boot::new(&name.join("-"), &phases, 2048, needs, 2400)]
        }
    }
}

struct Inputs {
    boot: PathBuf,
    module: PathBuf,
    init: PathBuf,
    work: PathBuf,
    kvm: bool,
}

fn env_path(key: &str, default: &str) -> PathBuf {
    PathBuf::from(std::env::var(key).unwrap_or_else(|_| default.to_string()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("host-discard") {
        std::process::exit(i32::from(measure_host_discard().is_none()));
    }
    let inputs = Inputs {
        boot: env_path("FREEBSD_BOOT", "/opt/freebsd-boot"),
        module: env_path("VTB_MODULE", "target/kld/vtballoonrs.ko"),
        init: env_path("VTB_INIT", "target/vtbtest"),
        work: env_path("VTB_WORK", "target/vmtest"),
        kvm: std::env::var("VTB_KVM").is_ok_and(|v| v == "1"),
    };
    let b = &inputs.boot;
    if !b.join("kernel/kernel").is_file()
        || !b.join("cdboot").is_file()
        || iso::loader_of(b).is_none()
    {
        println!(
            "skipped: no FreeBSD boot files at {} (kernel/kernel, loader, cdboot)",
            b.display()
        );
        return;
    }
    let boots = plan(&args);
    let mut missing = vec![];
    if !inputs.init.is_file() {
        missing.push(format!(
            "test program {} (sysctl-tests/guest/build.sh)",
            inputs.init.display()
        ));
    }
    if boots.iter().any(|b| b.needs_ours) && !inputs.module.is_file() {
        missing.push(format!("module {} (make build)", inputs.module.display()));
    }
    if !missing.is_empty() {
        eprintln!("vmharness: missing {}", missing.join(", "));
        std::process::exit(1);
    }
    let started = Instant::now();
    // The host's own discard rate, the benchmark's reference: measured
    // before QEMU starts, so nothing else competes for the host.
    let host_discard =
        (args.first().map(String::as_str) == Some("bench")).then(measure_host_discard);
    let mut results = Vec::new();
    for boot in &boots {
        let r = run_boot(&inputs, boot);
        results.push((boot.name.clone(), r));
    }
    println!("\n== summary ({})", if inputs.kvm { "KVM" } else { "TCG" });
    let (mut passed, mut failed) = (0, 0);
    for (name, r) in &results {
        println!(
            "{name:<10} guest {:>3} passed, {:>2} failed, {:>2} skipped; harness {:>2} passed, {:>2} failed; {:>4.0} s{}",
            r.guest.0,
            r.guest.1,
            r.skipped,
            r.harness.0,
            r.harness.1,
            r.secs,
            if r.completed { "" } else { "  (did not complete)" }
        );
        passed += r.guest.0 + r.harness.0;
        failed += r.guest.1 + r.harness.1;
        if !r.bench.is_empty() {
            print_bench(&r.bench, host_discard.flatten().as_ref());
        }
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    std::process::exit(i32::from(failed > 0 || passed == 0));
}

#[derive(Default)]
struct BootResult {
    guest: (u32, u32),
    skipped: u32,
    harness: (u32, u32),
    completed: bool,
    secs: f64,
    bench: Bench,
}

/// The host side of one boot.
struct Run {
    name: String,
    vm: Vm,
    qmp: Qmp,
    ram: u64,
    rss_mark: u64,
    stats: Option<GuestStats>,
    driver: &'static str,
    bench: Bench,
}

fn run_boot(inputs: &Inputs, boot: &Boot) -> BootResult {
    let t0 = Instant::now();
    let mut res = BootResult::default();
    let log = inputs.work.join(&boot.name).join("console.log");
    println!(
        "\n== boot {}: phases {} ({} MiB)",
        boot.name, boot.phases, boot.mem_mib
    );
    let outcome = boot_and_drive(inputs, boot, &mut res);
    res.secs = t0.elapsed().as_secs_f64();
    let mut harness_check = |ok: bool, name: &str, why: &str| {
        if ok {
            res.harness.0 += 1;
            println!("[{}] harness: ok - {name}", boot.name);
        } else {
            res.harness.1 += 1;
            println!("[{}] harness: not ok - {name}: {why}", boot.name);
        }
    };
    match outcome {
        Err(e) => harness_check(false, "the boot ran to its end", &e),
        Ok(d) => {
            harness_check(
                d.summary.is_some(),
                "the guest printed its summary",
                "no summary line",
            );
            harness_check(
                d.fatal.is_none(),
                "no kernel panic",
                d.fatal.as_deref().unwrap_or(""),
            );
            harness_check(
                d.warnings.is_empty(),
                "no WITNESS or virtqueue warnings",
                &d.warnings.join(" | "),
            );
            harness_check(
                d.powered_off,
                "the guest powered off",
                "QEMU was still running",
            );
            if let Some(s) = d.summary {
                res.guest = s;
            }
            res.skipped = d.skipped;
            res.completed = d.summary.is_some() && d.fatal.is_none();
        }
    }
    println!(
        "[{}] console log: {} ({:.0} s)",
        boot.name,
        log.display(),
        res.secs
    );
    if res.harness.1 > 0 || res.guest.1 > 0 {
        print_tail(&log, 60);
    }
    res
}

/// What the console showed.
#[derive(Default)]
struct Drive {
    summary: Option<(u32, u32)>,
    skipped: u32,
    fatal: Option<String>,
    warnings: Vec<String>,
    powered_off: bool,
}

fn boot_and_drive(inputs: &Inputs, boot: &Boot, res: &mut BootResult) -> Result<Drive, String> {
    let work = inputs.work.join(&boot.name);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let work = work.canonicalize().map_err(|e| e.to_string())?;
    let iso_path = work.join("boot.iso");
    iso::build(
        &iso::Image {
            boot: &inputs.boot,
            module: inputs.module.is_file().then_some(inputs.module.as_path()),
            init: &inputs.init,
            phases: &boot.phases,
            kenv: &boot.kenv,
        },
        &work.join("iso"),
        &iso_path,
    )?;
    let log = work.join("console.log");
    let cfg = VmConfig {
        iso: &iso_path,
        mem_mib: boot.mem_mib,
        cpus: 2,
        log: &log,
        kvm: inputs.kvm,
    };
    let vm = Vm::start(&cfg, &work)?;
    let qmp = Qmp::connect(&vm.qmp_path)?;
    let mut r = Run {
        name: boot.name.clone(),
        vm,
        qmp,
        ram: boot.mem_mib * MIB,
        rss_mark: 0,
        stats: None,
        driver: "ours",
        bench: Bench::default(),
    };
    let d = drive(&mut r, boot.limit);
    r.vm.kill();
    res.bench = std::mem::take(&mut r.bench);
    d
}

/// Longest quiet spell on the console before the boot counts as hung.
const QUIET_LIMIT: Duration = Duration::from_secs(600);
/// How often QEMU's run state is checked while the console is quiet.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Follows the console until the guest powers off, answering its requests.
fn drive(r: &mut Run, limit: Duration) -> Result<Drive, String> {
    let start = Instant::now();
    let mut d = Drive::default();
    let mut record = console::Record::default();
    let mut last_line = Instant::now();
    // After a panic or the summary, how long to keep reading.
    let mut until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let end = until.unwrap_or(start + limit);
        if now >= end {
            if until.is_some() {
                return Ok(d);
            }
            return Err(format!(
                "timeout: the boot took more than {} s",
                limit.as_secs()
            ));
        }
        // Wake up every few seconds to see whether QEMU itself stopped (a
        // KVM internal error, for one, leaves it paused and silent).
        let wait = (end - now).min(CHECK_EVERY);
        let line = match r.vm.lines.recv_timeout(wait) {
            Ok(l) => {
                last_line = Instant::now();
                l
            }
            Err(RecvTimeoutError::Timeout) => {
                let status = r.qmp.status().unwrap_or_else(|e| e);
                if qmp::is_stopped(&status) {
                    return Err(format!("QEMU stopped: {status}"));
                }
                if until.is_none() && last_line.elapsed() >= QUIET_LIMIT {
                    return Err(format!(
                        "timeout: no console output for {} s",
                        QUIET_LIMIT.as_secs()
                    ));
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // QEMU exited (-no-reboot: power-off, reboot or triple fault).
                d.powered_off = d.summary.is_some() && d.fatal.is_none();
                return Ok(d);
            }
        };
        let shown = line.trim_end();
        match console::parse(&line) {
            Line::Fatal(what) => {
                println!("[{}] KERNEL: {shown}", r.name);
                if d.fatal.is_none() {
                    d.fatal = Some(what);
                    // Keep the backtrace in the log, then stop.
                    until = Some(Instant::now() + Duration::from_secs(20));
                }
            }
            Line::Warning(what) => {
                println!("[{}] KERNEL: {shown}", r.name);
                d.warnings.push(what);
            }
            Line::Summary { passed, failed } => {
                println!("[{}] guest: {shown}", r.name);
                d.summary = Some((passed, failed));
                // Late trouble (at shutdown) still counts.
                until = Some(Instant::now() + Duration::from_secs(120));
            }
            Line::Skipped(n) => {
                println!("[{}] guest: {shown}", r.name);
                d.skipped = n;
            }
            Line::Report => println!("[{}] guest: {shown}", r.name),
            Line::Host { seq, cmd, arg } => {
                println!("[{}] guest: {shown}", r.name);
                match record.action(seq) {
                    console::Action::Ignore => {}
                    console::Action::Resend(reply) => r.vm.send(reply)?,
                    console::Action::Run => {
                        let result = host(r, &cmd, arg);
                        if let Err(e) = &result {
                            println!("[{}] host: {cmd} {arg} failed: {e}", r.name);
                        }
                        let reply = console::reply(seq, &result);
                        r.vm.send(&reply)?;
                        record.store(seq, reply);
                    }
                }
            }
            Line::Other => {
                if shown.contains("vtballoon") && !shown.starts_with("> ") {
                    println!("[{}] kernel: {shown}", r.name);
                }
            }
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The balloon as QEMU reports it, in 4 KiB pages.
fn host_pages(r: &mut Run) -> Result<u64, String> {
    Ok(r.ram.saturating_sub(r.qmp.actual()?) / PAGE)
}

/// Sets the balloon to `pages` 4 KiB pages.
fn set_target(r: &mut Run, pages: u64) -> Result<(), String> {
    let bytes = pages
        .checked_mul(PAGE)
        .filter(|&b| b <= r.ram)
        .ok_or("target above RAM")?;
    r.qmp.balloon(r.ram - bytes)
}

/// Carries out one request of the guest (see the guest's host.rs); the
/// value goes back in the reply.
fn host(r: &mut Run, cmd: &str, arg: u64) -> Result<u64, String> {
    match cmd {
        "set-target" => set_target(r, arg).map(|()| 0),
        "rapid" => {
            for mib in [64u64, 512, 32, 768, 0, 384, 96] {
                set_target(r, mib * MIB / PAGE)?;
                std::thread::sleep(Duration::from_millis(30));
            }
            set_target(r, arg).map(|()| 0)
        }
        "host-actual" => {
            // Once steady: the same for a second, or after 10 s.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last = host_pages(r)?;
            let mut same = 0;
            while same < 5 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                let now = host_pages(r)?;
                same = if now == last { same + 1 } else { 0 };
                last = now;
            }
            Ok(last)
        }
        "wait-actual" => {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let now = host_pages(r)?;
                if now == arg {
                    return Ok(now);
                }
                if Instant::now() > deadline {
                    return Err(format!("the balloon stayed at {now} pages"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        "stats-poll" => stats_poll(r, arg),
        "stats-get" => {
            let s = r
                .stats
                .as_ref()
                .ok_or("no stats sampled (stats-poll first)")?;
            let v = usize::try_from(arg)
                .ok()
                .and_then(|t| s.by_tag.get(t).copied().flatten())
                .ok_or_else(|| format!("the guest sent no stat with tag {arg}"))?;
            Ok(v / 1024)
        }
        "rss-mark" => {
            r.rss_mark = r.vm.rss_bytes();
            println!("[{}] host: QEMU RSS {} MiB", r.name, r.rss_mark / MIB);
            Ok(r.rss_mark / MIB)
        }
        "rss-drop" => rss_drop(r, arg),
        "bench-driver" => {
            r.driver = if arg == 0 { "ours" } else { "theirs" };
            Ok(0)
        }
        "bench-notify-us" => {
            if let Some(row) = r.bench.rows.last_mut() {
                row.notify_ms = Some(arg / 1000);
            }
            Ok(0)
        }
        "bench-inflate" => bench_op(r, "inflate", arg),
        "bench-deflate" => bench_op(r, "deflate", arg),
        "bench-resident" => bench_op(r, "resident", arg),
        "bench-lowmem" => {
            r.bench.lowmem_us.push(arg);
            println!(
                "[{}] bench: {} vm_lowmem handler took {arg} us of guest time",
                r.name, r.driver
            );
            Ok(r.bench.lowmem_us.len() as u64)
        }
        "bench-lowmem-call" => {
            r.bench.lowmem_call_us.push(arg);
            Ok(r.bench.lowmem_call_us.len() as u64)
        }
        "bench-idle-ms" => {
            r.bench.idle_ms = Some(arg);
            Ok(0)
        }
        "bench-idle-thread" => {
            r.bench.thread_wakeups = Some(arg);
            Ok(0)
        }
        "bench-idle-report" => {
            r.bench.report_wakeups = Some(arg);
            Ok(0)
        }
        _ => Err(format!("unknown request {cmd}")),
    }
}

/// Turns on guest-stats polling and waits for a sample newer than the
/// request, which later `stats-get` requests read.
fn stats_poll(r: &mut Run, secs: u64) -> Result<u64, String> {
    let t0 = unix_secs();
    r.qmp
        .stats_polling(u32::try_from(secs.clamp(1, 60)).unwrap_or(2))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = r.qmp.guest_stats()?;
        if s.last_update > t0 {
            let show =
                |t: usize| s.by_tag[t].map_or("-".to_string(), |v| format!("{} MiB", v / MIB));
            println!(
                "[{}] host: guest-stats free {}, total {}, avail {}, caches {}",
                r.name,
                show(4),
                show(5),
                show(6),
                show(7)
            );
            r.stats = Some(s);
            return Ok(0);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no fresh guest-stats (last update {})",
                s.last_update
            ));
        }
    }
}

fn rss_drop(r: &mut Run, mib: u64) -> Result<u64, String> {
    let goal = r.rss_mark.saturating_sub(mib * MIB * 9 / 10);
    let start = Instant::now();
    let mut rss = r.vm.rss_bytes();
    while start.elapsed() < Duration::from_secs(150) && rss > goal {
        std::thread::sleep(Duration::from_millis(500));
        rss = r.vm.rss_bytes();
    }
    println!(
        "[{}] host: QEMU RSS {} MiB -> {} MiB after the guest freed {mib} MiB ({:.1} s)",
        r.name,
        r.rss_mark / MIB,
        rss / MIB,
        start.elapsed().as_secs_f64()
    );
    let dropped = r.rss_mark.saturating_sub(rss) / MIB;
    if rss <= goal {
        Ok(dropped)
    } else {
        Err(format!("RSS fell by {dropped} MiB only"))
    }
}

struct BenchRow {
    driver: &'static str,
    what: &'static str,
    mib: u64,
    secs: f64,
    cpu: CpuMs,
    /// QEMU RSS released during the operation.
    rss_drop_mib: u64,
    /// Time our driver spent inside queue notifications (`bench-notify-us`):
    /// QEMU's own work on the buffers.
    notify_ms: Option<u64>,
}

/// What a bench boot measured.
#[derive(Default)]
struct Bench {
    rows: Vec<BenchRow>,
    /// Our vm_lowmem handler, µs of guest time per event (`bench-lowmem`).
    lowmem_us: Vec<u64>,
    /// The whole `debug.vm_lowmem` write, every handler, timed by the guest
    /// (`bench-lowmem-call`): an upper bound to cross-check `lowmem_us`.
    lowmem_call_us: Vec<u64>,
    /// The idle window (guest ms) and the wakeups of our balloon and
    /// reporting threads in it (`bench-idle-*`).
    idle_ms: Option<u64>,
    thread_wakeups: Option<u64>,
    report_wakeups: Option<u64>,
}

impl Bench {
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
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
fn measure_host_discard() -> Option<HostDiscard> {
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

/// Times one balloon change of `mib` with the loaded driver: from the QMP
/// `balloon` command until `query-balloon` reports the target. `inflate`
/// inflates an empty balloon by `mib`, `deflate` returns to an empty
/// balloon, `resident` (memory the guest touched just before) inflates by
/// `mib` from where the balloon is.
fn bench_op(r: &mut Run, what: &'static str, mib: u64) -> Result<u64, String> {
    let from = if what == "resident" {
        r.qmp.actual()?
    } else {
        r.ram
    };
    let target = if what == "deflate" {
        r.ram
    } else {
        from.checked_sub(mib * MIB).ok_or("more than RAM")?
    };
    let rss0 = r.vm.rss_bytes();
    let cpu0 = r.vm.cpu_ms();
    let t0 = Instant::now();
    r.qmp.balloon(target)?;
    while r.qmp.actual()? != target {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(format!("{what} {mib} MiB did not finish in 600 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = r.vm.cpu_ms().since(cpu0);
    let rss_drop_mib = rss0.saturating_sub(r.vm.rss_bytes()) / MIB;
    println!(
        "[{}] bench: {} {what} {mib} MiB: {secs:.2} s, {:.0} MiB/s, vCPU {} ms, QEMU other threads {} ms, RSS -{rss_drop_mib} MiB",
        r.name,
        r.driver,
        mib as f64 / secs,
        cpu.vcpu,
        cpu.other
    );
    r.bench.rows.push(BenchRow {
        driver: r.driver,
        what,
        mib,
        secs,
        cpu,
        rss_drop_mib,
        notify_ms: None,
    });
    Ok((secs * 1000.0) as u64)
}

/// The run with the median time of `driver` doing `what` to `mib`.
fn median<'a>(rows: &'a [BenchRow], driver: &str, what: &str, mib: u64) -> Option<&'a BenchRow> {
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

fn print_bench(b: &Bench, host: Option<&HostDiscard>) {
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
         (target >= 0.90); QEMU RSS released: ours {} MiB, in-tree {} MiB",
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
        "lowmem deflate of 256 pages: median {m} µs of guest time (target < 1000); runs: {} µs",
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
        "balloon thread idle wakeups/s: {} (target 0); reporting thread (report_enabled=0): {}/s; over {:.1} s, target reached",
        per_s(b.thread_wakeups),
        per_s(b.report_wakeups),
        ms as f64 / 1000.0
    )
}

fn print_tail(log: &Path, n: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    println!("--- last {n} console lines ({}) ---", log.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        println!("{l}");
    }
    println!("--- end of console ---");
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
             discard rate 0.25 (target >= 0.90); QEMU RSS released: ours 900 MiB, in-tree 1010 MiB"
        );
        let l = resident_line(&rows[..1], None).unwrap();
        assert!(l.contains("in-tree - MiB/s"), "{l}");
        assert!(l.contains("discard rate - (target"), "{l}");
        assert!(resident_line(&[row("ours", "inflate", 1024, 1.0, 0)], None).is_none());
    }

    #[test]
    fn lowmem_and_idle_lines() {
        assert_eq!(
            lowmem_line(&[900, 700, 800, 1200, 750], &[]),
            "lowmem deflate of 256 pages: median 800 µs of guest time (target < 1000); \
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
            "balloon thread idle wakeups/s: 0.00 (target 0); reporting thread \
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
            .any(|l| l.contains("discard rate 0.25 (target >= 0.90)")));
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

    #[test]
    fn plans_boots() {
        let names = |a: &[&str]| {
            plan(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .iter()
                .map(|b| (b.name.clone(), b.phases.clone(), b.needs_ours))
                .collect::<Vec<_>>()
        };
        let t = names(&["test"]);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|(_, _, ours)| *ours));
        let all: String = t.iter().map(|(_, p, _)| p.clone() + " ").collect();
        for phase in [
            "nodes", "resize", "stats", "pressure", "report", "unload", "cycles", "swap",
        ] {
            assert!(all.split(' ').any(|p| p == phase), "{phase} is in no boot");
        }
        assert_eq!(names(&["bench"])[0].1, "bench");
        assert!(!names(&["intree"])[0].2, "the in-tree boot needs no module");
        assert_eq!(names(&["report", "pressure"])[0].1, "report pressure");
        assert_eq!(names(&["--no-host", "nodes"])[0].0, "no-host-nodes");
        assert!(test_boots()[0]
            .kenv
            .iter()
            .any(|k| k.starts_with("dev.vtballoonrs.0.oom_batch_pages=")));
    }
}
