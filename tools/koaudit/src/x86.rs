//! Instruction checks over executable sections, using `iced-x86`.

use iced_x86::{
    CpuidFeature, Decoder, DecoderOptions, Formatter, GasFormatter, Instruction, InstructionInfo,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
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

/// Instructions that carry an SSE/XSAVE-family CPUID bit but touch no
/// FPU/SIMD state (fences, prefetches, non-temporal GPR stores, crc32,
/// xgetbv).
const STATELESS: [Mnemonic; 11] = [
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
    // Reads XCR0 (which state components are enabled), not the state.
    Mnemonic::Xgetbv,
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
pub fn fpu_simd_use(instr: &Instruction, info: &InstructionInfo) -> Option<String> {
    if let Some(reg) = info
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

/// Whether an instruction's memory operand is an access (or an address
/// taken) that the red-zone rules apply to: not a multi-byte nop, not a
/// `lea` that computes a new `%rsp`.
fn addresses_memory(instr: &Instruction) -> bool {
    (0..instr.op_count()).any(|i| instr.op_kind(i) == OpKind::Memory)
        && match instr.mnemonic() {
            Mnemonic::Nop => false,
            Mnemonic::Lea => instr.op0_register() != Register::RSP,
            _ => true,
        }
}

/// Whether an instruction accesses memory below %rsp (the red zone) through
/// %rsp itself: a memory operand based on %rsp with a negative displacement.
pub fn uses_red_zone(instr: &Instruction) -> bool {
    addresses_memory(instr)
        && matches!(instr.memory_base(), Register::RSP | Register::ESP)
        && (instr.memory_displacement64() as i64) < 0
}

/// What is known of the stack in the function being decoded, for red-zone
/// accesses through the frame pointer: a leaf function built with a red zone
/// and frame pointers (FreeBSD's default, and `-C force-frame-pointers=yes`)
/// does `push %rbp; mov %rsp,%rbp` and then keeps its locals at negative
/// offsets from %rbp without ever lowering %rsp.
///
/// The decoder sweeps the code linearly, so the frame is approximated by the
/// deepest %rsp seen so far in the function: an epilogue laid out before
/// another path's code does not make that path's locals look unallocated.
/// This can miss a red-zone access but does not invent one.
#[derive(Debug, Default)]
pub struct Frame {
    /// Bytes below the function's entry %rsp at the current instruction.
    depth: i64,
    /// The deepest `depth` so far; `None` once %rsp was lowered by an amount
    /// not known statically (`sub %rax,%rsp`, `and $-32,%rsp`, `enter`).
    deepest: Option<i64>,
    /// `depth` when `mov %rsp,%rbp` made %rbp the frame pointer.
    rbp: Option<i64>,
}

impl Frame {
    /// Forget everything: a new function starts.
    pub fn reset(&mut self) {
        *self = Frame {
            deepest: Some(0),
            ..Frame::default()
        };
    }

    /// If the instruction accesses memory below %rsp through the frame
    /// pointer (base %rbp, no index, a negative displacement beyond what the
    /// function allocated below %rbp): the displacement and that allocation.
    pub fn below_rsp_via_rbp(&self, instr: &Instruction) -> Option<(i64, i64)> {
        // With an index register the address is not known statically
        // (`-0x12(%rbp,%rcx)` with %rcx counting down a local buffer), and
        // a `lea` only computes an address: `lea -0x81(%rbp),%r13` for a
        // buffer at -0x80(%rbp) is the pointer-before-the-buffer idiom.
        if !addresses_memory(instr)
            || instr.mnemonic() == Mnemonic::Lea
            || instr.memory_base() != Register::RBP
            || instr.memory_index() != Register::None
        {
            return None;
        }
        let disp = instr.memory_displacement64() as i64;
        let allocated = self.deepest? - self.rbp?;
        (disp < 0 && -disp > allocated).then_some((disp, allocated))
    }

    /// Account for the instruction's effect on %rsp and %rbp.
    pub fn step(&mut self, instr: &Instruction, info: &InstructionInfo) {
        let op0 = instr.op0_register();
        let imm = || {
            (instr.op_count() == 2 && instr.op_kind(1) != OpKind::Register)
                .then(|| instr.immediate(1) as i64)
        };
        let writes = |reg: Register| {
            info.used_registers().iter().any(|u| {
                u.register().full_register() == reg
                    && matches!(
                        u.access(),
                        OpAccess::Write
                            | OpAccess::CondWrite
                            | OpAccess::ReadWrite
                            | OpAccess::ReadCondWrite
                    )
            })
        };
        match instr.mnemonic() {
            // The callee pops the return address again.
            Mnemonic::Call => {}
            Mnemonic::Pop if op0 == Register::RSP => self.deepest = None,
            // A `pop %rbp` in an epilogue leaves `rbp` alone: code laid out
            // after it still runs with the frame.
            Mnemonic::Push
            | Mnemonic::Pushf
            | Mnemonic::Pushfq
            | Mnemonic::Pop
            | Mnemonic::Popf
            | Mnemonic::Popfq => {
                self.depth -= i64::from(instr.stack_pointer_increment());
            }
            Mnemonic::Sub if op0 == Register::RSP => match imm() {
                Some(n) => self.depth += n,
                None => self.deepest = None,
            },
            Mnemonic::Add if op0 == Register::RSP => match imm() {
                Some(n) => self.depth -= n,
                None => self.deepest = None,
            },
            Mnemonic::Lea if op0 == Register::RSP => match instr.memory_base() {
                Register::RSP if instr.memory_index() == Register::None => {
                    self.depth -= instr.memory_displacement64() as i64;
                }
                Register::RBP if instr.memory_index() == Register::None => match self.rbp {
                    Some(r) => self.depth = r - instr.memory_displacement64() as i64,
                    None => self.deepest = None,
                },
                _ => self.deepest = None,
            },
            Mnemonic::Mov if op0 == Register::RSP && instr.op1_register() == Register::RBP => {
                match self.rbp {
                    Some(r) => self.depth = r,
                    None => self.deepest = None,
                }
            }
            Mnemonic::Mov if op0 == Register::RBP && instr.op1_register() == Register::RSP => {
                self.rbp = Some(self.depth);
            }
            Mnemonic::Leave => match self.rbp {
                Some(r) => self.depth = r - 8,
                None => self.deepest = None,
            },
            // Any other write of %rsp (`sub %rax,%rsp`, `and $-32,%rsp`,
            // `enter`, a return to a saved %rsp): give up on this function.
            _ if writes(Register::RSP) => self.deepest = None,
            // %rbp reused as a general register: no longer a frame pointer.
            _ if writes(Register::RBP) => self.rbp = None,
            _ => {}
        }
        self.deepest = self.deepest.map(|d| d.max(self.depth));
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
    let mut frame = Frame::default();
    let mut next_symbol = 0;
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        // Each symbol starts a new function.
        while code
            .symbols
            .get(next_symbol)
            .is_some_and(|(at, _)| *at <= instr.ip())
        {
            frame.reset();
            next_symbol += 1;
        }
        if instr.is_invalid() {
            continue;
        }
        let used = info.info(&instr);
        let fpu = fpu_simd_use(&instr, used);
        let red = if uses_red_zone(&instr) {
            Some(String::new())
        } else {
            frame.below_rsp_via_rbp(&instr).map(|(disp, allocated)| {
                format!(
                    " (%rbp{}, only {allocated:#x} bytes allocated below %rbp)",
                    disp_hex(disp)
                )
            })
        };
        frame.step(&instr, used);
        if fpu.is_none() && red.is_none() {
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
        if let Some(how) = red {
            out.push(Finding {
                check: check::RED_ZONE,
                detail: format!("{at}: `{text}` accesses below %rsp{how}; interrupts and exceptions push onto the kernel stack there"),
            });
        }
    }
}

/// `-0x18`, `+0x8`.
fn disp_hex(value: i64) -> String {
    if value < 0 {
        format!("-{:#x}", value.unsigned_abs())
    } else {
        format!("+{value:#x}")
    }
}
