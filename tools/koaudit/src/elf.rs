//! Checks over the ELF structure of a kld, using the `object` crate.

use std::collections::BTreeSet;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
use object::{
    Endianness, Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget,
    SectionIndex, SymbolKind, SymbolSection,
};

use crate::{check, x86, Finding, KernelSymbols};

/// Section type of amd64 unwind tables (`SHT_X86_64_UNWIND`).
pub const SHT_X86_64_UNWIND: u32 = 0x7000_0001;

/// Relocation types `elf_reloc_internal` in sys/amd64/amd64/elf_machdep.c
/// applies for a kld; it refuses a module with any other type.
pub const ALLOWED_RELOCATIONS: [u32; 5] = [
    elf::R_X86_64_NONE,
    elf::R_X86_64_64,
    elf::R_X86_64_PC32,
    elf::R_X86_64_PLT32,
    elf::R_X86_64_32S,
];

/// Linker-set sections every kld built with `DECLARE_MODULE` carries: its
/// metadata, and the `SYSINIT` that calls `module_register_init`.
pub const REQUIRED_SECTIONS: [&str; 2] = ["set_modmetadata_set", "set_sysinit_set"];

/// Checked like the others when present: `DECLARE_MODULE` makes no
/// `SYSUNINIT`, and the in-tree virtio_balloon.ko has no such set.
pub const OPTIONAL_SECTIONS: [&str; 1] = ["set_sysuninit_set"];

/// `struct mod_metadata` (sys/module.h): `md_version`, `md_type`, then two
/// pointers. `MODULE_METADATA` entries use structure version 1.
const MDT_STRUCT_VERSION: u32 = 1;
/// `md_type` of the entry `DECLARE_MODULE` makes.
const MDT_MODULE: u32 = 2;

/// Section types `link_elf_obj.c` loads (its "progtab"), when `SHF_ALLOC`
/// and not empty.
const LOADED_TYPES: [u32; 5] = [
    elf::SHT_PROGBITS,
    elf::SHT_NOBITS,
    SHT_X86_64_UNWIND,
    elf::SHT_INIT_ARRAY,
    elf::SHT_FINI_ARRAY,
];

/// Sections that hold unwind information.
pub const UNWIND_SECTIONS: [&str; 3] = [".eh_frame", ".eh_frame_hdr", ".gcc_except_table"];

/// A parsed amd64 relocatable object.
pub struct Module<'data> {
    file: ElfFile64<'data, Endianness>,
}

impl<'data> Module<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self, String> {
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| format!("not an ELF64 object: {e}"))?;
        let endian = file.endian();
        let header = file.elf_header();
        if header.e_machine(endian) != elf::EM_X86_64 {
            return Err(format!(
                "not an amd64 object (e_machine {})",
                header.e_machine(endian)
            ));
        }
        if header.e_type(endian) != elf::ET_REL {
            return Err(format!(
                "not a relocatable object (e_type {}); amd64 klds are made by `ld -r`",
                header.e_type(endian)
            ));
        }
        Ok(Module { file })
    }

    fn section_name(&self, index: SectionIndex) -> String {
        self.file
            .section_by_index(index)
            .ok()
            .and_then(|s| s.name().ok().map(str::to_owned))
            .unwrap_or_else(|| format!("section#{}", index.0))
    }

    /// The section `name` if the kernel linker loads it (puts it in its
    /// "progtab"): only those are found by `link_elf_lookup_set` and by the
    /// `__start_`/`__stop_` resolution in `link_elf_fix_link_set`.
    fn loaded_section(
        &self,
        name: &str,
    ) -> Option<object::read::elf::ElfSection64<'data, '_, Endianness>> {
        self.file
            .sections()
            .find(|s| s.name() == Ok(name) && Self::is_loaded(s))
    }

    fn is_loaded(section: &object::read::elf::ElfSection64<'data, '_, Endianness>) -> bool {
        let (sh_type, flags) = Self::sh_type_flags(section);
        LOADED_TYPES.contains(&sh_type)
            && flags & u64::from(elf::SHF_ALLOC) != 0
            && section.size() != 0
    }

    fn sh_type_flags(
        section: &object::read::elf::ElfSection64<'data, '_, Endianness>,
    ) -> (u32, u64) {
        let endian = section.elf_file().endian();
        let header = section.elf_section_header();
        (header.sh_type(endian), header.sh_flags(endian))
    }

    /// Check 1: relocation types the kernel linker supports.
    ///
    /// The kernel linker (`link_elf_obj.c`) skips relocation tables of
    /// sections it does not load (no `SHF_ALLOC`, e.g. debug info), so only
    /// relocations applied to allocated sections are audited.
    pub fn check_relocations(&self, out: &mut Vec<Finding>) {
        for section in self.file.sections() {
            let (_, flags) = Self::sh_type_flags(&section);
            if flags & u64::from(elf::SHF_ALLOC) == 0 {
                continue;
            }
            let name = section.name().unwrap_or("?");
            for (offset, reloc) in section.relocations() {
                let RelocationFlags::Elf { r_type } = reloc.flags() else {
                    continue;
                };
                if ALLOWED_RELOCATIONS.contains(&r_type) {
                    continue;
                }
                let symbol = match reloc.target() {
                    RelocationTarget::Symbol(index) => match self.file.symbol_by_index(index) {
                        Ok(sym) => match (sym.kind(), sym.section()) {
                            (SymbolKind::Section, SymbolSection::Section(s)) => {
                                self.section_name(s)
                            }
                            _ => sym.name().unwrap_or("?").to_owned(),
                        },
                        Err(_) => format!("symbol#{}", index.0),
                    },
                    RelocationTarget::Section(s) => self.section_name(s),
                    _ => "(none)".to_owned(),
                };
                out.push(Finding {
                    check: check::RELOCATION,
                    detail: format!(
                        "{} ({r_type}) in {name} at offset {offset:#x} against {symbol}{}; \
                         the kernel linker only applies NONE, 64, PC32, PLT32 and 32S",
                        relocation_name(r_type),
                        signed_hex(reloc.addend())
                    ),
                });
            }
        }
    }

    /// The executable sections with the symbols defined in each, for the
    /// instruction checks.
    pub fn executable_sections(&self) -> Vec<x86::Code<'data>> {
        let mut out = Vec::new();
        for section in self.file.sections() {
            let (sh_type, flags) = Self::sh_type_flags(&section);
            if flags & u64::from(elf::SHF_EXECINSTR) == 0 || sh_type == elf::SHT_NOBITS {
                continue;
            }
            let Ok(bytes) = section.data() else { continue };
            let mut symbols: Vec<(u64, bool, String)> = self
                .file
                .symbols()
                .filter(|s| s.section_index() == Some(section.index()))
                .filter(|s| !matches!(s.kind(), SymbolKind::Section | SymbolKind::File))
                .filter_map(|s| {
                    let name = s.name().ok()?;
                    (!name.is_empty())
                        .then(|| (s.address(), s.kind() == SymbolKind::Text, name.to_owned()))
                })
                .collect();
            // Per address, a function symbol sorts last and so wins.
            symbols.sort();
            out.push(x86::Code {
                section: section.name().unwrap_or("?").to_owned(),
                bytes,
                symbols: symbols.into_iter().map(|(a, _, n)| (a, n)).collect(),
            });
        }
        out
    }

    /// Check 4: unwind tables, which the kernel has no unwinder for.
    pub fn check_unwind(&self, out: &mut Vec<Finding>) {
        for section in self.file.sections() {
            let (sh_type, _) = Self::sh_type_flags(&section);
            let name = section.name().unwrap_or("?");
            if UNWIND_SECTIONS.contains(&name) || sh_type == SHT_X86_64_UNWIND {
                out.push(Finding {
                    check: check::UNWIND,
                    detail: format!(
                        "section {name} (type {sh_type:#x}, {} bytes) holds unwind tables; \
                         build with panic=abort and -C force-unwind-tables=no",
                        section.size()
                    ),
                });
            }
        }
    }

    /// Check 5: the linker sets `DECLARE_MODULE` / `SYSINIT` produce.
    ///
    /// Each must be a section the kernel linker loads, holding an array of
    /// pointers (one `R_X86_64_64` per 8-byte slot, the kernel walks the
    /// section from `__start_set_X` to `__stop_set_X`), and
    /// `set_modmetadata_set` must point at an `MDT_MODULE` entry: without one
    /// `linker_file_register_modules` registers nothing and no driver attaches.
    pub fn check_metadata(&self, out: &mut Vec<Finding>) {
        let mut fail = |detail: String| {
            out.push(Finding {
                check: check::METADATA,
                detail,
            })
        };
        let sets = REQUIRED_SECTIONS
            .iter()
            .map(|s| (*s, true))
            .chain(OPTIONAL_SECTIONS.iter().map(|s| (*s, false)));
        for (name, required) in sets {
            let Some(section) = self.file.section_by_name(name) else {
                if required {
                    fail(format!(
                        "section {name} is missing; the kernel linker finds the module's \
                         metadata and init functions through it"
                    ));
                }
                continue;
            };
            if !Self::is_loaded(&section) {
                let (sh_type, flags) = Self::sh_type_flags(&section);
                fail(format!(
                    "section {name} (type {sh_type:#x}, flags {flags:#x}, {} bytes) is not \
                     loaded by the kernel linker, which needs an SHF_ALLOC PROGBITS section \
                     with contents",
                    section.size()
                ));
                continue;
            }
            let size = section.size();
            if size % 8 != 0 {
                fail(format!(
                    "section {name} is {size} bytes, not a multiple of 8; a linker set is \
                     an array of pointers"
                ));
            }
            let pointers: Vec<(u64, i64, RelocationTarget)> = section
                .relocations()
                .filter(|(_, r)| {
                    r.flags()
                        == RelocationFlags::Elf {
                            r_type: elf::R_X86_64_64,
                        }
                })
                .map(|(offset, r)| (offset, r.addend(), r.target()))
                .collect();
            for slot in (0..size / 8).map(|i| i * 8) {
                if !pointers.iter().any(|(offset, _, _)| *offset == slot) {
                    fail(format!(
                        "{name}+{slot:#x} has no R_X86_64_64 relocation; every linker set \
                         entry must be a pointer the kernel linker relocates"
                    ));
                }
            }
            if name == "set_modmetadata_set"
                && !pointers
                    .iter()
                    .any(|(_, addend, target)| self.is_module_declaration(*target, *addend))
            {
                fail(format!(
                    "{name} has no MDT_MODULE entry; without DECLARE_MODULE (or \
                     DRIVER_MODULE) the kernel registers no module"
                ));
            }
        }
    }

    /// Whether a pointer `target + addend` points at a `struct mod_metadata`
    /// with `md_version` 1 and `md_type` `MDT_MODULE`.
    fn is_module_declaration(&self, target: RelocationTarget, addend: i64) -> bool {
        let RelocationTarget::Symbol(index) = target else {
            return false;
        };
        let Ok(symbol) = self.file.symbol_by_index(index) else {
            return false;
        };
        let SymbolSection::Section(section) = symbol.section() else {
            return false;
        };
        let Some(data) = self
            .file
            .section_by_index(section)
            .ok()
            .and_then(|s| s.data().ok())
        else {
            return false;
        };
        // In a relocatable object a symbol's value is its section offset.
        let Some(at) = symbol
            .address()
            .checked_add_signed(addend)
            .and_then(|a| usize::try_from(a).ok())
        else {
            return false;
        };
        let word = |at: usize| -> Option<u32> {
            let bytes = data.get(at..at.checked_add(4)?)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        word(at) == Some(MDT_STRUCT_VERSION) && at.checked_add(4).and_then(word) == Some(MDT_MODULE)
    }

    /// Undefined symbols, sorted, without duplicates.
    pub fn undefined_symbols(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .file
            .symbols()
            .filter(|s| s.is_undefined() && s.kind() != SymbolKind::Section)
            .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(str::to_owned))
            .collect();
        set.into_iter().collect()
    }

    /// Check 6: every undefined symbol must be one the kernel exports, or a
    /// `__start_X` / `__stop_X` bound of a section `X` the module loads
    /// (`link_elf_fix_link_set` resolves those before any symbol lookup).
    pub fn check_undefined(
        &self,
        undefined: &[String],
        kernel: &KernelSymbols,
        out: &mut Vec<Finding>,
    ) {
        for name in undefined {
            if kernel.contains(name) {
                continue;
            }
            let own_section = name
                .strip_prefix("__start_")
                .or_else(|| name.strip_prefix("__stop_"))
                .filter(|section| self.loaded_section(section).is_some());
            if own_section.is_some() {
                continue;
            }
            out.push(Finding {
                check: check::UNDEFINED,
                detail: format!(
                    "{name} is undefined in the module and not in the kernel symbol list; \
                     kldload would fail with \"undefined symbol\""
                ),
            });
        }
    }
}

/// `+0x10`, `-0x4`, or nothing for zero.
pub fn signed_hex(value: i64) -> String {
    match value {
        0 => String::new(),
        v if v < 0 => format!("-{:#x}", v.unsigned_abs()),
        v => format!("+{v:#x}"),
    }
}

/// Name of an amd64 relocation type.
pub fn relocation_name(r_type: u32) -> String {
    let name = match r_type {
        elf::R_X86_64_NONE => "R_X86_64_NONE",
        elf::R_X86_64_64 => "R_X86_64_64",
        elf::R_X86_64_PC32 => "R_X86_64_PC32",
        elf::R_X86_64_GOT32 => "R_X86_64_GOT32",
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32",
        elf::R_X86_64_COPY => "R_X86_64_COPY",
        elf::R_X86_64_GLOB_DAT => "R_X86_64_GLOB_DAT",
        elf::R_X86_64_JUMP_SLOT => "R_X86_64_JUMP_SLOT",
        elf::R_X86_64_RELATIVE => "R_X86_64_RELATIVE",
        elf::R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL",
        elf::R_X86_64_32 => "R_X86_64_32",
        elf::R_X86_64_32S => "R_X86_64_32S",
        elf::R_X86_64_16 => "R_X86_64_16",
        elf::R_X86_64_PC16 => "R_X86_64_PC16",
        elf::R_X86_64_8 => "R_X86_64_8",
        elf::R_X86_64_PC8 => "R_X86_64_PC8",
        elf::R_X86_64_DTPMOD64 => "R_X86_64_DTPMOD64",
        elf::R_X86_64_DTPOFF64 => "R_X86_64_DTPOFF64",
        elf::R_X86_64_TPOFF64 => "R_X86_64_TPOFF64",
        elf::R_X86_64_TLSGD => "R_X86_64_TLSGD",
        elf::R_X86_64_TLSLD => "R_X86_64_TLSLD",
        elf::R_X86_64_DTPOFF32 => "R_X86_64_DTPOFF32",
        elf::R_X86_64_GOTTPOFF => "R_X86_64_GOTTPOFF",
        elf::R_X86_64_TPOFF32 => "R_X86_64_TPOFF32",
        elf::R_X86_64_PC64 => "R_X86_64_PC64",
        elf::R_X86_64_GOTOFF64 => "R_X86_64_GOTOFF64",
        elf::R_X86_64_GOTPC32 => "R_X86_64_GOTPC32",
        elf::R_X86_64_SIZE32 => "R_X86_64_SIZE32",
        elf::R_X86_64_SIZE64 => "R_X86_64_SIZE64",
        elf::R_X86_64_GOTPC32_TLSDESC => "R_X86_64_GOTPC32_TLSDESC",
        elf::R_X86_64_TLSDESC_CALL => "R_X86_64_TLSDESC_CALL",
        elf::R_X86_64_TLSDESC => "R_X86_64_TLSDESC",
        elf::R_X86_64_IRELATIVE => "R_X86_64_IRELATIVE",
        elf::R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX",
        elf::R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX",
        _ => return format!("relocation type {r_type}"),
    };
    name.to_owned()
}
