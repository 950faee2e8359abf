//! Each check fails on a small synthesized bad object and passes on a good
//! one. Objects are built with `object::write`; the machine code is literal
//! bytes, so no assembler or linker is needed.

use koaudit::{audit, check, KernelSymbols, Report};
use object::elf;
use object::write::{Object, Relocation, StandardSection, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};

/// push %rbp; mov %rsp,%rbp; sub $0x10,%rsp; mov %rax,0x8(%rsp);
/// call printf (PLT32 at 0xe); mov $.data,%rax (32S at 0x15) -- 48 c7 c0 imm32;
/// mfence; lea -0x8(%rsp),%rsp; add $0x18,%rsp; pop %rbp; ret
const GOOD_CODE: &[u8] = &[
    0x55, // push %rbp
    0x48, 0x89, 0xe5, // mov %rsp,%rbp
    0x48, 0x83, 0xec, 0x10, // sub $0x10,%rsp
    0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
    0xe8, 0, 0, 0, 0, // call printf
    0x48, 0xc7, 0xc0, 0, 0, 0, 0, // mov $.data,%rax
    0x0f, 0xae, 0xf0, // mfence (SSE2 CPUID bit, no FPU state)
    0x48, 0x8d, 0x64, 0x24, 0xf8, // lea -0x8(%rsp),%rsp
    0x48, 0x83, 0xc4, 0x18, // add $0x18,%rsp
    0x5d, // pop %rbp
    0xc3, // ret
];
const CALL_RELOC_AT: u64 = 0xe;
const DATA_RELOC_AT: u64 = 0x15;

/// A kld under construction: a `.text` with one function `func` and,
/// unless removed, the three linker-set sections.
struct Kld {
    obj: Object<'static>,
    text: object::write::SectionId,
    func: object::write::SymbolId,
}

impl Kld {
    fn new(code: &[u8]) -> Self {
        Self::with_sets(
            code,
            &[
                "set_modmetadata_set",
                "set_sysinit_set",
                "set_sysuninit_set",
            ],
        )
    }

    fn with_sets(code: &[u8], sets: &[&str]) -> Self {
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        let offset = obj.append_section_data(text, code, 16);
        let func = obj.add_symbol(Symbol {
            name: b"func".to_vec(),
            value: offset,
            size: code.len() as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let mut kld = Kld { obj, text, func };
        for set in sets {
            // Each set holds a pointer to `func`, as SYSINIT and MODULE_METADATA do.
            let id = kld.section(set, SectionKind::Data, &[0; 8]);
            kld.reloc(id, 0, kld.func, elf::R_X86_64_64);
        }
        kld
    }

    fn section(&mut self, name: &str, kind: SectionKind, data: &[u8]) -> object::write::SectionId {
        let id = self
            .obj
            .add_section(Vec::new(), name.as_bytes().to_vec(), kind);
        self.obj.append_section_data(id, data, 8);
        id
    }

    fn undefined(&mut self, name: &str) -> object::write::SymbolId {
        self.obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Dynamic,
            weak: name.starts_with("__"),
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    }

    fn reloc(
        &mut self,
        section: object::write::SectionId,
        offset: u64,
        symbol: object::write::SymbolId,
        r_type: u32,
    ) {
        self.obj
            .add_relocation(
                section,
                Relocation {
                    offset,
                    symbol,
                    addend: if r_type == elf::R_X86_64_64 { 0 } else { -4 },
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .unwrap();
    }

    fn bytes(&self) -> Vec<u8> {
        self.obj.write().unwrap()
    }

    fn audit(&self, kernel: Option<&KernelSymbols>) -> Report {
        audit(&self.bytes(), kernel).unwrap()
    }
}

/// The good module: calls `printf` (PLT32), takes the address of `.data`
/// (32S), has a 64 relocation in `.data` and the three linker sets.
fn good() -> Kld {
    let mut kld = Kld::new(GOOD_CODE);
    let printf = kld.undefined("printf");
    let data = kld.obj.section_id(StandardSection::Data);
    kld.obj.append_section_data(data, &[0; 16], 8);
    let data_sym = kld.obj.section_symbol(data);
    let text = kld.text;
    kld.reloc(text, CALL_RELOC_AT, printf, elf::R_X86_64_PLT32);
    kld.reloc(text, DATA_RELOC_AT, data_sym, elf::R_X86_64_32S);
    let func = kld.func;
    kld.reloc(data, 0, func, elf::R_X86_64_64);
    kld.reloc(data, 8, printf, elf::R_X86_64_PC32);
    kld
}

fn kernel(names: &[&str]) -> KernelSymbols {
    KernelSymbols::parse(&names.join("\n"))
}

fn details(report: &Report, check: &str) -> Vec<String> {
    report.of(check).map(|f| f.to_string()).collect()
}

#[test]
fn good_module_has_no_findings() {
    let report = good().audit(Some(&kernel(&["printf"])));
    assert_eq!(report.findings, vec![], "{:#?}", report.findings);
    assert_eq!(report.checks, 6);
    assert_eq!(report.undefined, vec!["printf".to_owned()]);
    assert_eq!(good().audit(None).checks, 5);
}

#[test]
fn gotpcrel_relocation_is_reported_with_section_offset_symbol() {
    let mut kld = good();
    let sym = kld.undefined("some_global");
    let text = kld.text;
    kld.reloc(text, DATA_RELOC_AT + 4, sym, elf::R_X86_64_GOTPCREL);
    let report = kld.audit(None);
    let found = details(&report, check::RELOCATION);
    assert_eq!(found.len(), 1, "{found:?}");
    let line = &found[0];
    assert!(line.starts_with("koaudit: FAIL relocation: "), "{line}");
    for part in [
        "R_X86_64_GOTPCREL (9)",
        "in .text",
        "offset 0x19",
        "against some_global-0x4;",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
}

#[test]
fn only_kernel_linker_relocation_types_pass() {
    let allowed = [0, 1, 2, 4, 11];
    let rejected = [
        elf::R_X86_64_GOTPCREL,
        elf::R_X86_64_32,
        elf::R_X86_64_GOTPCRELX,
        elf::R_X86_64_REX_GOTPCRELX,
        elf::R_X86_64_TLSGD,
        elf::R_X86_64_GOTTPOFF,
        elf::R_X86_64_TPOFF32,
        elf::R_X86_64_PC64,
    ];
    for r_type in allowed.into_iter().chain(rejected) {
        let mut kld = good();
        let sym = kld.undefined("printf2");
        let data = kld.obj.section_id(StandardSection::Data);
        kld.reloc(data, 0, sym, r_type);
        let found = details(&kld.audit(None), check::RELOCATION);
        if allowed.contains(&r_type) {
            assert!(found.is_empty(), "type {r_type}: {found:?}");
        } else {
            assert_eq!(found.len(), 1, "type {r_type}");
            assert!(found[0].contains(&format!("({r_type})")), "{}", found[0]);
            assert!(found[0].contains("in .data"), "{}", found[0]);
        }
    }
}

#[test]
fn relocations_of_unloaded_sections_are_ignored() {
    // Debug info uses R_X86_64_32, but the kernel linker skips relocation
    // tables of sections without SHF_ALLOC.
    let mut kld = good();
    let debug = kld.section(".debug_info", SectionKind::Debug, &[0; 8]);
    let func = kld.func;
    kld.reloc(debug, 0, func, elf::R_X86_64_32);
    assert!(kld.audit(None).findings.is_empty());
}

/// Code for one instruction followed by `ret`, inside `func` at offset 1
/// after a `push %rbp`.
fn one_instruction(instr: &[u8]) -> Kld {
    let mut code = vec![0x55];
    code.extend_from_slice(instr);
    code.extend_from_slice(&[0x5d, 0xc3]);
    Kld::new(&code)
}

#[test]
fn sse_instruction_is_reported_with_function_offset_and_text() {
    let report = one_instruction(&[0x0f, 0x28, 0x07]).audit(None); // movaps (%rdi),%xmm0
    let found = details(&report, check::FPU_SIMD);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("koaudit: FAIL fpu-simd: func+0x1 (.text+0x1): `movaps (%rdi),%xmm0`"),
        "{}",
        found[0]
    );
    assert!(report.of(check::RED_ZONE).next().is_none());
}

#[test]
fn fpu_simd_forms_are_all_caught() {
    let cases: [(&str, &[u8]); 9] = [
        ("fxsave", &[0x0f, 0xae, 0x07]), // fxsave (%rdi): no register operand
        ("ldmxcsr", &[0x0f, 0xae, 0x17]), // ldmxcsr (%rdi)
        ("emms", &[0x0f, 0x77]),         // emms
        ("flds", &[0xd9, 0x07]),         // x87 load
        ("fninit", &[0xdb, 0xe3]),       // x87 control
        ("movq", &[0x0f, 0x6f, 0x07]),   // movq (%rdi),%mm0
        ("vmovdqu", &[0xc5, 0xfe, 0x6f, 0x07]), // AVX ymm load
        ("movd", &[0x66, 0x0f, 0x6e, 0xc7]), // movd %edi,%xmm0
        ("pxor", &[0x66, 0x0f, 0xef, 0xc0]), // pxor %xmm0,%xmm0
    ];
    for (name, bytes) in cases {
        let found = details(&one_instruction(bytes).audit(None), check::FPU_SIMD);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(found[0].contains(name), "{name}: {}", found[0]);
    }
}

#[test]
fn fences_prefetch_crc32_and_gpr_code_pass() {
    let cases: [&[u8]; 6] = [
        &[0x0f, 0xae, 0xf0],             // mfence
        &[0x0f, 0xae, 0xe8],             // lfence
        &[0x0f, 0x18, 0x0f],             // prefetcht0 (%rdi)
        &[0xf2, 0x0f, 0x38, 0xf1, 0xc7], // crc32 %edi,%eax
        &[0x48, 0x0f, 0xc3, 0x07],       // movnti %rax,(%rdi)
        &[0xf3, 0x48, 0x0f, 0xb8, 0xc7], // popcnt %rdi,%rax
    ];
    for bytes in cases {
        let report = one_instruction(bytes).audit(None);
        assert!(
            report.findings.is_empty(),
            "{bytes:02x?}: {:?}",
            report.findings
        );
    }
}

#[test]
fn red_zone_store_is_reported() {
    let report = one_instruction(&[0x48, 0x89, 0x44, 0x24, 0xf8]).audit(None); // mov %rax,-0x8(%rsp)
    let found = details(&report, check::RED_ZONE);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("koaudit: FAIL red-zone: func+0x1 (.text+0x1): `mov %rax,-0x8(%rsp)`"),
        "{}",
        found[0]
    );

    // Loads below %rsp, and taking the address, too.
    for bytes in [
        &[0x8b, 0x44, 0x24, 0x80][..],
        &[0x48, 0x8d, 0x44, 0x24, 0xf0],
    ] {
        assert_eq!(
            one_instruction(bytes)
                .audit(None)
                .of(check::RED_ZONE)
                .count(),
            1,
            "{bytes:02x?}"
        );
    }
}

#[test]
fn stack_accesses_above_rsp_pass() {
    let cases: [&[u8]; 4] = [
        &[0x48, 0x89, 0x44, 0x24, 0x08], // mov %rax,0x8(%rsp)
        &[0x48, 0x89, 0x04, 0x24],       // mov %rax,(%rsp)
        &[0x48, 0x8d, 0x64, 0x24, 0xf8], // lea -0x8(%rsp),%rsp (stack adjust)
        &[0x48, 0x89, 0x45, 0xf8],       // mov %rax,-0x8(%rbp) (frame, not red zone)
    ];
    for bytes in cases {
        let report = one_instruction(bytes).audit(None);
        assert!(
            report.findings.is_empty(),
            "{bytes:02x?}: {:?}",
            report.findings
        );
    }
}

#[test]
fn unwind_sections_are_reported() {
    for (name, kind) in [
        (".eh_frame", SectionKind::ReadOnlyData),
        (".eh_frame_hdr", SectionKind::ReadOnlyData),
        (".gcc_except_table", SectionKind::ReadOnlyData),
        (
            ".unwind_by_type",
            SectionKind::Elf(koaudit::elf::SHT_X86_64_UNWIND),
        ),
    ] {
        let mut kld = good();
        kld.section(name, kind, &[0; 16]);
        let found = details(&kld.audit(None), check::UNWIND);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(found[0].contains(name), "{}", found[0]);
    }
}

#[test]
fn each_missing_linker_set_is_reported() {
    let all = [
        "set_modmetadata_set",
        "set_sysinit_set",
        "set_sysuninit_set",
    ];
    for missing in all {
        let sets: Vec<&str> = all.iter().copied().filter(|s| *s != missing).collect();
        let found = details(
            &Kld::with_sets(GOOD_CODE, &sets).audit(None),
            check::METADATA,
        );
        assert_eq!(found.len(), 1, "{missing}: {found:?}");
        assert!(found[0].contains(missing), "{}", found[0]);
    }
    let found = details(&Kld::with_sets(GOOD_CODE, &[]).audit(None), check::METADATA);
    assert_eq!(found.len(), 3);
}

#[test]
fn undefined_symbol_missing_from_kernel_list_is_reported() {
    let mut kld = good();
    kld.undefined("no_such_kernel_function");
    let list = kernel(&["printf"]);
    let report = kld.audit(Some(&list));
    let found = details(&report, check::UNDEFINED);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("no_such_kernel_function"));
    assert_eq!(report.undefined, vec!["no_such_kernel_function", "printf"]);

    // Without a list the symbol is only listed, and with it in the list it passes.
    assert!(kld.audit(None).findings.is_empty());
    let list = kernel(&["printf", "no_such_kernel_function"]);
    assert!(kld.audit(Some(&list)).findings.is_empty());
}

#[test]
fn linker_set_bounds_resolve_only_for_the_modules_own_sets() {
    let mut kld = good();
    kld.undefined("__start_set_sysinit_set");
    kld.undefined("__stop_set_sysinit_set");
    kld.undefined("__start_set_pcpu");
    let found = details(&kld.audit(Some(&kernel(&["printf"]))), check::UNDEFINED);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("__start_set_pcpu"));
    // The kernel's own set bounds are fine when the kernel exports them.
    let list = kernel(&["printf", "__start_set_pcpu"]);
    assert!(kld.audit(Some(&list)).findings.is_empty());
}

#[test]
fn kernel_symbol_list_accepts_names_and_nm_lines() {
    let list = KernelSymbols::parse(
        "printf\nffffffff80b1c2d0 T malloc\n  ffffffff81e00000 D hz  \n\n# comment\n                 U not_defined\n",
    );
    assert!(list.contains("printf") && list.contains("malloc") && list.contains("hz"));
    assert!(!list.contains("not_defined") && !list.contains("T"));
    assert_eq!(list.len(), 3);
}

#[test]
fn non_kld_inputs_are_errors() {
    assert!(audit(b"not an elf", None).is_err());
    let arm = Object::new(BinaryFormat::Elf, Architecture::Aarch64, Endianness::Little);
    let err = audit(&arm.write().unwrap(), None).unwrap_err();
    assert!(err.contains("amd64"), "{err}");
}

#[test]
fn cli_prints_findings_undefined_symbols_and_summary() {
    let dir = std::env::temp_dir().join(format!("koaudit-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut kld = good();
    kld.section(".eh_frame", SectionKind::ReadOnlyData, &[0; 8]);
    let ko = dir.join("bad.ko");
    std::fs::write(&ko, kld.bytes()).unwrap();
    let syms = dir.join("ksyms.txt");
    std::fs::write(&syms, "ffffffff80000000 T printf\n").unwrap();

    let run = |args: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_koaudit"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[std::path::Path::new("--kernel-symbols"), &syms, &ko]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "koaudit: undefined symbols (1):");
    assert_eq!(lines[1], "  printf");
    assert!(
        lines[2].starts_with("koaudit: FAIL unwind: section .eh_frame"),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        format!("koaudit: {}: 6 checks, 1 findings", ko.display())
    );

    std::fs::write(&ko, good().bytes()).unwrap();
    let out = run(&[&ko]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with(": 5 checks, 0 findings\n"));

    assert_eq!(run(&[]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
