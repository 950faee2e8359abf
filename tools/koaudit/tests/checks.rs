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
const MDT_STRUCT_VERSION: u32 = 1;
const MDT_DEPEND: u32 = 1;
const MDT_MODULE: u32 = 2;
const MDT_VERSION: u32 = 3;
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
            // Each set holds one pointer: to a `struct mod_metadata` of type
            // MDT_MODULE for the metadata set, as DECLARE_MODULE makes, and to
            // `func` for the others (standing in for a `struct sysinit`).
            let id = kld.section(set, SectionKind::Data, &[0; 8]);
            let target = if *set == "set_modmetadata_set" {
                kld.mod_metadata(MDT_MODULE)
            } else {
                kld.func
            };
            kld.reloc(id, 0, target, elf::R_X86_64_64);
        }
        kld
    }

    /// A `struct mod_metadata { int md_version; int md_type; const void
    /// *md_data; const char *md_cval; }` in its own data section, as
    /// MODULE_METADATA makes; returns a local symbol for it.
    fn mod_metadata(&mut self, md_type: u32) -> object::write::SymbolId {
        let mut bytes = MDT_STRUCT_VERSION.to_le_bytes().to_vec();
        bytes.extend_from_slice(&md_type.to_le_bytes());
        bytes.extend_from_slice(&[0; 16]);
        let section = self.obj.add_section(
            Vec::new(),
            format!(".data.md{md_type}").into_bytes(),
            SectionKind::Data,
        );
        let offset = self.obj.append_section_data(section, &bytes, 8);
        let func = self.func;
        self.reloc(section, offset + 8, func, elf::R_X86_64_64);
        self.obj.add_symbol(Symbol {
            name: format!("_mod_metadata_{md_type}").into_bytes(),
            value: offset,
            size: bytes.len() as u64,
            kind: SymbolKind::Data,
            scope: SymbolScope::Compilation,
            weak: false,
            section: SymbolSection::Section(section),
            flags: SymbolFlags::None,
        })
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

    /// A relocation with the usual addend: 0 for a pointer, -4 for the
    /// 32-bit pc-relative forms.
    fn reloc(
        &mut self,
        section: object::write::SectionId,
        offset: u64,
        symbol: object::write::SymbolId,
        r_type: u32,
    ) {
        let addend = if r_type == elf::R_X86_64_64 { 0 } else { -4 };
        self.reloc_addend(section, offset, symbol, r_type, addend);
    }

    fn reloc_addend(
        &mut self,
        section: object::write::SectionId,
        offset: u64,
        symbol: object::write::SymbolId,
        r_type: u32,
        addend: i64,
    ) {
        self.obj
            .add_relocation(
                section,
                Relocation {
                    offset,
                    symbol,
                    addend,
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
    let cases: [(&str, &[u8]); 18] = [
        ("fxsave", &[0x0f, 0xae, 0x07]), // fxsave (%rdi): no register operand
        ("fxrstor", &[0x0f, 0xae, 0x0f]), // fxrstor (%rdi)
        ("xsave", &[0x0f, 0xae, 0x27]),  // xsave (%rdi)
        ("ldmxcsr", &[0x0f, 0xae, 0x17]), // ldmxcsr (%rdi)
        ("stmxcsr", &[0x0f, 0xae, 0x1f]), // stmxcsr (%rdi)
        ("emms", &[0x0f, 0x77]),         // emms
        ("flds", &[0xd9, 0x07]),         // x87 load
        ("fnstcw", &[0xd9, 0x3f]),       // x87 control word store
        ("fninit", &[0xdb, 0xe3]),       // x87 control
        ("movq", &[0x0f, 0x6f, 0x07]),   // movq (%rdi),%mm0
        ("movups", &[0x0f, 0x11, 0x07]), // movups %xmm0,(%rdi)
        ("movdqa", &[0x66, 0x0f, 0x6f, 0x07]), // movdqa (%rdi),%xmm0
        ("vmovdqu", &[0xc5, 0xfe, 0x6f, 0x07]), // AVX ymm load
        ("vzeroupper", &[0xc5, 0xf8, 0x77]), // AVX, no operand
        ("vmovdqu64", &[0x62, 0xf1, 0xfe, 0x48, 0x6f, 0x07]), // AVX-512 zmm load
        ("movd", &[0x66, 0x0f, 0x6e, 0xc7]), // movd %edi,%xmm0
        ("pxor", &[0x66, 0x0f, 0xef, 0xc0]), // pxor %xmm0,%xmm0
        ("cvtsi2sd", &[0xf2, 0x48, 0x0f, 0x2a, 0xc7]), // cvtsi2sd %rdi,%xmm0
    ];
    for (name, bytes) in cases {
        let found = details(&one_instruction(bytes).audit(None), check::FPU_SIMD);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert!(found[0].contains(name), "{name}: {}", found[0]);
    }
}

#[test]
fn fences_prefetch_crc32_and_gpr_code_pass() {
    let cases: [&[u8]; 14] = [
        &[0x0f, 0xae, 0xf0],             // mfence
        &[0x0f, 0xae, 0xe8],             // lfence
        &[0x0f, 0xae, 0xf8],             // sfence
        &[0x0f, 0x18, 0x0f],             // prefetcht0 (%rdi)
        &[0x0f, 0x0d, 0x0f],             // prefetchw (%rdi)
        &[0x66, 0x0f, 0xae, 0x3f],       // clflushopt (%rdi)
        &[0xf2, 0x0f, 0x38, 0xf1, 0xc7], // crc32 %edi,%eax
        &[0x48, 0x0f, 0xc3, 0x07],       // movnti %rax,(%rdi)
        &[0xf3, 0x48, 0x0f, 0xb8, 0xc7], // popcnt %rdi,%rax
        &[0xf3, 0x90],                   // pause (core::hint::spin_loop)
        &[0x0f, 0x31],                   // rdtsc
        &[0x0f, 0xa2],                   // cpuid
        &[0x48, 0x0f, 0xc7, 0x0f],       // cmpxchg16b (%rdi)
        &[0xf3, 0x48, 0x0f, 0xbc, 0xc7], // tzcnt %rdi,%rax
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

const PUSH_RBP: &[u8] = &[0x55];
const MOV_RSP_RBP: &[u8] = &[0x48, 0x89, 0xe5];
const POP_RBP_RET: &[u8] = &[0x5d, 0xc3];
const SUB_16_RSP: &[u8] = &[0x48, 0x83, 0xec, 0x10];
const ADD_16_RSP: &[u8] = &[0x48, 0x83, 0xc4, 0x10];
const STORE_RBP_M16: &[u8] = &[0x48, 0x89, 0x7d, 0xf0]; // mov %rdi,-0x10(%rbp)
const STORE_RBP_M8: &[u8] = &[0x48, 0x89, 0x7d, 0xf8]; // mov %rdi,-0x8(%rbp)

fn red_zone_findings(parts: &[&[u8]]) -> Vec<String> {
    details(&Kld::new(&parts.concat()).audit(None), check::RED_ZONE)
}

#[test]
fn red_zone_through_the_frame_pointer_is_reported() {
    // A hosted leaf function with frame pointers: locals below %rbp, %rsp
    // never lowered (what clang -O2 makes for FreeBSD without -mno-red-zone).
    let found = red_zone_findings(&[PUSH_RBP, MOV_RSP_RBP, STORE_RBP_M16, POP_RBP_RET]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "koaudit: FAIL red-zone: func+0x4 (.text+0x4): `mov %rdi,-0x10(%rbp)` accesses \
             below %rsp (%rbp-0x10, only 0x0 bytes allocated below %rbp)"
        ),
        "{}",
        found[0]
    );

    // One callee-saved push covers -0x8(%rbp) but not -0x10(%rbp).
    let push_rbx: &[u8] = &[0x53];
    let pop_rbx: &[u8] = &[0x5b];
    assert!(red_zone_findings(&[
        PUSH_RBP,
        MOV_RSP_RBP,
        push_rbx,
        STORE_RBP_M8,
        pop_rbx,
        POP_RBP_RET
    ])
    .is_empty());
    let found = red_zone_findings(&[
        PUSH_RBP,
        MOV_RSP_RBP,
        push_rbx,
        STORE_RBP_M16,
        pop_rbx,
        POP_RBP_RET,
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("only 0x8 bytes allocated"),
        "{}",
        found[0]
    );
}

#[test]
fn frame_pointer_accesses_inside_the_frame_pass() {
    let test_je: &[u8] = &[0x48, 0x85, 0xff, 0x74, 0x06]; // test %rdi,%rdi; je +6
    let cases: [(&str, Vec<&[u8]>); 5] = [
        (
            "allocated frame",
            vec![
                PUSH_RBP,
                MOV_RSP_RBP,
                SUB_16_RSP,
                STORE_RBP_M16,
                ADD_16_RSP,
                POP_RBP_RET,
            ],
        ),
        (
            // The early-return epilogue is laid out before the other
            // path, which still runs with the 16-byte frame.
            "epilogue before another path",
            vec![
                PUSH_RBP,
                MOV_RSP_RBP,
                SUB_16_RSP,
                test_je,
                ADD_16_RSP,
                POP_RBP_RET,
                STORE_RBP_M16,
                ADD_16_RSP,
                POP_RBP_RET,
            ],
        ),
        (
            // Indexed: the address depends on %rcx; lea: only an address.
            "indexed access and lea",
            vec![
                PUSH_RBP,
                MOV_RSP_RBP,
                &[0x88, 0x54, 0x0d, 0xee], // mov %dl,-0x12(%rbp,%rcx)
                &[0x4c, 0x8d, 0xad, 0x7f, 0xff, 0xff, 0xff], // lea -0x81(%rbp),%r13
                POP_RBP_RET,
            ],
        ),
        (
            // %rsp lowered by a run-time amount: nothing is known.
            "dynamic allocation",
            vec![
                PUSH_RBP,
                MOV_RSP_RBP,
                &[0x48, 0x29, 0xc4], // sub %rax,%rsp
                STORE_RBP_M16,
                &[0xc9, 0xc3], // leave; ret
            ],
        ),
        (
            // Without `mov %rsp,%rbp`, %rbp is an ordinary register.
            "no frame pointer",
            vec![PUSH_RBP, STORE_RBP_M16, POP_RBP_RET],
        ),
    ];
    for (name, parts) in cases {
        let found = red_zone_findings(&parts);
        assert!(found.is_empty(), "{name}: {found:?}");
    }
}

#[test]
fn each_function_starts_with_an_unknown_frame() {
    // `func` allocates 16 bytes; `leaf`, right after it, allocates nothing
    // and must not inherit func's frame.
    let first = [
        PUSH_RBP,
        MOV_RSP_RBP,
        SUB_16_RSP,
        STORE_RBP_M16,
        ADD_16_RSP,
        POP_RBP_RET,
    ]
    .concat();
    let second = [PUSH_RBP, MOV_RSP_RBP, STORE_RBP_M16, POP_RBP_RET].concat();
    let mut kld = Kld::new(&[first.clone(), second].concat());
    let text = kld.text;
    kld.obj.add_symbol(Symbol {
        name: b"leaf".to_vec(),
        value: first.len() as u64,
        size: 0,
        kind: SymbolKind::Text,
        scope: SymbolScope::Compilation,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let found = details(&kld.audit(None), check::RED_ZONE);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("leaf+0x4 (.text+0x16)"), "{}", found[0]);
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
fn each_missing_required_linker_set_is_reported() {
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
        if missing == "set_sysuninit_set" {
            // DECLARE_MODULE makes no SYSUNINIT: the in-tree
            // virtio_balloon.ko has no such set and loads.
            assert!(found.is_empty(), "{found:?}");
            continue;
        }
        assert_eq!(found.len(), 1, "{missing}: {found:?}");
        assert!(found[0].contains(missing), "{}", found[0]);
    }
    let found = details(&Kld::with_sets(GOOD_CODE, &[]).audit(None), check::METADATA);
    assert_eq!(found.len(), 2);
}

/// A kld whose three sets are present, with `set` replaced by a section of
/// the given kind and contents (its relocations added by `relocate`).
fn with_set(
    set: &str,
    kind: SectionKind,
    data: &[u8],
    relocate: impl FnOnce(&mut Kld, object::write::SectionId),
) -> Report {
    let all = [
        "set_modmetadata_set",
        "set_sysinit_set",
        "set_sysuninit_set",
    ];
    let others: Vec<&str> = all.iter().copied().filter(|s| *s != set).collect();
    let mut kld = Kld::with_sets(GOOD_CODE, &others);
    let id = kld.section(set, kind, data);
    relocate(&mut kld, id);
    kld.audit(None)
}

#[test]
fn linker_sets_must_be_loaded_sections() {
    // Not SHF_ALLOC: the kernel linker does not load it, so
    // linker_file_lookup_set finds no set.
    let report = with_set("set_sysinit_set", SectionKind::Other, &[0; 8], |k, id| {
        let func = k.func;
        k.reloc(id, 0, func, elf::R_X86_64_64);
    });
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("set_sysinit_set") && found[0].contains("not loaded"),
        "{}",
        found[0]
    );

    // Empty: skipped by the kernel linker as well.
    let report = with_set("set_sysuninit_set", SectionKind::Data, &[], |_, _| {});
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("set_sysuninit_set (type 0x1, flags 0x3, 0 bytes) is not loaded"));
}

#[test]
fn linker_set_entries_must_be_relocated_pointers() {
    // Two slots, only the first relocated.
    let report = with_set("set_sysinit_set", SectionKind::Data, &[0; 16], |k, id| {
        let func = k.func;
        k.reloc(id, 0, func, elf::R_X86_64_64);
    });
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("set_sysinit_set+0x8 has no R_X86_64_64 relocation"),
        "{}",
        found[0]
    );

    // A size that is not a whole number of pointers.
    let report = with_set("set_sysuninit_set", SectionKind::Data, &[0; 12], |k, id| {
        let func = k.func;
        k.reloc(id, 0, func, elf::R_X86_64_64);
    });
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("not a multiple of 8"), "{}", found[0]);
}

#[test]
fn module_metadata_needs_an_mdt_module_entry() {
    // MODULE_DEPEND and MODULE_VERSION entries, but no DECLARE_MODULE.
    let report = with_set(
        "set_modmetadata_set",
        SectionKind::Data,
        &[0; 16],
        |k, id| {
            let depend = k.mod_metadata(MDT_DEPEND);
            let version = k.mod_metadata(MDT_VERSION);
            k.reloc(id, 0, depend, elf::R_X86_64_64);
            k.reloc(id, 8, version, elf::R_X86_64_64);
        },
    );
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("set_modmetadata_set has no MDT_MODULE entry"),
        "{}",
        found[0]
    );

    // As `ld -r` emits it: pointers relative to the section symbol of the
    // data section holding the entries, the module entry second.
    let report = with_set(
        "set_modmetadata_set",
        SectionKind::Data,
        &[0; 16],
        |k, id| {
            let mut entries = Vec::new();
            for md_type in [MDT_DEPEND, MDT_MODULE] {
                entries.extend_from_slice(&MDT_STRUCT_VERSION.to_le_bytes());
                entries.extend_from_slice(&md_type.to_le_bytes());
                entries.extend_from_slice(&[0; 16]);
            }
            let data = k.obj.section_id(StandardSection::Data);
            let base = k.obj.append_section_data(data, &entries, 8) as i64;
            let section_sym = k.obj.section_symbol(data);
            k.reloc_addend(id, 0, section_sym, elf::R_X86_64_64, base);
            k.reloc_addend(id, 8, section_sym, elf::R_X86_64_64, base + 24);
        },
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
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

    // link_elf_fix_link_set resolves the bounds of any section it loads,
    // whatever its name, but not of an empty or unallocated one.
    let mut kld = good();
    kld.section("my_table", SectionKind::ReadOnlyData, &[0; 8]);
    kld.section("empty_table", SectionKind::Data, &[]);
    kld.section("note_table", SectionKind::Other, &[0; 8]);
    for name in [
        "__start_my_table",
        "__stop_my_table",
        "__start_empty_table",
        "__stop_note_table",
    ] {
        kld.undefined(name);
    }
    let found = details(&kld.audit(Some(&kernel(&["printf"]))), check::UNDEFINED);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("__start_empty_table"), "{}", found[0]);
    assert!(found[1].contains("__stop_note_table"), "{}", found[1]);
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
    let riscv = Object::new(BinaryFormat::Elf, Architecture::Riscv64, Endianness::Little);
    let err = audit(&riscv.write().unwrap(), None).unwrap_err();
    assert!(err.contains("not an amd64 or arm64 object"), "{err}");
    // An amd64 kld is `ld -r` output, not a shared object.
    let mut so = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    so.flags = object::FileFlags::Elf {
        os_abi: 0,
        abi_version: 0,
        e_flags: 0,
    };
    let mut bytes = so.write().unwrap();
    bytes[16] = elf::ET_DYN as u8; // e_type
    let err = audit(&bytes, None).unwrap_err();
    assert!(err.contains("not a relocatable object"), "{err}");
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
