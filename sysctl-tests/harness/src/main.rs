//! vmharness: boots a FreeBSD kernel under QEMU with the real virtio
//! balloon device, runs the in-guest checks (vtbtest as /sbin/init), acts as
//! the host when the guest asks (QMP), and fails on any failed check, kernel
//! panic, WITNESS warning or timeout.
//!
//! ```text
//! vmharness test             every test boot (make vmtest)
//! vmharness test NAME...     only the test boots named
//! vmharness bench            throughput, ours against the in-tree driver (make vmbench)
//! vmharness soak             the soak: VTB_SOAK_S seconds (default 1200) of random
//!                            targets, pressure, unloads, a hot-unplug (make vmsoak)
//! vmharness intree           the in-tree driver only (no vtballoonrs.ko needed)
//! vmharness <phase> ...      one boot running these guest phases
//! vmharness host-discard     the bench's host reference alone (no QEMU)
//! vmharness --arch arm64 [--transport pci|mmio] MODE...
//!                            the same on FreeBSD/arm64 (QEMU `virt`, UEFI):
//!                            `test` runs basic, pressure, report and
//!                            lifecycle over virtio-pci, then over virtio-mmio;
//!                            phases named run over --transport (default pci)
//! ```
//!
//! Environment: FREEBSD_BOOT (a FreeBSD /boot directory: kernel/kernel,
//! loader or loader_simp, cdboot, optionally modules/virtio_balloon.ko;
//! default /opt/freebsd-boot), VTB_MODULE (our .ko, default
//! target/kld/vtballoonrs.ko), VTB_INIT (the test program, default
//! target/vtbtest), VTB_KVM=1 (KVM instead of TCG), VTB_WORK (default
//! target/vmtest), VTB_CPUS (virtual CPUs, default 2). The bench runs on
//! FREEBSD_BOOT_GENERIC (default /opt/freebsd-boot-generic) when that
//! exists and FREEBSD_BOOT is not set; VTB_BENCH_REPS, VTB_BENCH_SIZES,
//! VTB_BENCH_VARIANTS and VTB_BENCH_EXTRAS say what it runs
//! ([`boots::BenchPlan`]). On arm64: FREEBSD_BOOT_ARM64 (kernel/kernel, loader.efi,
//! optionally modules/virtio_balloon.ko; default /opt/freebsd-boot-arm64),
//! VTB_MODULE_ARM64 (default target/kld-arm64/vtballoonrs.ko),
//! VTB_INIT_ARM64 (default target/vtbtest-arm64), VTB_EFI_FIRMWARE (default
//! /usr/share/qemu-efi-aarch64/QEMU_EFI.fd), VTB_WORK (default
//! target/vmtest-arm64). VTB_SOAK_S and VTB_SOAK_SEED: the soak's length
//! and a seed to replay.
//!
//! The boots are defined in [`boots`], the guest's requests answered in
//! [`requests`], the benchmark's figures and report made in [`bench`];
//! here: the command line, and running each boot while following its
//! console.

mod bench;
mod boots;
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
mod libvirt;
mod migrate;
mod qmp;
mod requests;
mod soak;
mod vm;

use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use bench::{measure_host_discard, print_bench, Bench};
use boots::{plan, Arch, Boot, HostKind};
use console::Line;
use qmp::Qmp;
use requests::{host, stopped, Run};
use soak::{Seen, Soak};
use vm::{Machine, Transport, Vm, VmConfig, ARM64_FIRMWARE};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

struct Inputs {
    boot: PathBuf,
    module: PathBuf,
    init: PathBuf,
    work: PathBuf,
    kvm: bool,
    arch: Arch,
    firmware: PathBuf,
}

/// Takes the leading `--arch A` and `--transport T` options off `args`.
fn options(args: &mut Vec<String>) -> Result<(Arch, Transport), String> {
    let (mut arch, mut transport) = (Arch::Amd64, Transport::Pci);
    loop {
        let value = |args: &mut Vec<String>| {
            (args.len() > 1)
                .then(|| args.drain(..2).nth(1))
                .flatten()
                .ok_or_else(|| "an option needs a value".to_string())
        };
        match args.first().map(String::as_str) {
            Some("--arch") => {
                arch = match value(args)?.as_str() {
                    "amd64" | "x86_64" => Arch::Amd64,
                    "arm64" | "aarch64" => Arch::Arm64,
                    a => return Err(format!("--arch {a}: amd64 or arm64")),
                }
            }
            Some("--transport") => {
                transport = match value(args)?.as_str() {
                    "pci" => Transport::Pci,
                    "mmio" => Transport::Mmio,
                    t => return Err(format!("--transport {t}: pci or mmio")),
                }
            }
            _ => return Ok((arch, transport)),
        }
    }
}

fn env_path(key: &str, default: &str) -> PathBuf {
    PathBuf::from(std::env::var(key).unwrap_or_else(|_| default.to_string()))
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let (arch, transport) = options(&mut args).unwrap_or_else(|e| {
        eprintln!("vmharness: {e}");
        std::process::exit(2)
    });
    if args.first().map(String::as_str) == Some("host-discard") {
        std::process::exit(i32::from(measure_host_discard().is_none()));
    }
    let kvm = std::env::var("VTB_KVM").is_ok_and(|v| v == "1");
    let firmware = env_path("VTB_EFI_FIRMWARE", ARM64_FIRMWARE);
    let inputs = match arch {
        Arch::Amd64 => Inputs {
            boot: env_path("FREEBSD_BOOT", "/opt/freebsd-boot"),
            module: env_path("VTB_MODULE", "target/kld/vtballoonrs.ko"),
            init: env_path("VTB_INIT", "target/vtbtest"),
            work: env_path("VTB_WORK", "target/vmtest"),
            kvm,
            arch,
            firmware,
        },
        Arch::Arm64 => Inputs {
            boot: env_path("FREEBSD_BOOT_ARM64", "/opt/freebsd-boot-arm64"),
            module: env_path("VTB_MODULE_ARM64", "target/kld-arm64/vtballoonrs.ko"),
            init: env_path("VTB_INIT_ARM64", "target/vtbtest-arm64"),
            work: env_path("VTB_WORK", "target/vmtest-arm64"),
            kvm,
            arch,
            firmware,
        },
    };
    let b = &inputs.boot;
    match arch {
        Arch::Amd64
            if !b.join("kernel/kernel").is_file()
                || !b.join("cdboot").is_file()
                || iso::loader_of(b).is_none() =>
        {
            println!(
                "skipped: no FreeBSD boot files at {} (kernel/kernel, loader, cdboot)",
                b.display()
            );
            return;
        }
        Arch::Arm64 if !b.join("kernel/kernel").is_file() || iso::efi_loader_of(b).is_none() => {
            println!(
                "skipped: no FreeBSD/arm64 boot files at {} (kernel/kernel, loader.efi)",
                b.display()
            );
            return;
        }
        Arch::Arm64 if !inputs.firmware.is_file() => {
            println!(
                "skipped: no UEFI firmware for QEMU's arm64 virt at {} (Debian: qemu-efi-aarch64; or set VTB_EFI_FIRMWARE)",
                inputs.firmware.display()
            );
            return;
        }
        _ => {}
    }
    let boots = plan(&args, arch, transport);
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
    println!(
        "\n== summary ({}, {})",
        match inputs.arch {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        },
        if inputs.kvm { "KVM" } else { "TCG" }
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, r) in &results {
        if let Some(why) = &r.skip {
            println!("{name:<16} skipped: {why}");
            continue;
        }
        println!(
            "{name:<16} guest {:>3} passed, {:>2} failed, {:>2} skipped; harness {:>2} passed, {:>2} failed; {:>4.0} s{}",
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
        if let Some((s, seen)) = &r.soak {
            println!();
            for line in soak::table(s, seen) {
                println!("{line}");
            }
        }
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    println!("{passed} passed, {failed} failed");
    // Nothing passed is a failure, unless every boot was skipped.
    let all_skipped = results.iter().all(|(_, r)| r.skip.is_some());
    std::process::exit(i32::from(failed > 0 || (passed == 0 && !all_skipped)));
}

#[derive(Default)]
struct BootResult {
    guest: (u32, u32),
    skipped: u32,
    harness: (u32, u32),
    completed: bool,
    secs: f64,
    bench: Bench,
    /// The boot could not run here, and why (`skipped: <why>`).
    skip: Option<String>,
    /// The soak's figures and what the host saw meanwhile.
    soak: Option<(Soak, Seen)>,
}

fn run_boot(inputs: &Inputs, boot: &Boot) -> BootResult {
    let t0 = Instant::now();
    let mut res = BootResult::default();
    let log = inputs.work.join(&boot.name).join("console.log");
    println!(
        "\n== boot {}: phases {} ({} MiB, {} vCPU, kernel {})",
        boot.name,
        boot.phases,
        boot.mem_mib,
        boot.cpus,
        boot.boot_dir.as_deref().unwrap_or(&inputs.boot).display()
    );
    let outcome = boot_and_drive(inputs, boot, &mut res);
    res.secs = t0.elapsed().as_secs_f64();
    if let (Some((_, seen)), Ok(d)) = (res.soak.as_mut(), &outcome) {
        seen.panics = usize::from(d.fatal.is_some());
        seen.warnings = d.warnings.len();
        seen.guest_failed = d.summary.map_or(0, |s| s.1);
        seen.completed = d.summary.is_some() && d.fatal.is_none();
    }
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
        Ok(d) if d.skip.is_some() => {
            let why = d.skip.unwrap_or_default();
            println!("[{}] skipped: {why}", boot.name);
            res.skip = Some(why);
            return res;
        }
        Ok(d) => {
            for (ok, name, why) in &d.checks {
                harness_check(*ok, name, why);
            }
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
    /// The boot did not run, and why.
    skip: Option<String>,
    /// The harness's own checks of the host side: (ok, name, why not).
    checks: Vec<(bool, String, String)>,
}

fn boot_and_drive(inputs: &Inputs, boot: &Boot, res: &mut BootResult) -> Result<Drive, String> {
    let skip = |why: String| {
        Ok(Drive {
            skip: Some(why),
            ..Drive::default()
        })
    };
    if boot.host == HostKind::Libvirt {
        if inputs.arch != Arch::Amd64 {
            return skip("the libvirt boot's domain is an amd64 PC".into());
        }
        if let Some(why) = libvirt::missing() {
            return skip(why);
        }
    }
    let work = inputs.work.join(&boot.name);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let work = work.canonicalize().map_err(|e| e.to_string())?;
    let iso_path = work.join("boot.iso");
    iso::build(
        &iso::Image {
            boot: boot.boot_dir.as_deref().unwrap_or(&inputs.boot),
            module: inputs.module.is_file().then_some(inputs.module.as_path()),
            init: &inputs.init,
            phases: &boot.phases,
            kenv: &boot.kenv,
            efi: inputs.arch == Arch::Arm64,
        },
        &work.join("iso"),
        &iso_path,
    )?;
    let log = work.join("console.log");
    let cfg = VmConfig {
        iso: &iso_path,
        mem_mib: boot.mem_mib,
        ram_less_kib: boot.ram_less_kib,
        cpus: boot.cpus,
        log: &log,
        kvm: inputs.kvm,
        balloon: &boot.balloon,
        extra: &boot.qemu_extra,
        machine: match inputs.arch {
            Arch::Amd64 => Machine::Amd64,
            Arch::Arm64 => Machine::Arm64(boot.transport),
        },
        firmware: &inputs.firmware,
    };
    let mut checks = vec![];
    let (vm, qmp) = match boot.host {
        HostKind::Qemu => {
            let vm = Vm::start(&cfg, &work)?;
            let qmp = Qmp::connect(vm.qmp_path.as_deref().ok_or("no QMP socket")?)?;
            (vm, Some(qmp))
        }
        HostKind::Libvirt => {
            if inputs.kvm {
                println!(
                    "[{}] note: libvirt runs this guest with TCG (<domain type='qemu'>)",
                    boot.name
                );
            }
            let domain = format!("vtbtest-{}", boot.name);
            let lv = match libvirt::Libvirt::start(&work.join("libvirt"), &domain) {
                Ok(lv) => lv,
                Err(why) => return skip(why),
            };
            let v = lv.virsh(&["version"]).unwrap_or_default();
            println!(
                "[{}] host: libvirtd running, {}",
                boot.name,
                v.lines()
                    .filter(|l| l.contains("Running hypervisor") || l.contains("Using library"))
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let vm = Vm::start_libvirt(&cfg, &work, lv)?;
            checks.extend(libvirt_qemu_checks(
                &vm.libvirt().map(|lv| lv.qemu_log()).unwrap_or_default(),
            ));
            (vm, None)
        }
    };
    let mut r = Run {
        name: boot.name.clone(),
        vm,
        qmp,
        ram: boot.mem_mib * MIB,
        rss_mark: 0,
        stats: None,
        driver: "ours".into(),
        bench: Bench::for_boot(&boot.phases),
        kills: 0,
        balloon: boot.balloon.clone(),
        soak: Soak::new(boots::soak_secs()),
        dest: (boot.host == HostKind::Qemu).then(|| requests::DestSpec {
            iso: iso_path.clone(),
            mem_mib: boot.mem_mib,
            ram_less_kib: boot.ram_less_kib,
            cpus: boot.cpus,
            kvm: inputs.kvm,
            balloon: boot.balloon.clone(),
            extra: boot.qemu_extra.clone(),
            work: work.clone(),
            machine: cfg.machine,
            firmware: inputs.firmware.clone(),
        }),
    };
    let soaking = boot.phases.split(' ').any(|p| p == "soak");
    if soaking {
        println!(
            "[{}] soak seed {} for {} s (replay: VTB_SOAK_SEED={} VTB_SOAK_S={} make vmsoak)",
            boot.name, r.soak.seed, r.soak.secs, r.soak.seed, r.soak.secs
        );
    }
    let d = drive(&mut r, boot.limit);
    r.vm.kill();
    res.bench = std::mem::take(&mut r.bench);
    if soaking {
        let seen = Seen {
            kill_lines: r.kills,
            ..Seen::default()
        };
        res.soak = Some((std::mem::take(&mut r.soak), seen));
    }
    d.map(|mut d| {
        d.checks.splice(0..0, checks);
        d
    })
}

/// What libvirt made of the domain's `<memballoon>`: the QEMU command line
/// in the domain's log carries the balloon with both properties on.
fn libvirt_qemu_checks(qemu_log: &str) -> Vec<(bool, String, String)> {
    let balloon = qemu_log
        .split_whitespace()
        .find(|w| w.contains("virtio-balloon"))
        .unwrap_or("");
    let has = |p: &str| {
        balloon.contains(&format!("\"{p}\":true")) || balloon.contains(&format!("{p}=on"))
    };
    [
        ("deflate-on-oom", "autodeflate='on'"),
        ("free-page-reporting", "freePageReporting='on'"),
    ]
    .into_iter()
    .map(|(prop, xml)| {
        (
            has(prop),
            format!("libvirt turns {xml} into {prop} on QEMU's balloon"),
            format!(
                "QEMU's balloon: {}",
                if balloon.is_empty() {
                    "none in the domain log"
                } else {
                    balloon
                }
            ),
        )
    })
    .collect()
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
                if let Some(status) = stopped(r) {
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
            Line::Killed => {
                println!("[{}] KERNEL: {shown}", r.name);
                r.kills += 1;
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
    fn takes_the_architecture_and_transport_options_first() {
        let mut a: Vec<String> = ["--arch", "arm64", "--transport", "mmio", "test", "basic"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(options(&mut a), Ok((Arch::Arm64, Transport::Mmio)));
        assert_eq!(a, ["test", "basic"]);
        let mut a = vec!["report".to_string(), "--arch".to_string()];
        assert_eq!(options(&mut a), Ok((Arch::Amd64, Transport::Pci)));
        assert_eq!(a.len(), 2, "only leading options are taken");
        assert!(options(&mut vec!["--arch".to_string()]).is_err());
        assert!(options(&mut vec!["--arch".into(), "riscv".into()]).is_err());
        assert!(options(&mut vec!["--transport".into(), "isa".into()]).is_err());
    }

    #[test]
    fn reads_the_balloon_libvirt_gave_qemu() {
        let log = r#"LC_ALL=C /usr/bin/qemu-system-x86_64 -name guest=vtbtest-libvirt -device '{"driver":"virtio-balloon-pci","id":"balloon0","deflate-on-oom":true,"free-page-reporting":true,"bus":"pci.0","addr":"0x2"}' -msg timestamp=on"#;
        let c = libvirt_qemu_checks(log);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|(ok, _, _)| *ok), "{c:?}");
        let off = log.replace(r#""free-page-reporting":true,"#, "");
        let c = libvirt_qemu_checks(&off);
        assert!(c[0].0 && !c[1].0, "{c:?}");
        let none = libvirt_qemu_checks("no qemu here");
        assert!(none
            .iter()
            .all(|(ok, _, why)| !ok && why.contains("none in the domain log")));
    }
}
