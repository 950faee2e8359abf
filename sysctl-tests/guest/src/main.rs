//! vtbtest: checks vtballoonrs from inside a FreeBSD amd64 or arm64 guest through
//! its sysctl interface. Static and libc-free: it runs as /sbin/init of a
//! minimal image (then powers the guest off) or as a root program on any
//! FreeBSD 14.x guest:
//!
//! ```text
//! vtbtest [--no-host] [--module PATH] [phase ...]
//! ```
//!
//! As init it reads its phases from /etc/vtbtest.mode. Each check prints
//! `ok - <name>` or `not ok - <name>: <why>`; the last line is exactly
//! `N passed, N failed`. Checks that need the host (see [`host`]) are
//! skipped with `--no-host`, and say so.
//!
//! The phases live in one module per boot of `vmharness test` ([`basic`],
//! [`pressure`], [`report`], [`hint`], [`lifecycle`], [`libvirt`], [`floor`], [`hostile`] and [`faults`] with [`transport`]; also [`intree`], [`soak`],
//! [`bench`]),
//! the helpers they share beside them.
#![no_std]
#![no_main]

mod balloon;
mod basic;
mod bench;
mod check;
mod child;
mod devctl;
mod faults;
mod floor;
mod hint;
mod host;
mod hostile;
mod intree;
mod kinfo;
mod kld;
mod libvirt;
mod lifecycle;
mod nodes;
mod out;
mod pressure;
mod proto;
mod report;
mod rootport;
mod sampler;
mod soak;
mod sys;
mod sysctl;
mod threads;
mod transport;

use check::Ctx;
use host::Host;
use kld::{ensure_ours, OURS_DEFAULT, OURS_DESC};
use out::{note, Line};
use sysctl::exists;

struct Phase {
    name: &'static str,
    run: fn(&mut Ctx),
    /// Loads our driver first.
    ours: bool,
    /// Skipped as a whole with --no-host.
    host: bool,
}

const fn phase(name: &'static str, run: fn(&mut Ctx), ours: bool, host: bool) -> Phase {
    Phase {
        name,
        run,
        ours,
        host,
    }
}

const PHASES: &[Phase] = &[
    phase("tunable", basic::phase_tunable, true, false),
    phase("nodes", basic::phase_nodes, true, false),
    phase("jail", basic::phase_jail, true, false),
    phase("resize", basic::phase_resize, true, true),
    phase("stats", basic::phase_stats, true, true),
    phase("oom-one", pressure::phase_oom_one, true, true),
    phase("oom-many", pressure::phase_oom_many, true, true),
    phase("oom-sequence", pressure::phase_oom_sequence, true, true),
    phase("oom-inflating", pressure::phase_oom_inflating, true, true),
    phase("oom-reload", pressure::phase_oom_reload, true, true),
    phase("oom-control", pressure::phase_oom_control, true, true),
    phase("oom-intree", pressure::phase_oom_intree, false, true),
    phase("report", report::phase_report, true, true),
    phase("hint-features", hint::phase_hint_features, true, false),
    phase("hint-migrate", hint::phase_hint_migrate, true, true),
    phase("migrate-churn", hint::phase_migrate_churn, true, true),
    phase(
        "migrate-churn-off",
        hint::phase_migrate_churn_off,
        true,
        true,
    ),
    phase(
        "migrate-churn-intree",
        hint::phase_migrate_churn_intree,
        false,
        true,
    ),
    phase("unload", lifecycle::phase_unload, true, true),
    phase("cycles", lifecycle::phase_cycles, false, true),
    phase("swap", lifecycle::phase_swap, false, true),
    phase("intree", intree::phase_intree, false, true),
    phase("bench", bench::phase_bench, false, true),
    phase("libvirt", libvirt::phase_libvirt, true, true),
    phase("floor", floor::phase_floor, true, true),
    phase(
        "transport-legacy",
        transport::phase_transport_legacy,
        true,
        true,
    ),
    phase(
        "transport-modern",
        transport::phase_transport_modern,
        true,
        true,
    ),
    phase("flip", hostile::phase_flip, true, true),
    phase("oom-retarget", hostile::phase_oom_retarget, true, true),
    phase("hotplug", faults::phase_hotplug, true, true),
    phase("stall", faults::phase_stall, true, true),
    phase("soak", soak::phase_soak, true, true),
];

/// Without phase arguments.
const DEFAULT_PHASES: &[&str] = &[
    "nodes",
    "resize",
    "stats",
    "oom-one",
    "oom-many",
    "oom-sequence",
    "oom-inflating",
    "report",
    "unload",
    "cycles",
    "swap",
];

#[derive(Default)]
struct Args {
    no_host: bool,
    /// NUL-terminated.
    module: Option<&'static [u8]>,
    phases: [&'static [u8]; 16],
    n: usize,
    bench: bench::Opts,
}

impl Args {
    /// Takes options and phases from `words`, each NUL-terminated:
    /// `--no-host`, `--module PATH`, the bench's options (`--reps N`,
    /// `--sizes MIB,...`, `--variants V,...`, `--extras 0|1`), phase names.
    fn parse(&mut self, words: &[&'static [u8]]) {
        let mut it = words.iter();
        while let Some(&w) = it.next() {
            match &w[..w.len() - 1] {
                b"--no-host" => self.no_host = true,
                b"--module" => self.module = it.next().copied(),
                b"--reps" | b"--sizes" | b"--variants" | b"--extras" => {
                    if let Some(&v) = it.next() {
                        self.bench.set(&w[..w.len() - 1], &v[..v.len() - 1]);
                    }
                }
                b"" => {}
                x if x.starts_with(b"-") => {}
                x if self.n < self.phases.len() => {
                    self.phases[self.n] = x;
                    self.n += 1;
                }
                _ => {}
            }
        }
    }
}

/// The words of argv (NUL included) from the initial stack: argc, then the
/// argv pointers.
///
/// # Safety
/// `sp` is the process's initial stack pointer.
unsafe fn argv(sp: *const u64, out: &mut [&'static [u8]; 16]) -> usize {
    // SAFETY: the exec ABI: argc at sp, then argc pointers.
    let argc = unsafe { *sp } as usize;
    let mut n = 0;
    for i in 1..argc.min(out.len() + 1) {
        // SAFETY: argv[i], i < argc, is a NUL-terminated string on the stack,
        // which lives as long as the program.
        let p = unsafe { *sp.add(1 + i) } as *const u8;
        let mut len = 0;
        // SAFETY: bytes up to the NUL are readable.
        while unsafe { *p.add(len) } != 0 {
            len += 1;
        }
        // SAFETY: the string and its NUL.
        out[n] = unsafe { core::slice::from_raw_parts(p, len + 1) };
        n += 1;
    }
    n
}

static mut MODE: [u8; 1024] = [0; 1024];

/// The words of the image's /etc/vtbtest.mode (as argv: options, phases),
/// each NUL-terminated in place.
fn read_mode(out: &mut [&'static [u8]; 16]) -> usize {
    // SAFETY: single-threaded program; MODE is written here, once, before
    // any reference into it is handed out.
    let m: &'static mut [u8; 1024] = unsafe { &mut *core::ptr::addr_of_mut!(MODE) };
    let Ok(fd) = sys::open(b"/etc/vtbtest.mode\0", sys::O_RDONLY) else {
        return 0;
    };
    let len = sys::read(fd, &mut m[..1023]).unwrap_or(0) as usize;
    sys::close(fd);
    for b in m[..len].iter_mut() {
        if b.is_ascii_whitespace() {
            *b = 0;
        }
    }
    let text: &'static [u8] = &m[..=len];
    let mut n = 0;
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == 0 {
            if i > start && n < out.len() {
                out[n] = &text[start..=i];
                n += 1;
            }
            start = i + 1;
        }
    }
    n
}

#[no_mangle]
extern "C" fn main_rust(sp: *const u64) -> ! {
    let init = sys::getpid() == 1;
    if init {
        out::open_console();
    }
    let mut words: [&'static [u8]; 16] = [&[]; 16];
    // SAFETY: sp is the initial stack pointer handed over by _start.
    let n = unsafe { argv(sp, &mut words) };
    let mut args = Args::default();
    args.parse(&words[..n]);
    if init {
        let n = read_mode(&mut words);
        args.parse(&words[..n]);
    }
    let mut c = Ctx {
        passed: 0,
        failed: 0,
        skipped: 0,
        host: Host::new(!args.no_host),
        ours: args.module.unwrap_or(OURS_DEFAULT),
        bench: args.bench,
    };
    let mut list: [&[u8]; 16] = [&[]; 16];
    let n = if args.n == 0 {
        for (i, p) in DEFAULT_PHASES.iter().enumerate() {
            list[i] = p.as_bytes();
        }
        DEFAULT_PHASES.len()
    } else {
        list[..args.n].copy_from_slice(&args.phases[..args.n]);
        args.n
    };
    let mut l = Line::new();
    l.s("# vtbtest phases:");
    for p in &list[..n] {
        l.s(" ").b(p);
    }
    l.end();

    // Before any driver is loaded: the kernel queues devd events only while
    // someone reads them.
    if !devctl::open() {
        note("cannot open /dev/devctl: devd events are not checked");
    }
    let find = |p: &[u8]| PHASES.iter().find(|ph| ph.name.as_bytes() == p);
    let needs_ours = list[..n].iter().any(|p| find(p).is_some_and(|ph| ph.ours));
    let mut ours_ok = true;
    if needs_ours {
        let already = exists(OURS_DESC);
        let loaded = ensure_ours(&c);
        ours_ok = loaded.is_ok();
        if already {
            note("vtballoonrs was already attached");
        }
        c.check(
            "kldload vtballoonrs.ko and the device attaches (dev.vtballoonrs.0)",
            ours_ok,
            loaded.err().unwrap_or(""),
        );
    }
    for p in &list[..n] {
        let Some(ph) = find(p) else {
            Line::new().s("not ok - unknown phase ").b(p).end();
            c.failed += 1;
            continue;
        };
        Line::new().s("# phase ").s(ph.name).end();
        if ph.host && !c.host.on {
            c.skip(ph.name, "no host");
            continue;
        }
        if ph.ours {
            if !ours_ok {
                c.skip(ph.name, "vtballoonrs is not attached");
                continue;
            }
            if let Err(why) = ensure_ours(&c) {
                c.check(ph.name, false, why);
                continue;
            }
        }
        (ph.run)(&mut c);
    }
    if c.skipped > 0 {
        Line::new()
            .s("# ")
            .u(u64::from(c.skipped))
            .s(" skipped")
            .end();
    }
    Line::new()
        .u(u64::from(c.passed))
        .s(" passed, ")
        .u(u64::from(c.failed))
        .s(" failed")
        .end();
    if init {
        sys::poweroff()
    }
    sys::exit(u64::from(c.failed > 0))
}

/// Entry point: hand the initial stack pointer (argc, argv) to main_rust on
/// an aligned stack.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("mov rdi, rsp", "and rsp, -16", "call main_rust", "ud2")
}

/// Entry point on arm64: exec_setregs (arm64/exec_machdep.c) hands over the
/// pointer to argc in x0 and an already aligned sp, so x0 goes to main_rust
/// as it is.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[no_mangle]
pub extern "C" fn _start() -> ! {
    core::arch::naked_asm!("mov x29, #0", "mov x30, #0", "bl main_rust", "brk #0")
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    Line::new().s("not ok - vtbtest panicked").end();
    sys::exit(3)
}
