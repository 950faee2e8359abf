//! Reading and writing sysctl nodes: ours under dev.vtballoonrs.0 by leaf
//! name, any other by full name; descriptions, polls with a deadline.

use crate::sys;

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;
pub const PAGES_PER_MIB: u64 = MIB / PAGE;
pub const NODE: &[u8] = b"dev.vtballoonrs.0.";

/// Name buffer: `prefix` + `leaf` without NUL (sysctlbyname takes a length).
pub struct Name {
    buf: [u8; 96],
    len: usize,
}

impl Name {
    pub fn new(prefix: &[u8], leaf: &str) -> Name {
        let mut n = Name {
            buf: [0; 96],
            len: 0,
        };
        for &b in prefix.iter().chain(leaf.as_bytes()) {
            if n.len < n.buf.len() {
                n.buf[n.len] = b;
                n.len += 1;
            }
        }
        n
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub fn node(leaf: &str) -> Name {
    Name::new(NODE, leaf)
}

/// Reads an integer sysctl of 4 or 8 bytes.
pub fn get_u64(name: &[u8]) -> Option<u64> {
    let mut b = [0u8; 8];
    let n = sys::sysctlbyname(name, Some(&mut b), None).ok()?;
    match n {
        4 => Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        8 => Some(u64::from_le_bytes(b)),
        _ => None,
    }
}

pub fn get(leaf: &str) -> Option<u64> {
    get_u64(node(leaf).bytes())
}

pub fn set_int(name: &[u8], v: i32) -> Result<usize, i64> {
    sys::sysctlbyname(name, None, Some(&v.to_le_bytes()))
}

pub fn set(leaf: &str, v: i32) -> bool {
    set_int(node(leaf).bytes(), v).is_ok()
}

pub fn get_str<'a>(name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let n = sys::sysctlbyname(name, Some(buf), None).ok()?;
    let s = &buf[..n];
    Some(s.split(|&b| b == 0).next().unwrap_or(s))
}

pub fn exists(name: &[u8]) -> bool {
    let mut b = [0u8; 128];
    get_str(name, &mut b).is_some()
}

/// The MIB of a sysctl node (sysctl.name2oid, {0,3}) in `mib[skip..]`;
/// returns its length.
pub fn name2oid(name: &[u8], mib: &mut [i32; 26], skip: usize) -> Option<usize> {
    let mut oid = [0u8; 24 * 4];
    let n = sys::sysctl(&[0, 3], &mut oid, Some(name)).ok()?;
    let len = (n / 4).min(24);
    for i in 0..len {
        let w = [oid[4 * i], oid[4 * i + 1], oid[4 * i + 2], oid[4 * i + 3]];
        mib[skip + i] = i32::from_le_bytes(w);
    }
    Some(len)
}

/// The description of a sysctl node: sysctl.name2oid ({0,3}), then
/// sysctl.oiddescr ({0,5,<oid>}), as sysctl(8) -d does.
pub fn description(name: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut mib = [0i32; 26];
    let len = name2oid(name, &mut mib, 2)?;
    mib[1] = 5;
    let d = sys::sysctl(&mib[..2 + len], buf, None).ok()?;
    Some(d.saturating_sub(1))
}

pub fn page_size() -> u64 {
    get_u64(b"hw.pagesize").unwrap_or(PAGE)
}

pub fn free_bytes() -> u64 {
    get_u64(b"vm.stats.vm.v_free_count").unwrap_or(0) * page_size()
}

pub fn mib_of(bytes: u64) -> u64 {
    bytes / MIB
}

/// Polls `leaf` every 100 ms until `pred` holds or `secs` pass; the last
/// value read either way.
pub fn wait_for(leaf: &str, secs: u64, pred: impl Fn(u64) -> bool) -> Result<u64, Option<u64>> {
    let deadline = sys::now_ms() + secs * 1000;
    let mut last = None;
    loop {
        last = get(leaf).or(last);
        if let Some(v) = last {
            if pred(v) {
                return Ok(v);
            }
        }
        if sys::now_ms() >= deadline {
            return Err(last);
        }
        sys::sleep_ms(100);
    }
}

pub fn wait_exists(name: &[u8], secs: u64) -> bool {
    let deadline = sys::now_ms() + secs * 1000;
    while !exists(name) {
        if sys::now_ms() >= deadline {
            return false;
        }
        sys::sleep_ms(100);
    }
    true
}
