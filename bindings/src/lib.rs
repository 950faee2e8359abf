//! FreeBSD kernel bindings for vtballoonrs, generated at build time by
//! bindgen from the headers at `SYSDIR` (never committed), plus the C shim's
//! functions. Empty unless built for the kernel target with headers present,
//! so host builds of the workspace need no FreeBSD sources.
#![no_std]
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
// The crate is bindgen output only (its bitfield helpers hold unsafe blocks
// without SAFETY comments); the workspace-wide lint does not apply to it.
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]

#[cfg(vtb_have_sysdir)]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
