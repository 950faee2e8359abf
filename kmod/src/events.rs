//! devd(8) notifications: what the driver tells an administrator's devd
//! configuration, and when.
//!
//! Every notice is `!system=VTBALLOON subsystem=<device> type=<TYPE> <data>`
//! (devctl_notify(9)). ATTACH, DETACH and RESET happen once per device;
//! LOWMEM, FLOOR and TIMEOUT are decided here from counters the driver keeps
//! anyway, at most one of a kind per [`Notices::LOWMEM_GAP_MS`] or
//! [`Notices::GAP_MS`], so a storm of deflates or timeouts is one line a
//! second (or ten) summing what happened since the last one.

use core::ffi::CStr;
use core::fmt::Write;

/// devd's `system` of every notice.
pub const SYSTEM: &CStr = c"VTBALLOON";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The driver took the device (data: negotiated features).
    Attach,
    /// The driver let go of the device (data: pages it held).
    Detach,
    /// Memory given back under memory pressure (data: pages since the last
    /// notice, pages still ballooned).
    Lowmem,
    /// The guest-side floor refuses part of the host's target (data: pages
    /// refused, the floor).
    Floor,
    /// The host did not answer in time (data: timeouts so far).
    Timeout,
    /// Detach reset the device with pages the host had not returned (data:
    /// pages freed without the host's acknowledgement).
    Reset,
}

impl Event {
    /// devd's `type`.
    pub fn name(self) -> &'static CStr {
        match self {
            Event::Attach => c"ATTACH",
            Event::Detach => c"DETACH",
            Event::Lowmem => c"LOWMEM",
            Event::Floor => c"FLOOR",
            Event::Timeout => c"TIMEOUT",
            Event::Reset => c"RESET",
        }
    }
}

/// One notice: the event and up to two `key=value` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    pub event: Event,
    pub data: [(&'static str, u64); 2],
}

impl Notice {
    pub fn new(event: Event, a: (&'static str, u64), b: (&'static str, u64)) -> Notice {
        Notice {
            event,
            data: [a, b],
        }
    }

    /// The data as devctl_notify(9) wants it: `key=value key=value`,
    /// NUL-terminated in `buf` (pairs with an empty key are left out).
    pub fn text<'a>(&self, buf: &'a mut [u8; 96]) -> &'a CStr {
        let mut w = Buf { buf, len: 0 };
        for (k, v) in self.data.iter().filter(|(k, _)| !k.is_empty()) {
            let sep = if w.len > 0 { " " } else { "" };
            let _ = write!(w, "{sep}{k}={v}");
        }
        let len = w.len;
        buf[len] = 0;
        CStr::from_bytes_until_nul(&buf[..=len]).unwrap_or(c"")
    }
}

/// Writes into a fixed buffer, keeping the last byte for the NUL.
struct Buf<'a> {
    buf: &'a mut [u8; 96],
    len: usize,
}

impl Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// The counters the rate-limited notices are decided from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// 4 KiB pages given back under pressure since attach.
    pub lowmem_pages: u64,
    /// 4 KiB pages ballooned now.
    pub actual_pages: u64,
    /// Times the floor stopped an inflate, and what it refuses now.
    pub floor_stops: u64,
    pub floor_refused_pages: u64,
    pub floor_pages: u64,
    /// Waits for the host that timed out.
    pub host_timeouts: u64,
}

/// Which rate-limited notices are due.
#[derive(Debug, Default)]
pub struct Notices {
    seen: Snapshot,
    lowmem_ms: Option<u64>,
    floor_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

impl Notices {
    /// Least time between two LOWMEM notices.
    pub const LOWMEM_GAP_MS: u64 = 1_000;
    /// Least time between two FLOOR, or two TIMEOUT, notices.
    pub const GAP_MS: u64 = 10_000;

    pub const fn new() -> Self {
        Notices {
            seen: Snapshot {
                lowmem_pages: 0,
                actual_pages: 0,
                floor_stops: 0,
                floor_refused_pages: 0,
                floor_pages: 0,
                host_timeouts: 0,
            },
            lowmem_ms: None,
            floor_ms: None,
            timeout_ms: None,
        }
    }

    /// The notices due at `now_ms` given the counters in `now`; `settled`
    /// says the pressure is over (pages given back since the last LOWMEM
    /// notice are told at once, whatever the gap).
    pub fn due(&mut self, now_ms: u64, now: &Snapshot, settled: bool) -> [Option<Notice>; 3] {
        let after = |last: Option<u64>, gap: u64| last.is_none_or(|t| now_ms >= t + gap);
        let mut out = [None; 3];
        let given = now.lowmem_pages.saturating_sub(self.seen.lowmem_pages);
        if given > 0 && (settled || after(self.lowmem_ms, Self::LOWMEM_GAP_MS)) {
            out[0] = Some(Notice::new(
                Event::Lowmem,
                ("pages", given),
                ("actual_pages", now.actual_pages),
            ));
            self.seen.lowmem_pages = now.lowmem_pages;
            self.lowmem_ms = Some(now_ms);
        }
        if now.floor_stops > self.seen.floor_stops && after(self.floor_ms, Self::GAP_MS) {
            out[1] = Some(Notice::new(
                Event::Floor,
                ("refused_pages", now.floor_refused_pages),
                ("floor_pages", now.floor_pages),
            ));
            self.seen.floor_stops = now.floor_stops;
            self.floor_ms = Some(now_ms);
        }
        if now.host_timeouts > self.seen.host_timeouts && after(self.timeout_ms, Self::GAP_MS) {
            out[2] = Some(Notice::new(
                Event::Timeout,
                ("timeouts", now.host_timeouts),
                ("", 0),
            ));
            self.seen.host_timeouts = now.host_timeouts;
            self.timeout_ms = Some(now_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(lowmem: u64, floor_stops: u64, timeouts: u64) -> Snapshot {
        Snapshot {
            lowmem_pages: lowmem,
            actual_pages: 1000,
            floor_stops,
            floor_refused_pages: 77,
            floor_pages: 5000,
            host_timeouts: timeouts,
        }
    }

    fn kinds(n: &[Option<Notice>; 3]) -> Vec<Event> {
        n.iter().flatten().map(|n| n.event).collect()
    }

    #[test]
    fn lowmem_notices_sum_what_was_given_back_at_most_once_a_second() {
        let mut n = Notices::new();
        let first = n.due(10_000, &snap(256, 0, 0), false);
        assert_eq!(first[0].unwrap().data[0], ("pages", 256));
        // Deflates 100 times a second: one notice a second, summing them.
        assert!(kinds(&n.due(10_500, &snap(5_000, 0, 0), false)).is_empty());
        let later = n.due(11_000, &snap(9_000, 0, 0), false);
        assert_eq!(later[0].unwrap().data[0], ("pages", 8_744));
        // The pressure is over: the rest is told at once.
        let end = n.due(11_200, &snap(9_100, 0, 0), true);
        assert_eq!(end[0].unwrap().data[0], ("pages", 100));
        assert!(kinds(&n.due(30_000, &snap(9_100, 0, 0), true)).is_empty());
    }

    #[test]
    fn floor_and_timeout_notices_come_on_new_events_at_most_every_ten_seconds() {
        let mut n = Notices::new();
        assert!(kinds(&n.due(1_000, &snap(0, 0, 0), false)).is_empty());
        assert_eq!(
            kinds(&n.due(2_000, &snap(0, 1, 1), false)),
            [Event::Floor, Event::Timeout]
        );
        assert!(kinds(&n.due(5_000, &snap(0, 2, 3), false)).is_empty());
        let again = n.due(12_000, &snap(0, 2, 3), false);
        assert_eq!(kinds(&again), [Event::Floor, Event::Timeout]);
        assert_eq!(again[2].unwrap().data[0], ("timeouts", 3));
        assert_eq!(
            again[1].unwrap().data,
            [("refused_pages", 77), ("floor_pages", 5000)]
        );
    }

    #[test]
    fn notice_text_is_key_value_pairs() {
        let mut buf = [0u8; 96];
        let t = Notice::new(Event::Lowmem, ("pages", 42), ("actual_pages", 7)).text(&mut buf);
        assert_eq!(t, c"pages=42 actual_pages=7");
        let mut buf = [0u8; 96];
        assert_eq!(
            Notice::new(Event::Timeout, ("timeouts", 3), ("", 0)).text(&mut buf),
            c"timeouts=3"
        );
        assert_eq!(Event::Lowmem.name(), c"LOWMEM");
    }
}
