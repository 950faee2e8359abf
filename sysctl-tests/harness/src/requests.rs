//! The host's side of a boot: answers the guest's `HOST: <seq> <command>
//! <arg>` requests (see the guest's host.rs and proto.rs) through QMP and
//! /proc.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::{Bench, BenchRow};
use crate::qmp::{GuestStats, Qmp};
use crate::vm::Vm;
use crate::{MIB, PAGE};

/// The host side of one boot.
pub struct Run {
    pub name: String,
    pub vm: Vm,
    pub qmp: Qmp,
    pub ram: u64,
    pub rss_mark: u64,
    pub stats: Option<GuestStats>,
    pub driver: &'static str,
    pub bench: Bench,
    /// Processes the kernel killed so far (console lines).
    pub kills: u64,
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
pub fn host(r: &mut Run, cmd: &str, arg: u64) -> Result<u64, String> {
    match cmd {
        "set-target" => set_target(r, arg).map(|()| 0),
        "rapid" => {
            for mib in [64u64, 512, 32, 768, 0, 384, 96] {
                set_target(r, mib * MIB / PAGE)?;
                std::thread::sleep(Duration::from_millis(30));
            }
            set_target(r, arg).map(|()| 0)
        }
        "kills" => Ok(r.kills),
        "host-pages" => host_pages(r),
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
        c if c.starts_with("bench-oom-") => {
            let field = c.trim_start_matches("bench-oom-").to_string();
            r.bench.oom.push((r.driver, field, arg));
            Ok(0)
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
