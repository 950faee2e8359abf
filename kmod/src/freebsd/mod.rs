//! The FreeBSD kernel glue: the only code that touches FFI. Each file wraps
//! one kind of kernel facility in a small safe abstraction; `driver.rs` wires
//! the logic (balloon, stats, reporting) to them.

mod device;
mod driver;
mod kern;
mod kick;
mod memory;
mod panic;
mod sync;
mod sysctl;

use vtballoon_bindings as sys;
