//! Panic handler: print the message, then panic(9). Never spins.

use core::fmt::Write;

use super::sys;

/// Formats into a fixed buffer, truncating, always NUL-terminated.
struct Message {
    buf: [u8; 256],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 1 >= self.buf.len() {
                break;
            }
            self.buf[self.len] = if b == 0 { b'?' } else { b };
            self.len += 1;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut m = Message {
        buf: [0; 256],
        len: 0,
    };
    let _ = write!(m, "{info}");
    // SAFETY: `m.buf` is NUL-terminated (len < buf.len() and the buffer was
    // zeroed); panic(9) does not return.
    unsafe { sys::panic(c"vtballoonrs: %s".as_ptr(), m.buf.as_ptr()) }
}
