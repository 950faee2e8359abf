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
        /// Free page hinting (migration aid): `free_page_hint_cmd_id` at
        /// config offset 8 and the free page hint queue; see `crate::hinting`.
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

/// The features the driver asks the transport for: [`WANTED`] and every
/// feature that owns a queue before one the driver uses
/// ([`ACCEPT_IF_OFFERED`]). FreeBSD's `virtio_negotiate_features` keeps what
/// the device offers of them, which is exactly
/// [`with_queue_features`]`(WANTED, offered)`: the driver cannot read the
/// offer itself before negotiating, and needs not. Never PAGE_POISON.
pub const REQUESTED: Features = WANTED.union(ACCEPT_IF_OFFERED);

/// The features in use after negotiation, from what the transport left of
/// [`REQUESTED`] (`virtio_negotiate_features`): bits the driver does not
/// know are dropped, STATS_PUSH without STATS_VQ, and PAGE_POISON always
/// (FreeBSD neither poisons nor zeroes freed pages, so the spec has the
/// driver refuse it; see `crate::hinting`).
pub fn negotiated(got: u64) -> Features {
    (Features::from_bits_truncate(got) - Features::PAGE_POISON).usable()
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

/// Byte offsets of the device-specific config fields (le32 each, in this
/// order, from offset 0).
pub mod config_offset {
    pub const NUM_PAGES: usize = 0;
    pub const ACTUAL: usize = 4;
    pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
    pub const POISON_VAL: usize = 12;
    pub const STATS_PUSH_INTERVAL_MS: usize = 16;
}

/// Reserved values of `free_page_hint_cmd_id` (virtio 1.2 §5.5.6, "Free
/// Page Hinting"); any other value names a hinting round.
pub mod hint_cmd {
    /// Any command id given before is invalid; stop hinting, keep what was
    /// hinted (`VIRTIO_BALLOON_CMD_ID_STOP`).
    pub const STOP: u32 = 0;
    /// Hinting is over; the driver may free everything it hinted
    /// (`VIRTIO_BALLOON_CMD_ID_DONE`).
    pub const DONE: u32 = 1;
    /// QEMU's ids start above this (`VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN`
    /// in hw/virtio/virtio-balloon.h) and wrap back to it after `u32::MAX`;
    /// the first round of a device is `MIN + 1`.
    pub const QEMU_MIN: u32 = 0x8000_0000;
}

/// What a `free_page_hint_cmd_id` value tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintCmd {
    Stop,
    Done,
    /// A round with this id (2 or more).
    Id(u32),
}

impl HintCmd {
    pub const fn from_config(v: u32) -> HintCmd {
        match v {
            hint_cmd::STOP => HintCmd::Stop,
            hint_cmd::DONE => HintCmd::Done,
            id => HintCmd::Id(id),
        }
    }
}

/// The 4-byte output buffer that opens (the round's id) or closes
/// ([`hint_cmd::STOP`]) a hinting round on the free page hint queue:
/// little-endian with VERSION_1. A legacy device wants the guest's native
/// order, which is the same bytes on every target this driver builds for
/// (amd64, arm64).
pub const fn hint_cmd_bytes(id: u32) -> [u8; 4] {
    id.to_le_bytes()
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

    /// Number of queues the device has with these features.
    pub fn count(features: Features) -> u16 {
        [
            Queue::Inflate,
            Queue::Deflate,
            Queue::Stats,
            Queue::FreePageHint,
            Queue::Reporting,
        ]
        .iter()
        .filter(|q| q.index(features).is_some())
        .count() as u16
    }
}

/// Features to accept whenever the device offers them, whatever the driver
/// means to do with them. QEMU creates the balloon's queues by what it
/// *offers* (`virtio_balloon_device_realize` in hw/virtio/virtio-balloon.c:
/// the stats queue always, the free page queue when `free-page-hint=on`, then
/// the reporting queue), while [`Queue::index`] numbers them by what was
/// negotiated, as Linux does (`virtio_find_vqs` skips absent queues; Linux
/// accepts both features whenever offered). Declining an offered
/// FREE_PAGE_HINT puts the driver's reporting queue (3) on QEMU's free page
/// queue, where reports are acknowledged and ignored; reporting is then
/// QEMU's queue 4.
pub const ACCEPT_IF_OFFERED: Features = Features::STATS_VQ.union(Features::FREE_PAGE_HINT);

/// What to negotiate: `wanted`, plus every offered feature that owns a queue
/// before one the driver uses ([`ACCEPT_IF_OFFERED`]). A driver that does
/// not hint still accepts FREE_PAGE_HINT and simply never answers a command.
pub fn with_queue_features(wanted: Features, offered: Features) -> Features {
    (wanted | (offered & ACCEPT_IF_OFFERED)) & offered
}

/// Bytes of config space implied by the negotiated features: a device may
/// expose fewer than all the fields of [`config_offset`].
pub fn config_len(features: Features) -> usize {
    if features.contains(Features::STATS_PUSH) {
        config_offset::STATS_PUSH_INTERVAL_MS + 4
    } else if features.contains(Features::PAGE_POISON) {
        config_offset::POISON_VAL + 4
    } else if features.contains(Features::FREE_PAGE_HINT) {
        config_offset::FREE_PAGE_HINT_CMD_ID + 4
    } else {
        config_offset::ACTUAL + 4
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
        let poison = (Features::PAGE_POISON | Features::REPORTING).bits();
        assert_eq!(negotiated(poison), Features::REPORTING, "never PAGE_POISON");
    }

    /// QEMU's queue numbering (`virtio_balloon_device_realize`): inflate,
    /// deflate, stats (always: QEMU always offers STATS_VQ), the free page
    /// queue when it offers FREE_PAGE_HINT, the reporting queue when it
    /// offers REPORTING.
    fn qemu_index(q: Queue, offered: Features) -> Option<u16> {
        let mut i = 0;
        for (queue, exists) in [
            (Queue::Inflate, true),
            (Queue::Deflate, true),
            (Queue::Stats, true),
            (
                Queue::FreePageHint,
                offered.contains(Features::FREE_PAGE_HINT),
            ),
            (Queue::Reporting, offered.contains(Features::REPORTING)),
        ] {
            if queue == q {
                return exists.then_some(i);
            }
            i += u16::from(exists);
        }
        None
    }

    #[test]
    fn what_the_transport_keeps_of_the_request_numbers_queues_as_qemu_does() {
        assert!(!REQUESTED.contains(Features::PAGE_POISON));
        assert!(REQUESTED.contains(Features::FREE_PAGE_HINT | Features::STATS_VQ));
        // Every offer QEMU can make (STATS_VQ always, the rest by property),
        // with or without VERSION_1, plus bits the driver does not know.
        let optional = [
            Features::MUST_TELL_HOST,
            Features::DEFLATE_ON_OOM,
            Features::FREE_PAGE_HINT,
            Features::PAGE_POISON,
            Features::REPORTING,
            Features::VERSION_1,
        ];
        for mask in 0..1u32 << optional.len() {
            let offered = optional
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold(Features::STATS_VQ, |f, (_, &b)| f | b);
            // The transport: offered & requested (virtio_negotiate_features).
            let got = negotiated((offered.bits() | 1 << 40) & REQUESTED.bits());
            assert_eq!(
                got,
                with_queue_features(WANTED, offered) - Features::PAGE_POISON
            );
            assert!(!got.contains(Features::PAGE_POISON), "{offered:?}");
            for q in [
                Queue::Inflate,
                Queue::Deflate,
                Queue::Stats,
                Queue::Reporting,
            ] {
                assert_eq!(q.index(got), qemu_index(q, offered), "{q:?} {offered:?}");
            }
            assert_eq!(
                Queue::FreePageHint.index(got),
                qemu_index(Queue::FreePageHint, offered)
            );
        }
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
    fn offered_queues_are_accepted_so_numbering_matches_qemu() {
        // QEMU with free-page-hint=on,free-page-reporting=on: queues 0..=4.
        let offered = Features::STATS_VQ
            | Features::DEFLATE_ON_OOM
            | Features::FREE_PAGE_HINT
            | Features::PAGE_POISON
            | Features::REPORTING
            | Features::VERSION_1;
        let wanted = Features::MUST_TELL_HOST
            | Features::STATS_VQ
            | Features::DEFLATE_ON_OOM
            | Features::REPORTING
            | Features::VERSION_1;
        let got = with_queue_features(wanted, offered);
        assert_eq!(
            Queue::Reporting.index(got),
            Some(4),
            "QEMU's reporting queue"
        );
        assert_eq!(Queue::FreePageHint.index(got), Some(3));
        assert!(
            !got.contains(Features::PAGE_POISON),
            "no queue, not accepted"
        );
        assert!(!got.contains(Features::MUST_TELL_HOST), "not offered");
        // Declining FREE_PAGE_HINT would have put reporting on queue 3.
        assert_eq!(Queue::Reporting.index(wanted & offered), Some(3));
        // Nothing offered beyond the basics: nothing added.
        let basic = Features::STATS_VQ | Features::VERSION_1;
        assert_eq!(with_queue_features(wanted, basic), basic);
    }

    #[test]
    fn config_length_follows_features() {
        assert_eq!(config_len(Features::empty()), 8);
        assert_eq!(config_len(Features::PAGE_POISON), 16);
        assert_eq!(config_len(Features::STATS_PUSH | Features::STATS_VQ), 20);
    }

    #[test]
    fn hint_command_ids() {
        assert_eq!(HintCmd::from_config(0), HintCmd::Stop);
        assert_eq!(HintCmd::from_config(1), HintCmd::Done);
        assert_eq!(HintCmd::from_config(2), HintCmd::Id(2));
        let first = hint_cmd::QEMU_MIN + 1;
        assert_eq!(HintCmd::from_config(first), HintCmd::Id(0x8000_0001));
        assert_eq!(hint_cmd_bytes(0x8000_0001), [1, 0, 0, 0x80]);
        assert_eq!(hint_cmd_bytes(hint_cmd::STOP), [0; 4]);
    }

    #[test]
    fn hint_queue_sits_between_stats_and_reporting() {
        let f = Features::MUST_TELL_HOST | Features::FREE_PAGE_HINT | Features::REPORTING;
        assert_eq!(Queue::FreePageHint.index(f), Some(2));
        assert_eq!(Queue::Reporting.index(f), Some(3));
        let f = f | Features::STATS_VQ;
        assert_eq!(Queue::FreePageHint.index(f), Some(3));
        assert_eq!(Queue::Reporting.index(f), Some(4));
        assert_eq!(Queue::FreePageHint.index(Features::REPORTING), None);
        assert_eq!(config_len(Features::FREE_PAGE_HINT), 12);
    }

    #[test]
    fn feature_names_are_readable() {
        let f = Features::MUST_TELL_HOST | Features::REPORTING;
        let v: Vec<_> = feature_names(f).collect();
        assert_eq!(v, ["MUST_TELL_HOST", "REPORTING"]);
    }
}
