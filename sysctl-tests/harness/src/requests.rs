//! The host's side of a boot: answers the guest's `HOST: <seq> <command>
//! <arg>` requests (see the guest's host.rs and proto.rs) through QMP and
//! /proc, or, when libvirt plays the host, through `virsh setmem` and
//! `virsh dommemstat` (the same requests, so the guest's checks are the
//! same on both hosts).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::{Bench, BenchRow};
use crate::json::Value;
use crate::libvirt::{self, stat};
use crate::migrate::{self, Migrated, Target};
use crate::qmp::{self, device_add_args, GuestStats, Qmp};
use crate::soak::Soak;
use crate::vm::{Vm, VmConfig, BALLOON_ID};
use crate::{MIB, PAGE};

/// The host side of one boot.
pub struct Run {
    pub name: String,
    pub vm: Vm,
    /// QEMU's monitor; none when libvirt owns it (then `vm.libvirt()`).
    pub qmp: Option<Qmp>,
    pub ram: u64,
    pub rss_mark: u64,
    pub stats: Option<GuestStats>,
    /// The bench variant running now (`bench-driver`).
    pub driver: String,
    pub bench: Bench,
    /// Processes the kernel killed so far (console lines).
    pub kills: u64,
    /// The balloon's properties, for `device_add` after an unplug.
    pub balloon: String,
    /// The soak's seed, length and the figures the guest sends.
    pub soak: Soak,
    /// How to start a destination QEMU for this guest (QEMU host only).
    pub dest: Option<DestSpec>,
}

/// What a destination QEMU is started with: the source's machine and
/// devices, `-incoming` on a unix socket in its own directory.
pub struct DestSpec {
    pub iso: std::path::PathBuf,
    pub mem_mib: u64,
    pub ram_less_kib: u64,
    pub cpus: u32,
    pub kvm: bool,
    pub balloon: String,
    pub extra: Vec<String>,
    pub work: std::path::PathBuf,
    pub machine: crate::vm::Machine,
    pub firmware: std::path::PathBuf,
}

/// Bounded wait for one migration (a 4 GiB TCG guest takes under a minute).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

fn print_migrated(r: &Run, what: &str, m: &Migrated) {
    let i = &m.info;
    println!(
        "[{}] host: migration ({what}): ram.transferred {} bytes ({} MiB) of {} MiB, {} normal pages, {} zero pages, {} passes, {} ms, downtime {} ms",
        r.name,
        i.transferred,
        i.transferred / MIB,
        i.total / MIB,
        i.normal,
        i.duplicate,
        i.dirty_syncs,
        i.total_time_ms,
        i.downtime_ms.map_or_else(|| "?".into(), |d| d.to_string())
    );
}

/// Migrates the guest to `exec:cat > /dev/null` (a file that keeps
/// nothing: only QEMU's figures matter) and resumes it on the source.
/// The RAM bytes sent, in MiB.
fn migrate_null(r: &mut Run, mib_s: u64) -> Result<u64, String> {
    let target = Target::File("/dev/null".into());
    let m = migrate::migrate(qmp(r)?, &target, mib_s, MIGRATE_TIMEOUT)?;
    print_migrated(r, "to /dev/null", &m);
    // The source ends in postmigrate; it may run on.
    qmp(r)?.execute("cont", None)?;
    Ok(m.info.transferred / MIB)
}

/// Starts a destination QEMU listening on a unix socket, migrates the
/// guest there and makes it the boot's VM (console, QMP): the guest goes on
/// on the destination, which runs as soon as the migration completed. The
/// RAM bytes sent, in MiB.
fn migrate_dest(r: &mut Run, mib_s: u64) -> Result<u64, String> {
    let spec = r.dest.as_ref().ok_or("no destination for this boot")?;
    let work = spec.work.join("dest");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let sock = work.join("incoming.sock");
    let _ = std::fs::remove_file(&sock);
    let target = Target::Unix(sock.clone());
    let mut extra = spec.extra.clone();
    extra.extend(migrate::incoming_args(&target));
    let log = spec.work.join("console-dest.log");
    let cfg = VmConfig {
        iso: &spec.iso,
        mem_mib: spec.mem_mib,
        ram_less_kib: spec.ram_less_kib,
        cpus: spec.cpus,
        log: &log,
        kvm: spec.kvm,
        balloon: &spec.balloon,
        extra: &extra,
        machine: spec.machine,
        firmware: &spec.firmware,
    };
    let dest = Vm::start(&cfg, &work)?;
    let mut dq = Qmp::connect(dest.qmp_path.as_deref().ok_or("no QMP socket")?)?;
    // The listening socket exists once QMP answers (both are set up before
    // the main loop runs).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = migrate::migrate(qmp(r)?, &target, mib_s, MIGRATE_TIMEOUT)?;
    print_migrated(r, "to a second QEMU", &m);
    let incoming = migrate::wait_done(
        || dq.execute("query-migrate", None),
        Duration::from_secs(60),
        Duration::from_millis(100),
    )?;
    let status = dq.status()?;
    println!(
        "[{}] host: the destination took the guest ({:?}), status {status}; console {}",
        r.name,
        incoming.status,
        log.display()
    );
    let mut old = std::mem::replace(&mut r.vm, dest);
    old.kill();
    r.qmp = Some(dq);
    if status != "running" {
        qmp(r)?.execute("cont", None)?;
    }
    Ok(m.info.transferred / MIB)
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn qmp(r: &mut Run) -> Result<&mut Qmp, String> {
    r.qmp
        .as_mut()
        .ok_or_else(|| "no QMP on this boot (libvirt owns the monitor)".to_string())
}

/// `dommemstat` names, by virtio stat tag, and their divisor from the bytes
/// the guest sends (libvirt shows memory in KiB, counts as they are).
pub const DOMMEMSTAT_TAGS: [(&str, u64); 10] = [
    ("swap_in", 1024),
    ("swap_out", 1024),
    ("major_fault", 1),
    ("minor_fault", 1),
    ("unused", 1024),
    ("available", 1024),
    ("usable", 1024),
    ("disk_caches", 1024),
    ("hugetlb_pgalloc", 1),
    ("hugetlb_pgfail", 1),
];

/// `virsh dommemstat` as QMP's guest-stats would have it: the values by
/// tag in the guest's units (bytes for memory), and the last update.
pub fn guest_stats_of(stats: &[(String, u64)]) -> GuestStats {
    let mut g = GuestStats {
        last_update: stat(stats, "last_update").unwrap_or(0),
        by_tag: [None; 16],
    };
    for (tag, (name, div)) in DOMMEMSTAT_TAGS.iter().enumerate() {
        g.by_tag[tag] = stat(stats, name).map(|v| v * div);
    }
    g
}

/// Whether a virtio stat tag is memory (bytes on the wire, KiB in replies)
/// rather than a count.
pub fn tag_is_memory(tag: usize) -> bool {
    matches!(tag, 0 | 1 | 4..=7)
}

/// The balloon as the host reports it, in 4 KiB pages: QMP `query-balloon`
/// or `virsh dommemstat`'s `actual` (both the guest's memory less the
/// balloon).
fn host_pages(r: &mut Run) -> Result<u64, String> {
    if let Some(lv) = r.vm.libvirt() {
        let actual_kib = stat(&lv.dommemstat()?, "actual").ok_or("dommemstat: no actual")?;
        return Ok(r.ram.saturating_sub(actual_kib * 1024) / PAGE);
    }
    let actual = qmp(r)?.actual()?;
    Ok(r.ram.saturating_sub(actual) / PAGE)
}

/// Sets the balloon to `pages` 4 KiB pages: QMP `balloon`, or `virsh
/// setmem` with the guest's memory less that.
fn set_target(r: &mut Run, pages: u64) -> Result<(), String> {
    let bytes = pages
        .checked_mul(PAGE)
        .filter(|&b| b <= r.ram)
        .ok_or("target above RAM")?;
    let (name, ram) = (r.name.clone(), r.ram);
    if let Some(lv) = r.vm.libvirt() {
        let kib = (ram - bytes) / 1024;
        println!(
            "[{name}] host: virsh setmem {} {kib} --live ({} MiB ballooned)",
            lv.domain,
            bytes / MIB
        );
        return lv.setmem_kib(kib);
    }
    qmp(r)?.balloon(ram - bytes)
}

/// Whether QEMU stopped in a state the guest does not leave by itself;
/// the state, if so.
pub fn stopped(r: &mut Run) -> Option<String> {
    if let Some(lv) = r.vm.libvirt() {
        let state = lv.domstate().unwrap_or_else(|e| e);
        return libvirt::is_stopped(&state).then_some(state);
    }
    let status = qmp(r).and_then(Qmp::status).unwrap_or_else(|e| e);
    qmp::is_stopped(&status).then_some(status)
}

/// Carries out one request of the guest (see the guest's host.rs); the
/// value goes back in the reply.
pub fn host(r: &mut Run, cmd: &str, arg: u64) -> Result<u64, String> {
    match cmd {
        "set-target" => set_target(r, arg).map(|()| 0),
        "migrate-null" => migrate_null(r, arg),
        "migrate-dest" => migrate_dest(r, arg),
        "rapid" => {
            for mib in [64u64, 512, 32, 768, 0, 384, 96] {
                set_target(r, mib * MIB / PAGE)?;
                std::thread::sleep(Duration::from_millis(30));
            }
            set_target(r, arg).map(|()| 0)
        }
        "kills" => Ok(r.kills),
        "balloon-mib" => {
            // The host's own unit: the guest's memory size as QMP `balloon`
            // takes it (1 MiB: "all but 1 MiB into the balloon"), which
            // set-target refuses for being beyond what a guest can give.
            qmp(r)?.balloon(arg.max(1) * MIB)?;
            println!("[{}] host: QMP balloon {} MiB", r.name, arg.max(1));
            Ok(0)
        }
        "flip" => flip(r, arg),
        "host-ram" => Ok(r.ram / PAGE),
        "soak-seed" => Ok(r.soak.seed),
        "soak-secs" => Ok(r.soak.secs),
        c if c.starts_with("soak-") => {
            r.soak.figures.push((c.to_string(), arg));
            Ok(0)
        }
        "unplug" => unplug(r, false, wait_secs(arg)),
        "unplug-busy" => unplug(r, true, wait_secs(arg)),
        "unplug-wait" => {
            // A device_del asked before and not answered then: the guest
            // acts on it later (see unplug).
            let start = Instant::now();
            qmp(r)?.wait_event("DEVICE_DELETED", Duration::from_secs(wait_secs(arg)), |d| {
                d.get("device").and_then(Value::as_str) == Some(BALLOON_ID)
            })?;
            let ms = start.elapsed().as_millis() as u64;
            println!(
                "[{}] host: DEVICE_DELETED {BALLOON_ID} after {ms} ms more",
                r.name
            );
            Ok(ms)
        }
        "plug" => {
            let dev = format!("virtio-balloon-pci,id={BALLOON_ID},{}", r.balloon);
            qmp(r)?.device_add(&device_add_args(&dev))?;
            println!("[{}] host: device_add {dev}", r.name);
            Ok(0)
        }
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
            if let Some(lv) = r.vm.libvirt() {
                let actual = lv.dommemstat().ok().and_then(|s| stat(&s, "actual"));
                println!(
                    "[{}] host: virsh dommemstat {}: actual {} KiB: the balloon holds {} MiB",
                    r.name,
                    lv.domain,
                    actual.map_or("-".to_string(), |a| a.to_string()),
                    last * PAGE / MIB
                );
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
            let tag = usize::try_from(arg).unwrap_or(usize::MAX);
            let v = s
                .by_tag
                .get(tag)
                .copied()
                .flatten()
                .ok_or_else(|| format!("the guest sent no stat with tag {arg}"))?;
            Ok(if tag_is_memory(tag) { v / 1024 } else { v })
        }
        "stats-updated" => r
            .stats
            .as_ref()
            .map(|s| s.last_update)
            .ok_or_else(|| "no stats sampled (stats-poll first)".to_string()),
        "rss-mark" => {
            r.rss_mark = r.vm.rss_bytes();
            println!("[{}] host: QEMU RSS {} MiB", r.name, r.rss_mark / MIB);
            Ok(r.rss_mark / MIB)
        }
        "rss-drop" => rss_drop(r, arg),
        "bench-driver" => {
            r.driver = r.bench.variant(arg);
            Ok(0)
        }
        "bench-rep" => {
            r.bench.rep = u32::try_from(arg).unwrap_or(u32::MAX);
            Ok(0)
        }
        c if c.starts_with("bench-cost-") => {
            let field = c.trim_start_matches("bench-cost-").to_string();
            match r.bench.rows.last_mut() {
                Some(row) => {
                    row.guest.push((field, arg));
                    Ok(0)
                }
                None => Err("no timed operation yet".into()),
            }
        }
        "bench-inflate" => bench_op(r, "inflate", arg),
        "bench-deflate" => bench_op(r, "deflate", arg),
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
            r.bench.oom.push((r.driver.clone(), field, arg));
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

/// Flips the target between 0 and 90% of memory every 5 ms for `secs`
/// seconds; leaves it at 0. Returns the number of changes.
fn flip(r: &mut Run, secs: u64) -> Result<u64, String> {
    let hi = r.ram / PAGE * 9 / 10;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        set_target(r, if n.is_multiple_of(2) { hi } else { 0 })?;
        n += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    set_target(r, 0)?;
    println!(
        "[{}] host: {n} target changes between 0 and {} MiB in {:.1} s",
        r.name,
        hi * PAGE / MIB,
        start.elapsed().as_secs_f64()
    );
    Ok(n)
}

/// How long an unplug request waits for DEVICE_DELETED: `arg` seconds,
/// 120 when 0.
fn wait_secs(arg: u64) -> u64 {
    if arg == 0 {
        120
    } else {
        arg.min(600)
    }
}

/// `device_del` of the balloon, then waits up to `wait_s` for QEMU's
/// DEVICE_DELETED (the guest powered the slot off). `busy`: meanwhile the
/// target keeps moving between a quarter and three quarters of memory
/// every 250 ms, so the device goes in the middle of a resize. Returns the
/// milliseconds it took. When the wait ends first, the request stays
/// pending in QEMU: `unplug-wait` waits for it again.
fn unplug(r: &mut Run, busy: bool, wait_s: u64) -> Result<u64, String> {
    let start = Instant::now();
    qmp(r)?.device_del(BALLOON_ID)?;
    let deleted = |d: &Value| d.get("device").and_then(Value::as_str) == Some(BALLOON_ID);
    let mut changes = 0u64;
    if busy {
        let pages = r.ram / PAGE;
        while start.elapsed() < Duration::from_secs(wait_s) {
            if qmp(r)?
                .events
                .iter()
                .any(|(n, d)| n == "DEVICE_DELETED" && deleted(d))
            {
                break;
            }
            let t = if changes.is_multiple_of(2) {
                pages * 3 / 4
            } else {
                pages / 4
            };
            // Once the device is gone QEMU refuses: stop there.
            if set_target(r, t).is_err() {
                break;
            }
            changes += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let left = Duration::from_secs(wait_s).saturating_sub(start.elapsed());
    qmp(r)?.wait_event("DEVICE_DELETED", left, deleted)?;
    let ms = start.elapsed().as_millis() as u64;
    println!(
        "[{}] host: device_del {BALLOON_ID}: DEVICE_DELETED after {ms} ms{}",
        r.name,
        if busy {
            format!(" ({changes} target changes meanwhile)")
        } else {
            String::new()
        }
    );
    Ok(ms)
}

/// Turns on guest-stats polling and waits for a sample newer than the
/// request, which later `stats-get` requests read: QMP's `guest-stats`, or
/// `virsh dommemstat` (period set with `--period`, sample fresh when its
/// `last_update` is).
fn stats_poll(r: &mut Run, secs: u64) -> Result<u64, String> {
    let t0 = unix_secs();
    let period = secs.clamp(1, 60);
    let name = r.name.clone();
    if let Some(lv) = r.vm.libvirt() {
        lv.set_period(period)?;
    } else {
        qmp(r)?.stats_polling(u32::try_from(period).unwrap_or(2))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (s, shown) = match r.vm.libvirt() {
            Some(lv) => {
                let raw = lv.dommemstat()?;
                let shown: Vec<String> = raw.iter().map(|(n, v)| format!("{n} {v}")).collect();
                (guest_stats_of(&raw), Some(shown.join(", ")))
            }
            None => (qmp(r)?.guest_stats()?, None),
        };
        if s.last_update > t0 {
            let show =
                |t: usize| s.by_tag[t].map_or("-".to_string(), |v| format!("{} MiB", v / MIB));
            match shown {
                Some(all) => println!("[{name}] host: virsh dommemstat: {all}"),
                None => println!(
                    "[{name}] host: guest-stats free {}, total {}, avail {}, caches {}",
                    show(4),
                    show(5),
                    show(6),
                    show(7)
                ),
            }
            r.stats = Some(s);
            return Ok(0);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no fresh guest statistics (last update {})",
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

/// Times one balloon change by `mib` from the current size with the loaded
/// driver: from the QMP `balloon` command until `query-balloon` reports the
/// target. `inflate` grows the balloon, `deflate` shrinks it.
fn bench_op(r: &mut Run, what: &'static str, mib: u64) -> Result<u64, String> {
    let from = qmp(r)?.actual()?;
    let target = if what == "deflate" {
        from.checked_add(mib * MIB)
            .filter(|&t| t <= r.ram)
            .ok_or("deflate beyond an empty balloon")?
    } else {
        from.checked_sub(mib * MIB).ok_or("more than RAM")?
    };
    let rss0 = r.vm.rss_bytes();
    let cpu0 = r.vm.cpu_ms();
    let t0 = Instant::now();
    qmp(r)?.balloon(target)?;
    while qmp(r)?.actual()? != target {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(format!("{what} {mib} MiB did not finish in 600 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = r.vm.cpu_ms().since(cpu0);
    let rss_drop_mib = rss0.saturating_sub(r.vm.rss_bytes()) / MIB;
    println!(
        "[{}] bench: {} {what} {mib} MiB (rep {}): {secs:.2} s, {:.0} MiB/s, vCPU {} ms, QEMU other threads {} ms, RSS -{rss_drop_mib} MiB",
        r.name,
        r.driver,
        r.bench.rep,
        mib as f64 / secs,
        cpu.vcpu,
        cpu.other
    );
    r.bench.rows.push(BenchRow {
        driver: r.driver.clone(),
        what,
        mib,
        rep: r.bench.rep,
        secs,
        cpu,
        rss_drop_mib,
        guest: Vec::new(),
    });
    Ok((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::parse_dommemstat;

    #[test]
    fn dommemstat_reads_as_guest_stats() {
        let raw = parse_dommemstat(
            "actual 2097152\nswap_in 0\nswap_out 8\nmajor_fault 312\nminor_fault 98765\nunused 1843200\navailable 2040000\nusable 1900000\nlast_update 1764590000\nrss 412000\n",
        );
        let g = guest_stats_of(&raw);
        assert_eq!(g.last_update, 1_764_590_000);
        assert_eq!(g.by_tag[4], Some(1_843_200 * 1024), "unused: free memory");
        assert_eq!(
            g.by_tag[5],
            Some(2_040_000 * 1024),
            "available: total memory"
        );
        assert_eq!(
            g.by_tag[6],
            Some(1_900_000 * 1024),
            "usable: available memory"
        );
        assert_eq!(g.by_tag[2], Some(312), "faults are counts");
        assert_eq!(g.by_tag[3], Some(98_765));
        assert_eq!(g.by_tag[1], Some(8 * 1024));
        assert_eq!(g.by_tag[7], None, "disk_caches not shown");
        assert_eq!(g.by_tag[10], None);
    }

    #[test]
    fn memory_tags_are_answered_in_kib_counts_as_they_are() {
        let mem: Vec<usize> = (0..16).filter(|&t| tag_is_memory(t)).collect();
        assert_eq!(mem, [0, 1, 4, 5, 6, 7]);
        // QEMU's names for the same tags, in the same order.
        assert_eq!(crate::qmp::STAT_NAMES[4], "stat-free-memory");
        assert_eq!(DOMMEMSTAT_TAGS[4].0, "unused");
        assert_eq!(DOMMEMSTAT_TAGS[6].0, "usable");
    }
}
