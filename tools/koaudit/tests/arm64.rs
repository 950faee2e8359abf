//! Each arm64 check fails on a small synthesized bad shared object and
//! passes on the good one (tests/support/so.rs writes them; the machine
//! code is literal words, so no assembler or linker is needed).

mod support;

use koaudit::{audit, check, KernelSymbols, Report};
use object::elf;
use support::so::{Ptr, So, MDT_DEPEND, MDT_VERSION};

fn kernel(names: &[&str]) -> KernelSymbols {
    KernelSymbols::parse(&names.join("\n"))
}

fn run(so: &So, kernel: Option<&KernelSymbols>) -> Report {
    audit(&so.bytes(), kernel).unwrap()
}

fn details(report: &Report, check: &str) -> Vec<String> {
    report.of(check).map(|f| f.to_string()).collect()
}

/// The one finding of `check`, and no other finding.
fn only(report: &Report, check: &str) -> String {
    let found = details(report, check);
    assert_eq!(found.len(), 1, "{check}: {:#?}", report.findings);
    assert_eq!(report.findings.len(), 1, "{:#?}", report.findings);
    found[0].clone()
}

#[test]
fn good_shared_object_has_no_findings() {
    let report = run(&So::good(), Some(&kernel(&["printf"])));
    assert_eq!(report.findings, vec![], "{:#?}", report.findings);
    assert_eq!(report.checks, 8);
    assert_eq!(report.undefined, vec!["printf".to_owned()]);
    assert_eq!(run(&So::good(), None).checks, 7);
}

#[test]
fn only_the_kernel_linkers_relocation_types_pass() {
    let allowed = [
        elf::R_AARCH64_NONE,
        elf::R_AARCH64_ABS64,
        elf::R_AARCH64_GLOB_DAT,
        elf::R_AARCH64_JUMP_SLOT,
        elf::R_AARCH64_RELATIVE,
        elf::R_AARCH64_IRELATIVE,
        elf::R_AARCH64_CALL26,
        elf::R_AARCH64_JUMP26,
    ];
    let rejected = [
        elf::R_AARCH64_TLSDESC,
        elf::R_AARCH64_TLS_TPREL,
        elf::R_AARCH64_TLS_DTPMOD,
        elf::R_AARCH64_COPY,
        elf::R_AARCH64_ABS32,
        elf::R_AARCH64_PREL32,
        elf::R_AARCH64_ADR_PREL_PG_HI21,
    ];
    for r_type in allowed.into_iter().chain(rejected) {
        let mut so = So::good();
        so.relocs.push((r_type, Some("printf".into())));
        let report = run(&so, None);
        if allowed.contains(&r_type) {
            assert!(
                report.findings.is_empty(),
                "type {r_type}: {:#?}",
                report.findings
            );
        } else {
            let line = only(&report, check::RELOCATION);
            assert!(line.contains(&format!("({r_type}) in .rela.dyn")), "{line}");
            assert!(line.contains("against printf"), "{line}");
        }
    }
    let mut so = So::good();
    so.relocs.push((elf::R_AARCH64_TLSDESC, None));
    let line = only(&run(&so, None), check::RELOCATION);
    assert!(
        line.starts_with("koaudit: FAIL relocation: R_AARCH64_TLSDESC (1031) in .rela.dyn at 0x"),
        "{line}"
    );
}

/// A module whose .text is `words` between the good prologue and epilogue
/// (the first word of `words` is at .text+0x8).
fn with_code(words: &[u32]) -> So {
    let mut so = So::good();
    let mut code = so.code[..2].to_vec();
    code.extend_from_slice(words);
    code.extend_from_slice(&so.code[6..]);
    so.code = code;
    so
}

#[test]
fn fp_simd_instruction_is_reported_with_place() {
    let line = only(&run(&with_code(&[0x1e622820]), None), check::FPU_SIMD); // fadd d0, d1, d2
    assert!(
        line.starts_with("koaudit: FAIL fpu-simd: func+0x8 (.text+0x8 at 0x"),
        "{line}"
    );
    assert!(
        line.contains("0x1e622820 (SIMD&FP data processing)"),
        "{line}"
    );
}

#[test]
fn fp_simd_forms_are_all_caught() {
    for (word, text) in [
        (0x3dc00000u32, "ldr q0, [x0]"),
        (0xfd0007e1, "str d1, [sp, #8]"),
        (0xad400400, "ldp q0, q1, [x0]"),
        (0x4ea11c20, "mov v0.16b, v1.16b"),
        (0x9e670000, "fmov d0, x0"),
        (0xd51b4400, "msr fpcr, x0"),
        (0xd53b4420, "mrs x0, fpsr"),
        (0x04bf5020, "rdvl x0, #1"),
        (0xd503477f, "smstart"),
    ] {
        let report = run(&with_code(&[word]), None);
        let found = details(&report, check::FPU_SIMD);
        assert_eq!(found.len(), 1, "{text}: {:#?}", report.findings);
    }
}

#[test]
fn writes_of_x18_are_reported_and_reads_pass() {
    let line = only(&run(&with_code(&[0xaa0003f2]), None), check::X18); // mov x18, x0
    assert!(
        line.starts_with("koaudit: FAIL x18: func+0x8 (.text+0x8 at 0x"),
        "{line}"
    );
    assert!(line.contains("writes x18"), "{line}");
    for (word, text) in [
        (0xf9400012u32, "ldr x18, [x0]"),
        (0xa9404be0, "ldp x0, x18, [sp]"),
        (0xf8408640, "ldr x0, [x18], #8"),
        (0xd538d092, "mrs x18, tpidr_el1"),
        (0xc8127c20, "stxr w18, x0, [x1]"),
    ] {
        let report = run(&with_code(&[word]), None);
        assert_eq!(
            details(&report, check::X18).len(),
            1,
            "{text}: {:#?}",
            report.findings
        );
    }
    for (word, text) in [
        (0xf90007f2u32, "str x18, [sp, #8]"),
        (0xf100025f, "cmp x18, #0"),
        (0xd518d092, "msr tpidr_el1, x18"),
        (0xf9400640, "ldr x0, [x18, #8]"),
    ] {
        let report = run(&with_code(&[word]), None);
        assert!(report.findings.is_empty(), "{text}: {:#?}", report.findings);
    }
}

#[test]
fn undecodable_words_are_findings_unless_marked_data() {
    let line = only(&run(&with_code(&[0x0001_0000]), None), check::DECODE);
    assert!(
        line.contains("0x00010000 is not an instruction koaudit decodes"),
        "{line}"
    );

    // The same words after a `$d` mapping symbol (a literal pool) and
    // before the next `$x` are data: not decoded.
    let mut so = with_code(&[0x0001_0000, 0x1e622820]);
    so.text_symbols.push(("$d.1".into(), 8));
    so.text_symbols.push(("$x.2".into(), 16));
    let report = run(&so, None);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);

    // lld's fill between input sections is not reported either.
    let report = run(&with_code(&[0xd4d4_d4d4]), None);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

#[test]
fn unwind_sections_are_reported() {
    for name in [".eh_frame", ".eh_frame_hdr", ".gcc_except_table"] {
        let mut so = So::good();
        so.extra.push((
            name.into(),
            elf::SHT_PROGBITS,
            elf::SHF_ALLOC.into(),
            vec![0; 16],
        ));
        let line = only(&run(&so, None), check::UNWIND);
        assert!(line.contains(name), "{line}");
    }
}

#[test]
fn required_linker_sets_are_checked_and_sysuninit_is_optional() {
    for missing in ["set_modmetadata_set", "set_sysinit_set"] {
        let report = run(&So::good().without_set(missing), None);
        let line = only(&report, check::METADATA);
        assert!(
            line.contains(&format!("section {missing} is missing")),
            "{line}"
        );
    }
    // DECLARE_MODULE makes no SYSUNINIT: the in-tree virtio_balloon.ko has
    // no set_sysuninit_set and loads.
    let report = run(&So::good().without_set("set_sysuninit_set"), None);
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
}

#[test]
fn set_bounds_must_be_global_dynamic_symbols() {
    let mut so = So::good();
    so.bounds = false;
    let report = run(&so, None);
    let found = details(&report, check::METADATA);
    // start and stop of each of the three sets
    assert_eq!(found.len(), 6, "{found:#?}");
    assert!(
        found[0].contains("__start_set_modmetadata_set is not a global dynamic symbol"),
        "{}",
        found[0]
    );

    let mut so = So::good();
    so.local_bounds = true;
    assert_eq!(details(&run(&so, None), check::METADATA).len(), 6);
}

#[test]
fn linker_set_slots_need_dynamic_relocations() {
    let mut so = So::good();
    so.sets[1].1.push(Ptr::Unrelocated);
    let line = only(&run(&so, None), check::METADATA);
    assert!(
        line.contains("set_sysinit_set+0x8 (at 0x") && line.contains("has no RELATIVE or ABS64"),
        "{line}"
    );
}

#[test]
fn module_metadata_needs_an_mdt_module_entry() {
    let mut so = So::good();
    so.metadata = vec![MDT_DEPEND, MDT_VERSION];
    let line = only(&run(&so, None), check::METADATA);
    assert!(
        line.contains("set_modmetadata_set has no MDT_MODULE entry"),
        "{line}"
    );

    // Reached through ABS64 against a symbol that is no mod_metadata.
    let mut so = So::good();
    so.sets[0].1 = vec![Ptr::Metadata(0), Ptr::Abs64("func")];
    let line = only(&run(&so, None), check::METADATA);
    assert!(line.contains("no MDT_MODULE entry"), "{line}");
}

#[test]
fn layout_the_kernel_linker_refuses_is_reported() {
    let mut so = So::good();
    so.hash = false;
    let line = only(&run(&so, None), check::LAYOUT);
    assert!(line.contains("no DT_HASH"), "{line}");

    let mut so = So::good();
    so.interp = true;
    let line = only(&run(&so, None), check::LAYOUT);
    assert!(line.contains("PT_INTERP"), "{line}");

    let mut so = So::good();
    so.loads = 4;
    assert!(run(&so, None).findings.is_empty());
    so.loads = 5;
    let line = only(&run(&so, None), check::LAYOUT);
    assert!(line.contains("5 PT_LOAD segments"), "{line}");
}

#[test]
fn undefined_symbols_are_checked_against_the_kernel() {
    let mut so = So::good();
    so.undefined.push(("no_such_kernel_function".into(), false));
    so.undefined.push(("maybe_there".into(), true));
    let list = kernel(&["printf"]);
    let report = run(&so, Some(&list));
    let found = details(&report, check::UNDEFINED);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].contains("maybe_there is a weak undefined symbol"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("no_such_kernel_function is undefined"),
        "{}",
        found[1]
    );
    assert_eq!(
        report.undefined,
        vec!["maybe_there", "no_such_kernel_function", "printf"]
    );
    assert!(run(&so, None).findings.is_empty());
    let list = kernel(&["printf", "maybe_there", "no_such_kernel_function"]);
    assert!(run(&so, Some(&list)).findings.is_empty());
}

#[test]
fn relocatable_arm64_objects_are_errors() {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness};
    let rel = Object::new(BinaryFormat::Elf, Architecture::Aarch64, Endianness::Little);
    let err = audit(&rel.write().unwrap(), None).unwrap_err();
    assert!(err.contains("not a shared object"), "{err}");
    let riscv = Object::new(BinaryFormat::Elf, Architecture::Riscv64, Endianness::Little);
    let err = audit(&riscv.write().unwrap(), None).unwrap_err();
    assert!(err.contains("not an amd64 or arm64 object"), "{err}");
}

#[test]
fn cli_audits_arm64_modules() {
    let dir = std::env::temp_dir().join(format!("koaudit-arm64-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ko = dir.join("bad.ko");
    std::fs::write(&ko, with_code(&[0xaa0003f2]).bytes()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_koaudit"))
        .arg(&ko)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("koaudit: FAIL x18: "), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "koaudit: {}: 7 checks, 1 findings\n",
            ko.display()
        )),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
