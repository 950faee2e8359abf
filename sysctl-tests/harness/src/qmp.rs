//! A minimal QMP client over QEMU's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying while QEMU starts) and enters command mode.
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("QMP connect: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        q.read_line()?; // greeting
        q.execute(r#"{"execute":"qmp_capabilities"}"#)?;
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

    /// Sends a command and returns its reply, skipping asynchronous events.
    pub fn execute(&mut self, cmd: &str) -> Result<String, String> {
        self.writer
            .write_all(cmd.as_bytes())
            .map_err(|e| e.to_string())?;
        self.writer.write_all(b"\n").map_err(|e| e.to_string())?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"event\"") {
                continue;
            }
            if crate::json::is_error(&line) {
                return Err(format!("QMP error for {cmd}: {line}"));
            }
            return Ok(line);
        }
    }

    /// Sets the guest's memory size as the balloon sees it (bytes).
    pub fn balloon(&mut self, bytes: u64) -> Result<(), String> {
        self.execute(&format!(
            r#"{{"execute":"balloon","arguments":{{"value":{bytes}}}}}"#
        ))
        .map(|_| ())
    }

    /// The guest memory size the host sees now (RAM minus the balloon).
    pub fn actual(&mut self) -> Result<u64, String> {
        let r = self.execute(r#"{"execute":"query-balloon"}"#)?;
        crate::json::u64_field(&r, "actual").ok_or_else(|| format!("no actual in {r}"))
    }

    pub fn stats_polling(&mut self, secs: u32) -> Result<(), String> {
        self.execute(&format!(
            r#"{{"execute":"qom-set","arguments":{{"path":"/machine/peripheral/balloon0","property":"guest-stats-polling-interval","value":{secs}}}}}"#
        ))
        .map(|_| ())
    }

    pub fn guest_stats(&mut self) -> Result<String, String> {
        self.execute(
            r#"{"execute":"qom-get","arguments":{"path":"/machine/peripheral/balloon0","property":"guest-stats"}}"#,
        )
    }
}
