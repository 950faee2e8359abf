//! The FreeBSD kernel glue: the only code that touches FFI. Each file wraps
//! one kind of kernel facility in a small safe abstraction; `driver.rs` wires
//! the logic (balloon, stats, reporting) to them.

mod device;
mod driver;
mod kick;
mod memory;
mod panic;
mod sync;
mod sysctl;

use vtballoon_bindings as sys;

/// A NUL-terminated string literal as a C string.
macro_rules! cstr {
    ($s:literal) => {
        core::ffi::CStr::from_bytes_with_nul(concat!($s, "\0").as_bytes()).unwrap()
    };
}
pub(crate) use cstr;
