//! The QEMU process: serial console through pipes (every line also goes to
//! a log file), the QMP socket, and host-side figures read from /proc (RSS,
//! CPU time of the vCPU threads and of the rest of QEMU). Or the same guest
//! started by libvirt ([`Vm::start_libvirt`]): the console on a unix socket
//! the harness listens on, no QMP (libvirt owns the monitor).

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::libvirt::{domain_xml, Domain, Libvirt};

/// Who runs QEMU.
enum Proc {
    /// The harness, with these arguments ([`qemu_args`]).
    Qemu(Child),
    /// libvirt, from a domain's XML.
    Libvirt(Box<Libvirt>),
}

pub struct Vm {
    proc: Proc,
    console: Box<dyn Write + Send>,
    pub lines: Receiver<String>,
    /// QEMU's QMP socket (none under libvirt).
    pub qmp_path: Option<PathBuf>,
}

/// The virtio transport the balloon sits on (arm64: both exist on QEMU's
/// `virt` machine; amd64 guests here always use PCI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `virtio-balloon-pci`: FreeBSD's virtio_pci.
    Pci,
    /// `virtio-balloon-device` on one of `virt`'s virtio-mmio slots:
    /// FreeBSD's virtio_mmio.
    Mmio,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Pci => "pci",
            Transport::Mmio => "mmio",
        }
    }
}

/// The guest machine QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// qemu-system-x86_64's default PC: BIOS, cdboot, the CD on IDE.
    Amd64,
    /// qemu-system-aarch64 `-M virt`: UEFI firmware ([`VmConfig::firmware`]),
    /// loader.efi, the CD on virtio-scsi (`virt` has no IDE), the balloon on
    /// this transport.
    Arm64(Transport),
}

/// Debian's (qemu-efi-aarch64) UEFI firmware for QEMU's arm64 `virt`.
pub const ARM64_FIRMWARE: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";

impl Machine {
    /// QEMU's binary for this machine.
    pub fn qemu(self) -> &'static str {
        match self {
            Machine::Amd64 => "qemu-system-x86_64",
            Machine::Arm64(_) => "qemu-system-aarch64",
        }
    }

    /// QEMU's balloon device for this machine.
    pub fn balloon_device(self) -> &'static str {
        match self {
            Machine::Amd64 | Machine::Arm64(Transport::Pci) => "virtio-balloon-pci",
            Machine::Arm64(Transport::Mmio) => "virtio-balloon-device",
        }
    }
}

pub struct VmConfig<'a> {
    pub iso: &'a Path,
    pub mem_mib: u64,
    /// KiB less than `mem_mib` (a migrating boot, see boots.rs).
    pub ram_less_kib: u64,
    pub cpus: u32,
    pub log: &'a Path,
    pub kvm: bool,
    /// Properties of the balloon device after `id=balloon0,`.
    pub balloon: &'a str,
    /// More arguments (objects the balloon refers to).
    pub extra: &'a [String],
    pub machine: Machine,
    /// The UEFI firmware of an arm64 machine (default [`ARM64_FIRMWARE`]).
    pub firmware: &'a Path,
}

/// The QEMU id of the balloon device (QMP `device_del`, QOM paths).
pub const BALLOON_ID: &str = "balloon0";

/// The balloon device's properties unless a boot says otherwise.
pub const BALLOON_DEFAULT: &str = "deflate-on-oom=on,free-page-reporting=on";

/// QEMU's arguments (without the binary).
/// QEMU's `-accel`: KVM, TCG with a thread per vCPU, or what `VTB_ACCEL`
/// says (e.g. `tcg,thread=single`, one thread for all vCPUs: to tell a
/// fault of multi-threaded TCG from one of the guest).
pub fn accel(kvm: bool, asked: Option<String>) -> String {
    match asked.filter(|a| !a.is_empty()) {
        Some(a) => a,
        None if kvm => "kvm".into(),
        None => "tcg,thread=multi".into(),
    }
}

/// QEMU's `-m`: MiB, or KiB when a few KiB less.
pub fn ram_arg(mib: u64, less_kib: u64) -> String {
    if less_kib == 0 {
        mib.to_string()
    } else {
        format!("{}k", mib * 1024 - less_kib)
    }
}

pub fn qemu_args(cfg: &VmConfig<'_>, qmp: &Path) -> Vec<String> {
    let accel = accel(cfg.kvm, std::env::var("VTB_ACCEL").ok());
    let mut a: Vec<String> = [
        "-name",
        "vtbtest,debug-threads=on",
        "-accel",
        &accel,
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(cfg.extra.iter().cloned());
    if let Machine::Arm64(_) = cfg.machine {
        // A Cortex-A57 is what TCG emulates fastest of the 64-bit cores
        // (`max` adds pointer authentication, slow under TCG); `virt`'s
        // default NIC is left out, as nothing uses it.
        a.extend(
            ["-M", "virt", "-cpu", "cortex-a57", "-nic", "none", "-bios"]
                .iter()
                .map(|s| s.to_string()),
        );
        a.push(cfg.firmware.display().to_string());
    }
    a.extend([
        "-device".into(),
        format!(
            "{},id={BALLOON_ID},{}",
            cfg.machine.balloon_device(),
            cfg.balloon
        ),
    ]);
    a.extend(["-smp".into(), cfg.cpus.to_string()]);
    a.extend(["-m".into(), ram_arg(cfg.mem_mib, cfg.ram_less_kib)]);
    match cfg.machine {
        Machine::Amd64 => a.extend(["-cdrom".into(), cfg.iso.display().to_string()]),
        Machine::Arm64(_) => a.extend([
            "-device".into(),
            "virtio-scsi-pci,id=scsi0".into(),
            "-drive".into(),
            format!(
                "if=none,id=cd0,file={},media=cdrom,format=raw,readonly=on",
                cfg.iso.display()
            ),
            "-device".into(),
            "scsi-cd,drive=cd0,bus=scsi0.0".into(),
        ]),
    }
    a.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    a
}

/// Follows a console: every line goes to `log` and to the receiver.
fn follow(console: impl Read + Send + 'static, log: &Path) -> Result<Receiver<String>, String> {
    let mut log = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let (tx, lines) = channel();
    thread::spawn(move || {
        for line in BufReader::new(console).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = writeln!(log, "{}", line.trim_end_matches('\r'));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(lines)
}

impl Vm {
    pub fn start(cfg: &VmConfig<'_>, work: &Path) -> Result<Vm, String> {
        let qmp_path = work.join("qmp.sock");
        let _ = fs::remove_file(&qmp_path);
        let qemu = cfg.machine.qemu();
        let mut child = Command::new(qemu)
            .args(qemu_args(cfg, &qmp_path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {qemu}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = follow(stdout, cfg.log)?;
        Ok(Vm {
            proc: Proc::Qemu(child),
            console: Box::new(stdin),
            lines,
            qmp_path: Some(qmp_path),
        })
    }

    /// The same guest as a libvirt domain (`virsh create`): the balloon is
    /// the XML's (`cfg.balloon` does not apply), the serial console a unix
    /// socket in `work` that QEMU connects to when it starts, before the
    /// guest runs, so no output is lost.
    pub fn start_libvirt(cfg: &VmConfig<'_>, work: &Path, lv: Libvirt) -> Result<Vm, String> {
        let sock = work.join("console.sock");
        let _ = fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("console socket: {e}"))?;
        let xml = work.join("domain.xml");
        let dom = Domain {
            name: &lv.domain,
            iso: cfg.iso,
            mem_mib: cfg.mem_mib,
            cpus: cfg.cpus,
            console: &sock,
        };
        fs::write(&xml, domain_xml(&dom)).map_err(|e| format!("{}: {e}", xml.display()))?;
        lv.create(&xml)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(format!("QEMU did not connect its console: {e}")),
            }
        };
        stream
            .set_nonblocking(false)
            .map_err(|e| format!("console socket: {e}"))?;
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let lines = follow(reader, cfg.log)?;
        Ok(Vm {
            proc: Proc::Libvirt(Box::new(lv)),
            console: Box::new(stream),
            lines,
            qmp_path: None,
        })
    }

    /// The libvirt host, if libvirt runs this guest.
    pub fn libvirt(&self) -> Option<&Libvirt> {
        match &self.proc {
            Proc::Libvirt(lv) => Some(lv),
            Proc::Qemu(_) => None,
        }
    }

    /// QEMU's process id.
    fn pid(&self) -> Option<u32> {
        match &self.proc {
            Proc::Qemu(c) => Some(c.id()),
            Proc::Libvirt(lv) => lv.qemu_pid(),
        }
    }

    /// Sends one line to the guest's console input.
    pub fn send(&mut self, line: &str) -> Result<(), String> {
        self.console
            .write_all(line.as_bytes())
            .and_then(|()| self.console.flush())
            .map_err(|e| format!("console write: {e}"))
    }

    pub fn rss_bytes(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        parse_status_kib(&s, "VmRSS:") * 1024
    }

    /// CPU time (user+system, ms) of QEMU's vCPU threads and of the rest
    /// (main loop: device emulation, the balloon's discards; I/O threads).
    pub fn cpu_ms(&self) -> CpuMs {
        let mut c = CpuMs::default();
        let Some(pid) = self.pid() else { return c };
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return c;
        };
        for t in tasks.flatten() {
            let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let ms = parse_stat_cpu_ticks(&stat) * 1000 / CLK_TCK;
            if is_vcpu_thread(&comm) {
                c.vcpu += ms;
            } else {
                c.other += ms;
            }
        }
        c
    }

    /// Ends QEMU: kills our child, or destroys the domain and stops libvirtd.
    pub fn kill(&mut self) {
        match &mut self.proc {
            Proc::Qemu(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Proc::Libvirt(lv) => lv.stop(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CpuMs {
    pub vcpu: u64,
    pub other: u64,
}

impl CpuMs {
    pub fn since(self, earlier: CpuMs) -> CpuMs {
        CpuMs {
            vcpu: self.vcpu.saturating_sub(earlier.vcpu),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

/// With `-name ...,debug-threads=on` QEMU names its vCPU threads
/// `CPU <n>/TCG` or `CPU <n>/KVM`.
pub fn is_vcpu_thread(comm: &str) -> bool {
    let c = comm.trim();
    c.starts_with("CPU ") && (c.ends_with("/TCG") || c.ends_with("/KVM"))
}

/// Clock ticks per second of /proc's times (USER_HZ, 100 on Linux).
const CLK_TCK: u64 = 100;

/// The kB value of `key` in a /proc/<pid>/status text.
pub fn parse_status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime (clock ticks) from a /proc/<pid>/stat or task stat line.
pub fn parse_stat_cpu_ticks(stat: &str) -> u64 {
    // The command may contain spaces and parentheses: fields start after
    // the last ')'.
    let Some(after) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is index 0; utime 11, stime 12 (fields 14, 15).
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_from_status() {
        let s = "Name:\tqemu\nVmRSS:\t  123456 kB\nThreads: 5\n";
        assert_eq!(parse_status_kib(s, "VmRSS:"), 123_456);
        assert_eq!(parse_status_kib(s, "VmSwap:"), 0);
    }

    #[test]
    fn reads_cpu_ticks_from_stat() {
        let s = "4242 (qemu-system-x86) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_stat_cpu_ticks(s), 300);
        let s = "4243 (CPU 0/TCG) R 1 2 3 4 5 6 7 8 9 10 7 3 0 0 20 0";
        assert_eq!(parse_stat_cpu_ticks(s), 10);
        assert_eq!(parse_stat_cpu_ticks("garbage"), 0);
        assert_eq!(parse_stat_cpu_ticks("1 (x)"), 0);
    }

    #[test]
    fn tells_vcpu_threads() {
        assert!(is_vcpu_thread("CPU 0/TCG\n"));
        assert!(is_vcpu_thread("CPU 11/KVM"));
        assert!(!is_vcpu_thread("qemu-system-x86"));
        assert!(!is_vcpu_thread("worker"));
    }

    #[test]
    fn ram_is_mib_or_a_few_kib_less() {
        assert_eq!(ram_arg(2048, 0), "2048");
        assert_eq!(ram_arg(2048, 8), "2097144k");
    }

    #[test]
    fn accel_is_tcg_kvm_or_what_vtb_accel_says() {
        assert_eq!(accel(false, None), "tcg,thread=multi");
        assert_eq!(accel(true, None), "kvm");
        assert_eq!(accel(false, Some(String::new())), "tcg,thread=multi");
        assert_eq!(
            accel(false, Some("tcg,thread=single".into())),
            "tcg,thread=single"
        );
    }

    #[test]
    fn qemu_gets_the_balloon_and_qmp() {
        let cfg = VmConfig {
            iso: Path::new("/w/boot.iso"),
            mem_mib: 2048,
            ram_less_kib: 0,
            cpus: 2,
            log: Path::new("/w/console.log"),
            kvm: false,
            balloon: BALLOON_DEFAULT,
            extra: &[],
            machine: Machine::Amd64,
            firmware: Path::new(ARM64_FIRMWARE),
        };
        let a = qemu_args(&cfg, Path::new("/w/qmp.sock"));
        let after = |k: &str| a[a.iter().position(|x| x == k).unwrap() + 1].clone();
        assert_eq!(after("-accel"), "tcg,thread=multi");
        assert_eq!(
            after("-device"),
            "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on"
        );
        assert_eq!(after("-m"), "2048");
        assert_eq!(after("-smp"), "2");
        assert_eq!(after("-qmp"), "unix:/w/qmp.sock,server=on,wait=off");
        assert_eq!(after("-cdrom"), "/w/boot.iso");
        assert!(after("-name").contains("debug-threads=on"));
        assert!(!a.contains(&"-bios".to_string()));
        let kvm = VmConfig { kvm: true, ..cfg };
        let a = qemu_args(&kvm, Path::new("/w/q"));
        assert!(a.contains(&"kvm".to_string()));
        let extra = ["-object".to_string(), "iothread,id=io0".to_string()];
        let hint = VmConfig {
            extra: &extra,
            ..cfg
        };
        let a = qemu_args(&hint, Path::new("/w/q"));
        let obj = a.iter().position(|x| x == "-object").unwrap();
        assert_eq!(a[obj + 1], "iothread,id=io0");
        assert!(obj < a.iter().position(|x| x == "-device").unwrap());
    }

    #[test]
    fn arm64_guests_boot_uefi_on_virt_with_the_balloon_on_either_transport() {
        let cfg = |transport| VmConfig {
            iso: Path::new("/w/boot.iso"),
            mem_mib: 2048,
            ram_less_kib: 0,
            cpus: 2,
            log: Path::new("/w/console.log"),
            kvm: false,
            balloon: BALLOON_DEFAULT,
            extra: &[],
            machine: Machine::Arm64(transport),
            firmware: Path::new(ARM64_FIRMWARE),
        };
        let pci = cfg(Transport::Pci);
        assert_eq!(pci.machine.qemu(), "qemu-system-aarch64");
        let a = qemu_args(&pci, Path::new("/w/qmp.sock"));
        let after = |a: &[String], k: &str| a[a.iter().position(|x| x == k).unwrap() + 1].clone();
        assert_eq!(after(&a, "-M"), "virt");
        assert_eq!(after(&a, "-cpu"), "cortex-a57");
        assert_eq!(after(&a, "-bios"), ARM64_FIRMWARE);
        assert!(!a.contains(&"-cdrom".to_string()), "virt has no IDE");
        let devices: Vec<&String> = a
            .iter()
            .zip(a.iter().skip(1))
            .filter(|(k, _)| *k == "-device")
            .map(|(_, v)| v)
            .collect();
        assert!(devices.contains(
            &&"virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on".to_string()
        ));
        assert!(devices.contains(&&"scsi-cd,drive=cd0,bus=scsi0.0".to_string()));
        assert!(a.iter().any(|x| x.contains("file=/w/boot.iso,media=cdrom")));
        let mmio = qemu_args(&cfg(Transport::Mmio), Path::new("/w/qmp.sock"));
        assert!(mmio
            .iter()
            .any(|x| x.starts_with("virtio-balloon-device,id=balloon0,")));
        assert!(!mmio.iter().any(|x| x.starts_with("virtio-balloon-pci")));
    }
}
