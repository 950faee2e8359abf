//! The boots: which guest phases run together in one fresh guest, with
//! how much memory, which loader tunables and which time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vm::{Transport, BALLOON_DEFAULT};

/// The guest architecture a run boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

/// Who plays the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// QEMU started by the harness, driven over QMP.
    Qemu,
    /// libvirt: the harness's own libvirtd, a domain from XML, virsh.
    Libvirt,
}

/// One boot of the guest.
#[derive(Clone)]
pub struct Boot {
    pub name: String,
    pub phases: String,
    pub kenv: Vec<String>,
    pub mem_mib: u64,
    pub needs_ours: bool,
    /// Upper bound for the whole boot.
    pub limit: Duration,
    /// The balloon device's QEMU properties.
    pub balloon: String,
    /// More QEMU arguments (the I/O thread the hinting balloon needs).
    pub qemu_extra: Vec<String>,
    /// Another FreeBSD boot directory than FREEBSD_BOOT (the GENERIC kernel).
    pub boot_dir: Option<PathBuf>,
    pub host: HostKind,
    /// The balloon's virtio transport (arm64; amd64 boots are PCI).
    pub transport: Transport,
    /// Virtual CPUs (`VTB_CPUS`, default 2).
    pub cpus: u32,
    /// KiB less than `mem_mib` (see [`MIGRATION_RAM_LESS_KIB`]).
    pub ram_less_kib: u64,
}

impl Boot {
    pub fn new(name: &str, phases: &str, mem_mib: u64, needs_ours: bool, limit_s: u64) -> Boot {
        // VTB_KENV: extra loader variables for every boot (debugging aid,
        // e.g. `dev.vtballoonrs.0.debug=1`).
        let mut kenv: Vec<String> = std::env::var("VTB_KENV")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        if phases.split(' ').any(|p| p == "tunable") {
            // What the guest's `tunable` phase expects to find: one good
            // tunable, and bad ones the driver must refuse.
            kenv.push("dev.vtballoonrs.0.oom_batch_pages=4096".into());
            kenv.extend(
                BAD_TUNABLES
                    .iter()
                    .map(|t| format!("dev.vtballoonrs.0.{t}")),
            );
        }
        Boot {
            name: name.into(),
            phases: phases.into(),
            kenv,
            mem_mib,
            needs_ours,
            limit: Duration::from_secs(limit_s),
            balloon: BALLOON_DEFAULT.into(),
            qemu_extra: Vec::new(),
            boot_dir: None,
            host: HostKind::Qemu,
            transport: Transport::Pci,
            cpus: env_cpus(),
            ram_less_kib: 0,
        }
    }

    /// The same boot over `transport`, named `<name>-<transport>`.
    fn over(&self, transport: Transport) -> Boot {
        Boot {
            name: format!("{}-{}", self.name, transport.name()),
            transport,
            ..self.clone()
        }
    }

    /// Whether `arg` names this boot: its name, or for a boot over a
    /// transport its name without the transport (`basic` for `basic-mmio`).
    fn named(&self, arg: &str) -> bool {
        self.name == arg
            || self
                .name
                .strip_suffix(self.transport.name())
                .and_then(|n| n.strip_suffix('-'))
                == Some(arg)
    }
}

/// The amd64 test boots that also run on arm64: those needing neither a
/// second kernel (GENERIC) nor libvirt, nor the in-tree driver alone.
pub const ARM64_BOOTS: [&str; 4] = ["basic", "pressure", "report", "lifecycle"];

/// The boots of `vmharness --arch arm64 test`: [`ARM64_BOOTS`], each over
/// virtio-pci and then over virtio-mmio.
pub fn arm64_test_boots() -> Vec<Boot> {
    let boots: Vec<Boot> = test_boots(None)
        .into_iter()
        .filter(|b| ARM64_BOOTS.contains(&b.name.as_str()))
        .collect();
    [Transport::Pci, Transport::Mmio]
        .into_iter()
        .flat_map(|t| boots.iter().map(move |b| b.over(t)))
        .collect()
}

impl Boot {
    /// The balloon with free page hinting too (`free-page-hint=on` and its
    /// I/O thread), as QEMU offers it: beside deflate-on-oom and free page
    /// reporting, with `page-poison` at its default (on).
    pub fn with_hinting(mut self) -> Boot {
        let (extra, props) = crate::migrate::hint_args();
        self.balloon = format!("{BALLOON_DEFAULT}{props}");
        self.qemu_extra = extra;
        self
    }
}

/// Loader tunables the driver must refuse at load, keeping its defaults
/// and saying so on the console (the guest's `tunable` phase checks them:
/// BAD_TUNABLES in guest/src/basic.rs). Text the kernel cannot read as an
/// int, a negative, a list, a power of two that is not one, a flag that is
/// not 0/1, a number beyond an int, and a floor of 1 TiB pages.
pub const BAD_TUNABLES: &[&str] = &[
    "oom_watch_ms=abc",
    "oom_headroom_pages=-5",
    "oom_watch_interval_ms=1,2",
    "inflate_run_pages=3",
    "debug=7",
    "kick_thread=0x10",
    "stats_linux_tags=99999999999",
    "floor_pages=1T",
];

/// Legacy virtio-pci only (guest-endian transport, no VERSION_1).
pub const BALLOON_LEGACY: &str = "disable-modern=on,deflate-on-oom=on,free-page-reporting=on";
/// Modern virtio-pci only (little-endian transport, VERSION_1).
pub const BALLOON_MODERN: &str = "disable-legacy=on,deflate-on-oom=on,free-page-reporting=on";

/// The root port the balloon sits behind on q35 ([`Boot::on_q35`]).
pub const ROOT_PORT: &str = "rp0";

impl Boot {
    /// q35 with the balloon behind a PCIe root port, which FreeBSD drives
    /// with native PCIe hot-plug (QEMU's ACPI hot-plug of bridges is off,
    /// so the firmware grants it in _OSC): `device_del` and `device_add`
    /// of the balloon work once the guest kicks the port (FreeBSD 14.2
    /// misses its first completion: guest/src/rootport.rs). The cdrom is
    /// on AHCI there.
    pub fn on_q35(mut self) -> Boot {
        self.qemu_extra.extend([
            "-machine".to_string(),
            "q35".into(),
            "-global".into(),
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into(),
            "-device".into(),
            format!("pcie-root-port,id={ROOT_PORT},chassis=1,slot=1"),
        ]);
        self.balloon = format!("bus={ROOT_PORT},{}", self.balloon);
        self
    }
}

/// Phases that run on q35 (hot-plug).
const Q35_PHASES: &[&str] = &["hotplug", "stall", "soak"];

/// The soak's length: `VTB_SOAK_S` seconds, default 20 minutes.
pub fn soak_secs() -> u64 {
    std::env::var("VTB_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200)
}

/// The soak boot (`vmharness soak`, `make vmsoak`, not part of `test`):
/// q35 and the modern-only transport, so one hot-unplug and re-plug can be
/// part of it.
pub fn soak_boot() -> Boot {
    let mut b = Boot::new("soak", "soak", 2048, true, soak_secs() + 1200);
    b.balloon = BALLOON_MODERN.into();
    b.on_q35()
}

/// Phases that need the hinting balloon.
const HINT_PHASES: [&str; 2] = ["hint-features", "hint-migrate"];

/// What a boot that live-migrates gives the guest less than its MiB: QEMU
/// 7.2 (Debian 12) loses guest writes when it migrates a TCG guest whose
/// RAM block is a multiple of 64 pages. The fast path of
/// `cpu_physical_memory_sync_dirty_bitmap` clears the dirty bits without
/// resetting the vCPUs' TLB entries, so stores through a TLB entry filled
/// before the sync (a kernel's global mappings live long) mark nothing and
/// are never sent: fixed in QEMU 9.0 by 03bfc2188f "physmem: Fix migration
/// dirty bitmap coherency with TCG memory access". 8 KiB less (QEMU rounds
/// RAM to 8 KiB) makes every sync take the slow path, which resets them.
pub const MIGRATION_RAM_LESS_KIB: u64 = 8;

/// [`MIGRATION_RAM_LESS_KIB`], or `VTB_RAM_LESS_KIB` (0: the whole MiB, to
/// show QEMU's fault).
fn migration_ram_less_kib() -> u64 {
    std::env::var("VTB_RAM_LESS_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIGRATION_RAM_LESS_KIB)
}

/// Phases that live-migrate the guest.
fn migrates(phase: &str) -> bool {
    phase == "hint-migrate" || phase.starts_with("migrate-")
}

/// The name of a boot of the phases named: them joined by `-`, or for many
/// the first and a count, so that the sockets in its work directory stay
/// within a unix socket path's 107 bytes.
fn boot_name(phases: &[&str]) -> String {
    let joined = phases.join("-");
    match phases {
        [first, rest @ ..] if joined.len() > 40 => format!("{first}-and-{}-more", rest.len()),
        _ => joined,
    }
}

/// `VTB_CPUS`: the guest's virtual CPUs (1 to 8), 2 unless set.
fn env_cpus() -> u32 {
    std::env::var("VTB_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=8).contains(n))
        .unwrap_or(2)
}

/// What `vmharness bench` runs, from the environment: `VTB_BENCH_REPS`
/// (repetitions of each row per variant, default 5), `VTB_BENCH_SIZES`
/// (MiB, comma-separated, default `1024,3072`), `VTB_BENCH_VARIANTS`
/// (comma-separated: `ours`, `theirs` (the in-tree driver), or ours with
/// loader tunables, `ours+kick_thread=0+inflight_buffers=1`; default
/// `ours,theirs`), `VTB_BENCH_EXTRAS=0` (no pressure, lowmem or idle figures
/// after the rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchPlan {
    pub reps: u32,
    pub sizes: Vec<u64>,
    pub variants: Vec<String>,
    pub extras: bool,
}

/// Settings of ours a bench variant may give (the guest resets them before
/// each load).
const BENCH_KNOBS: [&str; 3] = ["kick_thread", "inflate_run_pages", "inflight_buffers"];

impl BenchPlan {
    pub fn from_env() -> Result<BenchPlan, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self::parse(
            var("VTB_BENCH_REPS").as_deref(),
            var("VTB_BENCH_SIZES").as_deref(),
            var("VTB_BENCH_VARIANTS").as_deref(),
            var("VTB_BENCH_EXTRAS").as_deref(),
        )
    }

    pub fn parse(
        reps: Option<&str>,
        sizes: Option<&str>,
        variants: Option<&str>,
        extras: Option<&str>,
    ) -> Result<BenchPlan, String> {
        let reps = match reps {
            None => 5,
            Some(r) => r
                .parse()
                .ok()
                .filter(|n| (1..=50).contains(n))
                .ok_or(format!("VTB_BENCH_REPS={r}: 1 to 50"))?,
        };
        let sizes = sizes
            .unwrap_or("1024,3072")
            .split(',')
            .map(|s| s.parse().ok().filter(|&m| (1..=3072).contains(&m)))
            .collect::<Option<Vec<u64>>>()
            .filter(|v| (1..=4).contains(&v.len()))
            .ok_or("VTB_BENCH_SIZES: 1 to 4 sizes in MiB, each at most 3072")?;
        let variants: Vec<String> = variants
            .unwrap_or("ours,theirs")
            .split(',')
            .map(String::from)
            .collect();
        for v in &variants {
            let ok = v == "theirs"
                || v.strip_prefix("ours").is_some_and(|rest| {
                    rest.split('+').skip(1).all(|kv| {
                        kv.split_once('=').is_some_and(|(k, val)| {
                            BENCH_KNOBS.contains(&k) && val.parse::<u32>().is_ok()
                        })
                    }) && (rest.is_empty() || rest.starts_with('+'))
                });
            if !ok {
                return Err(format!(
                    "VTB_BENCH_VARIANTS: {v:?} is not ours, theirs or ours+NAME=N (NAME one of {})",
                    BENCH_KNOBS.join(", ")
                ));
            }
        }
        if variants.len() > 8 || variants.is_empty() {
            return Err("VTB_BENCH_VARIANTS: 1 to 8 variants".into());
        }
        Ok(BenchPlan {
            reps,
            sizes,
            variants,
            extras: extras != Some("0"),
        })
    }

    /// The guest's options (after the phase in its mode file).
    pub fn mode_args(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(u64::to_string).collect();
        format!(
            "--reps {} --sizes {} --variants {} --extras {}",
            self.reps,
            sizes.join(","),
            self.variants.join(","),
            u8::from(self.extras)
        )
    }

    /// An upper bound for the boot: about a minute per timed pair (a touch
    /// of all free memory, the pair, loading the driver), the extras and
    /// boot on top.
    pub fn limit_s(&self) -> u64 {
        let pairs = u64::from(self.reps) * self.sizes.len() as u64 * self.variants.len() as u64;
        600 + pairs * 90 + if self.extras { 900 } else { 0 }
    }
}

/// The bench's boot: on the GENERIC kernel when there is one and
/// FREEBSD_BOOT was not given (the default test kernel has INVARIANTS and
/// WITNESS, which are not what a user runs).
pub fn bench_boot(plan: &BenchPlan, boot_set: bool, generic: Option<&Path>) -> Boot {
    let phases = format!("bench {}", plan.mode_args());
    let mut b = Boot::new("bench", &phases, 4096, true, plan.limit_s());
    if !boot_set {
        b.boot_dir = generic.map(Path::to_path_buf);
    }
    b
}

/// The deflate-on-OOM scenarios with the driver's and FreeBSD's defaults.
const OOM_PHASES: &str = "oom-one oom-many oom-sequence oom-inflating oom-reload";

/// The boots of `vmharness test`, each a fresh guest so one failure does
/// not hide the next scenario. `generic`: a GENERIC kernel's boot
/// directory, where the pressure scenarios run a second time.
pub fn test_boots(generic: Option<&Path>) -> Vec<Boot> {
    // Boot::new gives the tunable phase its loader variable.
    let basic = Boot::new("basic", "tunable nodes jail resize stats", 2048, true, 900);
    let mut control = Boot::new("oom-control", "oom-control", 4096, true, 900);
    control.balloon = "deflate-on-oom=off,free-page-reporting=on".into();
    // The host many users have: libvirt (directly, or under OpenStack),
    // reading statistics with `virsh dommemstat` and moving the balloon
    // with `virsh setmem`.
    let mut libvirt = Boot::new("libvirt", "libvirt", 2048, true, 900);
    libvirt.host = HostKind::Libvirt;
    // Hostile targets, on the legacy transport (whose basic scenario runs
    // first); the basic scenario again on the modern-only transport.
    let mut hostile = Boot::new(
        "hostile",
        "transport-legacy flip oom-retarget",
        2048,
        true,
        1200,
    );
    hostile.balloon = BALLOON_LEGACY.into();
    // On q35 and the modern-only transport (whose basic scenario runs
    // first): hot-unplug and re-plug (FreeBSD 14.2 acts on device_del only
    // once the root port is kicked: a skip with the reason, see
    // guest/src/rootport.rs), then the host stops answering (stall).
    let mut q35 = Boot::new("q35", "transport-modern hotplug stall", 2048, true, 1200);
    q35.balloon = BALLOON_MODERN.into();
    let q35 = q35.on_q35();
    // Live migration with free page hinting off and on, then of a busy
    // guest with hinting and reporting on, each to a second QEMU.
    let mut migrate =
        Boot::new("migrate", "hint-migrate migrate-churn", 2048, true, 900).with_hinting();
    migrate.ram_less_kib = migration_ram_less_kib();
    let mut boots = vec![
        basic,
        Boot::new("pressure", OOM_PHASES, 4096, true, 1800),
        control,
        Boot::new("oom-intree", "oom-intree", 4096, false, 900),
        Boot::new("report", "report", 2048, true, 900),
        // Free page reporting on a device that also offers free page
        // hinting: QEMU numbers its queues by its offer, so reporting is
        // queue 4 there.
        Boot::new("report-hint", "hint-features report", 2048, true, 900).with_hinting(),
        migrate,
        Boot::new("lifecycle", "unload cycles swap", 2048, true, 1200),
        libvirt,
        // The guest-side floor against a host that wants all but 1 MiB of
        // a 2 GiB guest, with a process allocating and freeing 256 MiB in
        // a loop meanwhile.
        Boot::new("floor", "floor", 2048, true, 900),
        hostile,
        q35,
    ];
    if let Some(dir) = generic {
        let mut g = Boot::new("pressure-generic", "oom-one oom-many", 4096, true, 1200);
        g.boot_dir = Some(dir.to_path_buf());
        boots.insert(2, g);
    }
    boots
}

/// The GENERIC kernel's boot directory, if there is one.
pub fn generic_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("FREEBSD_BOOT_GENERIC")
            .unwrap_or_else(|_| "/opt/freebsd-boot-generic".into()),
    );
    dir.join("kernel/kernel").is_file().then_some(dir)
}

/// The boots to run for `args` on `arch`; `transport` is the balloon's for
/// a boot of phases named on the command line (arm64).
pub fn plan(args: &[String], arch: Arch, transport: Transport) -> Vec<Boot> {
    if arch == Arch::Arm64 {
        return match args.first().map(String::as_str) {
            None | Some("test") => {
                let mut boots = arm64_test_boots();
                if args.len() > 1 {
                    boots.retain(|b| args[1..].iter().any(|a| b.named(a)));
                }
                boots
            }
            // The amd64 GENERIC kernel the bench prefers is no arm64 kernel.
            Some(_) => plan(args, Arch::Amd64, transport)
                .into_iter()
                .map(|b| Boot {
                    boot_dir: None,
                    ..b.over(transport)
                })
                .collect(),
        };
    }
    match args.first().map(String::as_str) {
        None => test_boots(generic_dir().as_deref()),
        // `test NAME...`: only the test boots named.
        Some("test") => {
            let mut boots = test_boots(generic_dir().as_deref());
            if args.len() > 1 {
                boots.retain(|b| args[1..].contains(&b.name));
            }
            boots
        }
        Some("soak") => vec![soak_boot()],
        Some("bench") => match BenchPlan::from_env() {
            Ok(p) => vec![bench_boot(
                &p,
                std::env::var_os("FREEBSD_BOOT").is_some(),
                generic_dir().as_deref(),
            )],
            Err(e) => {
                eprintln!("vmharness: {e}");
                std::process::exit(2)
            }
        },
        Some("intree") => vec![Boot::new("intree", "intree", 2048, false, 600)],
        Some(_) => {
            // Options for the guest (--no-host) go along with the phases.
            let phases = args.join(" ");
            let needs = args.iter().any(|a| a != "intree" && !a.starts_with('-'));
            let name: Vec<&str> = args.iter().map(|a| a.trim_start_matches('-')).collect();
            // The pressure scenarios are sized for a 4 GiB guest.
            let mem = if args
                .iter()
                .any(|a| a.starts_with("oom-") && a != "oom-retarget")
            {
                4096
            } else {
                2048
            };
            let mut boot = Boot::new(&boot_name(&name), &phases, mem, needs, 2400);
            if args.iter().any(|a| a == "oom-control") {
                boot.balloon = "deflate-on-oom=off,free-page-reporting=on".into();
            }
            if args.iter().any(|a| a == "transport-legacy") {
                boot.balloon = BALLOON_LEGACY.into();
            }
            if args.iter().any(|a| a == "transport-modern") {
                boot.balloon = BALLOON_MODERN.into();
            }
            if args.iter().any(|a| Q35_PHASES.contains(&a.as_str())) {
                boot.balloon = BALLOON_MODERN.into();
                boot = boot.on_q35();
            }
            if args.iter().any(|a| a == "libvirt") {
                boot.host = HostKind::Libvirt;
            }
            if args.iter().any(|a| HINT_PHASES.contains(&a.as_str())) {
                boot = boot.with_hinting();
            }
            if args.iter().any(|a| migrates(a)) {
                boot.ram_less_kib = migration_ram_less_kib();
            }
            vec![boot]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_plans_from_the_environment() {
        let p = BenchPlan::parse(None, None, None, None).unwrap();
        assert_eq!(p.reps, 5);
        assert_eq!(p.sizes, [1024, 3072]);
        assert_eq!(p.variants, ["ours", "theirs"]);
        assert!(p.extras);
        assert_eq!(
            p.mode_args(),
            "--reps 5 --sizes 1024,3072 --variants ours,theirs --extras 1"
        );
        let p = BenchPlan::parse(
            Some("2"),
            Some("512"),
            Some("ours,theirs,ours+kick_thread=0+inflight_buffers=1"),
            Some("0"),
        )
        .unwrap();
        assert_eq!(p.reps, 2);
        assert_eq!(p.variants[2], "ours+kick_thread=0+inflight_buffers=1");
        assert!(!p.extras);
        assert!(p.limit_s() < BenchPlan::parse(None, None, None, None).unwrap().limit_s());
        for bad in [
            "ours+debug=1",
            "ours+kick_thread",
            "oursx",
            "mine",
            "ours+kick_thread=x",
        ] {
            assert!(
                BenchPlan::parse(None, None, Some(bad), None).is_err(),
                "{bad}"
            );
        }
        assert!(BenchPlan::parse(Some("0"), None, None, None).is_err());
        assert!(BenchPlan::parse(None, Some("4096"), None, None).is_err());
        assert!(BenchPlan::parse(None, Some(""), None, None).is_err());
        // GENERIC unless FREEBSD_BOOT was given.
        let g = Path::new("/g");
        assert_eq!(bench_boot(&p, false, Some(g)).boot_dir.as_deref(), Some(g));
        assert_eq!(bench_boot(&p, true, Some(g)).boot_dir, None);
        assert_eq!(bench_boot(&p, false, None).boot_dir, None);
        assert!(bench_boot(&p, false, None)
            .phases
            .starts_with("bench --reps 2 "));
    }

    #[test]
    fn plans_boots() {
        let names = |a: &[&str]| {
            plan(
                &a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                Arch::Amd64,
                Transport::Pci,
            )
            .iter()
            .map(|b| (b.name.clone(), b.phases.clone(), b.needs_ours))
            .collect::<Vec<_>>()
        };
        let t: Vec<_> = test_boots(None)
            .iter()
            .map(|b| (b.name.clone(), b.phases.clone(), b.needs_ours))
            .collect();
        assert_eq!(t.len(), 12);
        assert!(t.iter().all(|(n, _, ours)| *ours || n == "oom-intree"));
        let all: String = t.iter().map(|(_, p, _)| p.clone() + " ").collect();
        for phase in [
            "nodes",
            "jail",
            "resize",
            "stats",
            "oom-one",
            "oom-many",
            "oom-sequence",
            "oom-inflating",
            "oom-reload",
            "oom-control",
            "oom-intree",
            "report",
            "unload",
            "cycles",
            "swap",
            "libvirt",
            "hint-features",
            "hint-migrate",
            "migrate-churn",
            "floor",
            "transport-legacy",
            "transport-modern",
            "flip",
            "oom-retarget",
            "stall",
        ] {
            assert!(all.split(' ').any(|p| p == phase), "{phase} is in no boot");
        }
        assert!(names(&["bench"])[0].1.starts_with("bench --reps "));
        assert_eq!(names(&["test", "report", "basic"]).len(), 2);
        assert!(!names(&["intree"])[0].2, "the in-tree boot needs no module");
        assert_eq!(names(&["report", "oom-one"])[0].1, "report oom-one");
        // The control runs on a device that does not offer DEFLATE_ON_OOM.
        let boots = test_boots(Some(Path::new("/g")));
        let control = boots.iter().find(|b| b.name == "oom-control").unwrap();
        assert!(control.balloon.contains("deflate-on-oom=off"));
        let generic = boots.iter().find(|b| b.name == "pressure-generic").unwrap();
        assert_eq!(generic.boot_dir.as_deref(), Some(Path::new("/g")));
        assert!(boots
            .iter()
            .filter(|b| b.name != "oom-control")
            .all(|b| b.balloon.contains("deflate-on-oom=on")));
        assert_eq!(names(&["--no-host", "nodes"])[0].0, "no-host-nodes");
        assert_eq!(
            names(&["migrate-churn-off", "migrate-churn", "hint-migrate"])[0].0,
            "migrate-churn-off-and-2-more"
        );
        // The transports each boot asks for.
        let by = |n: &str| boots.iter().find(|b| b.name == n).unwrap();
        assert!(by("hostile").balloon.starts_with("disable-modern=on,"));
        let hp = by("q35");
        assert!(hp.balloon.starts_with("bus=rp0,disable-legacy=on,"));
        assert_eq!(hp.qemu_extra[..2], ["-machine", "q35"]);
        assert!(hp
            .qemu_extra
            .contains(&"pcie-root-port,id=rp0,chassis=1,slot=1".to_string()));
        assert!(boots
            .iter()
            .filter(|b| b.name != "hostile" && b.name != "q35")
            .all(|b| !b.balloon.contains("disable-")));
        assert_eq!(
            plan(&["stall".to_string()], Arch::Amd64, Transport::Pci)[0].balloon,
            hp.balloon
        );
        assert_eq!(
            plan(&["hotplug".to_string()], Arch::Amd64, Transport::Pci)[0].qemu_extra,
            hp.qemu_extra
        );
        let soak = plan(&["soak".to_string()], Arch::Amd64, Transport::Pci);
        assert_eq!(soak.len(), 1);
        assert_eq!(
            (soak[0].phases.as_str(), &soak[0].balloon),
            ("soak", &hp.balloon)
        );
        assert!(!t.iter().any(|(_, p, _)| p.contains("soak")), "not in test");
        let alone = plan(
            &["transport-legacy".to_string()],
            Arch::Amd64,
            Transport::Pci,
        );
        assert_eq!(alone[0].balloon, BALLOON_LEGACY);
        assert_eq!(
            plan(&["oom-retarget".to_string()], Arch::Amd64, Transport::Pci)[0].mem_mib,
            2048
        );
        // libvirt plays the host of the libvirt boot, and of that phase
        // run alone; QEMU every other.
        let lv = boots.iter().find(|b| b.name == "libvirt").unwrap();
        assert_eq!(lv.host, HostKind::Libvirt);
        assert!(boots
            .iter()
            .filter(|b| b.name != "libvirt")
            .all(|b| b.host == HostKind::Qemu));
        let alone = plan(&["libvirt".to_string()], Arch::Amd64, Transport::Pci);
        assert_eq!(alone[0].host, HostKind::Libvirt);
        assert_eq!(
            plan(&["nodes".to_string()], Arch::Amd64, Transport::Pci)[0].host,
            HostKind::Qemu
        );
        // The hinting device and its I/O thread, where hinting phases run.
        for name in ["report-hint", "migrate"] {
            let rh = boots.iter().find(|b| b.name == name).unwrap();
            assert!(rh.balloon.ends_with(",free-page-hint=on,iothread=io0"));
            assert!(rh.balloon.contains("free-page-reporting=on"));
            assert_eq!(rh.qemu_extra, ["-object", "iothread,id=io0"]);
        }
        assert!(boots
            .iter()
            .filter(|b| b.name != "report-hint" && b.name != "migrate")
            .all(|b| !b.balloon.contains("free-page-hint")
                && (b.qemu_extra.is_empty() || b.name == "q35")));
        let arm_bench = plan(&["bench".to_string()], Arch::Arm64, Transport::Pci);
        assert_eq!(arm_bench[0].boot_dir, None, "no amd64 kernel for arm64");
        let alone = plan(&["hint-features".to_string()], Arch::Amd64, Transport::Pci);
        assert!(alone[0].balloon.contains("free-page-hint=on"));
        let mig = plan(&["hint-migrate".to_string()], Arch::Amd64, Transport::Pci);
        assert!(mig[0].balloon.contains("free-page-hint=on"));
        assert_eq!(mig[0].qemu_extra, ["-object", "iothread,id=io0"]);
        let churn = plan(
            &["migrate-churn-off".to_string()],
            Arch::Amd64,
            Transport::Pci,
        );
        assert!(!churn[0].balloon.contains("free-page-hint"));
        // Boots that migrate avoid QEMU 7.2's lost TCG writes; others not.
        assert_eq!(churn[0].ram_less_kib, MIGRATION_RAM_LESS_KIB);
        assert_eq!(mig[0].ram_less_kib, MIGRATION_RAM_LESS_KIB);
        assert!(boots
            .iter()
            .all(|b| (b.ram_less_kib != 0) == (b.name == "migrate")));
        assert!(test_boots(None)[0]
            .kenv
            .iter()
            .any(|k| k.starts_with("dev.vtballoonrs.0.oom_batch_pages=")));
    }

    #[test]
    fn arm64_runs_the_test_boots_over_pci_then_mmio() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let boots = plan(&args(&["test"]), Arch::Arm64, Transport::Pci);
        let names: Vec<&str> = boots.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "basic-pci",
                "pressure-pci",
                "report-pci",
                "lifecycle-pci",
                "basic-mmio",
                "pressure-mmio",
                "report-mmio",
                "lifecycle-mmio"
            ]
        );
        assert!(boots.iter().all(|b| b.transport
            == if b.name.ends_with("-mmio") {
                Transport::Mmio
            } else {
                Transport::Pci
            }));
        // The same phases, memory and tunables as on amd64.
        let amd64 = test_boots(None);
        for b in &boots {
            let same = amd64.iter().find(|a| b.named(&a.name)).unwrap();
            assert_eq!(
                (&b.phases, b.mem_mib, &b.kenv),
                (&same.phases, same.mem_mib, &same.kenv)
            );
            assert_eq!(b.host, HostKind::Qemu);
        }
        // `test basic` is both transports; a full name is one boot.
        let basic = plan(&args(&["test", "basic"]), Arch::Arm64, Transport::Pci);
        assert_eq!(basic.len(), 2);
        let one = plan(&args(&["test", "report-mmio"]), Arch::Arm64, Transport::Pci);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].transport, Transport::Mmio);
        // Phases named on the command line run over the transport asked for.
        let p = plan(&args(&["nodes", "resize"]), Arch::Arm64, Transport::Mmio);
        assert_eq!(p[0].name, "nodes-resize-mmio");
        assert_eq!(p[0].transport, Transport::Mmio);
        assert_eq!(p[0].phases, "nodes resize");
    }
}
