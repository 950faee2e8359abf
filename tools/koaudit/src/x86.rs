//! Instruction checks over executable sections, using `iced-x86`.

use iced_x86::{
    CpuidFeature, Decoder, DecoderOptions, Formatter, GasFormatter, Instruction,
    InstructionInfoFactory, Mnemonic, OpKind, Register,
};

use crate::{check, Finding};

/// One executable section to decode.
pub struct Code<'data> {
    pub section: String,
    pub bytes: &'data [u8],
    /// Symbols defined in the section: (offset, name), sorted by offset.
    pub symbols: Vec<(u64, String)>,
}

impl Code<'_> {
    /// `symbol+0xoff` for an offset in the section, or `section+0xoff`.
    fn locate(&self, offset: u64) -> String {
        let idx = self.symbols.partition_point(|(a, _)| *a <= offset);
        match idx.checked_sub(1).map(|i| &self.symbols[i]) {
            Some((addr, name)) => {
                format!("{name}+{:#x} ({}+{offset:#x})", offset - addr, self.section)
            }
            None => format!("{}+{offset:#x}", self.section),
        }
    }
}

/// Instructions that carry an SSE-family CPUID bit but touch no FPU/SIMD
/// state (fences, prefetches, non-temporal GPR stores, crc32).
const STATELESS: [Mnemonic; 10] = [
    Mnemonic::Lfence,
    Mnemonic::Mfence,
    Mnemonic::Sfence,
    Mnemonic::Prefetchnta,
    Mnemonic::Prefetcht0,
    Mnemonic::Prefetcht1,
    Mnemonic::Prefetcht2,
    Mnemonic::Movnti,
    Mnemonic::Crc32,
    Mnemonic::Clflush,
];

/// Whether a register lives in the x87/MMX/SSE/AVX/AVX-512/AMX state.
pub fn is_fpu_simd_register(reg: Register) -> bool {
    reg.is_xmm()
        || reg.is_ymm()
        || reg.is_zmm()
        || reg.is_mm()
        || reg.is_st()
        || reg.is_k()
        || reg.is_tmm()
}

/// Whether a CPUID feature belongs to the x87/MMX/SSE/AVX families (or
/// saves/restores their state).
pub fn is_fpu_simd_feature(feature: CpuidFeature) -> bool {
    use CpuidFeature as F;
    let name = format!("{feature:?}");
    const PREFIXES: [&str; 9] = [
        "SSE",
        "AVX",
        "AMX_",
        "FPU",
        "FMA",
        "MMX",
        "D3NOW",
        "XSAVE",
        "CYRIX_FPU",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || matches!(
            feature,
            F::CYRIX_D3NOW
                | F::F16C
                | F::FXSR
                | F::AES
                | F::VAES
                | F::PCLMULQDQ
                | F::VPCLMULQDQ
                | F::SHA
                | F::SHA512
                | F::SM3
                | F::SM4
                | F::GFNI
                | F::XOP
                | F::KL
                | F::AESKLE
                | F::WIDE_KL
        )
}

/// Why an instruction uses FPU/SIMD state, if it does.
pub fn fpu_simd_use(instr: &Instruction, info: &mut InstructionInfoFactory) -> Option<String> {
    if let Some(reg) = info
        .info(instr)
        .used_registers()
        .iter()
        .map(|u| u.register())
        .find(|r| is_fpu_simd_register(*r))
    {
        return Some(format!("uses {reg:?}"));
    }
    if STATELESS.contains(&instr.mnemonic()) {
        return None;
    }
    instr
        .cpuid_features()
        .iter()
        .find(|f| is_fpu_simd_feature(**f))
        .map(|f| format!("needs CPUID {f:?}"))
}

/// Whether an instruction accesses memory below %rsp (the red zone).
pub fn uses_red_zone(instr: &Instruction) -> bool {
    let has_mem = (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory);
    if !has_mem || !matches!(instr.memory_base(), Register::RSP | Register::ESP) {
        return false;
    }
    if (instr.memory_displacement64() as i64) >= 0 {
        return false;
    }
    match instr.mnemonic() {
        // Multi-byte nops do not access memory.
        Mnemonic::Nop => false,
        // `lea -N(%rsp),%rsp` moves the stack pointer; any other lea takes
        // the address of red-zone memory.
        Mnemonic::Lea => instr.op0_register() != Register::RSP,
        _ => true,
    }
}

/// Checks 2 and 3 over one executable section.
pub fn check_code(code: &Code<'_>, out: &mut Vec<Finding>) {
    let mut decoder = Decoder::with_ip(64, code.bytes, 0, DecoderOptions::NONE);
    let mut formatter = GasFormatter::new();
    // objdump style: lower-case 0x-prefixed hex everywhere.
    let options = formatter.options_mut();
    options.set_hex_prefix("0x");
    options.set_hex_suffix("");
    options.set_uppercase_hex(false);
    options.set_small_hex_numbers_in_decimal(false);
    let mut info = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    let mut text = String::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            continue;
        }
        let fpu = fpu_simd_use(&instr, &mut info);
        let red = uses_red_zone(&instr);
        if fpu.is_none() && !red {
            continue;
        }
        text.clear();
        formatter.format(&instr, &mut text);
        let at = code.locate(instr.ip());
        if let Some(why) = fpu {
            out.push(Finding {
                check: check::FPU_SIMD,
                detail: format!("{at}: `{text}` {why}; the kernel is soft-float and does not save FPU/SIMD state"),
            });
        }
        if red {
            out.push(Finding {
                check: check::RED_ZONE,
                detail: format!("{at}: `{text}` accesses below %rsp; interrupts and exceptions push onto the kernel stack there"),
            });
        }
    }
}
