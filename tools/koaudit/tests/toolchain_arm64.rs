//! The arm64 checks against what a real toolchain emits: assembly put
//! through `llvm-mc-19 -triple=aarch64-unknown-freebsd14.0` and linked the
//! way sys/conf/kmod.mk links an arm64 kld (`ld -m aarch64elf -Bshareable
//! -znotext -znorelro --no-relax`, here `ld.lld-19`), and a C file compiled
//! by `clang-19` with hosted and with kern.mk's arm64 flags.
//!
//! Where the tools are absent these tests are compiled as ignored (see
//! build.rs): `cargo test` lists them as `ignored, skipped: ...`.

use std::path::{Path, PathBuf};
use std::process::Command;

use koaudit::{audit, check, KernelSymbols, Report};

const TRIPLE: &str = "aarch64-unknown-freebsd14.0";

/// A minimal module: a function calling `printf` (through the PLT: a
/// JUMP_SLOT relocation), loading a kernel global through the GOT
/// (GLOB_DAT), data pointing at a string (RELATIVE) and at the function
/// (ABS64: `func` is preemptible), an MDT_MODULE `struct mod_metadata`, and
/// the linker sets with the `__start_`/`__stop_` references sys/linker_set.h
/// makes.
const SKELETON: &str = r#"
	.text
	.globl	func
	.type	func,@function
func:
	stp	x29, x30, [sp, #-16]!
	mov	x29, sp
	bl	printf
	adrp	x0, :got:some_global
	ldr	x0, [x0, :got_lo12:some_global]
	adrp	x1, data_var
	add	x1, x1, :lo12:data_var
	mov	x2, x18
	ldp	x29, x30, [sp], #16
	ret
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
"#;

const SETS: &str = r#"
	.section set_modmetadata_set,"aw",@progbits
	.p2align 3
	.globl	__start_set_modmetadata_set
	.globl	__stop_set_modmetadata_set
	.quad	md_module
	.section set_sysinit_set,"aw",@progbits
	.p2align 3
	.globl	__start_set_sysinit_set
	.globl	__stop_set_sysinit_set
	.quad	func
"#;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("koaudit-a64-{test}-{}", std::process::id()));
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

/// Link objects into a shared-object kld as kmod.mk does.
fn link(dir: &Path, name: &str, objects: &[PathBuf]) -> Vec<u8> {
    let ko = dir.join(format!("{name}.ko"));
    run(Command::new("ld.lld-19")
        .args([
            "-m",
            "aarch64elf",
            "-Bshareable",
            "-znotext",
            "-znorelro",
            "--no-relax",
            "-o",
        ])
        .arg(&ko)
        .args(objects));
    std::fs::read(ko).unwrap()
}

fn assemble(dir: &Path, name: &str, source: &str) -> Vec<u8> {
    let s = dir.join(format!("{name}.s"));
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&s, source).unwrap();
    run(Command::new("llvm-mc-19")
        .args(["-filetype=obj", &format!("-triple={TRIPLE}"), "-o"])
        .args([&o, &s]));
    link(dir, name, &[o])
}

fn kernel() -> KernelSymbols {
    KernelSymbols::parse("ffff000000400000 T printf\nffff000000a00000 D some_global\ntls_var\n")
}

fn details(report: &Report, check: &str) -> Vec<String> {
    report.of(check).map(|f| f.to_string()).collect()
}

#[test]
#[cfg_attr(
    not(koaudit_llvm),
    ignore = "skipped: llvm-mc-19 or ld.lld-19 is not installed"
)]
fn assembled_shared_object_passes_every_check() {
    let dir = scratch("good");
    let ko = assemble(&dir, "good", &format!("{SKELETON}{SETS}"));
    let report = audit(&ko, Some(&kernel())).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    assert_eq!(report.checks, 8);
    assert_eq!(report.undefined, ["printf", "some_global"]);
    std::fs::remove_dir_all(&dir).unwrap();
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
            "tls-ie",
            "bad:\n\tadrp\tx0, :gottprel:tls_var\n\tldr\tx0, [x0, :gottprel_lo12:tls_var]\n\
             \tret\n\t.type\ttls_var,@tls_object\n",
            check::RELOCATION,
            "R_AARCH64_TLS_TPREL (1030) in .rela.dyn",
        ),
        (
            "tlsdesc",
            "bad:\n\tadrp\tx0, :tlsdesc:tls_var\n\tldr\tx1, [x0, :tlsdesc_lo12:tls_var]\n\
             \tadd\tx0, x0, :tlsdesc_lo12:tls_var\n\t.tlsdesccall tls_var\n\tblr\tx1\n\tret\n\
             \t.type\ttls_var,@tls_object\n",
            check::RELOCATION,
            "R_AARCH64_TLSDESC (1031) in .rela.dyn",
        ),
        (
            "fadd",
            "\t.globl\tbad\n\t.type\tbad,@function\nbad:\n\tfadd\td0, d1, d2\n\tret\n",
            check::FPU_SIMD,
            "bad+0x0 (.text+0x28 at 0x",
        ),
        (
            "ldr-q",
            "bad:\n\tldr\tq0, [x0]\n\tret\n",
            check::FPU_SIMD,
            "(SIMD&FP load/store)",
        ),
        (
            "fpcr",
            "bad:\n\tmsr\tfpcr, x0\n\tret\n",
            check::FPU_SIMD,
            "(MSR FPCR)",
        ),
        (
            "x18",
            "\t.globl\tbad\n\t.type\tbad,@function\nbad:\n\tnop\n\tldr\tx18, [x0]\n\tret\n",
            check::X18,
            "bad+0x4 (.text+0x2c at 0x",
        ),
        (
            "cfi",
            "bad:\n\t.cfi_startproc\n\tret\n\t.cfi_endproc\n",
            check::UNWIND,
            "section .eh_frame",
        ),
        (
            "undefined",
            "bad:\n\tbl\tno_such_kernel_function\n\tret\n",
            check::UNDEFINED,
            "no_such_kernel_function is undefined",
        ),
        (
            "undecodable",
            "bad:\n\t.inst\t0x00010000\n\tret\n",
            check::DECODE,
            "0x00010000 is not an instruction koaudit decodes",
        ),
    ];
    let dir = scratch("snippets");
    for (name, code, expected, text) in cases {
        let ko = assemble(&dir, name, &format!("{SKELETON}\t.text\n{code}{SETS}"));
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
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(
    not(koaudit_llvm),
    ignore = "skipped: llvm-mc-19 or ld.lld-19 is not installed"
)]
fn assembled_module_without_linker_sets_fails() {
    let dir = scratch("nosets");
    let ko = assemble(&dir, "nosets", SKELETON);
    let report = audit(&ko, Some(&kernel())).unwrap();
    let found = details(&report, check::METADATA);
    assert_eq!(found.len(), 2, "{found:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Code a compiler turns into SIMD loads (struct copy), x18 use (register
/// pressure: clang does not reserve x18 for FreeBSD unless told) and
/// unwind tables, unless given the kernel's flags.
const C_SOURCE: &str = r#"
struct big { long a[8]; };
void copy(struct big *d, const struct big *s) { *d = *s; }
extern int ext_var;
int get(void) { return ext_var; }
long many(long *p) {
    long a0=p[0],a1=p[1],a2=p[2],a3=p[3],a4=p[4],a5=p[5],a6=p[6],a7=p[7],a8=p[8],a9=p[9],
        a10=p[10],a11=p[11],a12=p[12],a13=p[13],a14=p[14],a15=p[15],a16=p[16],a17=p[17],
        a18=p[18],a19=p[19],a20=p[20],a21=p[21],a22=p[22],a23=p[23],a24=p[24],a25=p[25],
        a26=p[26],a27=p[27],a28=p[28],a29=p[29];
    p[30] = a0 * a1;
    p[31] = a2 * a3;
    return a0^a1^a2^a3^a4^a5^a6^a7^a8^a9^a10^a11^a12^a13^a14^a15^a16^a17^a18^a19^a20^a21
        ^a22^a23^a24^a25^a26^a27^a28^a29 ^ (a0*a29+a1*a28+a2*a27+a3*a26+a4*a25+a5*a24+a6*a23
        +a7*a22+a8*a21+a9*a20+a10*a19+a11*a18+a12*a17+a13*a16+a14*a15);
}
"#;

fn compile(dir: &Path, name: &str, flags: &[&str]) -> Report {
    let c = dir.join("t.c");
    let o = dir.join(format!("{name}.o"));
    std::fs::write(&c, C_SOURCE).unwrap();
    run(Command::new("clang-19")
        .args([&format!("--target={TRIPLE}"), "-O2", "-fPIC", "-c"])
        .args(flags)
        .arg("-o")
        .args([&o, &c]));
    audit(&link(dir, name, &[o]), None).unwrap()
}

#[test]
#[cfg_attr(
    not(all(koaudit_clang, koaudit_llvm)),
    ignore = "skipped: clang-19 or ld.lld-19 is not installed"
)]
fn clang_output_passes_only_with_kernel_flags() {
    let dir = scratch("clang");
    let hosted = compile(&dir, "hosted", &[]);
    for check in [check::FPU_SIMD, check::X18, check::UNWIND] {
        assert!(
            hosted.of(check).next().is_some(),
            "hosted build has no {check} finding: {:#?}",
            hosted.findings
        );
    }
    // sys/conf/kern.mk's flags for arm64 (and kmod.mk's -fPIC).
    let kernel = compile(
        &dir,
        "kernel",
        &[
            "-mgeneral-regs-only",
            "-ffixed-x18",
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
