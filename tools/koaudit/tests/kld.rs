//! Audit the real module when it has been built (`sh kmod/build-kld.sh`).

use std::path::PathBuf;

#[test]
fn built_vtballoonrs_ko_has_no_findings() {
    let ko = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/kld/vtballoonrs.ko");
    let Ok(data) = std::fs::read(&ko) else {
        println!(
            "note: {} is absent (build it with `sh kmod/build-kld.sh`); skipping",
            ko.display()
        );
        return;
    };
    let report = koaudit::audit(&data, None).expect("vtballoonrs.ko is an amd64 kld");
    assert!(
        report.findings.is_empty(),
        "findings in {}:\n{}",
        ko.display(),
        report
            .findings
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(report.checks, 5);
    assert!(!report.undefined.is_empty(), "a kld calls into the kernel");
}
