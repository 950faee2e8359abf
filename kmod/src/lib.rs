//! vtballoon: a virtio memory balloon driver for FreeBSD.
//!
//! The crate is `no_std`: the same logic runs in the kernel (feature
//! `kernel`, which adds the FreeBSD glue) and in host tests, where it is
//! driven against a simulated device and guest memory.
//!
//! Only the glue may use `unsafe`: every logic module (everything outside
//! `freebsd`) is safe Rust, and the compiler holds it to that.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]

pub mod avail;
pub mod balloon;
pub mod counters;
pub mod events;
pub mod hinting;
pub mod nodes;
pub mod platform;
pub mod pressure;
pub mod protocol;
pub mod reporting;
pub mod runlist;
pub mod sleep;
pub mod stats;

#[cfg(feature = "kernel")]
#[allow(unsafe_code)]
pub mod freebsd;
