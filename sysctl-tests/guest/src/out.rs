//! Console output without allocation or core::fmt.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// File descriptor of the console (stdout when not init).
pub struct Console(AtomicU64);

impl Console {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub static CONSOLE: Console = Console(AtomicU64::new(1));

/// As init there are no open descriptors: open the console (devfs is
/// mounted on /dev by the kernel).
pub fn open_console() {
    const O_RDWR: u64 = 2;
    if sys::getpid() == 1 {
        if let Ok(fd) = sys::open(b"/dev/console\0", O_RDWR) {
            CONSOLE.0.store(fd, Ordering::Relaxed);
        }
    }
}

/// Builder writing pieces of one line straight to the console.
pub struct Out;

impl Out {
    pub fn new() -> Out {
        Out
    }
    pub fn s(&self, s: &str) -> &Self {
        sys::write(CONSOLE.get(), s.as_bytes());
        self
    }
    pub fn u(&self, mut v: u64) -> &Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        sys::write(CONSOLE.get(), &buf[i..]);
        self
    }
    pub fn nl(&self) {
        sys::write(CONSOLE.get(), b"\n");
    }
}
