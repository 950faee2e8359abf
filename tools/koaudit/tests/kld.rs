//! Audit the real module when it has been built (`sh kmod/build-kld.sh`).
//! Where it is absent the test is compiled as ignored (see build.rs):
//! `cargo test` lists it as `ignored, skipped: ...`.

use std::path::PathBuf;

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
