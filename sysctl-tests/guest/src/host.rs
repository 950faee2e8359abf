//! The host protocol, guest side: sends a request, waits for its reply
//! (the format and the rules are in [`crate::proto`]).

use crate::out::{in_fd, Line};
use crate::proto::{parse_reply, request, Reply, REQUEST_MAX};
use crate::sys;

/// Sends of one request before giving up.
pub const TRIES: u32 = 3;

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
            let mut buf = [0u8; REQUEST_MAX];
            Line::new().b(request(self.seq, cmd, arg, &mut buf)).end();
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
