//! Generates the FreeBSD kernel bindings and builds the C shim, the way
//! FreeBSD's kmod.mk prepares a module build: the `machine` include link
//! (and `x86`, `i386` on amd64), `*_if.h` from the `.m` interface files with
//! the tree's own makeobjops.awk, and `offset.inc` from genoffset. Only for
//! a kernel target (x86_64-unknown-none for amd64,
//! aarch64-unknown-none-softfloat for arm64) and only when `SYSDIR` holds
//! the headers of that architecture; otherwise the crate is empty and host
//! builds need no FreeBSD sources.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Exported kernel functions (in the kernel's symbol table, not macros or
/// static inlines) the glue calls directly.
const KERNEL_FUNCTIONS: &[&str] = &[
    "malloc",
    "malloc_aligned",
    "free",
    "printf",
    "device_printf",
    "panic",
    "binuptime",
    "getbinuptime",
    "pause_sbt",
    "wakeup",
    "sx_init_flags",
    "sx_destroy",
    "_callout_stop_safe",
    "kthread_add",
    "kthread_exit",
    "taskqueue_create",
    "taskqueue_enqueue",
    "taskqueue_drain",
    "taskqueue_free",
    "taskqueue_start_threads",
    "taskqueue_start_threads_cpuset",
    "taskqueue_thread_enqueue",
    "cpuset_setthread",
    "bus_topo_lock",
    "bus_topo_unlock",
    "eventhandler_register",
    "eventhandler_find_list",
    "eventhandler_deregister",
    "vm_page_free",
    "PHYS_TO_VM_PAGE",
    "vm_free_count",
    "vm_inactive_count",
    "vm_laundry_count",
    "vm_active_count",
    "counter_u64_fetch",
    "swap_pager_status",
    "device_get_softc",
    "device_get_nameunit",
    "device_get_name",
    "getenv_string",
    "devctl_notify",
    "device_get_sysctl_tree",
    "virtio_negotiate_features",
    "virtio_finalize_features",
    "virtio_alloc_virtqueues",
    "virtio_setup_intr",
    "virtio_reinit_complete",
    "virtio_read_device_config",
    "virtio_write_device_config",
    "virtio_stop",
    "virtqueue_enqueue",
    "virtqueue_notify",
    "virtqueue_dequeue",
    "virtqueue_drain",
    "virtqueue_enable_intr",
    "virtqueue_nused",
    "sglist_append",
    "sglist_append_phys",
    "sysctl_ctx_init",
    "sysctl_ctx_free",
    "sysctl_add_oid",
    "sysctl_handle_64",
    "sysctl_handle_int",
    "sysctl_handle_string",
];
/// Kernel globals the glue reads.
const KERNEL_VARS: &[&str] = &[
    "hz",
    "tick_sbt",
    "Maxmem",
    "mp_ncpus",
    "mp_maxid",
    "all_cpus",
    "taskqueue_thread",
    "vm_cnt",
];
/// Plain constants from the headers.
const KERNEL_CONSTS: &[&str] = &[
    "PAGE_SIZE",
    "PAGE_SHIFT",
    "ENOMEM|EINVAL|ENXIO|EBUSY|ETIMEDOUT|EWOULDBLOCK|ENOSPC",
    "M_NOWAIT",
    "M_ZERO",
    "VM_ALLOC_NOWAIT",
    "VM_ALLOC_NORECLAIM",
    "VM_ALLOC_NODUMP",
    "CTLFLAG_RD",
    "CTLFLAG_RWTUN",
    "CTLFLAG_STATS",
    "CTLFLAG_MPSAFE",
    "CTLTYPE_U64",
    "CTLTYPE_INT",
    "CTLTYPE_STRING",
    "OID_AUTO",
    "PVM",
    "CS_DRAIN",
    "C_HARDCLOCK",
    "EVENTHANDLER_PRI_FIRST",
    "VIRTQUEUE_MAX_NAME_SZ",
    "INTR_TYPE_MISC",
];
/// Interface files whose generated headers the shim and bindings need.
const INTERFACES: &[&str] = &[
    "kern/device_if.m",
    "kern/bus_if.m",
    "dev/virtio/virtio_if.m",
];
/// What differs between the kernel architectures the module builds for.
struct Arch {
    /// The Rust target the kernel build uses.
    rust_target: &'static str,
    /// clang's name of the CPU architecture (`<cpu>-unknown-freebsd14.x`).
    clang_cpu: &'static str,
    /// FreeBSD's MACHINE: `$SYSDIR/<machine>/include` is `<machine/...>`.
    machine: &'static str,
    /// Include links kmod.mk makes besides `machine` (_ILINKS).
    extra_links: &'static [(&'static str, &'static str)],
    /// Code generation flags of sys/conf/kern.mk and kmod.mk.
    cflags: &'static [&'static str],
}

/// Flags every architecture's kernel C is built with (kern.mk, kmod.mk).
const COMMON_CFLAGS: &[&str] = &[
    "-O2",
    "-pipe",
    "-fno-strict-aliasing",
    "-ffreestanding",
    "-fwrapv",
    "-fno-common",
    "-fno-stack-protector",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-D_KERNEL",
    "-DKLD_MODULE",
    // The kernels this module loads into are SMP (GENERIC is): without it
    // MAXCPU is 1 and cpuset_t one word instead of the kernel's 1024 bits,
    // so the kernel would read past every cpuset_t the module passes it.
    "-DSMP",
    "-nostdinc",
];

const AMD64: Arch = Arch {
    rust_target: "x86_64-unknown-none",
    clang_cpu: "x86_64",
    machine: "amd64",
    extra_links: &[("x86", "x86/include"), ("i386", "i386/include")],
    // An amd64 kld is an `ld -r` object linked at a kernel address: no PIC.
    cflags: &[
        "-fno-pic",
        "-mcmodel=kernel",
        "-mno-red-zone",
        "-mno-mmx",
        "-mno-sse",
        "-msoft-float",
        "-mno-aes",
        "-mno-avx",
    ],
};

const ARM64: Arch = Arch {
    rust_target: "aarch64-unknown-none-softfloat",
    clang_cpu: "aarch64",
    machine: "arm64",
    extra_links: &[],
    // kern.mk: no FP/SIMD registers, x18 is the per-CPU pointer; kmod.mk:
    // an arm64 kld is a shared object, so PIC.
    cflags: &["-fPIC", "-mgeneral-regs-only", "-ffixed-x18"],
};

/// The architecture of a kernel target, `None` for any other target.
fn arch_of(target: &str) -> Option<&'static Arch> {
    [&AMD64, &ARM64]
        .into_iter()
        .find(|a| a.rust_target == target)
}

/// clang's target for the tree at `sysdir`: its `__FreeBSD_version`
/// (1400507 is 14.0, 1402000 is 14.2), so the headers see the compiler
/// FreeBSD's own build would use.
fn clang_target(arch: &Arch, sysdir: &Path) -> String {
    let param = fs::read_to_string(sysdir.join("sys/param.h")).unwrap_or_default();
    let version = param
        .lines()
        .filter_map(|l| l.strip_prefix("#define __FreeBSD_version "))
        .find_map(|v| v.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(1_400_000);
    format!(
        "{}-unknown-freebsd{}.{}",
        arch.clang_cpu,
        version / 100_000,
        version / 1_000 % 100
    )
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vtb_have_sysdir)");
    println!("cargo::rerun-if-env-changed=SYSDIR");
    println!("cargo::rerun-if-changed=shim/vtbrs_shim.c");
    println!("cargo::rerun-if-changed=shim/vtbrs_shim.h");
    println!("cargo::rerun-if-changed=wrapper.h");
    let target = env::var("TARGET").unwrap_or_default();
    let Some(arch) = arch_of(&target) else {
        return;
    };
    let sysdir = PathBuf::from(env::var("SYSDIR").unwrap_or_else(|_| "/usr/src/sys".into()));
    let machine_include = sysdir.join(arch.machine).join("include");
    if !sysdir.join("sys/param.h").exists() || !machine_include.is_dir() {
        println!(
            "cargo::warning=no FreeBSD {} headers at {}: kernel bindings not generated (set SYSDIR)",
            arch.machine,
            sysdir.display()
        );
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let inc = out.join("include");
    prepare_includes(arch, &sysdir, &inc);
    let clang = clang();
    let mut cflags: Vec<String> = vec![format!("--target={}", clang_target(arch, &sysdir))];
    cflags.extend(COMMON_CFLAGS.iter().map(|s| s.to_string()));
    cflags.extend(arch.cflags.iter().map(|s| s.to_string()));
    cflags.push(format!("-I{}", inc.display()));
    cflags.push(format!("-I{}", sysdir.display()));
    cflags.push(format!("-I{}", sysdir.join("contrib/ck/include").display()));
    cflags.push(format!(
        "-I{}",
        Path::new("shim")
            .canonicalize()
            .expect("shim dir")
            .display()
    ));
    make_offset_inc(&clang, &cflags, &sysdir, &inc);
    build_shim(&clang, &cflags);
    generate_bindings(&cflags, &out);
    println!("cargo::rustc-cfg=vtb_have_sysdir");
}

fn clang() -> String {
    for c in ["clang-19", "clang"] {
        if Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c.to_string();
        }
    }
    panic!("clang is needed to build the kernel shim (apt-get install clang)");
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// The include links and generated interface headers, as kmod.mk makes them.
fn prepare_includes(arch: &Arch, sysdir: &Path, inc: &Path) {
    fs::create_dir_all(inc).expect("include dir");
    let machine = format!("{}/include", arch.machine);
    let links = [("machine", machine.as_str())]
        .into_iter()
        .chain(arch.extra_links.iter().copied());
    for (link, dir) in links {
        let path = inc.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(sysdir.join(dir), &path).expect("include link");
    }
    for m in INTERFACES {
        run(Command::new("awk")
            .current_dir(inc)
            .arg("-f")
            .arg(sysdir.join("tools/makeobjops.awk"))
            .arg(sysdir.join(m))
            .arg("-h"));
    }
    // Modules built outside a kernel build see empty option headers.
    fs::write(inc.join("opt_global.h"), "").expect("opt header");
}

/// sys/kpilite.h includes offset.inc, generated from kern/genoffset.c.
fn make_offset_inc(clang: &str, cflags: &[String], sysdir: &Path, inc: &Path) {
    let obj = inc.join("genoffset.o");
    run(Command::new(clang)
        .args(cflags.iter().filter(|f| *f != "-fno-common"))
        .arg("-fcommon")
        .arg("-c")
        .arg(sysdir.join("kern/genoffset.c"))
        .arg("-o")
        .arg(&obj));
    let nm = ["llvm-nm-19", "llvm-nm", "nm"]
        .into_iter()
        .find(|n| {
            Command::new(n)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("an nm is needed for offset.inc");
    let output = Command::new("sh")
        .env("NM", nm)
        .arg(sysdir.join("kern/genoffset.sh"))
        .arg(&obj)
        .output()
        .expect("genoffset.sh");
    assert!(output.status.success(), "genoffset.sh failed");
    fs::write(inc.join("offset.inc"), output.stdout).expect("offset.inc");
}

fn build_shim(clang: &str, cflags: &[String]) {
    let mut b = cc::Build::new();
    b.no_default_flags(true)
        .compiler(clang)
        .warnings(false)
        .file("shim/vtbrs_shim.c");
    for f in cflags {
        b.flag(f);
    }
    b.flag("-Wall").flag("-Werror");
    b.compile("vtbrs_shim");
}

fn generate_bindings(cflags: &[String], out: &Path) {
    let args: Vec<String> = cflags
        .iter()
        .filter(|f| {
            f.starts_with("-I")
                || f.starts_with("-D")
                || f.starts_with("--target")
                || *f == "-nostdinc"
        })
        .cloned()
        .collect();
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&args)
        .use_core()
        .ctypes_prefix("core::ffi")
        .derive_default(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        // Checked at compile time: Rust's layout of every generated struct
        // is the one clang computed from the headers.
        .layout_tests(true)
        // The shim's one-line wrappers (macros, static inlines), the Rust
        // entry points it calls, its softc and constants.
        .allowlist_function("vtbrs_.*")
        .allowlist_type("vtbrs_.*")
        .allowlist_var("VTBRS_.*|M_VTBRS")
        // Exported kernel functions the glue calls directly.
        .allowlist_function(KERNEL_FUNCTIONS.join("|"))
        .allowlist_var(KERNEL_VARS.join("|"))
        .allowlist_var(KERNEL_CONSTS.join("|"))
        .allowlist_type("device_t|vm_page|sysctl_oid|sysctl_req|vq_alloc_info|sglist|sglist_seg")
        .allowlist_type("bintime|cpuset_t|vmmeter|mtx|sx|callout|task|sysctl_ctx_list|timeval")
        // Kernel objects Rust only stores and hands back: their size and
        // alignment, never their fields.
        .opaque_type("mtx|sx|callout|task|sysctl_ctx_list|taskqueue|eventhandler_list|thread|proc")
        .generate()
        .expect("bindgen over the FreeBSD headers");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
}
