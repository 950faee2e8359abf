//! The driver's sysctl nodes, as the basic boot checks them (see
//! [`crate::basic::phase_nodes`]): the driver's own node table
//! (kmod/src/nodes.rs), included as it is, so the list is kept in one place.

#[allow(dead_code)]
#[path = "../../../kmod/src/nodes.rs"]
mod table;

use table::{Kind, Node, NODES};

fn leaf(n: &'static Node) -> &'static str {
    n.name.to_str().unwrap_or("?")
}

/// Nodes that refuse writes.
pub fn ro_nodes() -> impl Iterator<Item = &'static str> {
    NODES.iter().filter(|n| !n.writable()).map(leaf)
}

/// Settings (read-write, loader tunables).
pub fn rw_nodes() -> impl Iterator<Item = &'static str> {
    NODES.iter().filter(|n| n.writable()).map(leaf)
}

/// Each setting with values it must refuse (EINVAL, nothing changed).
pub fn bad_values() -> impl Iterator<Item = (&'static str, impl Iterator<Item = i32>)> {
    NODES.iter().filter_map(|n| match n.kind {
        Kind::Setting(a) => Some((leaf(n), a.refused().map(|v| v as i32))),
        _ => None,
    })
}
