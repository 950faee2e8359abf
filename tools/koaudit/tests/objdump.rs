//! The AArch64 decoder against LLVM's disassembler (`llvm-objdump-19
//! --mattr=+all`) on pseudo-random instruction words and, where an arm64
//! boot directory has been built, on every word of a real FreeBSD arm64
//! kernel.
//!
//! What must hold (the safety properties of the checks):
//! - a word LLVM does not decode is never passed as a general-purpose
//!   instruction;
//! - a word LLVM shows with a SIMD&FP/SVE/SME register or FPCR/FPSR is never
//!   passed as a general-purpose instruction;
//! - the decoder says "writes x18" only where LLVM's text names x18/w18,
//!   and does say it for the common destination-first forms LLVM shows with
//!   x18/w18 first, for a written-back base x18 and the second register of
//!   a load pair;
//! - on the real kernel, every word LLVM decodes as a general-purpose
//!   instruction is decoded (the decoder covers compiler output).

use std::process::Command;

use koaudit::a64::{decode, Class};

/// Disassemble `words` with llvm-objdump-19; one text per word.
fn objdump(words: &[u32], tag: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("koaudit-objdump-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(dir.join("w.bin"), bytes).unwrap();
    let status = Command::new("llvm-objcopy-19")
        .args([
            "-I",
            "binary",
            "-O",
            "elf64-littleaarch64",
            "--rename-section=.data=.text,code,alloc",
            "w.bin",
            "w.o",
        ])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("llvm-objdump-19")
        .args(["-d", "--mattr=+all", "--no-print-imm-hex", "w.o"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = Vec::with_capacity(words.len());
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(": ") else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.len() < 9 || u32::from_str_radix(&rest[..8], 16).is_err() {
            continue;
        }
        lines.push(rest[8..].trim().to_owned());
    }
    assert_eq!(lines.len(), words.len(), "one objdump line per word");
    lines
}

/// An operand naming SIMD&FP/SVE/SME state.
fn fp_operand(op: &str) -> bool {
    let t = op
        .trim_matches(|c| "[]{}!, ".contains(c))
        .to_ascii_lowercase();
    let t = t.split(['/', '.', '[']).next().unwrap_or("");
    let numbered = |p: &str| {
        t.strip_prefix(p)
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
    };
    ["v", "q", "d", "s", "h", "b", "z", "p", "pn", "za", "zt"]
        .iter()
        .any(|p| numbered(p))
        || ["fpcr", "fpsr", "fpmr", "svcr", "za", "zt0", "ffr"].contains(&t)
        || t.starts_with("zcr_el")
        || t.starts_with("smcr_el")
}

/// Mnemonics whose first operand LLVM prints is the destination.
const DEST_FIRST: [&str; 58] = [
    "add", "adds", "sub", "subs", "and", "ands", "orr", "orn", "eor", "eon", "bic", "bics", "mov",
    "movz", "movn", "movk", "mvn", "neg", "negs", "adc", "sbc", "ldr", "ldrb", "ldrh", "ldrsb",
    "ldrsh", "ldrsw", "ldur", "ldurb", "ldurh", "ldursw", "ldp", "ldpsw", "ldnp", "ldxr", "ldaxr",
    "ldar", "csel", "csinc", "csinv", "csneg", "cset", "madd", "msub", "mul", "smulh", "umulh",
    "sdiv", "udiv", "lsl", "lsr", "asr", "ubfx", "sbfx", "bfi", "adr", "adrp", "mrs",
];

/// Checks the properties above for `words`; returns the violations.
fn violations(words: &[u32], texts: &[String], require_coverage: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for (&w, text) in words.iter().zip(texts) {
        let class = decode(w);
        let unknown = text.starts_with("<unknown>");
        let mnemonic = text.split_whitespace().next().unwrap_or("");
        let operands = text[mnemonic.len()..].trim();
        let ops: Vec<&str> = operands.split(',').map(str::trim).collect();
        let fp = !unknown && operands.split([' ', ',']).any(fp_operand);
        let is18 = |o: Option<&&str>| o.is_some_and(|o| *o == "x18" || *o == "w18");
        let why = match class {
            Class::Gpr { .. } if unknown => Some("passed a word LLVM does not decode"),
            Class::Gpr { .. } if fp => Some("passed a SIMD&FP instruction"),
            Class::Gpr { .. } => {
                let named = operands.contains("x18") || operands.contains("w18");
                let dest_first = DEST_FIRST.contains(&mnemonic) && is18(ops.first());
                let pair = matches!(mnemonic, "ldp" | "ldpsw" | "ldnp") && is18(ops.get(1));
                // cas Xs, Xt, [Xn]: Xs gets the old value; casp: the Xs pair;
                // ld<op>/swp Xs, Xt, [Xn]: Xt does.
                let cas = mnemonic.starts_with("cas")
                    && (is18(ops.first()) || (mnemonic.starts_with("casp") && is18(ops.get(1))));
                let atomic = [
                    "ldadd", "ldclr", "ldeor", "ldset", "ldsmax", "ldsmin", "ldumax", "ldumin",
                    "swp",
                ]
                .iter()
                .any(|p| mnemonic.starts_with(p))
                    && is18(ops.get(1));
                // ldr x0, [x18], #8 and ldr x0, [x18, #8]!, not [x18, #8]
                let writeback = mnemonic.starts_with("ld")
                    && operands.contains("[x18")
                    && !operands.ends_with(']');
                if class.writes(18) && !named {
                    Some("invented a write of x18")
                } else if (dest_first || pair || writeback || cas || atomic) && !class.writes(18) {
                    Some("missed a write of x18")
                } else {
                    None
                }
            }
            Class::Unknown if require_coverage && !unknown && !fp => {
                Some("did not decode a general-purpose instruction")
            }
            _ => None,
        };
        if let Some(why) = why {
            bad.push(format!("{w:#010x} `{text}`: {why} ({class:?})"));
        }
    }
    bad
}

#[test]
#[cfg_attr(
    not(koaudit_objdump),
    ignore = "skipped: llvm-objdump-19 or llvm-objcopy-19 is not installed"
)]
fn decoder_agrees_with_llvm_on_random_words() {
    // xorshift64: the same 300000 words every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let words: Vec<u32> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 16) as u32
        })
        .collect();
    let texts = objdump(&words, "random");
    let bad = violations(&words, &texts, false);
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad[..bad.len().min(40)].join("\n")
    );
}

#[test]
#[cfg_attr(
    not(all(koaudit_objdump, koaudit_arm64_boot)),
    ignore = "skipped: needs llvm-objdump-19, llvm-objcopy-19 and an arm64 boot directory \
              (sh tools/build-test-kernel.sh -a arm64 ...)"
)]
fn decoder_covers_a_real_arm64_kernel() {
    use object::{Object, ObjectSection, SectionKind};
    let boot = std::path::PathBuf::from(env!("KOAUDIT_ARM64_BOOT"));
    let mut words = Vec::new();
    for file in ["kernel/kernel", "modules/virtio_balloon.ko"] {
        let data = std::fs::read(boot.join(file)).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
            let bytes = section.data().unwrap();
            words.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap())),
            );
        }
    }
    words.sort_unstable();
    words.dedup();
    assert!(words.len() > 100_000, "{} distinct words", words.len());
    let texts = objdump(&words, "kernel");
    let bad = violations(&words, &texts, true);
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad[..bad.len().min(40)].join("\n")
    );
}
