//! Tells the tests what this machine has, so that a test needing an absent
//! tool or tree is compiled as ignored ("skipped: <reason>" in the test
//! output, counted as ignored, not as passed), as in tools/koaudit.
//!
//! cfg                   set when
//! mancheck_mandoc       mandoc and makewhatis are on PATH (Debian: mandoc)
//! mancheck_freebsd_src  $FREEBSD_SRC (default /usr/src, passed on as
//!                       MANCHECK_FREEBSD_SRC) has share/man/man4
//! mancheck_make         make and gzip are on PATH

use std::path::{Path, PathBuf};

const CFGS: [&str; 3] = ["mancheck_mandoc", "mancheck_freebsd_src", "mancheck_make"];

/// Whether `tool` is on PATH; asks Cargo to look again when it appears.
fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    // A path that does not exist makes Cargo rerun this script every
    // build, so installing the tool later is noticed.
    let watch = found
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/bin").join(tool));
    println!("cargo::rerun-if-changed={}", watch.display());
    found.is_some()
}

fn exists(path: &Path) -> bool {
    println!("cargo::rerun-if-changed={}", path.display());
    path.exists()
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=FREEBSD_SRC");
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let set = |cfg: &str, on: bool| {
        if on {
            println!("cargo::rustc-cfg={cfg}");
        }
    };
    set("mancheck_mandoc", have("mandoc") & have("makewhatis"));
    let src = std::env::var_os("FREEBSD_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/src"));
    println!("cargo::rustc-env=MANCHECK_FREEBSD_SRC={}", src.display());
    set("mancheck_freebsd_src", exists(&src.join("share/man/man4")));
    set("mancheck_make", have("make") & have("gzip"));
}
