//! The run's counters and its checks: `ok - <name>`, `not ok - <name>:
//! <why>`, `# skip - <name>: <why>`, checks on the host's replies.

use crate::host::Host;
use crate::out::Line;
use crate::proto::Reply;

/// Counters of the run and the host channel.
pub struct Ctx {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub host: Host,
    /// Our module's path, NUL-terminated.
    pub ours: &'static [u8],
    /// What the bench phase runs.
    pub bench: crate::bench::Opts,
}

impl Ctx {
    pub fn check(&mut self, name: &str, ok: bool, why: &str) -> bool {
        self.check_n(name, ok, why, None)
    }

    /// A check whose failure message carries a number (what was seen).
    pub fn check_n(&mut self, name: &str, ok: bool, why: &str, seen: Option<u64>) -> bool {
        let mut l = Line::new();
        if ok {
            self.passed += 1;
            l.s("ok - ").s(name);
        } else {
            self.failed += 1;
            l.s("not ok - ").s(name).s(": ").s(why);
            if let Some(v) = seen {
                l.s(" (").u(v).s(")");
            }
        }
        l.end();
        ok
    }

    pub fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        Line::new().s("# skip - ").s(name).s(": ").s(why).end();
    }

    /// A check on a host reply: skipped without a host, failed if the host
    /// refused or never answered.
    pub fn check_host(
        &mut self,
        name: &str,
        r: Reply,
        ok: impl Fn(u64) -> bool,
        why: &str,
    ) -> bool {
        match r {
            Reply::NoHost => {
                self.skip(name, "no host");
                false
            }
            Reply::Lost => self.check(name, false, "the host did not answer"),
            Reply::Fail => self.check(name, false, "the host reported a failure"),
            Reply::Ok(v) => self.check_n(name, ok(v), why, Some(v)),
        }
    }
}

/// Asks the host for an action that has no check of its own: records a
/// failed (or skipped) `name` unless the host did it.
pub fn ask_ok(c: &mut Ctx, name: &str, cmd: &str, arg: u64, secs: u64) -> bool {
    match c.host.ask(cmd, arg, secs) {
        Reply::Ok(_) => true,
        r => c.check_host(name, r, |_| true, ""),
    }
}

/// `a` + `b` in `buf`, as a str (ASCII inputs).
pub fn concat<'a>(buf: &'a mut [u8], a: &[u8], b: &[u8]) -> &'a str {
    let mut n = 0;
    for &x in a.iter().chain(b) {
        if n < buf.len() {
            buf[n] = x;
            n += 1;
        }
    }
    core::str::from_utf8(&buf[..n]).unwrap_or("?")
}
