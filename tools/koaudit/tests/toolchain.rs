//! The checks against what a real toolchain emits: assembly snippets put
//! through Debian's `llvm-mc-19` and linked with `ld.lld-19` as a kld is
//! (amd64: `ld -r`; arm64: `ld -Bshareable -znotext -znorelro`), and a C
//! file compiled by `clang-19` with hosted and with kernel flags.
//!
//! Where these tools are absent the tests are compiled as ignored (see
//! build.rs) and `cargo test` lists them as `ignored, skipped: ...`.
//! `tests/checks.rs` and `tests/arm64.rs` cover every check without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use koaudit::{audit, check, KernelSymbols, Report};

const TRIPLE: &str = "x86_64-unknown-freebsd14.2";

/// A minimal module: a function calling `printf` (PLT32), taking the
/// address of data (32S) and of its sysinit set's bounds (PC32, weak
/// undefined `__start_`/`__stop_` as sys/linker_set.h declares them), an
/// MDT_MODULE `struct mod_metadata` and the three linker sets.
const SKELETON: &str = r#"
	.text
	.globl	func
	.type	func,@function
func:
	pushq	%rbp
	movq	%rsp, %rbp
	callq	printf@PLT
	movq	$data_var, %rax
	leaq	__start_set_sysinit_set(%rip), %rax
	leaq	__stop_set_sysinit_set(%rip), %rax
	popq	%rbp
	retq
	.size	func, .-func

	.data
	.p2align 3
md_module:
	.long	1, 2
	.quad	0, name
data_var:
	.quad	func
	.section .rodata
name:	.asciz	"kotest"
	.weak	__start_set_sysinit_set
	.weak	__stop_set_sysinit_set
"#;

const SETS: &str = r#"
	.section set_modmetadata_set,"aw",@progbits
	.p2align 3
	.quad	md_module
	.section set_sysinit_set,"aw",@progbits
	.p2align 3
	.quad	func
	.section set_sysuninit_set,"aw",@progbits
	.p2align 3
	.quad	func
"#;

/// A scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("koaudit-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assemble `source` with llvm-mc-19 and link it with `ld.lld-19 -r`;
/// returns the .ko bytes.
fn assemble(dir: &Path, name: &str, source: &str) -> Vec<u8> {
    let s = dir.join(format!("{name}.s"));
    let o = dir.join(format!("{name}.o"));
    let ko = dir.join(format!("{name}.ko"));
    std::fs::write(&s, source).unwrap();
    run(Command::new("llvm-mc-19")
        .args(["-filetype=obj", &format!("-triple={TRIPLE}"), "-o"])
        .args([&o, &s]));
    run(Command::new("ld.lld-19")
        .arg("-r")
        .arg("-o")
        .args([&ko, &o]));
    std::fs::read(ko).unwrap()
}

fn kernel() -> KernelSymbols {
    KernelSymbols::parse("ffffffff80b1c2d0 T printf\nffffffff81e00000 D some_global\ntls_var\n")
}

fn details(report: &Report, check: &str) -> Vec<String> {
    report.of(check).map(|f| f.to_string()).collect()
}

/// Runs `test` in a scratch directory.
fn with_assembler(test: &str, body: impl FnOnce(&Path)) {
    let dir = scratch(test);
    body(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(
    not(koaudit_llvm),
    ignore = "skipped: llvm-mc-19 or ld.lld-19 is not installed"
)]
fn assembled_skeleton_passes_every_check() {
    with_assembler("skeleton", |dir| {
        let ko = assemble(dir, "good", &format!("{SKELETON}{SETS}"));
        let report = audit(&ko, Some(&kernel())).unwrap();
        assert!(report.findings.is_empty(), "{:#?}", report.findings);
        assert_eq!(
            report.undefined,
            [
                "__start_set_sysinit_set",
                "__stop_set_sysinit_set",
                "printf"
            ]
        );
    });
}

#[test]
#[cfg_attr(
    not(koaudit_llvm),
    ignore = "skipped: llvm-mc-19 or ld.lld-19 is not installed"
)]
fn assembled_bad_snippets_fail_their_check() {
    // (name, code appended to .text, check that must fire, text the finding must contain)
    let cases = [
        (
            "gotpcrel",
            "bad:\n\tmovq\tsome_global@GOTPCREL(%rip), %rax\n\tretq\n",
            check::RELOCATION,
            "R_X86_64_REX_GOTPCRELX (42) in .text at offset 0x23 against some_global-0x4",
        ),
        (
            "abs32",
            "bad:\n\tmovl\t$data_var, %eax\n\tretq\n",
            check::RELOCATION,
            "R_X86_64_32 (10) in .text",
        ),
        (
            "tls",
            "bad:\n\tmovq\t%fs:tls_var@TPOFF, %rax\n\tretq\n",
            check::RELOCATION,
            "R_X86_64_TPOFF32 (23) in .text",
        ),
        (
            "movaps",
            "\t.globl\tbad\n\t.type\tbad,@function\nbad:\n\tmovaps\t%xmm0, (%rdi)\n\tretq\n",
            check::FPU_SIMD,
            "bad+0x0 (.text+0x20): `movaps %xmm0,(%rdi)` uses XMM0",
        ),
        (
            "x87",
            "bad:\n\tfldl\t(%rdi)\n\tretq\n",
            check::FPU_SIMD,
            "`fldl (%rdi)`",
        ),
        (
            "redzone",
            "\t.globl\tbad\n\t.type\tbad,@function\nbad:\n\tnop\n\tmovq\t%rax, -8(%rsp)\n\tretq\n",
            check::RED_ZONE,
            "bad+0x1 (.text+0x21): `mov %rax,-0x8(%rsp)`",
        ),
        (
            "cfi",
            "bad:\n\t.cfi_startproc\n\tretq\n\t.cfi_endproc\n",
            check::UNWIND,
            "section .eh_frame",
        ),
        (
            "undefined",
            "bad:\n\tcallq\tno_such_kernel_function@PLT\n\tretq\n",
            check::UNDEFINED,
            "no_such_kernel_function is undefined",
        ),
    ];
    with_assembler("snippets", |dir| {
        for (name, code, expected, text) in cases {
            let ko = assemble(dir, name, &format!("{SKELETON}\t.text\n{code}{SETS}"));
            let report = audit(&ko, Some(&kernel())).unwrap();
            let found = details(&report, expected);
            assert_eq!(found.len(), 1, "{name}: {:#?}", report.findings);
            assert!(
                found[0].contains(text),
                "{name}: {text} not in {}",
                found[0]
            );
            assert_eq!(report.findings.len(), 1, "{name}: {:#?}", report.findings);
        }
    });
}

#[test]
#[cfg_attr(
    not(koaudit_llvm),
    ignore = "skipped: llvm-mc-19 or ld.lld-19 is not installed"
)]
fn assembled_module_without_linker_sets_fails() {
    with_assembler("nosets", |dir| {
        let ko = assemble(dir, "nosets", SKELETON);
        let report = audit(&ko, Some(&kernel())).unwrap();
        let found = details(&report, check::METADATA);
        // set_modmetadata_set and set_sysinit_set (set_sysuninit_set is
        // optional)
        assert_eq!(found.len(), 2, "{found:#?}");
        // Without the set, its bounds are left to the kernel, which has none.
        assert_eq!(report.of(check::UNDEFINED).count(), 2);
    });
}

/// Code a compiler turns into SSE (struct copy), a red-zone access (a leaf
/// function's locals), a GOT load (under -fPIC) and unwind tables, unless
/// given the kernel's flags.
const C_SOURCE: &str = r#"
struct big { long a[8]; };
void copy(struct big *d, const struct big *s) { *d = *s; }
extern int ext_var;
int get(void) { return ext_var; }
long leaf(long x) { volatile long t[2]; t[0] = x; t[1] = x + 1; return t[0] + t[1]; }
"#;

fn compile(dir: &Path, name: &str, flags: &[&str]) -> Report {
    let c = dir.join("t.c");
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, C_SOURCE).unwrap();
    run(Command::new("clang-19")
        .args([&format!("--target={TRIPLE}"), "-O2", "-c"])
        .args(flags)
        .arg("-o")
        .args([&o, &c]));
    audit(&std::fs::read(o).unwrap(), None).unwrap()
}

#[test]
#[cfg_attr(not(koaudit_clang), ignore = "skipped: clang-19 is not installed")]
fn clang_output_passes_only_with_kernel_flags() {
    let dir = scratch("clang");
    let hosted = compile(&dir, "hosted", &["-fPIC"]);
    for check in [
        check::RELOCATION,
        check::FPU_SIMD,
        check::RED_ZONE,
        check::UNWIND,
    ] {
        assert!(
            hosted.of(check).next().is_some(),
            "hosted build has no {check} finding: {:#?}",
            hosted.findings
        );
    }

    // sys/conf/kern.mk's flags for amd64.
    let kernel = compile(
        &dir,
        "kernel",
        &[
            "-fno-pic",
            "-mcmodel=kernel",
            "-mno-red-zone",
            "-mno-mmx",
            "-mno-sse",
            "-msoft-float",
            "-fno-asynchronous-unwind-tables",
            "-ffreestanding",
        ],
    );
    // A bare C file has no module metadata; everything else must be clean.
    assert!(
        kernel.findings.iter().all(|f| f.check == check::METADATA),
        "{:#?}",
        kernel.findings
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
