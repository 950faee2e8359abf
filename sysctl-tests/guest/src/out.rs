//! Console lines without allocation or core::fmt. Each line leaves in one
//! write(2) and the terminal is drained after it, so kernel messages (which
//! bypass the tty queue) do not land in the middle of our lines.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// Descriptors of the console: stdout/stdin for a normal program.
static OUT_FD: AtomicU64 = AtomicU64::new(1);
static IN_FD: AtomicU64 = AtomicU64::new(0);

pub fn out_fd() -> u64 {
    OUT_FD.load(Ordering::Relaxed)
}

pub fn in_fd() -> u64 {
    IN_FD.load(Ordering::Relaxed)
}

/// As init there are no open descriptors: open the console (the kernel
/// mounts devfs on /dev before it starts init).
pub fn open_console() {
    if let Ok(fd) = sys::open(b"/dev/console\0", sys::O_RDWR) {
        OUT_FD.store(fd, Ordering::Relaxed);
        IN_FD.store(fd, Ordering::Relaxed);
    }
}

/// One console line, built in place and written at once by [`Line::end`].
pub struct Line {
    buf: [u8; 240],
    len: usize,
}

impl Line {
    pub fn new() -> Line {
        Line {
            buf: [0; 240],
            len: 0,
        }
    }

    pub fn b(&mut self, s: &[u8]) -> &mut Self {
        for &c in s {
            // Keep the protocol line-based whatever we print.
            let c = if c == b'\n' || c == b'\r' { b' ' } else { c };
            if self.len < self.buf.len() {
                self.buf[self.len] = c;
                self.len += 1;
            }
        }
        self
    }

    pub fn s(&mut self, s: &str) -> &mut Self {
        self.b(s.as_bytes())
    }

    pub fn u(&mut self, v: u64) -> &mut Self {
        let mut d = [0u8; 20];
        self.b(crate::proto::decimal(v, &mut d))
    }

    /// `0x` and lower-case hex digits.
    pub fn x(&mut self, v: u32) -> &mut Self {
        let mut d = [0u8; 10];
        d[0] = b'0';
        d[1] = b'x';
        let mut n = 2;
        let digits = (32 - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            d[n] = b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize];
            n += 1;
        }
        self.b(&d[..n])
    }

    pub fn end(&mut self) {
        self.len = self.len.min(self.buf.len() - 1);
        self.buf[self.len] = b'\n';
        let _ = sys::write(out_fd(), &self.buf[..=self.len]);
        sys::drain(out_fd());
        self.len = 0;
    }
}

/// A `# ...` comment line (TAP style: the harness shows it, counts nothing).
pub fn note(s: &str) {
    Line::new().s("# ").s(s).end();
}
