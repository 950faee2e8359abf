//! libvirt as the host: the harness runs its own `libvirtd` for one boot,
//! defines a transient domain from XML (TCG, `<domain type='qemu'>`) with
//! the balloon as an administrator writes it, and moves the balloon and
//! reads its statistics with `virsh setmem` and `virsh dommemstat`.
//!
//! No system service is assumed and nothing of the system is changed: the
//! daemon runs as root in a private mount namespace (`unshare -m`) in which
//! `/etc/libvirt`, `/run` and `/var` are overlays whose upper layers are in
//! the boot's work directory, so its state, logs, QEMU pid files and the
//! `qemu.conf` the harness writes all land there; its sockets are in the
//! work directory too, and `virsh -c qemu:///system?socket=...` reaches it
//! from outside the namespace. Inside the namespace `/etc/passwd` and
//! `/etc/group` gain a `libvirt-qemu` entry when the system has none (the
//! QEMU driver resolves that default user before reading `qemu.conf`, whose
//! `user = "root"` then applies). Only the QEMU driver is loaded
//! (`LIBVIRT_DRIVER_DIR`). The daemon is stopped when the boot ends.
//!
//! What cannot be had (libvirt not installed, no mount namespace, the
//! daemon not starting) is returned as the reason, and the boot is reported
//! as `skipped: <reason>`, never as passed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian (and other distributions) keep the QEMU driver module.
const DRIVER_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver",
    "/usr/lib64/libvirt/connection-driver",
    "/usr/lib/libvirt/connection-driver",
];
const QEMU_DRIVER: &str = "libvirt_driver_qemu.so";

/// Longest unix socket path (sun_path less its NUL).
const SUN_PATH_MAX: usize = 107;

/// A program on PATH (or in /usr/sbin and /sbin, where libvirtd lives).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qemu_driver() -> Option<PathBuf> {
    DRIVER_DIRS
        .iter()
        .map(|d| Path::new(d).join(QEMU_DRIVER))
        .find(|p| p.is_file())
}

/// Why libvirt cannot be used here, if it cannot.
pub fn missing() -> Option<String> {
    let mut gone = vec![];
    for (prog, pkg) in [
        ("libvirtd", "libvirt-daemon"),
        ("virsh", "libvirt-clients"),
        ("unshare", "util-linux"),
    ] {
        if find_program(prog).is_none() {
            gone.push(format!("{prog} ({pkg})"));
        }
    }
    if qemu_driver().is_none() {
        gone.push(format!("{QEMU_DRIVER} (libvirt-daemon-driver-qemu)"));
    }
    (!gone.is_empty()).then(|| {
        format!(
            "libvirt is not installed: no {} (sh tools/install-deps.sh)",
            gone.join(", ")
        )
    })
}

/// The daemon's configuration: sockets in the work directory, no
/// authentication on them (root only, mode 0700), a log file there.
pub fn libvirtd_conf(dir: &Path) -> String {
    format!(
        "# Written by vmharness for one boot.\n\
         unix_sock_dir = \"{sock}\"\n\
         unix_sock_ro_perms = \"0700\"\n\
         unix_sock_rw_perms = \"0700\"\n\
         unix_sock_admin_perms = \"0700\"\n\
         auth_unix_ro = \"none\"\n\
         auth_unix_rw = \"none\"\n\
         host_uuid = \"5f1b0b7e-7d3a-4c59-9a6e-2f4a3c1d9e01\"\n\
         log_outputs = \"2:file:{log}\"\n",
        sock = dir.join("sock").display(),
        log = dir.join("libvirtd.log").display(),
    )
}

/// The QEMU driver's configuration: QEMU runs as root, without cgroups,
/// per-domain namespaces, a security driver or virtlogd (no system service
/// is there to help).
pub const QEMU_CONF: &str = "# Written by vmharness for one boot.\n\
user = \"root\"\n\
group = \"root\"\n\
dynamic_ownership = 0\n\
remember_owner = 0\n\
security_driver = \"none\"\n\
cgroup_controllers = [ ]\n\
namespaces = [ ]\n\
stdio_handler = \"file\"\n";

/// The script run inside the private mount namespace: the overlays, the
/// user entries, the configuration, then the daemon.
pub fn start_script(dir: &Path, libvirtd: &Path) -> String {
    let d = dir.display();
    let mut s = String::from("#!/bin/sh\n# Runs in a private mount namespace (unshare -m): nothing here is seen outside.\nset -eu\n");
    for (lower, name) in [("/etc/libvirt", "etc"), ("/run", "run"), ("/var", "var")] {
        s += &format!(
            "mkdir -p {d}/ov/{name}/up {d}/ov/{name}/work\nmount -t overlay overlay -o lowerdir={lower},upperdir={d}/ov/{name}/up,workdir={d}/ov/{name}/work {lower}\n"
        );
    }
    for f in ["passwd", "group"] {
        s += &format!("if [ -f {d}/{f} ]; then mount --bind {d}/{f} /etc/{f}; fi\n");
    }
    s += &format!(
        "cp {d}/qemu.conf /etc/libvirt/qemu.conf\nexec {} -f {d}/libvirtd.conf -p {d}/libvirtd.pid\n",
        libvirtd.display()
    );
    s
}

/// `text` with a `libvirt-qemu` entry added when it has none (`nobody`'s
/// ids: only the name must resolve).
pub fn with_qemu_user(text: &str, entry: &str) -> Option<String> {
    if text.lines().any(|l| l.starts_with("libvirt-qemu:")) {
        return None;
    }
    let mut t = text.to_string();
    if !t.is_empty() && !t.ends_with('\n') {
        t.push('\n');
    }
    t.push_str(entry);
    t.push('\n');
    Some(t)
}

/// What the domain is made of.
pub struct Domain<'a> {
    pub name: &'a str,
    pub iso: &'a Path,
    pub mem_mib: u64,
    pub cpus: u32,
    /// The serial console: a unix socket the harness listens on.
    pub console: &'a Path,
}

/// The domain's XML: TCG, BIOS boot from the CD, the serial console on the
/// harness's socket, and the balloon as an administrator writes it.
pub fn domain_xml(d: &Domain<'_>) -> String {
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <currentMemory unit='MiB'>{mem}</currentMemory>
  <vcpu>{cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='cdrom'/>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <serial type='unix'>
      <source mode='connect' path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio' autodeflate='on' freePageReporting='on'>
      <stats period='2'/>
    </memballoon>
  </devices>
</domain>
"#,
        name = d.name,
        mem = d.mem_mib,
        cpus = d.cpus,
        iso = d.iso.display(),
        console = d.console.display(),
    )
}

/// `virsh dommemstat` output: one `name value` pair a line.
pub fn parse_dommemstat(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, value) = (w.next()?, w.next()?.parse().ok()?);
            w.next().is_none().then(|| (name.to_string(), value))
        })
        .collect()
}

/// The value of `name` in parsed `dommemstat` output.
pub fn stat(stats: &[(String, u64)], name: &str) -> Option<u64> {
    stats.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
}

/// `virsh domstate --reason`: a state the guest will not leave by itself.
pub fn is_stopped(state: &str) -> bool {
    let s = state.trim();
    s.starts_with("shut off")
        || s.starts_with("crashed")
        || ["(crashed)", "(panicked)", "(I/O error)", "(api error)"]
            .iter()
            .any(|r| s.ends_with(r))
}

/// The harness's own libvirtd and the domain it runs.
pub struct Libvirt {
    daemon: Option<Child>,
    pub dir: PathBuf,
    pub uri: String,
    pub domain: String,
}

impl Libvirt {
    /// Starts libvirtd with its state under `dir` (emptied first). The
    /// error is the reason the boot is skipped.
    pub fn start(dir: &Path, domain: &str) -> Result<Libvirt, String> {
        if let Some(why) = missing() {
            return Err(why);
        }
        let libvirtd = find_program("libvirtd").ok_or("no libvirtd")?;
        let unshare = find_program("unshare").ok_or("no unshare")?;
        let driver = qemu_driver().ok_or("no QEMU driver")?;
        if dir.exists() {
            stop_stale(dir, domain);
            fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let e = |what: &str| {
            let what = what.to_string();
            move |err: std::io::Error| format!("{what}: {err}")
        };
        fs::create_dir_all(dir.join("sock")).map_err(e("mkdir"))?;
        let sock = dir.join("sock/libvirt-sock");
        if sock.as_os_str().len() > SUN_PATH_MAX {
            return Err(format!(
                "the work directory's path is too long for a unix socket ({})",
                sock.display()
            ));
        }
        fs::create_dir_all(dir.join("drivers")).map_err(e("mkdir"))?;
        std::os::unix::fs::symlink(&driver, dir.join("drivers").join(QEMU_DRIVER))
            .map_err(e("driver link"))?;
        fs::write(dir.join("libvirtd.conf"), libvirtd_conf(dir)).map_err(e("libvirtd.conf"))?;
        fs::write(dir.join("qemu.conf"), QEMU_CONF).map_err(e("qemu.conf"))?;
        for (f, entry) in [
            (
                "passwd",
                "libvirt-qemu:x:65534:65534:libvirt QEMU (vmharness):/nonexistent:/usr/sbin/nologin",
            ),
            ("group", "libvirt-qemu:x:65534:"),
        ] {
            let system = fs::read_to_string(Path::new("/etc").join(f)).unwrap_or_default();
            if let Some(t) = with_qemu_user(&system, entry) {
                fs::write(dir.join(f), t).map_err(e(f))?;
            }
        }
        let script = dir.join("start.sh");
        fs::write(&script, start_script(dir, &libvirtd)).map_err(e("start.sh"))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(e("chmod"))?;
        let log = fs::File::create(dir.join("libvirtd.out")).map_err(e("libvirtd.out"))?;
        let daemon = Command::new(unshare)
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(&script)
            .env("LIBVIRT_DRIVER_DIR", dir.join("drivers"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(e("log"))?)
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot start libvirtd: {err}"))?;
        let mut lv = Libvirt {
            daemon: Some(daemon),
            dir: dir.to_path_buf(),
            uri: format!("qemu:///system?socket={}", sock.display()),
            domain: domain.to_string(),
        };
        // Up when virsh reaches the QEMU driver through the socket.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = lv.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    lv.daemon = None;
                    return Err(format!(
                        "libvirtd did not start ({status}): {}",
                        last_line(&dir.join("libvirtd.out"))
                    ));
                }
            }
            if sock.exists() {
                if let Ok(v) = lv.virsh(&["version"]) {
                    if v.contains("Running hypervisor: QEMU") {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "libvirtd did not answer in 60 s: {}",
                    last_line(&dir.join("libvirtd.log"))
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(lv)
    }

    /// Runs `virsh -c <uri> ARGS`; its standard output, or why it failed.
    pub fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("virsh: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts the transient domain defined by `xml`.
    pub fn create(&self, xml: &Path) -> Result<(), String> {
        self.virsh(&["create", &xml.display().to_string()])
            .map(|_| ())
    }

    /// `virsh setmem DOMAIN KIB --live`: the guest's memory as the balloon
    /// leaves it.
    pub fn setmem_kib(&self, kib: u64) -> Result<(), String> {
        self.virsh(&["setmem", &self.domain, &kib.to_string(), "--live"])
            .map(|_| ())
    }

    /// `virsh dommemstat DOMAIN`.
    pub fn dommemstat(&self) -> Result<Vec<(String, u64)>, String> {
        let s = parse_dommemstat(&self.virsh(&["dommemstat", &self.domain])?);
        if s.is_empty() {
            return Err("virsh dommemstat printed nothing".into());
        }
        Ok(s)
    }

    /// `virsh dommemstat DOMAIN --period SECS --live`.
    pub fn set_period(&self, secs: u64) -> Result<(), String> {
        self.virsh(&[
            "dommemstat",
            &self.domain,
            "--period",
            &secs.to_string(),
            "--live",
        ])
        .map(|_| ())
    }

    /// `virsh domstate DOMAIN --reason`.
    pub fn domstate(&self) -> Result<String, String> {
        self.virsh(&["domstate", &self.domain, "--reason"])
            .map(|s| s.trim().to_string())
    }

    /// The QEMU process libvirt started for the domain.
    pub fn qemu_pid(&self) -> Option<u32> {
        let p = self
            .dir
            .join("ov/run/up/libvirt/qemu")
            .join(format!("{}.pid", self.domain));
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// The domain's QEMU log (its command line first).
    pub fn qemu_log(&self) -> String {
        let p = self
            .dir
            .join("ov/var/up/log/libvirt/qemu")
            .join(format!("{}.log", self.domain));
        fs::read_to_string(p).unwrap_or_default()
    }

    /// Destroys the domain (if it still runs) and stops the daemon.
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = self.virsh(&["destroy", &self.domain]);
        // SIGTERM, so libvirtd shuts down in order; SIGKILL if it lingers.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child, which has not been waited
            // for, so the pid still names it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A daemon an earlier run left behind in `dir` (the harness was killed):
/// its domain destroyed, itself stopped, if its command line names this
/// directory's configuration.
fn stop_stale(dir: &Path, domain: &str) {
    let Some(pid) = fs::read_to_string(dir.join("libvirtd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let conf = dir.join("libvirtd.conf").display().to_string();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&conf) {
        return;
    }
    let uri = format!(
        "qemu:///system?socket={}",
        dir.join("sock/libvirt-sock").display()
    );
    let _ = Command::new("virsh")
        .args(["-q", "-c", &uri, "destroy", domain])
        .stdin(Stdio::null())
        .output();
    // SAFETY: kill(2) on the pid of a libvirtd whose command line names our
    // configuration (checked just above), an earlier run's daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_line(p: &Path) -> String {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_has_the_balloon_as_an_administrator_writes_it() {
        let x = domain_xml(&Domain {
            name: "vtbtest-libvirt",
            iso: Path::new("/w/boot.iso"),
            mem_mib: 2048,
            cpus: 2,
            console: Path::new("/w/console.sock"),
        });
        assert!(x.starts_with("<domain type='qemu'>"), "TCG");
        assert!(x.contains(
            "<memballoon model='virtio' autodeflate='on' freePageReporting='on'>\n      <stats period='2'/>\n    </memballoon>"
        ));
        assert!(x.contains("<memory unit='MiB'>2048</memory>"));
        assert!(x.contains("<currentMemory unit='MiB'>2048</currentMemory>"));
        assert!(x.contains("<source file='/w/boot.iso'/>"));
        assert!(x.contains(
            "<serial type='unix'>\n      <source mode='connect' path='/w/console.sock'/>"
        ));
        assert!(
            x.contains("<on_poweroff>destroy</on_poweroff>"),
            "power-off ends QEMU"
        );
        assert!(x.contains("<vcpu>2</vcpu>"));
    }

    #[test]
    fn reads_dommemstat() {
        let out = "actual 2097152\nswap_in 0\nswap_out 0\nmajor_fault 312\nminor_fault 98765\nunused 1843200\navailable 2040000\nusable 1900000\nlast_update 1764590000\nrss 412000\n\n";
        let s = parse_dommemstat(out);
        assert_eq!(stat(&s, "actual"), Some(2_097_152));
        assert_eq!(stat(&s, "major_fault"), Some(312));
        assert_eq!(stat(&s, "last_update"), Some(1_764_590_000));
        assert_eq!(stat(&s, "disk_caches"), None);
        assert_eq!(s.len(), 10);
        assert!(parse_dommemstat("error: x y z\nactual notanumber\n").is_empty());
    }

    #[test]
    fn tells_stopped_domain_states() {
        assert!(!is_stopped("running (booted)"));
        assert!(!is_stopped("paused (starting up)"));
        assert!(is_stopped("paused (crashed)"));
        assert!(is_stopped("shut off (destroyed)"));
        assert!(is_stopped("crashed (panicked)"));
    }

    #[test]
    fn configuration_keeps_everything_in_the_work_directory() {
        let d = Path::new("/w/lv");
        let c = libvirtd_conf(d);
        assert!(c.contains("unix_sock_dir = \"/w/lv/sock\"\n"));
        assert!(c.contains("auth_unix_rw = \"none\"\n"));
        assert!(c.contains("log_outputs = \"2:file:/w/lv/libvirtd.log\"\n"));
        assert!(QEMU_CONF.contains("user = \"root\"\n"));
        assert!(
            QEMU_CONF.contains("stdio_handler = \"file\"\n"),
            "no virtlogd"
        );
        let s = start_script(d, Path::new("/usr/sbin/libvirtd"));
        for lower in ["/etc/libvirt", "/run", "/var"] {
            assert!(
                s.contains(&format!("-o lowerdir={lower},upperdir=/w/lv/ov/")),
                "{lower} is an overlay"
            );
        }
        assert!(
            s.ends_with("exec /usr/sbin/libvirtd -f /w/lv/libvirtd.conf -p /w/lv/libvirtd.pid\n")
        );
        let mounts = s.find("mount -t overlay").unwrap();
        assert!(
            s.find("cp /w/lv/qemu.conf").unwrap() > mounts,
            "into the overlay"
        );
    }

    #[test]
    fn adds_the_qemu_user_only_when_missing() {
        let e = "libvirt-qemu:x:65534:65534::/nonexistent:/usr/sbin/nologin";
        let t = with_qemu_user("root:x:0:0::/root:/bin/sh", e).unwrap();
        assert_eq!(t.lines().last(), Some(e));
        assert!(with_qemu_user(&t, e).is_none());
    }
}
