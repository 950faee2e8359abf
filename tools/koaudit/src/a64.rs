//! A small AArch64 (A64) decoder for what the arm64 checks need, and the
//! instruction checks built on it.
//!
//! The kernel is built `-mgeneral-regs-only -ffixed-x18` (sys/conf/kern.mk),
//! so the question for every instruction word is only: does it touch the
//! SIMD&FP/SVE/SME state (registers V/Q/D/S/H/B, Z, P, ZA, or the FPCR/FPSR
//! system registers), and which general-purpose registers can it write?
//! Both follow from the A64 encoding classes (Arm ARM, "A64 instruction set
//! encoding"), so this module classifies words by encoding group instead of
//! disassembling them: every SIMD&FP group is one decision, and for the
//! general-purpose groups the destination fields (Rd, Rt, Rt2, Rs, a
//! written-back Rn) are read from the encoding.
//!
//! It is conservative in both directions that matter: a word in no group
//! decoded here is [`Class::Unknown`] (a finding, never a pass), and where
//! an encoding may or may not write a register (an atomic whose result goes
//! to XZR, a hint that signs x17), the register counts as written.

/// What an instruction word is, as far as the checks are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A general-purpose instruction; `writes` has bit `n` set when the
    /// instruction may write `xn`/`wn` (n < 31; register 31 is XZR or SP
    /// and never recorded).
    Gpr { group: &'static str, writes: u32 },
    /// Uses SIMD&FP, SVE or SME state.
    FpSimd { group: &'static str },
    /// Not an encoding this decoder knows (unallocated, or an extension it
    /// does not cover).
    Unknown,
}

impl Class {
    /// Whether the instruction may write `x<reg>`.
    pub fn writes(&self, reg: u32) -> bool {
        matches!(self, Class::Gpr { writes, .. } if reg < 31 && writes & (1 << reg) != 0)
    }
}

/// Bits `hi..=lo` of `w`.
fn bits(w: u32, hi: u32, lo: u32) -> u32 {
    (w >> lo) & ((1u32 << (hi - lo + 1)) - 1)
}

fn bit(w: u32, n: u32) -> bool {
    (w >> n) & 1 != 0
}

/// The register mask of one register field (31 = XZR/SP: nothing).
fn reg(r: u32) -> u32 {
    if r >= 31 {
        0
    } else {
        1 << r
    }
}

fn rd(w: u32) -> u32 {
    reg(bits(w, 4, 0))
}
fn rn(w: u32) -> u32 {
    reg(bits(w, 9, 5))
}
fn rt2(w: u32) -> u32 {
    reg(bits(w, 14, 10))
}
fn rs(w: u32) -> u32 {
    reg(bits(w, 20, 16))
}

fn gpr(group: &'static str, writes: u32) -> Class {
    Class::Gpr { group, writes }
}

fn fp(group: &'static str) -> Class {
    Class::FpSimd { group }
}

/// Classify one A64 instruction word.
pub fn decode(w: u32) -> Class {
    match bits(w, 28, 25) {
        0b0000 if bit(w, 31) => fp("SME"),
        // UDF #imm16: permanently undefined, writes nothing.
        0b0000 if bits(w, 31, 16) == 0 => gpr("udf", 0),
        0b0010 => fp("SVE"),
        0b0000 | 0b0001 | 0b0011 => Class::Unknown,
        0b1000 | 0b1001 => data_processing_immediate(w),
        0b1010 | 0b1011 => branch_exception_system(w),
        0b0101 | 0b1101 => data_processing_register(w),
        0b0111 | 0b1111 => fp("SIMD&FP data processing"),
        // x1x0
        _ => load_store(w),
    }
}

fn data_processing_immediate(w: u32) -> Class {
    let sf = bit(w, 31);
    let n = bit(w, 22);
    match bits(w, 25, 23) {
        0b000 | 0b001 => gpr("pc-relative address", rd(w)),
        0b010 => gpr("add/sub (immediate)", rd(w)),
        // ADDG/SUBG (MTE).
        0b011 if sf && !bit(w, 29) && !n => gpr("add/sub (immediate, with tags)", rd(w)),
        // SMAX/SMIN/UMAX/UMIN (immediate), FEAT_CSSC.
        0b011 if !bit(w, 30) && !bit(w, 29) && n && bits(w, 21, 20) == 0 => {
            gpr("min/max (immediate)", rd(w))
        }
        0b100 if (sf || !n) && bitmask_immediate_valid(n, bits(w, 15, 10)) => {
            gpr("logical (immediate)", rd(w))
        }
        0b101 if bits(w, 30, 29) != 0b01 && (sf || !bit(w, 22)) => {
            gpr("move wide (immediate)", rd(w))
        }
        0b110 if bits(w, 30, 29) != 0b11 && sf == n && (sf || !bit(w, 21) && !bit(w, 15)) => {
            gpr("bitfield", rd(w))
        }
        0b111 if bits(w, 30, 29) == 0 && !bit(w, 21) && sf == n && (sf || !bit(w, 15)) => {
            gpr("extract", rd(w))
        }
        _ => Class::Unknown,
    }
}

/// Whether N:immr:imms encodes a bitmask (DecodeBitMasks): the element
/// size comes from the highest set bit of N:NOT(imms), and a run of ones
/// filling the whole element is reserved.
fn bitmask_immediate_valid(n: bool, imms: u32) -> bool {
    let v = (u32::from(n) << 6) | (!imms & 0x3f);
    if v == 0 {
        return false;
    }
    let len = 31 - v.leading_zeros();
    if len < 1 {
        return false;
    }
    let levels = (1 << len) - 1;
    imms & levels != levels
}

/// A system register's encoding: (op0, op1, CRn, CRm, op2).
type SysReg = (u32, u32, u32, u32, u32);

/// System registers that hold SIMD&FP/SVE/SME state or control it, with
/// their names.
const FP_SYSREGS: [(SysReg, &str); 9] = [
    ((3, 3, 4, 4, 0), "FPCR"),
    ((3, 3, 4, 4, 1), "FPSR"),
    ((3, 3, 4, 4, 2), "FPMR"),
    ((3, 3, 4, 2, 2), "SVCR"),
    ((3, 0, 1, 2, 0), "ZCR_EL1"),
    ((3, 4, 1, 2, 0), "ZCR_EL2"),
    ((3, 0, 1, 2, 6), "SMCR_EL1"),
    ((3, 4, 5, 3, 0), "FPEXC32_EL2"),
    ((3, 3, 13, 0, 5), "TPIDR2_EL0"),
];

/// CPACR_EL1: a write can enable SIMD&FP access.
const CPACR_EL1: SysReg = (3, 0, 1, 0, 2);

/// The name of the SIMD&FP system register an MRS/MSR (register) word
/// addresses, if it is one.
pub fn fp_sysreg(w: u32) -> Option<&'static str> {
    let key = (
        2 + bits(w, 19, 19),
        bits(w, 18, 16),
        bits(w, 15, 12),
        bits(w, 11, 8),
        bits(w, 7, 5),
    );
    if key == CPACR_EL1 && !bit(w, 21) {
        return Some("CPACR_EL1");
    }
    // ZCR_ELx (op2 0), SMPRI_EL1, SMPRIMAP_EL2 (4, 5), SMCR_ELx (6), at
    // any exception level.
    if key.0 == 3 && key.2 == 1 && key.3 == 2 && matches!(key.4, 0 | 4 | 5 | 6) {
        return Some("ZCR/SMCR");
    }
    FP_SYSREGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, name)| *name)
}

fn branch_exception_system(w: u32) -> Class {
    match bits(w, 31, 29) {
        // B.cond / BC.cond
        0b010 if bits(w, 25, 24) == 0 => gpr("conditional branch", 0),
        // B / BL (BL writes x30)
        0b000 => gpr("branch", 0),
        0b100 => gpr("branch with link", reg(30)),
        // CBZ/CBNZ, TBZ/TBNZ: read Rt
        0b001 | 0b101 => gpr("compare/test and branch", 0),
        0b110 => match bits(w, 25, 24) {
            0b00 => exception_generation(w),
            0b01 if bits(w, 23, 22) == 0 => system(w),
            0b10 | 0b11 => branch_register(w),
            _ => Class::Unknown,
        },
        _ => Class::Unknown,
    }
}

fn branch_register(w: u32) -> Class {
    let (opc, op2, op3, rn_, op4) = (
        bits(w, 24, 21),
        bits(w, 20, 16),
        bits(w, 15, 10),
        bits(w, 9, 5),
        bits(w, 4, 0),
    );
    // op3 000000 with op4 00000: the plain form; op3 00001x with op4
    // 11111: the pointer-authenticated "Z"/"AA" forms.
    let plain = op3 == 0 && op4 == 0;
    let auth_zero = op3 >> 1 == 1 && op4 == 31;
    let ok = op2 == 31
        && match opc {
            // BR, BLR, RET (and BRAAZ, BLRAAZ, RETAA)
            0b0000 | 0b0001 => plain || auth_zero,
            0b0010 => plain || (auth_zero && rn_ == 31),
            // ERET (ERETAA), DRPS
            0b0100 => rn_ == 31 && (plain || auth_zero),
            0b0101 => rn_ == 31 && plain,
            // BRAA, BLRAA (op4 is the modifier register)
            0b1000 | 0b1001 => op3 >> 1 == 1,
            _ => false,
        };
    match opc {
        _ if !ok => Class::Unknown,
        // BLR, BLRAA/BLRAB(Z): write x30
        0b0001 | 0b1001 => gpr("branch with link (register)", reg(30)),
        _ => gpr("branch (register)", 0),
    }
}

fn exception_generation(w: u32) -> Class {
    let (opc, op2, ll) = (bits(w, 23, 21), bits(w, 4, 2), bits(w, 1, 0));
    match (opc, op2, ll) {
        // SVC, HVC, SMC
        (0b000, 0, 1..=3)
        // BRK, HLT, TCANCEL
        | (0b001..=0b011, 0, 0)
        // DCPS1-3
        | (0b101, 0, 1..=3) => gpr("exception generation", 0),
        _ => Class::Unknown,
    }
}

fn system(w: u32) -> Class {
    let l = bit(w, 21);
    let op1 = bits(w, 18, 16);
    let crn = bits(w, 15, 12);
    let op2 = bits(w, 7, 5);
    let rt = bits(w, 4, 0);
    match bits(w, 20, 19) {
        0b00 if !l => match (crn, rt) {
            // Hints: NOP, YIELD, WFE, BTI, PAC*/AUT* (which write x16/x17
            // or x30, counted as written), ...
            (0b0010, 31) if op1 == 0b011 => gpr("hint", reg(16) | reg(17) | reg(30)),
            // CLREX, DSB, DMB, ISB, SB, TCOMMIT
            (0b0011, 31) if op1 == 0b011 => gpr("barrier", 0),
            // MSR (immediate) to PSTATE fields, CFINV, XAFLAG, AXFLAG;
            // SMSTART/SMSTOP write PSTATE.SM/ZA (SVCR).
            (0b0100, 31) if op1 == 0b011 && op2 == 0b011 => fp("MSR SVCR (SME mode)"),
            (0b0100, 31) => gpr("PSTATE", 0),
            // WFET/WFIT: read Rt
            (0b0001, _) if op1 == 0b011 && bits(w, 11, 8) == 0 && op2 <= 1 => {
                gpr("wait with timeout", 0)
            }
            _ => Class::Unknown,
        },
        // TSTART, TTEST: write Rt
        0b00 if crn == 0b0011 && op1 == 0b011 => gpr("system with result", reg(rt)),
        0b00 => Class::Unknown,
        // SYS (reads Rt), SYSL (writes Rt)
        0b01 => gpr("system instruction", if l { reg(rt) } else { 0 }),
        // MSR (register) reads Rt, MRS writes it
        _ => match fp_sysreg(w) {
            Some(name) if l => fp(match name {
                "FPCR" => "MRS FPCR",
                "FPSR" => "MRS FPSR",
                _ => "MRS of a SIMD&FP/SVE/SME system register",
            }),
            Some(name) => fp(match name {
                "FPCR" => "MSR FPCR",
                "FPSR" => "MSR FPSR",
                "CPACR_EL1" => "MSR CPACR_EL1 (SIMD&FP access control)",
                _ => "MSR of a SIMD&FP/SVE/SME system register",
            }),
            None if l => gpr("MRS", reg(rt)),
            None => gpr("MSR (register)", 0),
        },
    }
}

fn data_processing_register(w: u32) -> Class {
    let sf = bit(w, 31);
    let s = bit(w, 29);
    if !bit(w, 28) {
        return if !bit(w, 24) {
            if !sf && bit(w, 15) {
                Class::Unknown
            } else {
                gpr("logical (shifted register)", rd(w))
            }
        } else if !bit(w, 21) {
            if bits(w, 23, 22) == 0b11 || (!sf && bit(w, 15)) {
                Class::Unknown
            } else {
                gpr("add/sub (shifted register)", rd(w))
            }
        } else if bits(w, 23, 22) != 0 || bits(w, 12, 10) > 4 {
            Class::Unknown
        } else {
            gpr("add/sub (extended register)", rd(w))
        };
    }
    let op3 = bits(w, 15, 10);
    match bits(w, 24, 21) {
        0b0000 => match op3 {
            0b000000 => gpr("add/sub with carry", rd(w)),
            // RMIF, SETF8/SETF16: flags only
            // RMIF
            _ if op3 & 0b11111 == 0b00001 && sf && !bit(w, 30) && s && !bit(w, 4) => {
                gpr("flags", 0)
            }
            // SETF8, SETF16
            _ if op3 & 0b1111 == 0b0010
                && !sf
                && !bit(w, 30)
                && s
                && bits(w, 20, 15) == 0
                && bits(w, 4, 0) == 0b01101 =>
            {
                gpr("flags", 0)
            }
            _ => Class::Unknown,
        },
        // CCMP/CCMN (register or immediate): flags only
        0b0010 if s && !bit(w, 10) && !bit(w, 4) => gpr("conditional compare", 0),
        // CSEL, CSINC, CSINV, CSNEG
        0b0100 if !s && !bit(w, 11) => gpr("conditional select", rd(w)),
        0b0110 if !bit(w, 30) => {
            // UDIV SDIV (2, 3), IRG GMI (4, 5), LSLV..RORV (8-11), PACGA
            // (12), CRC32* (16-23), SMAX/UMAX/SMIN/UMIN (24-27), SUBP(S) (0)
            let ok = match op3 {
                0 => sf,
                2 | 3 | 8..=11 | 24..=27 => !s,
                // CRC32X/CRC32CX are the 64-bit forms, the others 32-bit.
                16..=23 => !s && sf == (op3 & 3 == 3),
                4 | 5 | 12 => sf && !s,
                _ => false,
            };
            if ok {
                gpr("data processing (2 source)", rd(w))
            } else {
                Class::Unknown
            }
        }
        // RBIT, REV*, CLZ, CLS, CTZ, CNT, ABS (opcode2 0); PAC*/AUT*/XPAC*
        // (opcode2 1)
        0b0110 if !s && bits(w, 20, 17) == 0 && one_source_valid(w) => {
            gpr("data processing (1 source)", rd(w))
        }
        0b1000..=0b1111 => {
            let ok = bits(w, 30, 29) == 0
                && match (bits(w, 23, 21), bit(w, 15)) {
                    (0b000, _) => true,
                    (0b001 | 0b101, _) => sf,
                    (0b010 | 0b110, false) => sf,
                    _ => false,
                };
            if ok {
                gpr("data processing (3 source)", rd(w))
            } else {
                Class::Unknown
            }
        }
        _ => Class::Unknown,
    }
}

/// RBIT, REV16, REV(32), REV (64-bit only), CLZ, CLS, CTZ, CNT, ABS
/// (opcode2 0); PAC*/AUT* (opcode2 1, 64-bit only; the Z forms and XPAC*
/// take no Rn).
fn one_source_valid(w: u32) -> bool {
    let sf = bit(w, 31);
    let opcode = bits(w, 15, 10);
    if !bit(w, 16) {
        return opcode <= 0b001000 && (sf || opcode != 0b000011);
    }
    sf && match opcode {
        0b000000..=0b000111 => true,
        0b001000..=0b010001 => bits(w, 9, 5) == 31,
        _ => false,
    }
}

/// CPY*, CPYF*, SET*, SETG* (FEAT_MOPS): size 00, three distinct
/// registers, all of them updated.
fn memory_copy_set(w: u32) -> Class {
    let (d, n, s) = (bits(w, 4, 0), bits(w, 9, 5), bits(w, 20, 16));
    let set = bits(w, 23, 22) == 0b11;
    let ok = bits(w, 31, 30) == 0
        && d != n
        && d != s
        && n != s
        && d != 31
        && n != 31
        && (set || s != 31)
        && (!set || bits(w, 15, 14) != 0b11);
    if ok {
        gpr(
            if set { "memory set" } else { "memory copy" },
            reg(d) | reg(n) | reg(s),
        )
    } else {
        Class::Unknown
    }
}

/// STG, STZG, ST2G, STZ2G, LDG, STGM, STZGM, LDGM (MTE).
fn memory_tags(w: u32) -> Class {
    let opc = bits(w, 23, 22);
    let mode = bits(w, 11, 10);
    let imm9 = bits(w, 20, 12);
    let rt = bits(w, 4, 0);
    match (opc, mode) {
        // LDG writes Rt
        (0b01, 0b00) => gpr("load allocation tag", reg(rt)),
        // STZGM, STGM (read Rt), LDGM (writes Rt): no offset
        (0b00 | 0b10, 0b00) if imm9 == 0 => gpr("store allocation tags", 0),
        (0b11, 0b00) if imm9 == 0 => gpr("load allocation tags", reg(rt)),
        (_, 0b00) => Class::Unknown,
        // STG/STZG/ST2G/STZ2G: post-index (01) and pre-index (11) write
        // back the base
        (_, _) => gpr(
            "store allocation tag",
            if mode & 1 == 1 { rn(w) } else { 0 },
        ),
    }
}

/// What a load/store register form does with Rt, from size and opc.
enum Access {
    Store,
    Load,
    Prefetch,
}

fn register_access(w: u32, prefetch_allowed: bool) -> Option<Access> {
    match (bits(w, 31, 30), bits(w, 23, 22)) {
        (_, 0b00) => Some(Access::Store),
        (_, 0b01) => Some(Access::Load),
        (0b11, 0b10) => prefetch_allowed.then_some(Access::Prefetch),
        (0b10, 0b10) | (0b00 | 0b01, _) => Some(Access::Load),
        _ => None,
    }
}

fn load_store(w: u32) -> Class {
    // CPY* and SETG* (FEAT_MOPS) have bit 26 set but move memory through
    // general-purpose registers only.
    if bits(w, 29, 28) == 0b01 && bit(w, 24) && !bit(w, 21) && bits(w, 11, 10) == 0b01 {
        return memory_copy_set(w);
    }
    // Every other load/store encoding with bit 26 (V) set moves SIMD&FP
    // registers.
    if bit(w, 26) {
        return fp("SIMD&FP load/store");
    }
    let rt = bits(w, 4, 0);
    let wb = |on: bool| if on { rn(w) } else { 0 };
    match bits(w, 29, 28) {
        0b00 if !bit(w, 24) => {
            // Exclusive, ordered, compare-and-swap.
            let l = bit(w, 22);
            match (bit(w, 23), bit(w, 21)) {
                (false, false) => gpr("load/store exclusive", if l { reg(rt) } else { rs(w) }),
                (false, true) if bit(w, 31) => gpr(
                    "load/store exclusive pair",
                    if l { reg(rt) | rt2(w) } else { rs(w) },
                ),
                // CASP: the pair Rs, Rs+1 receives the old value; Rs and
                // Rt are even, Rt2 is 11111.
                (false, true) if bits(w, 14, 10) == 31 && bits(w, 16, 16) == 0 && rt & 1 == 0 => {
                    gpr("compare and swap pair", rs(w) | reg(bits(w, 20, 16) + 1))
                }
                (false, true) => Class::Unknown,
                (true, false) => gpr("load/store ordered", if l { reg(rt) } else { 0 }),
                (true, true) if bits(w, 14, 10) == 31 => gpr("compare and swap", rs(w)),
                (true, true) => Class::Unknown,
            }
        }
        0b00 => Class::Unknown,
        0b01 if !bit(w, 24) => match bits(w, 31, 30) {
            0b11 => gpr("prefetch (literal)", 0),
            _ => gpr("load register (literal)", reg(rt)),
        },
        0b01 if bits(w, 31, 28) == 0b1101 && bit(w, 21) => memory_tags(w),
        0b01 if !bit(w, 21) => match bits(w, 11, 10) {
            // LDAPUR*/STLUR* (RCpc, unscaled)
            0b00 => match register_access(w, false) {
                Some(Access::Store) => gpr("store-release (unscaled)", 0),
                Some(Access::Load) => gpr("load-acquire (unscaled)", reg(rt)),
                _ => Class::Unknown,
            },
            _ => Class::Unknown,
        },
        0b01 => Class::Unknown,
        0b10 => {
            // Load/store pair: no-allocate (00), post-index (01), offset
            // (10), pre-index (11).
            let mode = bits(w, 24, 23);
            let l = bit(w, 22);
            let writeback = wb(mode & 1 == 1);
            match bits(w, 31, 30) {
                0b00 | 0b10 if l => gpr("load pair", reg(rt) | rt2(w) | writeback),
                0b00 | 0b10 => gpr("store pair", writeback),
                0b01 if mode != 0 && l => {
                    gpr("load pair (signed word)", reg(rt) | rt2(w) | writeback)
                }
                // STGP
                0b01 if mode != 0 => gpr("store allocation tag pair", writeback),
                _ => Class::Unknown,
            }
        }
        _ if bit(w, 24) => match register_access(w, true) {
            Some(Access::Load) => gpr("load register (unsigned offset)", reg(rt)),
            Some(_) => gpr("store/prefetch (unsigned offset)", 0),
            None => Class::Unknown,
        },
        _ if !bit(w, 21) => {
            // Unscaled (00), post-index (01), unprivileged (10), pre-index (11).
            let mode = bits(w, 11, 10);
            let writeback = wb(mode & 1 == 1);
            match register_access(w, mode == 0) {
                Some(Access::Load) => gpr("load register", reg(rt) | writeback),
                Some(_) => gpr("store/prefetch register", writeback),
                None => Class::Unknown,
            }
        }
        _ => match bits(w, 11, 10) {
            // Atomic memory operations: LD<op>, SWP (o3=1 opc=000), LDAPR
            // (o3=1 opc=100); the LD64B/ST64B family is not decoded.
            0b00 => match (bit(w, 15), bits(w, 14, 12)) {
                (false, _) | (true, 0b000) => gpr("atomic memory operation", reg(rt)),
                // LDAPR: A=1, R=0, Rs=11111
                (true, 0b100) if bit(w, 23) && !bit(w, 22) && bits(w, 20, 16) == 31 => {
                    gpr("load-acquire RCpc", reg(rt))
                }
                _ => Class::Unknown,
            },
            // Register offset: option must be UXTW/LSL/SXTW/SXTX.
            0b10 if bit(w, 14) => match register_access(w, true) {
                Some(Access::Load) => gpr("load register (register offset)", reg(rt)),
                Some(_) => gpr("store/prefetch (register offset)", 0),
                None => Class::Unknown,
            },
            // LDRAA/LDRAB, writeback when W (bit 11).
            0b01 | 0b11 if bits(w, 31, 30) == 0b11 => gpr(
                "load register (pointer authentication)",
                reg(rt) | wb(bit(w, 11)),
            ),
            _ => Class::Unknown,
        },
    }
}

/// AArch64 mapping symbols mark code (`$x`) and data (`$d`) in a section.
pub fn mapping_symbol(name: &str) -> Option<bool> {
    let mut chars = name.strip_prefix('$')?.chars();
    let kind = chars.next()?;
    let rest = chars.as_str();
    if !(rest.is_empty() || rest.starts_with('.')) {
        return None;
    }
    match kind {
        'x' => Some(true),
        'd' => Some(false),
        _ => None,
    }
}

/// One executable section to decode.
pub struct Code<'data> {
    pub section: String,
    /// The section's address in the module (its `sh_addr`).
    pub address: u64,
    pub bytes: &'data [u8],
    /// Function and other symbols in the section: (offset, name), sorted.
    pub symbols: Vec<(u64, String)>,
    /// Mapping symbols: (offset, is code), sorted. Data between a `$d`
    /// and the next `$x` is not decoded.
    pub mapping: Vec<(u64, bool)>,
}

impl Code<'_> {
    /// `symbol+0xoff (.text+0xoff at 0xaddr)`.
    pub fn locate(&self, offset: u64) -> String {
        let idx = self.symbols.partition_point(|(a, _)| *a <= offset);
        let place = format!(
            "{}+{offset:#x} at {:#x}",
            self.section,
            self.address + offset
        );
        match idx.checked_sub(1).map(|i| &self.symbols[i]) {
            Some((addr, name)) => format!("{name}+{:#x} ({place})", offset - addr),
            None => place,
        }
    }

    /// Whether the word at `offset` is code (no `$d` mapping symbol covers it).
    fn is_code(&self, offset: u64) -> bool {
        let idx = self.mapping.partition_point(|(a, _)| *a <= offset);
        idx.checked_sub(1)
            .map(|i| self.mapping[i].1)
            .unwrap_or(true)
    }
}

/// lld fills the gaps between input sections in an AArch64 executable
/// output section with this (unallocated) word.
pub const LLD_TRAP_FILL: u32 = 0xd4d4_d4d4;

/// The instruction checks (`fpu-simd`, `x18`, `decode`) over one section.
pub fn check_code(code: &Code<'_>, out: &mut Vec<crate::Finding>) {
    use crate::{check, Finding};
    let mut offset = 0u64;
    for chunk in code.bytes.chunks(4) {
        let at = offset;
        offset += 4;
        if !code.is_code(at) {
            continue;
        }
        let Ok(word) = <[u8; 4]>::try_from(chunk) else {
            out.push(Finding {
                check: check::DECODE,
                detail: format!(
                    "{}: {} trailing byte(s) after the last instruction word",
                    code.locate(at),
                    chunk.len()
                ),
            });
            continue;
        };
        let word = u32::from_le_bytes(word);
        match decode(word) {
            Class::FpSimd { group } => out.push(Finding {
                check: check::FPU_SIMD,
                detail: format!(
                    "{}: {word:#010x} ({group}) uses SIMD&FP state; the kernel is built \
                     -mgeneral-regs-only and does not save it for kernel code",
                    code.locate(at)
                ),
            }),
            c @ Class::Gpr { group, .. } if c.writes(18) => out.push(Finding {
                check: check::X18,
                detail: format!(
                    "{}: {word:#010x} ({group}) writes x18, the kernel's per-CPU pointer \
                     (-ffixed-x18); reserve it (Rust: +reserve-x18)",
                    code.locate(at)
                ),
            }),
            Class::Gpr { .. } => {}
            Class::Unknown if word == LLD_TRAP_FILL => {}
            Class::Unknown => out.push(Finding {
                check: check::DECODE,
                detail: format!(
                    "{}: {word:#010x} is not an instruction koaudit decodes, so it cannot \
                     vouch for it (see `llvm-objdump -d --start-address={:#x}`)",
                    code.locate(at),
                    code.address + at
                ),
            }),
        }
    }
}
