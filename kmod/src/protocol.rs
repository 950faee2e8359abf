//! Wire facts of the virtio memory balloon (virtio 1.2 §5.5, plus the
//! STATS_PUSH proposal): feature bits, config space layout, stat tags and the
//! PFN encoding. Nothing here depends on the guest or on FreeBSD.

use bitflags::bitflags;

bitflags! {
    /// Device feature bits the driver knows about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Features: u64 {
        /// A deflated page may be reused only after the host acked the deflate buffer.
        const MUST_TELL_HOST = 1 << 0;
        /// A statistics virtqueue exists.
        const STATS_VQ = 1 << 1;
        /// The guest may deflate under memory pressure.
        const DEFLATE_ON_OOM = 1 << 2;
        /// Free page hinting (migration aid); not driven by this driver.
        const FREE_PAGE_HINT = 1 << 3;
        /// The host expects freed pages to hold `poison_val`.
        const PAGE_POISON = 1 << 4;
        /// Free page reporting queue exists.
        const REPORTING = 1 << 5;
        /// Proposed, not in the spec: the guest pushes statistics on a host-set
        /// timer. Its bit number is a proposal; see [`STATS_PUSH_BIT`].
        const STATS_PUSH = 1 << STATS_PUSH_BIT;
        /// Modern (virtio 1.x) device.
        const VERSION_1 = 1 << 32;
    }
}

impl Features {
    /// What of these features (offered, or left by negotiation) the driver
    /// can use: STATS_PUSH only together with STATS_VQ, the queue it pushes
    /// statistics on.
    pub fn usable(self) -> Features {
        if self.contains(Features::STATS_VQ) {
            self
        } else {
            self - Features::STATS_PUSH
        }
    }
}

/// The features the driver asks for.
pub const WANTED: Features = Features::MUST_TELL_HOST
    .union(Features::STATS_VQ)
    .union(Features::DEFLATE_ON_OOM)
    .union(Features::REPORTING)
    .union(Features::STATS_PUSH)
    .union(Features::VERSION_1);

/// The features in use after negotiation, from what the transport left of
/// [`WANTED`] (`virtio_negotiate_features`): bits the driver does not know
/// are dropped, and STATS_PUSH without STATS_VQ.
pub fn negotiated(got: u64) -> Features {
    Features::from_bits_truncate(got).usable()
}

/// Bit number of the proposed STATS_PUSH feature. Other proposals claim bit 6
/// too; change it here and nowhere else.
pub const STATS_PUSH_BIT: u32 = 6;

/// Size of one PFN unit on the wire, whatever the guest page size.
pub const PFN_SHIFT: u32 = 12;
/// Bytes in one balloon page unit (`num_pages`, `actual`).
pub const BALLOON_PAGE_SIZE: u64 = 1 << PFN_SHIFT;
/// PFNs per inflate/deflate buffer: the peers (Linux, FreeBSD) use 256.
pub const PFNS_PER_BUFFER: usize = 256;

/// A 32-bit config field as the transport read it from the device
/// (`virtio_read_device_config`): a modern (VERSION_1) transport converts
/// the little-endian field itself; a legacy one hands over its bytes as
/// they are, and the balloon's legacy config is little-endian too (unlike
/// other legacy devices', which are guest-endian).
pub fn config_from_device(raw: u32, features: Features) -> u32 {
    if features.contains(Features::VERSION_1) {
        raw
    } else {
        u32::from_le(raw)
    }
}

/// A 32-bit config value as the transport writes it to the device
/// (`virtio_write_device_config`): the inverse of [`config_from_device`].
pub fn config_to_device(value: u32, features: Features) -> u32 {
    if features.contains(Features::VERSION_1) {
        value
    } else {
        value.to_le()
    }
}

/// Byte offsets of the device-specific config fields (le32 each). A device
/// may expose fewer bytes: only the fields the negotiated features imply
/// may be read.
pub mod config_offset {
    pub const NUM_PAGES: usize = 0;
    pub const ACTUAL: usize = 4;
    pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
    pub const POISON_VAL: usize = 12;
    pub const STATS_PUSH_INTERVAL_MS: usize = 16;
}

/// Statistics tags. 0–9 are in the virtio spec; 10–15 are Linux extensions
/// that some hosts (Firecracker) reject as malformed.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatTag {
    SwapIn = 0,
    SwapOut = 1,
    MajFlt = 2,
    MinFlt = 3,
    MemFree = 4,
    MemTot = 5,
    Avail = 6,
    Caches = 7,
    HtlbPgAlloc = 8,
    HtlbPgFail = 9,
    OomKill = 10,
    AllocStall = 11,
    AsyncScan = 12,
    DirectScan = 13,
    AsyncReclaim = 14,
    DirectReclaim = 15,
}

impl StatTag {
    /// Highest tag defined by the virtio specification itself.
    pub const LAST_SPEC_TAG: u16 = 9;

    /// True for tags outside the virtio spec (Linux extensions).
    pub const fn is_extension(self) -> bool {
        self as u16 > Self::LAST_SPEC_TAG
    }
}

/// Bytes of one statistic on the wire: packed `{le16 tag, le64 val}`.
pub const STAT_BYTES: usize = 10;

/// One statistic as it goes on the wire.
pub fn stat_entry(tag: StatTag, val: u64) -> [u8; STAT_BYTES] {
    let mut e = [0; STAT_BYTES];
    e[..2].copy_from_slice(&(tag as u16).to_le_bytes());
    e[2..].copy_from_slice(&val.to_le_bytes());
    e
}

/// Converts a physical address to the le32 PFN the device expects (shift 12).
/// Returns `None` when the frame does not fit in 32 bits (above 16 TiB).
pub fn pfn_of_phys(phys: u64) -> Option<u32> {
    u32::try_from(phys >> PFN_SHIFT).ok()
}

/// The virtqueues a balloon may have, in the order the device numbers them
/// when present: inflate, deflate, stats (if STATS_VQ), free page hint (if
/// FREE_PAGE_HINT), reporting (if REPORTING).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Queue {
    Inflate,
    Deflate,
    Stats,
    FreePageHint,
    Reporting,
}

impl Queue {
    /// Queue index for this queue given the negotiated features, or `None` if
    /// the queue does not exist.
    pub fn index(self, features: Features) -> Option<u16> {
        let present = |q: Queue| match q {
            Queue::Inflate | Queue::Deflate => true,
            Queue::Stats => features.contains(Features::STATS_VQ),
            Queue::FreePageHint => features.contains(Features::FREE_PAGE_HINT),
            Queue::Reporting => features.contains(Features::REPORTING),
        };
        if !present(self) {
            return None;
        }
        let order = [
            Queue::Inflate,
            Queue::Deflate,
            Queue::Stats,
            Queue::FreePageHint,
            Queue::Reporting,
        ];
        let before = order
            .iter()
            .take_while(|&&q| q != self)
            .filter(|&&q| present(q))
            .count();
        u16::try_from(before).ok()
    }
}

/// Human-readable names of the features, for sysctl and logs.
pub fn feature_names(features: Features) -> impl Iterator<Item = &'static str> {
    const NAMES: [(Features, &str); 8] = [
        (Features::MUST_TELL_HOST, "MUST_TELL_HOST"),
        (Features::STATS_VQ, "STATS_VQ"),
        (Features::DEFLATE_ON_OOM, "DEFLATE_ON_OOM"),
        (Features::FREE_PAGE_HINT, "FREE_PAGE_HINT"),
        (Features::PAGE_POISON, "PAGE_POISON"),
        (Features::REPORTING, "REPORTING"),
        (Features::STATS_PUSH, "STATS_PUSH"),
        (Features::VERSION_1, "VERSION_1"),
    ];
    NAMES
        .into_iter()
        .filter(move |(f, _)| features.contains(*f))
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_bits_match_the_spec() {
        assert_eq!(Features::MUST_TELL_HOST.bits(), 1);
        assert_eq!(Features::STATS_VQ.bits(), 2);
        assert_eq!(Features::DEFLATE_ON_OOM.bits(), 4);
        assert_eq!(Features::FREE_PAGE_HINT.bits(), 8);
        assert_eq!(Features::PAGE_POISON.bits(), 16);
        assert_eq!(Features::REPORTING.bits(), 32);
        assert_eq!(Features::STATS_PUSH.bits(), 64);
        assert_eq!(Features::VERSION_1.bits(), 1 << 32);
    }

    #[test]
    fn stat_entry_is_packed_little_endian() {
        let e = stat_entry(StatTag::MemFree, 0x0102_0304_0506_0708);
        assert_eq!(e, [4, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
    }

    #[test]
    fn stat_tags_are_numbered_as_spec_and_linux() {
        assert_eq!(StatTag::SwapIn as u16, 0);
        assert_eq!(StatTag::HtlbPgFail as u16, 9);
        assert_eq!(StatTag::OomKill as u16, 10);
        assert_eq!(StatTag::DirectReclaim as u16, 15);
        assert!(!StatTag::HtlbPgFail.is_extension());
        assert!(StatTag::OomKill.is_extension());
    }

    #[test]
    fn pfn_shift_is_12_whatever_the_page_size() {
        assert_eq!(pfn_of_phys(0x1234_5000), Some(0x12345));
        // A 16 KiB guest page at 0x8000 still has the 4 KiB frame number 8.
        assert_eq!(pfn_of_phys(0x8000), Some(8));
        assert_eq!(pfn_of_phys(1 << 45), None);
    }

    #[test]
    fn queues_are_numbered_by_what_exists() {
        let base = Features::MUST_TELL_HOST;
        assert_eq!(Queue::Inflate.index(base), Some(0));
        assert_eq!(Queue::Deflate.index(base), Some(1));
        assert_eq!(Queue::Stats.index(base), None);
        assert_eq!(Queue::Reporting.index(base | Features::REPORTING), Some(2));
        let all = base | Features::STATS_VQ | Features::REPORTING;
        assert_eq!(Queue::Stats.index(all), Some(2));
        assert_eq!(Queue::Reporting.index(all), Some(3));
        let hint = all | Features::FREE_PAGE_HINT;
        assert_eq!(Queue::Reporting.index(hint), Some(4));
    }

    #[test]
    fn stats_push_needs_the_stats_queue() {
        let offered = Features::STATS_PUSH | Features::MUST_TELL_HOST;
        assert_eq!(offered.usable(), Features::MUST_TELL_HOST);
        let with_vq = offered | Features::STATS_VQ;
        assert_eq!(with_vq.usable(), with_vq);
    }

    #[test]
    fn negotiation_keeps_known_bits_the_driver_can_use() {
        assert!(WANTED.contains(Features::VERSION_1 | Features::STATS_PUSH));
        assert!(!WANTED.contains(Features::FREE_PAGE_HINT | Features::PAGE_POISON));
        let got = (Features::DEFLATE_ON_OOM | Features::STATS_PUSH).bits() | 1 << 40;
        assert_eq!(negotiated(got), Features::DEFLATE_ON_OOM);
        assert_eq!(negotiated(WANTED.bits()), WANTED);
    }

    #[test]
    fn legacy_config_is_little_endian_modern_is_converted_by_the_transport() {
        let v = 0x0102_0304u32;
        // A legacy transport's raw read: the field's little-endian bytes.
        let legacy_raw = u32::from_ne_bytes(v.to_le_bytes());
        assert_eq!(config_from_device(legacy_raw, Features::empty()), v);
        assert_eq!(config_from_device(v, Features::VERSION_1), v);
        let written = config_to_device(v, Features::empty());
        assert_eq!(written.to_ne_bytes(), v.to_le_bytes());
        assert_eq!(config_to_device(v, Features::VERSION_1), v);
    }

    #[test]
    fn feature_names_are_readable() {
        let f = Features::MUST_TELL_HOST | Features::REPORTING;
        let v: Vec<_> = feature_names(f).collect();
        assert_eq!(v, ["MUST_TELL_HOST", "REPORTING"]);
    }
}
