//! A minimal QMP client over QEMU's unix socket: one command at a time,
//! asynchronous events set aside.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::json::{self, Value};

/// QOM path of the balloon device (`-device virtio-balloon-pci,id=balloon0`).
const BALLOON: &str = "/machine/peripheral/balloon0";

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received while waiting for replies (name, data).
    pub events: Vec<(String, Value)>,
}

/// What one line from QMP is.
#[derive(Debug, PartialEq)]
pub enum Message {
    Return(Value),
    Error(String),
    Event(String, Value),
    Greeting,
}

pub fn classify(line: &str) -> Result<Message, String> {
    let v = json::parse(line.trim())?;
    if let Some(r) = v.get("return") {
        return Ok(Message::Return(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
        return Ok(Message::Error(format!("{class}: {desc}")));
    }
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        return Ok(Message::Event(name.to_string(), data));
    }
    if v.get("QMP").is_some() {
        return Ok(Message::Greeting);
    }
    Err(format!("unexpected QMP message: {}", line.trim()))
}

/// The `execute` command text.
pub fn command(name: &str, args: Option<&str>) -> String {
    match args {
        Some(a) => format!(r#"{{"execute":{},"arguments":{a}}}"#, json::quote(name)),
        None => format!(r#"{{"execute":{}}}"#, json::quote(name)),
    }
}

impl Qmp {
    /// Connects (retrying while QEMU starts) and enters command mode.
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("QMP connect {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        match classify(&q.read_line()?)? {
            Message::Greeting => {}
            m => return Err(format!("QMP: expected the greeting, got {m:?}")),
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("QMP read: {e}"))?;
        if line.is_empty() {
            return Err("QMP closed".into());
        }
        Ok(line)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, name: &str, args: Option<&str>) -> Result<Value, String> {
        let cmd = command(name, args);
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        loop {
            match classify(&self.read_line()?)? {
                Message::Return(v) => return Ok(v),
                Message::Error(e) => return Err(format!("QMP {name}: {e}")),
                Message::Event(n, d) => self.events.push((n, d)),
                Message::Greeting => {}
            }
        }
    }

    /// Sets the guest's memory size as the balloon sees it (bytes).
    pub fn balloon(&mut self, bytes: u64) -> Result<(), String> {
        self.execute("balloon", Some(&format!(r#"{{"value":{bytes}}}"#)))
            .map(|_| ())
    }

    /// The guest memory size the host sees now (RAM minus the balloon).
    pub fn actual(&mut self) -> Result<u64, String> {
        let r = self.execute("query-balloon", None)?;
        r.get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("query-balloon: no actual in {r:?}"))
    }

    /// Unplugs device `id` (the guest is asked; with PCIe native hot-plug
    /// QEMU removes it once the guest powers the slot off).
    pub fn device_del(&mut self, id: &str) -> Result<(), String> {
        self.execute(
            "device_del",
            Some(&format!(r#"{{"id":{}}}"#, json::quote(id))),
        )
        .map(|_| ())
    }

    /// Plugs a device; `args` is the JSON object of `device_add`.
    pub fn device_add(&mut self, args: &str) -> Result<(), String> {
        self.execute("device_add", Some(args)).map(|_| ())
    }

    /// Waits up to `timeout` for event `name` whose data satisfies `pred`
    /// (events arrive between replies: an idle command collects them).
    pub fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.events.iter().position(|(n, d)| n == name && pred(d)) {
                return Ok(self.events.remove(i).1);
            }
            if start.elapsed() > timeout {
                return Err(format!("no {name} event in {} s", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(100));
            self.execute("query-status", None)?;
        }
    }

    /// QEMU's run state (`query-status`): "running", "paused",
    /// "internal-error", "guest-panicked", ...
    pub fn status(&mut self) -> Result<String, String> {
        let r = self.execute("query-status", None)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("query-status: no status in {r:?}"))
    }

    pub fn stats_polling(&mut self, secs: u32) -> Result<(), String> {
        self.execute(
            "qom-set",
            Some(&format!(
                r#"{{"path":"{BALLOON}","property":"guest-stats-polling-interval","value":{secs}}}"#
            )),
        )
        .map(|_| ())
    }

    pub fn guest_stats(&mut self) -> Result<GuestStats, String> {
        let v = self.execute(
            "qom-get",
            Some(&format!(
                r#"{{"path":"{BALLOON}","property":"guest-stats"}}"#
            )),
        )?;
        GuestStats::from(&v)
    }
}

/// The `device_add` arguments for a device given as on the command line:
/// `driver,key=value,...`. `on`/`off` become JSON booleans (QMP checks
/// types), digits numbers, anything else strings.
pub fn device_add_args(device: &str) -> String {
    let mut parts = device.split(',');
    let driver = parts.next().unwrap_or_default();
    let mut fields = vec![format!(r#""driver":{}"#, json::quote(driver))];
    for kv in parts.filter(|p| !p.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "on"));
        let v = match v {
            "on" | "true" => "true".to_string(),
            "off" | "false" => "false".to_string(),
            n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.to_string(),
            s => json::quote(s),
        };
        fields.push(format!("{}:{v}", json::quote(k)));
    }
    format!("{{{}}}", fields.join(","))
}

/// A run state from which the guest will not carry on by itself.
pub fn is_stopped(status: &str) -> bool {
    matches!(
        status,
        "internal-error" | "guest-panicked" | "io-error" | "shutdown"
    )
}

/// QEMU's `guest-stats`: the last update time and the values by virtio
/// tag (None where the guest sent nothing: QEMU keeps u64::MAX there).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GuestStats {
    pub last_update: u64,
    pub by_tag: [Option<u64>; 16],
}

/// QEMU's names of the stat tags, by tag number.
pub const STAT_NAMES: [&str; 16] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
    "stat-oom-kills",
    "stat-alloc-stalls",
    "stat-async-scans",
    "stat-direct-scans",
    "stat-async-reclaims",
    "stat-direct-reclaims",
];

impl GuestStats {
    pub fn from(v: &Value) -> Result<GuestStats, String> {
        let stats = v.get("stats").ok_or("guest-stats: no stats")?;
        let mut g = GuestStats {
            last_update: v.get("last-update").and_then(Value::as_u64).unwrap_or(0),
            by_tag: [None; 16],
        };
        for (tag, name) in STAT_NAMES.iter().enumerate() {
            g.by_tag[tag] = stats
                .get(name)
                .and_then(Value::as_u64)
                .filter(|&x| x != u64::MAX);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(r#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Ok(Message::Greeting)
        );
        assert_eq!(
            classify("{\"return\": {}}\r\n"),
            Ok(Message::Return(json::parse("{}").unwrap()))
        );
        assert_eq!(
            classify(
                r#"{"error": {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}}"#
            ),
            Ok(Message::Error(
                "DeviceNotActive: No balloon device has been activated".into()
            ))
        );
        match classify(
            r#"{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "BALLOON_CHANGE", "data": {"actual": 1024}}"#,
        ) {
            Ok(Message::Event(n, d)) => {
                assert_eq!(n, "BALLOON_CHANGE");
                assert_eq!(d.get("actual").and_then(Value::as_u64), Some(1024));
            }
            m => panic!("{m:?}"),
        }
        assert!(classify("{}").is_err());
        assert!(classify("not json").is_err());
    }

    #[test]
    fn device_add_takes_typed_properties() {
        let a = device_add_args(
            "virtio-balloon-pci,id=balloon0,bus=rp0,deflate-on-oom=on,disable-modern=off,x=12",
        );
        let v = json::parse(&a).unwrap();
        assert_eq!(
            v.get("driver").and_then(Value::as_str),
            Some("virtio-balloon-pci")
        );
        assert_eq!(v.get("id").and_then(Value::as_str), Some("balloon0"));
        assert_eq!(v.get("bus").and_then(Value::as_str), Some("rp0"));
        assert_eq!(v.get("deflate-on-oom"), Some(&Value::Bool(true)));
        assert_eq!(v.get("disable-modern"), Some(&Value::Bool(false)));
        assert_eq!(v.get("x").and_then(Value::as_u64), Some(12));
    }

    #[test]
    fn tells_stopped_states() {
        assert!(is_stopped("internal-error"));
        assert!(is_stopped("guest-panicked"));
        assert!(!is_stopped("running"));
        assert!(
            !is_stopped("QMP closed"),
            "a lost socket is the console's business"
        );
    }

    #[test]
    fn builds_commands() {
        assert_eq!(
            command("query-balloon", None),
            r#"{"execute":"query-balloon"}"#
        );
        let c = command("balloon", Some(r#"{"value":1}"#));
        assert_eq!(c, r#"{"execute":"balloon","arguments":{"value":1}}"#);
        let v = json::parse(&c).unwrap();
        assert_eq!(
            v.at(&["arguments", "value"]).and_then(Value::as_u64),
            Some(1)
        );
    }

    #[test]
    fn reads_guest_stats() {
        let v = json::parse(
            r#"{"stats": {"stat-swap-out": 0, "stat-available-memory": 1800000000, "stat-free-memory": 1900000000, "stat-total-memory": 2080000000, "stat-htlb-pgfail": 18446744073709551615}, "last-update": 1700000000}"#,
        )
        .unwrap();
        let g = GuestStats::from(&v).unwrap();
        assert_eq!(g.last_update, 1_700_000_000);
        assert_eq!(g.by_tag[4], Some(1_900_000_000));
        assert_eq!(g.by_tag[5], Some(2_080_000_000));
        assert_eq!(g.by_tag[6], Some(1_800_000_000));
        assert_eq!(g.by_tag[1], Some(0));
        assert_eq!(g.by_tag[9], None, "u64::MAX means not sent");
        assert_eq!(g.by_tag[0], None);
        assert!(GuestStats::from(&json::parse("{}").unwrap()).is_err());
    }
}
