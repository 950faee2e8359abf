//! The QEMU process: serial console through pipes, QMP socket, and the
//! host-side figures (RSS, CPU time) read from /proc.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::thread;

pub struct Vm {
    pub child: Child,
    pub stdin: ChildStdin,
    pub lines: Receiver<String>,
    pub qmp_path: PathBuf,
}

pub struct VmConfig<'a> {
    pub iso: &'a Path,
    pub mem_mib: u64,
    pub log: &'a Path,
    pub kvm: bool,
}

impl Vm {
    pub fn start(cfg: &VmConfig<'_>, work: &Path) -> Result<Vm, String> {
        let qmp_path = work.join("qmp.sock");
        let _ = fs::remove_file(&qmp_path);
        let accel = if cfg.kvm { "kvm" } else { "tcg,thread=multi" };
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel", accel, "-smp", "2", "-display", "none", "-monitor", "none", "-serial",
                "stdio",
            ])
            .args(["-m", &cfg.mem_mib.to_string(), "-no-reboot"])
            .arg("-cdrom")
            .arg(cfg.iso)
            .args([
                "-device",
                "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut log = fs::File::create(cfg.log).map_err(|e| e.to_string())?;
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                let _ = writeln!(log, "{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Vm {
            child,
            stdin,
            lines,
            qmp_path,
        })
    }

    /// Sends one reply line to the guest's console.
    pub fn reply(&mut self, line: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{line}\r").as_bytes())
            .map_err(|e| e.to_string())?;
        self.stdin.flush().map_err(|e| e.to_string())
    }

    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:") * 1024
    }

    /// QEMU's user+system CPU time in milliseconds (all vCPU threads).
    pub fn cpu_ms(&self) -> u64 {
        cpu_ms(self.child.id())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    parse_status_kib(&s, key)
}

/// The kB value of `key` in a /proc/<pid>/status text.
pub fn parse_status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ms(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    parse_stat_cpu_ticks(&s) * 10
}

/// utime + stime (clock ticks, 100 Hz on Linux) from /proc/<pid>/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> u64 {
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is index 0; utime 11, stime 12.
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
    }
}
