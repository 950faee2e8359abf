//! Live migration of the test guest, for free page hinting (issue 16): the
//! QEMU arguments of the free-page-hint device, starting a migration to a
//! file (`exec:cat > FILE`) or to a second QEMU (`-incoming unix:PATH`),
//! waiting for it with a bounded wait, and what QEMU says it cost
//! (`query-migrate`: RAM bytes transferred, total time, downtime). Also
//! reads the balloon device's properties from `info qtree`.
//!
//! QEMU facts this relies on (QEMU 7.2, `qapi/migration.json`,
//! `hw/virtio/virtio-balloon.c`):
//! - `migrate {"uri": ...}` returns at once; `query-migrate` reports
//!   `status` (setup, active, completed, failed, cancelled, ...), `ram`
//!   (`transferred`, `total`, `duplicate` zero pages, `normal` pages,
//!   `normal-bytes`, `dirty-sync-count`), `total-time` and, once completed,
//!   `downtime` (ms); `error-desc` when failed.
//! - `exec:` runs its command with `/bin/sh -c`; the source ends paused
//!   (`postmigrate`) when the migration completes.
//! - `free-page-hint=on` needs `iothread=`: `-object iothread,id=io0` and
//!   `...,free-page-hint=on,iothread=io0`.
//! - Hinting is skipped when postcopy is enabled (`migrate_postcopy_ram()` in
//!   `virtio_balloon_free_page_hint_notify`): leave the postcopy-ram
//!   capability off.
//!
//! The `hint-migrate` phase's requests (`migrate-null`, `migrate-dest`,
//! requests.rs) use it; the rest is for a comparison bench.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::json::{self, Value};
use crate::qmp::Qmp;

/// Id of the I/O thread the hinting balloon needs.
pub const IOTHREAD: &str = "io0";

/// Where the guest's state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file, written by `cat` (the source), read back by `cat` (a
    /// destination started with [`incoming_args`]).
    File(PathBuf),
    /// A second QEMU listening on a unix socket (`-incoming unix:PATH`),
    /// started before the migration.
    Unix(PathBuf),
}

/// Quotes a path for `/bin/sh` (QEMU's `exec:` runs `sh -c`).
pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The source's migration URI.
pub fn uri(t: &Target) -> String {
    match t {
        Target::File(f) => format!("exec:cat > {}", sh_quote(f)),
        Target::Unix(s) => format!("unix:{}", s.display()),
    }
}

/// The destination's `-incoming` arguments.
pub fn incoming_args(t: &Target) -> Vec<String> {
    let u = match t {
        Target::File(f) => format!("exec:cat {}", sh_quote(f)),
        Target::Unix(s) => format!("unix:{}", s.display()),
    };
    vec!["-incoming".into(), u]
}

/// Extra QEMU arguments (the I/O thread object) and the balloon device's
/// extra properties for free page hinting.
pub fn hint_args() -> (Vec<String>, &'static str) {
    (
        vec!["-object".into(), format!("iothread,id={IOTHREAD}")],
        ",free-page-hint=on,iothread=io0",
    )
}

/// Where a migration is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not started, set up, active, or another state on the way.
    Running(String),
    Completed,
    Failed(String),
    Cancelled,
}

/// What `query-migrate` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateInfo {
    pub status: Status,
    /// RAM bytes sent (`ram.transferred`).
    pub transferred: u64,
    /// Guest RAM size (`ram.total`).
    pub total: u64,
    /// Zero pages sent as a marker only (`ram.duplicate`).
    pub duplicate: u64,
    /// Pages sent whole (`ram.normal`).
    pub normal: u64,
    /// Dirty bitmap syncs, i.e. passes (`ram.dirty-sync-count`).
    pub dirty_syncs: u64,
    /// Milliseconds since the migration started (`total-time`).
    pub total_time_ms: u64,
    /// Milliseconds the guest was stopped (`downtime`, once completed).
    pub downtime_ms: Option<u64>,
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Reads a `query-migrate` return value.
pub fn parse_query_migrate(v: &Value) -> Result<MigrateInfo, String> {
    let s = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("query-migrate: no status in {v:?}"))?;
    let status = match s {
        "completed" => Status::Completed,
        "failed" => Status::Failed(
            v.get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or("no error-desc")
                .to_string(),
        ),
        "cancelled" => Status::Cancelled,
        other => Status::Running(other.to_string()),
    };
    Ok(MigrateInfo {
        status,
        transferred: num(v, &["ram", "transferred"]),
        total: num(v, &["ram", "total"]),
        duplicate: num(v, &["ram", "duplicate"]),
        normal: num(v, &["ram", "normal"]),
        dirty_syncs: num(v, &["ram", "dirty-sync-count"]),
        total_time_ms: num(v, &["total-time"]),
        downtime_ms: v.get("downtime").and_then(Value::as_u64),
    })
}

/// Polls `query` every `poll` until the migration completed, failed or was
/// cancelled; an error after `timeout`. Only a completed migration is Ok.
pub fn wait_done(
    mut query: impl FnMut() -> Result<Value, String>,
    timeout: Duration,
    poll: Duration,
) -> Result<MigrateInfo, String> {
    let start = Instant::now();
    loop {
        let info = parse_query_migrate(&query()?)?;
        match &info.status {
            Status::Completed => return Ok(info),
            Status::Failed(e) => return Err(format!("migration failed: {e}")),
            Status::Cancelled => return Err("migration cancelled".into()),
            Status::Running(s) if start.elapsed() >= timeout => {
                return Err(format!(
                    "migration still {s} after {} s ({} MiB sent)",
                    timeout.as_secs(),
                    info.transferred >> 20
                ))
            }
            Status::Running(_) => std::thread::sleep(poll),
        }
    }
}

/// A finished migration: QEMU's figures and the host's own wall time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub info: MigrateInfo,
    pub wall: Duration,
    /// Size of the state file, for a file target.
    pub file_bytes: Option<u64>,
}

/// QEMU's default `max-bandwidth` (bytes/s; `MAX_THROTTLE` in QEMU 7.2's
/// migration.c): what a host migrates at unless told otherwise.
pub const DEFAULT_BANDWIDTH: u64 = 128 << 20;

/// The `migrate-set-parameters` and `migrate-set-capabilities` arguments
/// of a migration at `mib_s` MiB/s (0: QEMU's default), with auto-converge
/// (QEMU slows the vCPUs of a guest that dirties memory faster than it is
/// sent, as a host would for a busy guest). A busy guest needs more than
/// the default on a local socket: at 128 MiB/s it never converged (76 GiB
/// sent in 600 s). Hinting races the first pass, so a comparison of
/// hinting off and on migrates at the default, as a host would. Postcopy
/// stays off (it turns hinting off).
pub fn settings(mib_s: u64) -> (String, String) {
    let bytes = if mib_s == 0 {
        DEFAULT_BANDWIDTH
    } else {
        mib_s << 20
    };
    (
        format!(r#"{{"max-bandwidth":{bytes}}}"#),
        r#"{"capabilities":[{"capability":"auto-converge","state":true}]}"#.to_string(),
    )
}

/// One line on a migration under way, for a long wait.
pub fn progress_line(i: &MigrateInfo) -> String {
    format!(
        "migration {:?}: {} MiB sent of {} MiB, {} passes, {} s",
        i.status,
        i.transferred >> 20,
        i.total >> 20,
        i.dirty_syncs,
        i.total_time_ms / 1000
    )
}

/// Migrates the guest behind `q` to `target` at `mib_s` MiB/s (0: QEMU's
/// default, see [`settings`]) and waits (at most `timeout`) for the end,
/// with a progress line every 30 s. On a time-out the migration is
/// cancelled.
pub fn migrate(
    q: &mut Qmp,
    target: &Target,
    mib_s: u64,
    timeout: Duration,
) -> Result<Migrated, String> {
    let start = Instant::now();
    let (params, caps) = settings(mib_s);
    q.execute("migrate-set-parameters", Some(&params))?;
    q.execute("migrate-set-capabilities", Some(&caps))?;
    let args = format!(r#"{{"uri":{}}}"#, json::quote(&uri(target)));
    q.execute("migrate", Some(&args))?;
    let mut said = Instant::now();
    let r = wait_done(
        || {
            let v = q.execute("query-migrate", None)?;
            if said.elapsed() >= Duration::from_secs(30) {
                said = Instant::now();
                if let Ok(i) = parse_query_migrate(&v) {
                    println!("[host] {}", progress_line(&i));
                }
            }
            Ok(v)
        },
        timeout,
        Duration::from_millis(250),
    );
    let info = match r {
        Ok(i) => i,
        Err(e) => {
            let _ = q.execute("migrate_cancel", None);
            return Err(e);
        }
    };
    let file_bytes = match target {
        Target::File(f) => std::fs::metadata(f).ok().map(|m| m.len()),
        Target::Unix(_) => None,
    };
    Ok(Migrated {
        info,
        wall: start.elapsed(),
        file_bytes,
    })
}

/// Runs a human monitor command (`info qtree`, ...) and returns its text.
pub fn human(q: &mut Qmp, cmd: &str) -> Result<String, String> {
    let args = format!(r#"{{"command-line":{}}}"#, json::quote(cmd));
    match q.execute("human-monitor-command", Some(&args))? {
        Value::Str(s) => Ok(s),
        v => Err(format!("human-monitor-command: {v:?}")),
    }
}

/// The properties (`name = value`) of the first `virtio-balloon-device` in
/// an `info qtree` text.
pub fn balloon_props(qtree: &str) -> Vec<(String, String)> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut lines = qtree.lines();
    let Some(dev) = lines.find(|l| l.trim_start().starts_with("dev: virtio-balloon-device")) else {
        return Vec::new();
    };
    let base = indent(dev);
    let mut props = Vec::new();
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        if indent(l) <= base {
            break;
        }
        if let Some((k, v)) = l.trim().split_once(" = ") {
            props.push((k.to_string(), v.trim_matches('"').to_string()));
        }
    }
    props
}

/// Feature bits the balloon offers, by name, from its properties: QEMU
/// always adds STATS_VQ (`virtio_balloon_get_features`); the rest are
/// `DEFINE_PROP_BIT`s on `host_features`.
pub fn offered_features(props: &[(String, String)]) -> Vec<&'static str> {
    const BITS: [(&str, &str); 4] = [
        ("deflate-on-oom", "DEFLATE_ON_OOM"),
        ("free-page-hint", "FREE_PAGE_HINT"),
        ("page-poison", "PAGE_POISON"),
        ("free-page-reporting", "REPORTING"),
    ];
    let on = |k: &str| props.iter().any(|(n, v)| n == k && v == "true");
    let mut f = vec!["STATS_VQ"];
    f.extend(BITS.iter().filter(|(p, _)| on(p)).map(|&(_, name)| name));
    f
}

/// The note's line: both migrations of the same guest, and what hinting saved.
pub fn compare_line(off: &Migrated, on: &Migrated) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let saved = off.info.transferred as f64 - on.info.transferred as f64;
    let pct = if off.info.transferred > 0 {
        100.0 * saved / off.info.transferred as f64
    } else {
        0.0
    };
    let one = |m: &Migrated| {
        format!(
            "{:.0} MiB in {:.1} s (downtime {} ms, {} normal pages, {} zero pages, {} passes)",
            mib(m.info.transferred),
            m.info.total_time_ms as f64 / 1000.0,
            m.info
                .downtime_ms
                .map_or_else(|| "?".to_string(), |d| d.to_string()),
            m.info.normal,
            m.info.duplicate,
            m.info.dirty_syncs
        )
    };
    format!(
        "migration: hinting off {}; hinting on {}; saved {:.0} MiB ({pct:.0}%)",
        one(off),
        one(on),
        mib(saved.max(0.0) as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like QEMU 7.2's answers.
    const ACTIVE: &str = r#"{"expected-downtime": 300, "status": "active", "setup-time": 3, "total-time": 1534, "ram": {"total": 3238002688, "postcopy-requests": 0, "dirty-sync-count": 1, "multifd-bytes": 0, "pages-per-second": 32640, "page-size": 4096, "remaining": 2306867200, "mbps": 268.43, "transferred": 134217728, "duplicate": 201, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 133799936, "normal": 32666}}"#;
    const COMPLETED: &str = r#"{"status": "completed", "setup-time": 3, "downtime": 41, "total-time": 21804, "ram": {"total": 3238002688, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 32640, "page-size": 4096, "remaining": 0, "mbps": 268.4, "transferred": 2731105811, "duplicate": 123456, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 2725445632, "normal": 665392}}"#;
    const FAILED: &str =
        r#"{"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}"#;

    fn v(s: &str) -> Value {
        json::parse(s).unwrap()
    }

    #[test]
    fn reads_query_migrate() {
        let a = parse_query_migrate(&v(ACTIVE)).unwrap();
        assert_eq!(a.status, Status::Running("active".into()));
        assert_eq!(a.transferred, 134_217_728);
        assert_eq!(a.downtime_ms, None);
        let c = parse_query_migrate(&v(COMPLETED)).unwrap();
        assert_eq!(c.status, Status::Completed);
        assert_eq!(c.transferred, 2_731_105_811);
        assert_eq!(c.total, 3_238_002_688);
        assert_eq!(c.duplicate, 123_456);
        assert_eq!(c.normal, 665_392);
        assert_eq!(c.dirty_syncs, 3);
        assert_eq!(c.total_time_ms, 21_804);
        assert_eq!(c.downtime_ms, Some(41));
        let f = parse_query_migrate(&v(FAILED)).unwrap();
        assert_eq!(
            f.status,
            Status::Failed("Unable to write to command: Broken pipe".into())
        );
        assert_eq!(f.transferred, 0);
        let none = parse_query_migrate(&v("{}"));
        assert!(none.is_err());
        let idle = parse_query_migrate(&v(r#"{"status": "setup"}"#)).unwrap();
        assert_eq!(idle.status, Status::Running("setup".into()));
    }

    #[test]
    fn waits_until_completed_or_failed() {
        let mut answers = vec![v(COMPLETED), v(ACTIVE), v(ACTIVE)];
        let r = wait_done(
            || Ok(answers.pop().unwrap()),
            Duration::from_secs(5),
            Duration::from_millis(1),
        );
        assert_eq!(r.unwrap().downtime_ms, Some(41));
        assert!(answers.is_empty(), "polled until completed");
        let mut answers = vec![v(FAILED), v(ACTIVE)];
        let r = wait_done(
            || Ok(answers.pop().unwrap()),
            Duration::from_secs(5),
            Duration::from_millis(1),
        );
        assert!(r.unwrap_err().contains("Broken pipe"));
        let r = wait_done(
            || Err("QMP closed".into()),
            Duration::from_secs(5),
            Duration::from_millis(1),
        );
        assert_eq!(r.unwrap_err(), "QMP closed");
    }

    #[test]
    fn a_migration_that_never_ends_times_out() {
        let mut calls = 0;
        let r = wait_done(
            || {
                calls += 1;
                Ok(v(ACTIVE))
            },
            Duration::from_millis(30),
            Duration::from_millis(5),
        );
        let e = r.unwrap_err();
        assert!(e.contains("still active"), "{e}");
        assert!(e.contains("128 MiB sent"), "{e}");
        assert!(calls >= 2);
    }

    #[test]
    fn builds_uris_for_both_targets() {
        let f = Target::File(PathBuf::from("/w/state.bin"));
        assert_eq!(uri(&f), "exec:cat > '/w/state.bin'");
        assert_eq!(incoming_args(&f), ["-incoming", "exec:cat '/w/state.bin'"]);
        let odd = Target::File(PathBuf::from("/w/it's here"));
        assert_eq!(uri(&odd), r"exec:cat > '/w/it'\''s here'");
        let u = Target::Unix(PathBuf::from("/w/mig.sock"));
        assert_eq!(uri(&u), "unix:/w/mig.sock");
        assert_eq!(incoming_args(&u), ["-incoming", "unix:/w/mig.sock"]);
        let (extra, dev) = hint_args();
        assert_eq!(extra, ["-object", "iothread,id=io0"]);
        assert_eq!(dev, ",free-page-hint=on,iothread=io0");
        // What goes to QMP is valid JSON with the URI intact.
        let cmd = format!(r#"{{"uri":{}}}"#, json::quote(&uri(&odd)));
        assert_eq!(
            json::parse(&cmd)
                .unwrap()
                .get("uri")
                .and_then(Value::as_str),
            Some(r"exec:cat > '/w/it'\''s here'")
        );
    }

    /// Part of `info qtree` from QEMU 7.2 on this machine, with
    /// `-object iothread,id=io0 -device virtio-balloon-pci,id=balloon0,
    /// deflate-on-oom=on,free-page-reporting=on,free-page-hint=on,iothread=io0`
    /// (link properties such as `iothread` are not listed).
    const QTREE: &str = "    bus: pci.0
      type PCI
      dev: virtio-balloon-pci, id \"balloon0\"
        disable-legacy = \"off\"
        disable-modern = false
        addr = 04.0
        bar 4: mem at 0xfe000000 [0xfe003fff]
        bus: virtio-bus
          type virtio-pci-bus
          dev: virtio-balloon-device, id \"\"
            deflate-on-oom = true
            free-page-hint = true
            page-poison = true
            free-page-reporting = true
            qemu-4-0-config-size = false
            indirect_desc = true
            event_idx = true
            x-disable-legacy-check = false
      dev: PIIX4_PM, id \"\"
        gpio-out \"smi-irq\" 1
        smb_io_base = 1792 (0x700)
";

    #[test]
    fn reads_the_balloon_properties_from_qtree() {
        let p = balloon_props(QTREE);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("free-page-hint"), Some("true"));
        assert_eq!(get("indirect_desc"), Some("true"));
        assert_eq!(get("page-poison"), Some("true"));
        assert_eq!(get("smb_io_base"), None, "stops at the device's end");
        assert_eq!(get("disable-legacy"), None, "the proxy's, not the device's");
        assert_eq!(
            offered_features(&p),
            [
                "STATS_VQ",
                "DEFLATE_ON_OOM",
                "FREE_PAGE_HINT",
                "PAGE_POISON",
                "REPORTING"
            ]
        );
        assert!(balloon_props("no balloon here").is_empty());
    }

    #[test]
    fn migrates_with_local_settings_and_says_how_far_it_is() {
        let bw = |mib_s| {
            let p = json::parse(&settings(mib_s).0).unwrap();
            p.get("max-bandwidth").and_then(Value::as_u64)
        };
        assert_eq!(bw(0), Some(128 << 20));
        assert_eq!(bw(4096), Some(4 << 30));
        let caps = settings(0).1;
        assert!(caps.contains(r#""capability":"auto-converge","state":true"#));
        assert!(!caps.contains("postcopy"));
        let i = parse_query_migrate(&v(
            r#"{"status":"active","total-time":61000,"ram":{"transferred":3145728000,"total":2147483648,"dirty-sync-count":7}}"#,
        ))
        .unwrap();
        assert_eq!(
            progress_line(&i),
            r#"migration Running("active"): 3000 MiB sent of 2048 MiB, 7 passes, 61 s"#
        );
    }

    #[test]
    fn compares_both_migrations() {
        let mk = |transferred: u64, ms: u64| Migrated {
            info: MigrateInfo {
                status: Status::Completed,
                transferred,
                total: 3 << 30,
                duplicate: 10,
                normal: transferred / 4096,
                dirty_syncs: 3,
                total_time_ms: ms,
                downtime_ms: Some(40),
            },
            wall: Duration::from_millis(ms),
            file_bytes: None,
        };
        let line = compare_line(&mk(2560 << 20, 20_000), &mk(512 << 20, 5_000));
        assert!(line.contains("hinting off 2560 MiB in 20.0 s"), "{line}");
        assert!(line.contains("hinting on 512 MiB in 5.0 s"), "{line}");
        assert!(line.contains("saved 2048 MiB (80%)"), "{line}");
        assert!(line.contains("downtime 40 ms"), "{line}");
    }

    /// Against the real QEMU: a paused machine (no guest) with the hinting
    /// balloon, migrated to a file and read back by a second QEMU.
    #[test]
    #[ignore = "starts QEMU: flock /tmp/vtb-cpu.lock cargo test -p vmharness -- --ignored migrate"]
    fn migrates_a_paused_qemu_with_the_hinting_balloon() {
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("vtbmig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.bin");
        let (extra, dev) = hint_args();
        let qemu = |name: &str, incoming: &[String]| {
            let sock = dir.join(format!("{name}.qmp"));
            let child = Command::new("qemu-system-x86_64")
                .args(["-S", "-M", "pc", "-m", "128", "-nodefaults"])
                .args(["-display", "none", "-monitor", "none", "-serial", "none"])
                .args(&extra)
                .arg("-device")
                .arg(format!("virtio-balloon-pci,id=balloon0{dev}"))
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", sock.display()))
                .args(incoming)
                .stdin(Stdio::null())
                .spawn()
                .expect("qemu-system-x86_64");
            (child, sock)
        };
        let (mut src, sock) = qemu("src", &[]);
        let mut q = Qmp::connect(&sock).unwrap();
        let props = balloon_props(&human(&mut q, "info qtree").unwrap());
        assert!(
            offered_features(&props).contains(&"FREE_PAGE_HINT"),
            "{props:?}"
        );
        let target = Target::File(state.clone());
        let m = migrate(&mut q, &target, 0, Duration::from_secs(120));
        let status = q.status();
        let _ = src.kill();
        let _ = src.wait();
        let m = m.unwrap();
        assert_eq!(m.info.status, Status::Completed);
        assert!(m.info.total >= 128 << 20, "{:?}", m.info);
        assert!(m.info.downtime_ms.is_some());
        assert!(m.file_bytes.unwrap_or(0) > 0);
        assert_eq!(status.as_deref(), Ok("postmigrate"));
        // A destination takes the state back.
        let (mut dst, sock) = qemu("dst", &incoming_args(&target));
        let mut q = Qmp::connect(&sock).unwrap();
        let done = wait_done(
            || q.execute("query-migrate", None),
            Duration::from_secs(120),
            Duration::from_millis(100),
        );
        let _ = dst.kill();
        let _ = dst.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(done.map(|i| i.status), Ok(Status::Completed));
    }
}
