//! Generates the FreeBSD kernel bindings and builds the C shim, the way
//! FreeBSD's kmod.mk prepares a module build: machine/x86/i386 include
//! links, `*_if.h` from the `.m` interface files with the tree's own
//! makeobjops.awk, and `offset.inc` from genoffset. Only for the kernel
//! target (x86_64-unknown-none) and only when `SYSDIR` holds the headers;
//! otherwise the crate is empty and host builds need no FreeBSD sources.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_TARGET: &str = "x86_64-unknown-none";
const CLANG_TARGET: &str = "x86_64-unknown-freebsd14.2";
/// Interface files whose generated headers the shim and bindings need.
const INTERFACES: &[&str] = &[
    "kern/device_if.m",
    "kern/bus_if.m",
    "dev/virtio/virtio_if.m",
];
/// The kernel's code generation flags for amd64 (sys/conf/kern.mk, kmod.mk).
const KERNEL_CFLAGS: &[&str] = &[
    "-O2",
    "-pipe",
    "-fno-strict-aliasing",
    "-ffreestanding",
    "-fwrapv",
    "-fno-common",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mno-mmx",
    "-mno-sse",
    "-msoft-float",
    "-mno-aes",
    "-mno-avx",
    "-fno-asynchronous-unwind-tables",
    "-D_KERNEL",
    "-DKLD_MODULE",
    "-nostdinc",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vtb_have_sysdir)");
    println!("cargo::rerun-if-env-changed=SYSDIR");
    println!("cargo::rerun-if-changed=shim/vtbrs_shim.c");
    println!("cargo::rerun-if-changed=shim/vtbrs_shim.h");
    println!("cargo::rerun-if-changed=wrapper.h");
    if env::var("TARGET").as_deref() != Ok(KERNEL_TARGET) {
        return;
    }
    let sysdir = PathBuf::from(env::var("SYSDIR").unwrap_or_else(|_| "/usr/src/sys".into()));
    if !sysdir.join("sys/param.h").exists() {
        println!(
            "cargo::warning=no FreeBSD headers at {}: kernel bindings not generated (set SYSDIR)",
            sysdir.display()
        );
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let inc = out.join("include");
    prepare_includes(&sysdir, &inc);
    let clang = clang();
    let mut cflags: Vec<String> = vec![format!("--target={CLANG_TARGET}")];
    cflags.extend(KERNEL_CFLAGS.iter().map(|s| s.to_string()));
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

/// machine/x86/i386 links and generated interface headers, as kmod.mk makes them.
fn prepare_includes(sysdir: &Path, inc: &Path) {
    fs::create_dir_all(inc).expect("include dir");
    for (link, dir) in [
        ("machine", "amd64/include"),
        ("x86", "x86/include"),
        ("i386", "i386/include"),
    ] {
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
        .layout_tests(false)
        .derive_default(true)
        .generate_comments(false)
        .allowlist_function("vtbrs_.*")
        .allowlist_type("vtbrs_.*")
        .allowlist_type("device_t")
        .allowlist_type("vm_page")
        .allowlist_type("mtx")
        .allowlist_type("sx")
        .allowlist_type("callout")
        .allowlist_type("timeval")
        .allowlist_type("task")
        .allowlist_type("sysctl_ctx_list")
        .allowlist_var(
            "PAGE_SIZE|PAGE_SHIFT|ENOMEM|EINVAL|ENXIO|EBUSY|ETIMEDOUT|EWOULDBLOCK|ENOSPC",
        )
        .allowlist_var("VTBRS_.*")
        // Kernel objects Rust only stores and hands back: their size and
        // alignment, never their fields.
        .opaque_type("mtx|sx|callout|vm_page|task|sysctl_ctx_list")
        .generate()
        .expect("bindgen over the FreeBSD headers");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
}
