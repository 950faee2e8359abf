//! The host protocol, guest side. Some checks need the host to act (change
//! the balloon target, read QEMU's view over QMP). Over the serial console:
//!
//! ```text
//! guest -> host   HOST: <seq> <command> <arg>      (one line, decimal seq/arg)
//! host -> guest   <seq> OK <value>                 (one line on the console's input)
//!                 <seq> FAIL <reason>
//! ```
//!
//! `seq` counts requests from 1. The guest waits for the reply with its
//! `seq` (ignoring anything else) for the command's timeout, then sends the
//! same request again, at most [`TRIES`] times in all; the host carries a
//! request out once and answers a repeated `seq` from its record. Then the
//! guest polls sysctl for the effect, itself bounded. Without a host
//! (`--no-host`) every request answers [`Reply::NoHost`] and the checks that
//! need one are skipped, never passed.
//!
//! Commands (arg in 4 KiB pages unless said): `set-target P` (balloon target
//! to P pages), `rapid P` (a burst of targets ending at P), `host-actual 0`
//! (the balloon size QEMU reports, in pages, once steady), `wait-actual P`
//! (the host waits until QEMU reports P pages), `stats-poll S` (enable
//! guest-stats polling every S s and wait for a fresh sample), `stats-get T`
//! (the sampled value of virtio stat tag T, in KiB), `rss-mark 0`,
//! `rss-drop MIB` (QEMU's RSS fell by 90% of MIB since the mark; replies the
//! drop in MiB), `bench-driver D` (0 ours, 1 in-tree), `bench-inflate MIB`,
//! `bench-deflate MIB` (the host times the operation).

use crate::out::{in_fd, Line};
use crate::sys;

/// Sends of one request before giving up.
pub const TRIES: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Ok(u64),
    Fail,
    /// No answer after every try.
    Lost,
    NoHost,
}

pub struct Host {
    pub on: bool,
    seq: u64,
    buf: [u8; 256],
    len: usize,
}

impl Host {
    pub const fn new(on: bool) -> Host {
        Host {
            on,
            seq: 0,
            buf: [0; 256],
            len: 0,
        }
    }

    /// Asks the host to act; waits up to `secs` per try for its reply.
    pub fn ask(&mut self, cmd: &str, arg: u64, secs: u64) -> Reply {
        if !self.on {
            return Reply::NoHost;
        }
        self.seq += 1;
        for _ in 0..TRIES {
            Line::new()
                .s("HOST: ")
                .u(self.seq)
                .s(" ")
                .s(cmd)
                .s(" ")
                .u(arg)
                .end();
            let deadline = sys::now_ms() + secs * 1000;
            loop {
                let now = sys::now_ms();
                if now >= deadline {
                    break;
                }
                if !sys::poll_in(in_fd(), (deadline - now).min(1000)) {
                    continue;
                }
                if let Some(r) = self.take_reply() {
                    return r;
                }
            }
        }
        Reply::Lost
    }

    /// Reads what is available and returns the reply to the current request
    /// if a complete line carries it.
    fn take_reply(&mut self) -> Option<Reply> {
        let mut chunk = [0u8; 128];
        let n = match sys::read(in_fd(), &mut chunk) {
            Ok(n) if n > 0 => n as usize,
            // EOF or error: nothing more will come from this descriptor.
            _ => {
                sys::sleep_ms(100);
                return None;
            }
        };
        let mut found = None;
        for &c in &chunk[..n] {
            if c == b'\n' || c == b'\r' {
                if found.is_none() {
                    found = parse_reply(&self.buf[..self.len], self.seq);
                }
                self.len = 0;
            } else if self.len < self.buf.len() {
                self.buf[self.len] = c;
                self.len += 1;
            }
        }
        found
    }
}

/// `<seq> OK <value>` or `<seq> FAIL ...` for request `seq`; None otherwise.
pub fn parse_reply(line: &[u8], seq: u64) -> Option<Reply> {
    let mut words = line
        .split(|&c| c == b' ' || c == b'\t')
        .filter(|w| !w.is_empty());
    if parse_u64(words.next()?)? != seq {
        return None;
    }
    match words.next()? {
        b"OK" => Some(Reply::Ok(words.next().and_then(parse_u64).unwrap_or(0))),
        b"FAIL" => Some(Reply::Fail),
        _ => None,
    }
}

pub fn parse_u64(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &b in w {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Some(v)
}
