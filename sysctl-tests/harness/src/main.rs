//! vmharness: boots a FreeBSD kernel under QEMU with the real virtio
//! balloon device, runs the in-guest checks (vtbtest as /sbin/init), acts as
//! the host when the guest asks (QMP), and fails on any failed check, panic,
//! WITNESS warning or timeout.
//!
//! `vmharness test|bench`. Inputs (environment): FREEBSD_BOOT (a FreeBSD
//! /boot directory: kernel/kernel, loader or loader_simp, cdboot, optionally
//! modules/virtio_balloon.ko), VTB_MODULE (our .ko), VTB_INIT (the test
//! program), VTB_KVM=1 to use KVM instead of TCG.

mod console;
mod iso;
mod json;
mod qmp;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use console::Line;
use qmp::Qmp;
use vm::{Vm, VmConfig};

const MIB: u64 = 1 << 20;

struct Run {
    vm: Vm,
    qmp: Qmp,
    ram: u64,
    host_passed: u32,
    host_failed: u32,
    rss_peak: u64,
    bench: Vec<BenchRow>,
}

struct BenchRow {
    driver: String,
    what: String,
    mib: u64,
    secs: f64,
    cpu_ms: u64,
}

fn env_path(key: &str, default: &str) -> PathBuf {
    PathBuf::from(std::env::var(key).unwrap_or_else(|_| default.to_string()))
}

fn main() {
    // `test`, `bench`, or a subset of the guest's phases (e.g. `pressure`).
    let mode = std::env::args().nth(1).unwrap_or_else(|| "test".into());
    let boot = env_path("FREEBSD_BOOT", "/opt/freebsd-boot");
    if !boot.join("kernel/kernel").is_file()
        || !boot.join("cdboot").is_file()
        || iso::loader_of(&boot).is_none()
    {
        println!(
            "skipped: no FreeBSD boot files at {} (kernel/kernel, loader, cdboot)",
            boot.display()
        );
        return;
    }
    let module = env_path("VTB_MODULE", "target/kld/vtballoonrs.ko");
    let init = env_path("VTB_INIT", "target/vtbtest");
    for (p, what) in [(&module, "module (make build)"), (&init, "test program")] {
        if !p.is_file() {
            eprintln!("vmharness: missing {what}: {}", p.display());
            std::process::exit(1);
        }
    }
    let code = match run(&mode, &boot, &module, &init) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("vmharness: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run(mode: &str, boot: &Path, module: &Path, init: &Path) -> Result<bool, String> {
    let work = PathBuf::from("target/vmtest").join(mode);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let work = work.canonicalize().map_err(|e| e.to_string())?;
    let iso_path = work.join("boot.iso");
    iso::build(
        &iso::Image {
            boot,
            module,
            init,
            mode,
        },
        &work.join("iso"),
        &iso_path,
    )?;
    let mem_mib = if mode == "bench" { 4096 } else { 2048 };
    let log = work.join("console.log");
    let cfg = VmConfig {
        iso: &iso_path,
        mem_mib,
        log: &log,
        kvm: std::env::var("VTB_KVM").is_ok_and(|v| v == "1"),
    };
    let started = Instant::now();
    let mut vm = Vm::start(&cfg, &work)?;
    let qmp = match Qmp::connect(&vm.qmp_path) {
        Ok(q) => q,
        Err(e) => {
            vm.kill();
            return Err(e);
        }
    };
    let mut r = Run {
        vm,
        qmp,
        ram: mem_mib * MIB,
        host_passed: 0,
        host_failed: 0,
        rss_peak: 0,
        bench: Vec::new(),
    };
    let limit = Duration::from_secs(if mode == "bench" { 1800 } else { 2400 });
    let outcome = drive(&mut r, limit);
    r.vm.kill();
    println!("console log: {}", log.display());
    println!("VM time: {:.0} s", started.elapsed().as_secs_f64());
    match outcome {
        Err(e) => {
            print_tail(&log);
            Err(e)
        }
        Ok(None) if mode == "bench" => {
            print_bench(&r.bench);
            Ok(true)
        }
        Ok(None) => {
            print_tail(&log);
            Err("the guest ended without a summary".into())
        }
        Ok(Some((passed, failed))) => {
            let p = passed + r.host_passed;
            let f = failed + r.host_failed;
            println!(
                "guest: {passed} passed, {failed} failed; host-side: {} passed, {} failed",
                r.host_passed, r.host_failed
            );
            println!("{p} passed, {f} failed");
            if f > 0 {
                print_tail(&log);
            }
            Ok(f == 0)
        }
    }
}

/// Follows the console until the guest's summary (or the end of a bench run).
fn drive(r: &mut Run, limit: Duration) -> Result<Option<(u32, u32)>, String> {
    let start = Instant::now();
    let mut summary = None;
    loop {
        let left = limit.checked_sub(start.elapsed()).ok_or("timeout")?;
        let line = match r.vm.lines.recv_timeout(left) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => return Err("timeout waiting for the guest".into()),
            Err(RecvTimeoutError::Disconnected) => return Ok(summary),
        };
        if line.starts_with("ok - ")
            || line.starts_with("not ok - ")
            || line.starts_with("HOST:")
            || line.starts_with("# ")
        {
            println!("guest: {}", line.trim_end());
        }
        match console::parse(&line) {
            Line::Fatal(what) => {
                // Let the kernel print its backtrace into the log first.
                let until = Instant::now() + Duration::from_secs(10);
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    if r.vm.lines.recv_timeout(left).is_err() {
                        break;
                    }
                }
                return Err(format!("guest kernel: {what}"));
            }
            Line::Summary { passed, failed } => summary = Some((passed, failed)),
            Line::Host { cmd, arg } => {
                let reply = match host(r, &cmd, arg) {
                    Ok(v) => format!("OK {v}"),
                    Err(e) => {
                        println!("host: {cmd} {arg}: {e}");
                        "FAIL".to_string()
                    }
                };
                r.vm.reply(&reply)?;
            }
            Line::Other => {}
        }
    }
}

fn check(r: &mut Run, name: &str, ok: bool, why: &str) -> Result<u64, String> {
    if ok {
        r.host_passed += 1;
        println!("host: ok - {name}");
        Ok(0)
    } else {
        r.host_failed += 1;
        println!("host: not ok - {name}: {why}");
        Err(why.to_string())
    }
}

/// Carries out one request of the guest; the value goes back in the reply.
fn host(r: &mut Run, cmd: &str, arg: u64) -> Result<u64, String> {
    match cmd {
        "balloon-mib" => {
            println!(
                "host: QEMU RSS {} MiB; balloon to {arg} MiB",
                r.vm.rss_bytes() / MIB
            );
            r.qmp.balloon(r.ram - arg * MIB).map(|_| 0)
        }
        "rapid" => {
            for mib in [64, 512, 32, 768, 0, 384, 96] {
                r.qmp.balloon(r.ram - mib * MIB)?;
                std::thread::sleep(Duration::from_millis(30));
            }
            r.qmp.balloon(r.ram - arg * MIB).map(|_| 0)
        }
        "actual" => {
            // The host's view, in MiB of balloon, once it settles.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut last = r.qmp.actual()?;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                let now = r.qmp.actual()?;
                if now == last {
                    break;
                }
                last = now;
            }
            Ok((r.ram - last.min(r.ram)) / MIB)
        }
        "check-stats" => check_stats(r),
        "rss-peak" => {
            r.rss_peak = r.vm.rss_bytes();
            println!(
                "host: QEMU RSS with {arg} MiB touched: {} MiB",
                r.rss_peak / MIB
            );
            Ok(0)
        }
        "rss-drop" => rss_drop(r, arg),
        "bench-ours" | "bench-theirs" => bench(r, &cmd["bench-".len()..]),
        _ => Err(format!("unknown request {cmd}")),
    }
}

fn check_stats(r: &mut Run) -> Result<u64, String> {
    r.qmp.stats_polling(1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        last = r.qmp.guest_stats()?;
        let f = |k| json::u64_field(&last, k);
        if let (Some(free), Some(total), Some(avail)) = (
            f("stat-free-memory"),
            f("stat-total-memory"),
            f("stat-available-memory"),
        ) {
            if f("last-update").unwrap_or(0) > 0 {
                println!(
                    "host: guest-stats free {} MiB, total {} MiB, avail {} MiB",
                    free / MIB,
                    total / MIB,
                    avail / MIB
                );
                let sane = free > 0 && total > free && avail >= free / 2 && avail <= total;
                return check(
                    r,
                    "guest-stats has real memfree/memtot/avail",
                    sane,
                    "implausible values",
                );
            }
        }
    }
    check(
        r,
        "guest-stats has real memfree/memtot/avail",
        false,
        &format!("no stats: {last}"),
    )
}

fn rss_drop(r: &mut Run, mib: u64) -> Result<u64, String> {
    let goal = r.rss_peak.saturating_sub(mib * MIB * 9 / 10);
    let start = Instant::now();
    let mut rss = r.vm.rss_bytes();
    while start.elapsed() < Duration::from_secs(120) && rss > goal {
        std::thread::sleep(Duration::from_millis(500));
        rss = r.vm.rss_bytes();
    }
    println!(
        "host: QEMU RSS {} MiB -> {} MiB after the guest freed {mib} MiB, in {:.1} s",
        r.rss_peak / MIB,
        rss / MIB,
        start.elapsed().as_secs_f64()
    );
    check(
        r,
        "QEMU RSS drops by 90% of the freed memory",
        rss <= goal,
        "RSS stayed high",
    )
}

/// Times inflate and deflate of 1 and 3 GiB with the loaded driver.
fn bench(r: &mut Run, driver: &str) -> Result<u64, String> {
    for mib in [1024u64, 3072] {
        for (what, target) in [("inflate", r.ram - mib * MIB), ("deflate", r.ram)] {
            let cpu0 = r.vm.cpu_ms();
            let t0 = Instant::now();
            r.qmp.balloon(target)?;
            loop {
                if r.qmp.actual()? == target {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(300) {
                    return Err(format!("{driver}: {what} {mib} MiB did not finish"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let secs = t0.elapsed().as_secs_f64();
            let cpu_ms = r.vm.cpu_ms().saturating_sub(cpu0);
            println!(
                "bench: {driver} {what} {mib} MiB: {secs:.3} s, {:.0} MiB/s, QEMU CPU {cpu_ms} ms",
                mib as f64 / secs
            );
            r.bench.push(BenchRow {
                driver: driver.into(),
                what: what.into(),
                mib,
                secs,
                cpu_ms,
            });
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(0)
}

fn print_bench(rows: &[BenchRow]) {
    println!(
        "\n{:<8} {:>6} {:>12} {:>12} {:>10} {:>14} {:>14} {:>10}",
        "op", "MiB", "ours MiB/s", "C MiB/s", "ratio", "ours CPU ms/GiB", "C CPU ms/GiB", "ratio"
    );
    for ours in rows.iter().filter(|r| r.driver == "ours") {
        let Some(theirs) = rows
            .iter()
            .find(|t| t.driver == "theirs" && t.what == ours.what && t.mib == ours.mib)
        else {
            continue;
        };
        let rate = |r: &BenchRow| r.mib as f64 / r.secs;
        let cpu = |r: &BenchRow| r.cpu_ms as f64 * 1024.0 / r.mib as f64;
        println!(
            "{:<8} {:>6} {:>12.0} {:>12.0} {:>10.2} {:>14.0} {:>14.0} {:>10.2}",
            ours.what,
            ours.mib,
            rate(ours),
            rate(theirs),
            rate(ours) / rate(theirs),
            cpu(ours),
            cpu(theirs),
            cpu(ours) / cpu(theirs).max(1.0)
        );
    }
    println!("(rates host-observed: QMP balloon to query-balloon at target; CPU: QEMU process user+system time, all vCPUs, TCG)");
}

fn print_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    println!("--- last console lines ---");
    for l in &lines[lines.len().saturating_sub(40)..] {
        println!("{l}");
    }
}
