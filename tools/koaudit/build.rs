//! Tells the tests what this machine has, so that a test needing an absent
//! tool or file is compiled as ignored ("skipped: <reason>" in the test
//! output, counted as ignored, not as passed) instead of passing without
//! having run.
//!
//! cfg                  set when
//! koaudit_llvm         llvm-mc-19 and ld.lld-19 run (Debian's build
//!                      targets both x86_64 and AArch64)
//! koaudit_clang        clang-19 runs
//! koaudit_objdump      llvm-objdump-19 and llvm-objcopy-19 run
//! koaudit_kld          target/kld/vtballoonrs.ko exists
//! koaudit_arm64_boot   $FREEBSD_BOOT_ARM64 (default /opt/freebsd-boot-arm64,
//!                      passed on as KOAUDIT_ARM64_BOOT) has kernel/kernel
//!                      and modules/virtio_balloon.ko

use std::path::{Path, PathBuf};
use std::process::Command;

const CFGS: [&str; 5] = [
    "koaudit_llvm",
    "koaudit_clang",
    "koaudit_objdump",
    "koaudit_kld",
    "koaudit_arm64_boot",
];

/// Whether `tool --version` runs; asks Cargo to look again when the tool
/// appears or changes.
fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .unwrap_or(None);
    // A path that does not exist makes Cargo rerun this script every
    // build, so installing the tool later is noticed.
    let watch = found
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(tool));
    println!("cargo::rerun-if-changed={}", watch.display());
    found.is_some()
        && Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

fn exists(path: &Path) -> bool {
    println!("cargo::rerun-if-changed={}", path.display());
    path.is_file()
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=FREEBSD_BOOT_ARM64");
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let set = |cfg: &str, on: bool| {
        if on {
            println!("cargo::rustc-cfg={cfg}");
        }
    };
    set("koaudit_llvm", have("llvm-mc-19") & have("ld.lld-19"));
    set("koaudit_clang", have("clang-19"));
    set(
        "koaudit_objdump",
        have("llvm-objdump-19") & have("llvm-objcopy-19"),
    );
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    set(
        "koaudit_kld",
        exists(&manifest.join("../../target/kld/vtballoonrs.ko")),
    );
    let boot = std::env::var_os("FREEBSD_BOOT_ARM64")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/freebsd-boot-arm64"));
    println!("cargo::rustc-env=KOAUDIT_ARM64_BOOT={}", boot.display());
    set(
        "koaudit_arm64_boot",
        exists(&boot.join("kernel/kernel")) & exists(&boot.join("modules/virtio_balloon.ko")),
    );
}
