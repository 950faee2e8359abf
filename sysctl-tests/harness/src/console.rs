//! What the guest's serial console lines mean to the harness, and the
//! replies it sends back (the protocol is described in the guest's
//! `proto.rs`: `HOST: <seq> <command> <arg>` out, `<seq> OK <value>` or
//! `<seq> FAIL <reason>` back).

/// One line from the serial console.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `HOST: <seq> <command> <arg>`: the guest asks the host to act.
    Host {
        seq: u64,
        cmd: String,
        arg: u64,
    },
    /// `N passed, N failed`: the guest's summary.
    Summary {
        passed: u32,
        failed: u32,
    },
    /// `# N skipped`: checks the guest could not run here.
    Skipped(u32),
    /// `ok - ...`, `not ok - ...`, `# ...`: shown, not interpreted.
    Report,
    /// The kernel panicked, trapped or entered the debugger.
    Fatal(String),
    /// A WITNESS warning or another kernel complaint: the run fails, but the
    /// guest may go on.
    Warning(String),
    /// The kernel killed a process (`pid N (name), ..., was killed: why`):
    /// the OOM killer, for one. Counted; the guest asks for the count.
    Killed,
    Other,
}

/// Kernel messages that end the run.
const FATAL: &[&str] = &[
    "panic:",
    "Fatal trap",
    // arm64 (arm64/trap.c), before its panic line.
    "Fatal data abort",
    "KDB: enter",
    "Memory modified after free",
];

/// Kernel messages that fail the run: WITNESS, and virtqueues torn down
/// with buffers still in them.
const WARNINGS: &[&str] = &[
    "lock order reversal",
    "with the following non-sleepable locks held",
    "with the following sleepable locks held",
    "owns a non-sleepable lock",
    "acquiring duplicate lock of same type",
    "freeing non-empty virtqueue",
    // malloc(9) types that still hold memory when their module unloads.
    "leaked memory on destroy",
];

pub fn parse(line: &str) -> Line {
    let l = line.trim();
    // Kernel output may share a line with ours: look for the markers anywhere.
    if let Some(f) = FATAL.iter().find(|p| l.contains(*p)) {
        return Line::Fatal(format!("{f} {l}"));
    }
    if let Some(w) = WARNINGS.iter().find(|p| l.contains(*p)) {
        return Line::Warning(format!("{w}: {l}"));
    }
    if l.contains(", was killed: ") {
        return Line::Killed;
    }
    if let Some(rest) = l.strip_prefix("HOST: ") {
        let w: Vec<&str> = rest.split_whitespace().collect();
        if let [seq, cmd, arg] = w[..] {
            if let (Ok(seq), Ok(arg)) = (seq.parse(), arg.parse()) {
                // Node names in `bench-cost-<node>` have underscores, and
                // `bench-oom-given-x100` a number.
                let word =
                    |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_';
                if cmd.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
                    && cmd.bytes().all(word)
                {
                    return Line::Host {
                        seq,
                        cmd: cmd.to_string(),
                        arg,
                    };
                }
            }
        }
        return Line::Other;
    }
    if let Some(n) = l
        .strip_prefix("# ")
        .and_then(|r| r.strip_suffix(" skipped"))
        .and_then(|n| n.parse().ok())
    {
        return Line::Skipped(n);
    }
    if l.starts_with("ok - ") || l.starts_with("not ok - ") || l.starts_with("# ") {
        return Line::Report;
    }
    if let Some((p, f)) = l.split_once(" passed, ") {
        if let (Ok(passed), Some(Ok(failed))) =
            (p.parse(), f.strip_suffix(" failed").map(str::parse))
        {
            return Line::Summary { passed, failed };
        }
    }
    Line::Other
}

/// The reply line for request `seq` (the console's input wants CR).
pub fn reply(seq: u64, result: &Result<u64, String>) -> String {
    match result {
        Ok(v) => format!("{seq} OK {v}\r"),
        Err(why) => {
            let why: String = why
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                .take(60)
                .collect();
            format!("{seq} FAIL {why}\r")
        }
    }
}

/// The host's record of the last request it carried out, so that a
/// repeated request (the guest missed the reply) is answered, not redone.
#[derive(Default)]
pub struct Record {
    last: Option<(u64, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// A new request: carry it out.
    Run,
    /// The last request again: send this reply again.
    Resend(&'a str),
    /// An older request: its reply was already taken.
    Ignore,
}

impl Record {
    pub fn action(&self, seq: u64) -> Action<'_> {
        match &self.last {
            Some((s, reply)) if *s == seq => Action::Resend(reply),
            Some((s, _)) if *s > seq => Action::Ignore,
            _ => Action::Run,
        }
    }

    pub fn store(&mut self, seq: u64, reply: String) {
        self.last = Some((seq, reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_requests() {
        assert_eq!(
            parse("HOST: 7 set-target 65536\r"),
            Line::Host {
                seq: 7,
                cmd: "set-target".into(),
                arg: 65536
            }
        );
        assert_eq!(
            parse("HOST: 1 host-actual 0"),
            Line::Host {
                seq: 1,
                cmd: "host-actual".into(),
                arg: 0
            }
        );
        assert_eq!(
            parse("HOST: 6 bench-cost-cpu_us 1695574"),
            Line::Host {
                seq: 6,
                cmd: "bench-cost-cpu_us".into(),
                arg: 1695574
            }
        );
        // The bench's pressure figures: a number in the name.
        assert_eq!(
            parse("HOST: 450 bench-oom-given-x100 101"),
            Line::Host {
                seq: 450,
                cmd: "bench-oom-given-x100".into(),
                arg: 101
            }
        );
        // Damaged or partial requests are ignored: the guest asks again.
        for bad in [
            "HOST: set-target 5",
            "HOST: 3 set-target",
            "HOST: 3 set-target 5 6",
            "HOST: x set-target 5",
            "HOST: 3 Set_Target 5",
            "HOST: 3 set-target -1",
            "HOST: 3 9-target 5",
        ] {
            assert_eq!(parse(bad), Line::Other, "{bad}");
        }
    }

    #[test]
    fn summary_reports_and_other_lines() {
        assert_eq!(
            parse("42 passed, 1 failed"),
            Line::Summary {
                passed: 42,
                failed: 1
            }
        );
        assert_eq!(parse("3 passed, x failed"), Line::Other);
        assert_eq!(parse("ok - something"), Line::Report);
        assert_eq!(parse("not ok - x: y"), Line::Report);
        assert_eq!(parse("# features: STATS_VQ"), Line::Report);
        assert_eq!(parse("# 3 skipped"), Line::Skipped(3));
        assert_eq!(parse("# skip - swap: no host"), Line::Report);
        assert_eq!(parse("7 OK 0"), Line::Other, "an echoed reply");
        assert_eq!(
            parse("vtballoonrs0: <VirtIO Balloon Adapter> on virtio_pci0"),
            Line::Other
        );
    }

    #[test]
    fn kills_are_their_own_lines() {
        assert_eq!(
            parse("pid 42 (vtbtest), jid 0, uid 0, was killed: failed to reclaim memory"),
            Line::Killed
        );
        assert_eq!(parse("ok - nobody was killed"), Line::Report);
    }

    #[test]
    fn kernel_trouble() {
        assert!(matches!(parse("panic: page fault"), Line::Fatal(_)));
        assert!(matches!(
            parse("Fatal trap 12: page fault while in kernel mode"),
            Line::Fatal(_)
        ));
        assert!(matches!(parse("KDB: enter: panic"), Line::Fatal(_)));
        assert!(matches!(parse("# report_blocks 1panic: x"), Line::Fatal(_)));
        assert!(matches!(parse("lock order reversal:"), Line::Warning(_)));
        assert!(matches!(
            parse("uma_zalloc_debug: zone \"x\" with the following non-sleepable locks held:"),
            Line::Warning(_)
        ));
        assert!(matches!(
            parse(
                "virtio_pci0: vtballoonrs0 stats: freeing non-empty virtqueue, leaking 1 entries"
            ),
            Line::Warning(_)
        ));
        assert!(matches!(
            parse("Warning: memory type vtballoonrs leaked memory on destroy (1 allocations, 64 bytes leaked)."),
            Line::Warning(_)
        ));
        assert_eq!(
            parse("WARNING: WITNESS option enabled, expect reduced performance."),
            Line::Other
        );
    }

    #[test]
    fn repeated_requests_are_answered_not_redone() {
        let mut r = Record::default();
        assert_eq!(r.action(1), Action::Run);
        r.store(1, reply(1, &Ok(5)));
        assert_eq!(r.action(1), Action::Resend("1 OK 5\r"));
        assert_eq!(r.action(2), Action::Run);
        r.store(2, reply(2, &Err("no".into())));
        assert_eq!(r.action(1), Action::Ignore);
        assert_eq!(r.action(2), Action::Resend("2 FAIL no\r"));
    }

    /// The guest's own encoder and decoder (sysctl-tests/guest/src/proto.rs)
    /// against ours.
    #[test]
    fn both_ends_agree() {
        use crate::guest_proto as g;
        let mut buf = [0u8; g::REQUEST_MAX];
        for (seq, cmd, arg) in [
            (1, "set-target", 262_144),
            (99, "bench-inflate", 3072),
            (7, "rss-mark", 0),
            (12, "bench-resident", 1024),
            (13, "bench-lowmem", 812),
            (15, "bench-lowmem-call", 2345),
            (14, "bench-idle-thread", 0),
        ] {
            let line = std::str::from_utf8(g::request(seq, cmd, arg, &mut buf))
                .unwrap()
                .to_string();
            assert_eq!(
                parse(&format!("{line}\r\n")),
                Line::Host {
                    seq,
                    cmd: cmd.into(),
                    arg
                }
            );
        }
        let ok = reply(4, &Ok(u64::MAX / 2));
        assert_eq!(
            g::parse_reply(ok.as_bytes(), 4),
            Some(g::Reply::Ok(u64::MAX / 2))
        );
        assert_eq!(
            g::parse_reply(ok.as_bytes(), 5),
            None,
            "another request's reply"
        );
        let fail = reply(6, &Err("QMP balloon: DeviceNotActive: no balloon".into()));
        assert_eq!(g::parse_reply(fail.as_bytes(), 6), Some(g::Reply::Fail));
        // Noise on the console's input is not a reply.
        for noise in [
            "",
            "OK 5",
            "6 MAYBE 1",
            "x OK 1",
            "99999999999999999999 OK 1",
        ] {
            assert_eq!(g::parse_reply(noise.as_bytes(), 6), None, "{noise:?}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(3, &Ok(65536)), "3 OK 65536\r");
        assert_eq!(
            reply(4, &Err("QMP balloon:\n no".into())),
            "4 FAIL QMP balloon:  no\r"
        );
        let long = reply(5, &Err("x".repeat(200)));
        assert!(long.len() < 80);
    }
}
