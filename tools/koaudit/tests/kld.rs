//! Audit real modules when they have been built: ours for amd64
//! (`sh kmod/build-kld.sh`), and the in-tree virtio_balloon.ko of an arm64
//! boot directory (`sh tools/build-test-kernel.sh -a arm64 ...`) against
//! its own kernel's symbols. Where they are absent the tests are compiled
//! as ignored (see build.rs): `cargo test` lists them as `ignored,
//! skipped: ...`.

use std::path::PathBuf;

use koaudit::KernelSymbols;

fn findings(report: &koaudit::Report) -> String {
    report
        .findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[cfg_attr(
    not(koaudit_kld),
    ignore = "skipped: target/kld/vtballoonrs.ko is absent (build it with sh kmod/build-kld.sh)"
)]
fn built_vtballoonrs_ko_has_no_findings() {
    let ko = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kld/vtballoonrs.ko");
    let data = std::fs::read(&ko).unwrap();
    let report = koaudit::audit(&data, None).expect("vtballoonrs.ko is an amd64 kld");
    assert!(
        report.findings.is_empty(),
        "findings in {}:\n{}",
        ko.display(),
        findings(&report)
    );
    assert_eq!(report.checks, 5);
    assert!(!report.undefined.is_empty(), "a kld calls into the kernel");
}

/// The global symbols a FreeBSD kernel defines (what `nm -g --defined-only`
/// lists), read with `object`.
fn kernel_symbols(kernel: &[u8]) -> KernelSymbols {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(kernel).unwrap();
    let names: Vec<&str> = file
        .symbols()
        .filter(|s| s.is_global() && !s.is_undefined())
        .filter_map(|s| s.name().ok())
        .collect();
    KernelSymbols::parse(&names.join("\n"))
}

#[test]
#[cfg_attr(
    not(koaudit_arm64_boot),
    ignore = "skipped: no arm64 boot directory (sh tools/build-test-kernel.sh -a arm64 ...)"
)]
fn in_tree_arm64_virtio_balloon_ko_has_no_findings() {
    let boot = PathBuf::from(env!("KOAUDIT_ARM64_BOOT"));
    let kernel = kernel_symbols(&std::fs::read(boot.join("kernel/kernel")).unwrap());
    assert!(kernel.len() > 10_000, "{} kernel symbols", kernel.len());
    let ko = boot.join("modules/virtio_balloon.ko");
    let report = koaudit::audit(&std::fs::read(&ko).unwrap(), Some(&kernel))
        .expect("virtio_balloon.ko is an arm64 kld");
    assert!(
        report.findings.is_empty(),
        "findings in {}:\n{}",
        ko.display(),
        findings(&report)
    );
    assert_eq!(report.checks, 8);
    for name in [
        "virtqueue_enqueue",
        "vm_page_alloc_noobj",
        "module_register_init",
    ] {
        assert!(report.undefined.iter().any(|u| u == name), "{name}");
    }
}
