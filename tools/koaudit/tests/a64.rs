//! The AArch64 decoder on instruction words whose meaning is known
//! (encodings from `llvm-mc-19 -triple=aarch64-unknown-freebsd
//! -show-encoding`, kept here as literals so no tool is needed).

use koaudit::a64::{decode, mapping_symbol, Class};

/// General-purpose instructions, none of which writes x18 (several read it).
const GPR_NO_X18: [(u32, &str); 25] = [
    (0xa9bf7bfd, "stp x29, x30, [sp, #-16]!"),
    (0x910003fd, "mov x29, sp"),
    (0xf9400020, "ldr x0, [x1]"),
    (0x91000400, "add x0, x0, #1"),
    (0xf9000020, "str x0, [x1]"),
    (0xaa1203e3, "mov x3, x18"),
    (0xf90007f2, "str x18, [sp, #8]"),
    (0xf100025f, "cmp x18, #0"),
    (0xb4000052, "cbz x18, .+8"),
    (0xc85ffc04, "ldaxr x4, [x0]"),
    (0xc805fc04, "stlxr w5, x4, [x0]"),
    (0xf8260007, "ldadd x6, x7, [x0]"),
    (0xd5033bbf, "dmb ish"),
    (0xd5033fdf, "isb"),
    (0xd503233f, "paciasp"),
    (0xd50323bf, "autiasp"),
    (0xd503245f, "bti c"),
    (0xd538d088, "mrs x8, tpidr_el1"),
    (0xd518d092, "msr tpidr_el1, x18"),
    (0xd53be049, "mrs x9, cntvct_el0"),
    (0x00000000, "udf #0"),
    (0xd4200020, "brk #1"),
    (0xa8c17bfd, "ldp x29, x30, [sp], #16"),
    (0xd65f03c0, "ret"),
    (0xd63f0240, "blr x18"),
];

/// Instructions using SIMD&FP, SVE or SME state.
const FP_SIMD: [(u32, &str); 19] = [
    (0x1e622820, "fadd d0, d1, d2"),
    (0x3dc00000, "ldr q0, [x0]"),
    (0xfd0007e1, "str d1, [sp, #8]"),
    (0xbd400002, "ldr s2, [x0]"),
    (0x7d400003, "ldr h3, [x0]"),
    (0x3d400004, "ldr b4, [x0]"),
    (0x4ea11c20, "mov v0.16b, v1.16b"),
    (0x9e660000, "fmov x0, d0"),
    (0x9e670000, "fmov d0, x0"),
    (0xd51b4400, "msr fpcr, x0"),
    (0xd53b4420, "mrs x0, fpsr"),
    (0xad400400, "ldp q0, q1, [x0]"),
    (0x4c407800, "ld1 {v0.4s}, [x0]"),
    (0x4e284820, "aese v0.16b, v1.16b"),
    (0x9e620000, "scvtf d0, x0"),
    (0x04bf5020, "rdvl x0, #1 (SVE)"),
    (0xa540a000, "ld1w {z0.s}, p0/z, [x0] (SVE)"),
    (0xd503477f, "smstart (SME)"),
    (0xc0080000, "zero {} (SME)"),
];

/// Instructions writing x18.
const WRITES_X18: [(u32, &str); 17] = [
    (0xaa0003f2, "mov x18, x0"),
    (0x91002252, "add x18, x18, #8"),
    (0xf9400012, "ldr x18, [x0]"),
    (0xa9404be0, "ldp x0, x18, [sp]"),
    (0xf8408640, "ldr x0, [x18], #8 (post-index writeback)"),
    (0xf8408e40, "ldr x0, [x18, #8]! (pre-index writeback)"),
    (0xd538d092, "mrs x18, tpidr_el1"),
    (0xc8127c20, "stxr w18, x0, [x1] (status)"),
    (0xc8b27c41, "cas x18, x1, [x2] (old value)"),
    (0xf8208032, "swp x0, x18, [x1]"),
    (0x9a810012, "csel x18, x0, x1, eq"),
    (0x9b010812, "madd x18, x0, x1, x2"),
    (0x90000012, "adrp x18, ."),
    (0x18000012, "ldr w18, . (literal)"),
    (0xd2800032, "mov x18, #1"),
    (0xd3442c12, "ubfx x18, x0, #4, #8"),
    (0x52800012, "mov w18, #0"),
];

/// Words in no encoding the decoder knows (unallocated, or the lld fill).
const UNKNOWN: [u32; 5] = [
    0x0001_0000, // reserved space, not UDF
    0xd4d4_d4d4, // lld's trap fill: exception class, unallocated opc
    0x0600_0000, // unallocated top-level group
    0x1a20_0000, // data processing (register) with an unallocated op2
    0xd61f_0001, // BR with op4 != 0
];

#[test]
fn general_purpose_instructions_write_no_x18() {
    for (word, text) in GPR_NO_X18 {
        let class = decode(word);
        assert!(
            matches!(class, Class::Gpr { .. }),
            "{word:#010x} {text}: {class:?}"
        );
        assert!(!class.writes(18), "{word:#010x} {text}: {class:?}");
    }
}

#[test]
fn simd_fp_sve_sme_are_recognized() {
    for (word, text) in FP_SIMD {
        let class = decode(word);
        assert!(
            matches!(class, Class::FpSimd { .. }),
            "{word:#010x} {text}: {class:?}"
        );
    }
}

#[test]
fn writes_of_x18_are_recognized() {
    for (word, text) in WRITES_X18 {
        let class = decode(word);
        assert!(class.writes(18), "{word:#010x} {text}: {class:?}");
    }
}

#[test]
fn destinations_are_read_from_the_right_fields() {
    // ldp x0, x18, [sp]: x0 and x18, not sp
    let ldp = decode(0xa9404be0);
    assert!(ldp.writes(0) && ldp.writes(18) && !ldp.writes(31));
    // stlxr w5, x4, [x0]: only the status register
    let stlxr = decode(0xc805fc04);
    assert!(stlxr.writes(5) && !stlxr.writes(4) && !stlxr.writes(0));
    // ldadd x6, x7, [x0]: x7 gets the old value, x6 is read
    let ldadd = decode(0xf8260007);
    assert!(ldadd.writes(7) && !ldadd.writes(6));
    // ldr x0, [x18], #8 writes both x0 and the base
    let post = decode(0xf8408640);
    assert!(post.writes(0) && post.writes(18));
    // ldr x0, [x18, #8] (no writeback) writes only x0
    let plain = decode(0xf9400640);
    assert!(plain.writes(0) && !plain.writes(18), "{plain:?}");
    // bl and blr write x30
    assert!(decode(0x9400_0000).writes(30));
    assert!(decode(0xd63f0240).writes(30));
}

#[test]
fn unknown_encodings_are_not_passed() {
    for word in UNKNOWN {
        assert_eq!(decode(word), Class::Unknown, "{word:#010x}");
    }
    // Neighbours of those that are instructions: ldtrb w0, [x0] and
    // csel w0, w0, w0, lo.
    assert!(matches!(decode(0x3840_0800), Class::Gpr { .. }));
    assert!(matches!(decode(0x1a80_3000), Class::Gpr { .. }));
}

#[test]
fn mapping_symbols() {
    assert_eq!(mapping_symbol("$x"), Some(true));
    assert_eq!(mapping_symbol("$d"), Some(false));
    assert_eq!(mapping_symbol("$x.12"), Some(true));
    assert_eq!(mapping_symbol("$d.3"), Some(false));
    for not in ["$xyz", "x", "$", "$a", "$é", "func"] {
        assert_eq!(mapping_symbol(not), None, "{not}");
    }
}
