//! The host protocol's wire format. Kept free of the guest's system calls
//! so the harness's unit tests compile this very file and check both ends
//! against each other.
//!
//! Some checks need the host to act (change
//! the balloon target, read QEMU's view over QMP). Over the serial console:
//!
//! ```text
//! guest -> host   HOST: <seq> <command> <arg>      (one line, decimal seq/arg)
//! host -> guest   <seq> OK <value>                 (one line on the console's input)
//!                 <seq> FAIL <reason>
//! ```
//!
//! `seq` counts requests from 1. The guest waits for the reply with its
//! `seq` (ignoring anything else) for the command's timeout, then sends the
//! same request again, at most [`TRIES`] times in all; the host carries a
//! request out once and answers a repeated `seq` from its record. Then the
//! guest polls sysctl for the effect, itself bounded. Without a host
//! (`--no-host`) every request answers [`Reply::NoHost`] and the checks that
//! need one are skipped, never passed.
//!
//! When libvirt plays the host (boot libvirt) the same commands go through
//! `virsh setmem` and `virsh dommemstat` instead of QMP.
//!
//! Commands (arg in 4 KiB pages unless said): `set-target P` (balloon target
//! to P pages), `rapid P` (a burst of targets ending at P), `host-actual 0`
//! (the balloon size QEMU reports, in pages, once steady), `wait-actual P`
//! (the host waits until QEMU reports P pages), `stats-poll S` (enable
//! guest-stats polling every S s and wait for a fresh sample), `stats-get T`
//! (the sampled value of virtio stat tag T: memory in KiB, counts as they
//! are), `stats-updated 0` (the sample's last-update time, seconds since the
//! epoch on the host's clock), `rss-mark 0`,
//! `rss-drop MIB` (QEMU's RSS fell by 90% of MIB since the mark; replies the
//! drop in MiB), `bench-driver D` (the bench's D-th variant from now on:
//! the harness's list, 0 ours, 1 in-tree by default), `bench-rep R` (the
//! repetition that follows), `bench-inflate MIB`, `bench-deflate MIB` (the
//! host times a change of the balloon by MIB from its current size, right
//! after the guest touched its free memory), `bench-cost-NAME V` (a figure
//! of the guest's for the operation just timed: `cpu_us`, the driver's
//! threads' processor time, and for ours the difference of its node NAME),
//! `bench-lowmem US` (one vm_lowmem handler time, guest µs),
//! `bench-lowmem-call US` (the whole debug.vm_lowmem write),
//! `bench-idle-ms MS`, `bench-idle-thread N`, `bench-idle-report N` (wakeups
//! of the balloon and reporting threads in an idle window of MS ms).

/// What came back for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(u64),
    Fail,
    /// No answer after every try.
    Lost,
    NoHost,
}

/// Longest request line, without the newline.
pub const REQUEST_MAX: usize = 96;

/// `HOST: <seq> <cmd> <arg>` in `buf`; the command is cut to what fits.
pub fn request<'a>(seq: u64, cmd: &str, arg: u64, buf: &'a mut [u8; REQUEST_MAX]) -> &'a [u8] {
    let mut n = 0;
    let mut put = |b: &[u8]| {
        for &c in b {
            if n < buf.len() {
                buf[n] = c;
                n += 1;
            }
        }
    };
    let mut d = [0u8; 20];
    put(b"HOST: ");
    put(decimal(seq, &mut d));
    put(b" ");
    put(&cmd.as_bytes()[..cmd.len().min(40)]);
    put(b" ");
    put(decimal(arg, &mut d));
    &buf[..n]
}

/// Decimal digits of `v` in `d`.
pub fn decimal(mut v: u64, d: &mut [u8; 20]) -> &[u8] {
    let mut i = d.len();
    loop {
        i -= 1;
        d[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &d[i..]
}

/// `<seq> OK <value>` or `<seq> FAIL ...` for request `seq`; None otherwise.
pub fn parse_reply(line: &[u8], seq: u64) -> Option<Reply> {
    let mut words = line
        .split(|&c| c == b' ' || c == b'\t' || c == b'\r')
        .filter(|w| !w.is_empty());
    if parse_u64(words.next()?)? != seq {
        return None;
    }
    match words.next()? {
        b"OK" => Some(Reply::Ok(words.next().and_then(parse_u64).unwrap_or(0))),
        b"FAIL" => Some(Reply::Fail),
        _ => None,
    }
}

pub fn parse_u64(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 19 {
        return None;
    }
    let mut v = 0u64;
    for &b in w {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Some(v)
}
