//! Checks over the ELF structure of an arm64 kld: a shared object made by
//! `ld -Bshareable -znotext -znorelro` (sys/conf/kmod.mk), loaded by the
//! kernel's `link_elf.c`, which works from the program headers and the
//! dynamic section, not from the section headers.

use std::collections::{BTreeMap, BTreeSet};

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader, Rel, Rela, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, ReadRef, SymbolKind};

use crate::{a64, check, Finding, KernelSymbols};

/// Relocation types `elf_reloc_internal` in sys/arm64/arm64/elf_machdep.c
/// applies; it refuses the module ("unexpected relocation type") on any
/// other. The four branch types are there for the kernel itself
/// (`-zifunc-noplt`); a module's dynamic tables normally hold only
/// RELATIVE, ABS64, GLOB_DAT and JUMP_SLOT.
pub const ALLOWED_RELOCATIONS: [u32; 10] = [
    elf::R_AARCH64_NONE,
    elf::R_AARCH64_ABS64,
    elf::R_AARCH64_GLOB_DAT,
    elf::R_AARCH64_JUMP_SLOT,
    elf::R_AARCH64_RELATIVE,
    elf::R_AARCH64_IRELATIVE,
    elf::R_AARCH64_TSTBR14,
    elf::R_AARCH64_CONDBR19,
    elf::R_AARCH64_JUMP26,
    elf::R_AARCH64_CALL26,
];

/// `link_elf_load_file` takes at most this many PT_LOAD segments (MAXSEGS).
pub const MAX_LOAD_SEGMENTS: usize = 4;

/// Linker sets a module must have: the metadata `DECLARE_MODULE` puts in
/// `set_modmetadata_set`, and the `SYSINIT` through which it calls
/// `module_register_init`. `set_sysuninit_set` is checked when present.
pub const REQUIRED_SETS: [&str; 2] = ["set_modmetadata_set", "set_sysinit_set"];
pub const OPTIONAL_SETS: [&str; 1] = ["set_sysuninit_set"];

const MDT_STRUCT_VERSION: u32 = 1;
const MDT_MODULE: u32 = 2;

/// One entry of a dynamic relocation table.
#[derive(Debug, Clone, Copy)]
struct DynReloc {
    offset: u64,
    r_type: u32,
    sym: u32,
    addend: i64,
}

/// One dynamic relocation table, as named by the section that holds it.
struct Table {
    name: String,
    relocs: Vec<DynReloc>,
}

/// A dynamic symbol.
#[derive(Debug, Clone)]
struct DynSym {
    name: String,
    value: u64,
    defined: bool,
    weak: bool,
    local: bool,
}

/// A parsed arm64 shared-object kld.
pub struct Module<'data> {
    file: ElfFile64<'data, Endianness>,
    data: &'data [u8],
    /// (vaddr, file offset, file size) of each PT_LOAD.
    loads: Vec<(u64, u64, u64)>,
    dynamic: Vec<(u64, u64)>,
    tables: Vec<Table>,
    dynsyms: Vec<DynSym>,
    /// Problems found while reading the layout, reported by `check_layout`.
    layout: Vec<String>,
}

impl<'data> Module<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self, String> {
        let file = ElfFile64::<Endianness>::parse(data)
            .map_err(|e| format!("not an ELF64 object: {e}"))?;
        let endian = file.endian();
        let header = file.elf_header();
        if header.e_machine(endian) != elf::EM_AARCH64 {
            return Err(format!(
                "not an arm64 object (e_machine {})",
                header.e_machine(endian)
            ));
        }
        if header.e_type(endian) != elf::ET_DYN {
            return Err(format!(
                "not a shared object (e_type {}); arm64 klds are linked with \
                 `ld -Bshareable -znotext -znorelro`, not `ld -r`",
                header.e_type(endian)
            ));
        }
        let mut module = Module {
            file,
            data,
            loads: Vec::new(),
            dynamic: Vec::new(),
            tables: Vec::new(),
            dynsyms: Vec::new(),
            layout: Vec::new(),
        };
        module.read_layout();
        Ok(module)
    }

    fn read_layout(&mut self) {
        let endian = self.file.endian();
        let header = self.file.elf_header();
        let phoff = header.e_phoff(endian);
        let phend = phoff + u64::from(header.e_phnum(endian)) * 56;
        if phend > 4096 {
            self.layout.push(format!(
                "the program headers end at file offset {phend:#x}, past the first page; \
                 link_elf reads only the first page for them"
            ));
        }
        let mut dynamic = None;
        for ph in self.file.elf_program_headers() {
            match ph.p_type(endian) {
                elf::PT_LOAD => {
                    self.loads
                        .push((ph.p_vaddr(endian), ph.p_offset(endian), ph.p_filesz(endian)))
                }
                elf::PT_DYNAMIC => dynamic = ph.dynamic(endian, self.data).ok().flatten(),
                elf::PT_INTERP => self.layout.push(
                    "it has a PT_INTERP program header: link_elf refuses such a file (ENOSYS)"
                        .to_owned(),
                ),
                _ => {}
            }
        }
        if self.loads.is_empty() {
            self.layout
                .push("it has no PT_LOAD segment: link_elf refuses it".to_owned());
        } else if self.loads.len() > MAX_LOAD_SEGMENTS {
            self.layout.push(format!(
                "it has {} PT_LOAD segments; link_elf takes at most {MAX_LOAD_SEGMENTS} \
                 (\"Too many sections\")",
                self.loads.len()
            ));
        }
        let Some(dynamic) = dynamic else {
            self.layout.push(
                "it has no PT_DYNAMIC segment: link_elf refuses it (\"Object is not \
                 dynamically-linked\")"
                    .to_owned(),
            );
            return;
        };
        for d in dynamic {
            let tag = d.d_tag(endian);
            if tag == u64::from(elf::DT_NULL) {
                break;
            }
            self.dynamic.push((tag, d.d_val(endian)));
        }
        self.read_dynsyms();
        self.read_tables();
    }

    fn dyn_val(&self, tag: u32) -> Option<u64> {
        self.dynamic
            .iter()
            .find(|(t, _)| *t == u64::from(tag))
            .map(|(_, v)| *v)
    }

    /// File offset of `len` bytes at `vaddr` in a PT_LOAD segment.
    fn file_offset(&self, vaddr: u64, len: u64) -> Option<u64> {
        self.loads.iter().find_map(|&(va, off, size)| {
            let end = vaddr.checked_add(len)?;
            (vaddr >= va && end <= va + size).then(|| off + (vaddr - va))
        })
    }

    fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&'data [u8]> {
        let off = self.file_offset(vaddr, len)?;
        self.data.read_bytes_at(off, len).ok()
    }

    fn u32_at(&self, vaddr: u64) -> Option<u32> {
        let b = self.bytes_at(vaddr, 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    fn u64_at(&self, vaddr: u64) -> Option<u64> {
        let b = self.bytes_at(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// The name of the section that starts at `vaddr`, or `fallback`.
    fn section_at(&self, vaddr: u64, fallback: &str) -> String {
        self.file
            .sections()
            .find(|s| s.address() == vaddr && s.size() != 0)
            .and_then(|s| s.name().ok().map(str::to_owned))
            .unwrap_or_else(|| fallback.to_owned())
    }

    fn read_dynsyms(&mut self) {
        let mut syms = vec![DynSym {
            name: String::new(),
            value: 0,
            defined: false,
            weak: false,
            local: true,
        }];
        for s in self.file.dynamic_symbols() {
            let index = s.index().0;
            if syms.len() <= index {
                syms.resize(index + 1, syms[0].clone());
            }
            syms[index] = DynSym {
                name: s.name().unwrap_or("").to_owned(),
                value: s.address(),
                defined: !s.is_undefined(),
                weak: s.is_weak(),
                local: s.is_local(),
            };
        }
        self.dynsyms = syms;
    }

    /// The tables `relocate_file1` walks: DT_REL, DT_RELA and DT_JMPREL.
    fn read_tables(&mut self) {
        let endian = self.file.endian();
        let plt_rela = self.dyn_val(elf::DT_PLTREL) != Some(u64::from(elf::DT_REL));
        let specs = [
            (elf::DT_REL, elf::DT_RELSZ, false, "DT_REL"),
            (elf::DT_RELA, elf::DT_RELASZ, true, "DT_RELA"),
            (elf::DT_JMPREL, elf::DT_PLTRELSZ, plt_rela, "DT_JMPREL"),
        ];
        for (tag, size_tag, rela, what) in specs {
            let Some(addr) = self.dyn_val(tag) else {
                continue;
            };
            let size = self.dyn_val(size_tag).unwrap_or(0);
            let name = self.section_at(addr, what);
            let entry = if rela { 24 } else { 16 };
            let Some(off) = self.file_offset(addr, size) else {
                self.layout.push(format!(
                    "{what} ({name}) at {addr:#x}, {size} bytes, is not inside a PT_LOAD \
                     segment's file contents"
                ));
                continue;
            };
            let count = (size / entry) as usize;
            let mut relocs = Vec::with_capacity(count);
            if rela {
                let Ok(slice) = self
                    .data
                    .read_slice_at::<elf::Rela64<Endianness>>(off, count)
                else {
                    continue;
                };
                for r in slice {
                    relocs.push(DynReloc {
                        offset: r.r_offset(endian),
                        r_type: r.r_type(endian, false),
                        sym: r.r_sym(endian, false),
                        addend: r.r_addend(endian),
                    });
                }
            } else {
                let Ok(slice) = self
                    .data
                    .read_slice_at::<elf::Rel64<Endianness>>(off, count)
                else {
                    continue;
                };
                for r in slice {
                    let offset = r.r_offset(endian);
                    relocs.push(DynReloc {
                        offset,
                        r_type: r.r_type(endian),
                        sym: r.r_sym(endian),
                        // REL: the addend is the word in place.
                        addend: self.u64_at(offset).unwrap_or(0) as i64,
                    });
                }
            }
            self.tables.push(Table { name, relocs });
        }
    }

    fn symbol_name(&self, sym: u32) -> String {
        match self.dynsyms.get(sym as usize) {
            _ if sym == 0 => "(no symbol)".to_owned(),
            Some(s) if !s.name.is_empty() => s.name.clone(),
            _ => format!("symbol#{sym}"),
        }
    }

    /// The `layout` check: what `link_elf_load_file` needs of the file.
    pub fn check_layout(&self, out: &mut Vec<Finding>) {
        for detail in &self.layout {
            out.push(Finding {
                check: check::LAYOUT,
                detail: detail.clone(),
            });
        }
        if !self.dynamic.is_empty() && self.dyn_val(elf::DT_HASH).is_none() {
            out.push(Finding {
                check: check::LAYOUT,
                detail: "no DT_HASH: link_elf looks every symbol up (the linker sets' \
                         bounds included) through the SysV hash table; link with \
                         --hash-style=sysv or both"
                    .to_owned(),
            });
        }
    }

    /// The `relocation` check over the dynamic relocation tables.
    pub fn check_relocations(&self, out: &mut Vec<Finding>) {
        for table in &self.tables {
            for r in &table.relocs {
                if ALLOWED_RELOCATIONS.contains(&r.r_type) {
                    continue;
                }
                out.push(Finding {
                    check: check::RELOCATION,
                    detail: format!(
                        "{} ({}) in {} at {:#x} against {}{}; the arm64 kernel linker only \
                         applies NONE, ABS64, GLOB_DAT, JUMP_SLOT, RELATIVE, IRELATIVE \
                         (and the branch types TSTBR14, CONDBR19, JUMP26, CALL26)",
                        relocation_name(r.r_type),
                        r.r_type,
                        table.name,
                        r.offset,
                        self.symbol_name(r.sym),
                        crate::elf::signed_hex(r.addend)
                    ),
                });
            }
        }
    }

    /// The executable sections with their symbols and mapping symbols.
    pub fn executable_sections(&self) -> Vec<a64::Code<'data>> {
        let endian = self.file.endian();
        let mut out = Vec::new();
        for section in self.file.sections() {
            let header = section.elf_section_header();
            if header.sh_flags(endian) & u64::from(elf::SHF_EXECINSTR) == 0
                || header.sh_type(endian) == elf::SHT_NOBITS
            {
                continue;
            }
            let Ok(bytes) = section.data() else { continue };
            let base = section.address();
            let mut symbols: Vec<(u64, bool, String)> = Vec::new();
            let mut mapping: Vec<(u64, bool)> = Vec::new();
            let in_section = |s: &object::read::elf::ElfSymbol64<'data, '_, Endianness>| {
                s.section_index() == Some(section.index())
            };
            // .symtab when the module has one, else .dynsym.
            let mut any = false;
            for s in self.file.symbols().filter(in_section) {
                any = true;
                self.push_symbol(&s, base, &mut symbols, &mut mapping);
            }
            if !any {
                for s in self.file.dynamic_symbols().filter(in_section) {
                    self.push_symbol(&s, base, &mut symbols, &mut mapping);
                }
            }
            // Per address, a function symbol sorts last and so wins.
            symbols.sort();
            symbols.dedup();
            mapping.sort();
            out.push(a64::Code {
                section: section.name().unwrap_or("?").to_owned(),
                address: base,
                bytes,
                symbols: symbols.into_iter().map(|(a, _, n)| (a, n)).collect(),
                mapping,
            });
        }
        out
    }

    fn push_symbol(
        &self,
        s: &object::read::elf::ElfSymbol64<'data, '_, Endianness>,
        base: u64,
        symbols: &mut Vec<(u64, bool, String)>,
        mapping: &mut Vec<(u64, bool)>,
    ) {
        if matches!(s.kind(), SymbolKind::Section | SymbolKind::File) {
            return;
        }
        let Ok(name) = s.name() else { return };
        let Some(offset) = s.address().checked_sub(base) else {
            return;
        };
        if let Some(code) = a64::mapping_symbol(name) {
            mapping.push((offset, code));
        } else if !name.is_empty() {
            symbols.push((offset, s.kind() == SymbolKind::Text, name.to_owned()));
        }
    }

    /// The `unwind` check: sections holding unwind tables, or a
    /// PT_GNU_EH_FRAME segment.
    pub fn check_unwind(&self, out: &mut Vec<Finding>) {
        for section in self.file.sections() {
            let name = section.name().unwrap_or("?");
            if crate::elf::UNWIND_SECTIONS.contains(&name) {
                out.push(Finding {
                    check: check::UNWIND,
                    detail: format!(
                        "section {name} ({} bytes) holds unwind tables; build with \
                         panic=abort and -C force-unwind-tables=no",
                        section.size()
                    ),
                });
            }
        }
    }

    /// Dynamic relocations by the address they patch.
    fn relocs_by_offset(&self) -> BTreeMap<u64, DynReloc> {
        self.tables
            .iter()
            .flat_map(|t| t.relocs.iter())
            .map(|r| (r.offset, *r))
            .collect()
    }

    /// The `module-metadata` check.
    ///
    /// `link_elf_lookup_set` finds a set through the dynamic symbols
    /// `__start_set_X` and `__stop_set_X` (looked up by name, so they must
    /// be non-local dynamic symbols) and reads the pointers between them;
    /// in a shared object each pointer is only right after a RELATIVE (or
    /// ABS64) dynamic relocation of its slot. `linker_file_register_modules`
    /// registers a module only for an `MDT_MODULE` entry.
    pub fn check_metadata(&self, out: &mut Vec<Finding>) {
        let relocs = self.relocs_by_offset();
        let mut fail = |detail: String| {
            out.push(Finding {
                check: check::METADATA,
                detail,
            })
        };
        let sets = REQUIRED_SETS
            .iter()
            .map(|s| (*s, true))
            .chain(OPTIONAL_SETS.iter().map(|s| (*s, false)));
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
            let (addr, size) = (section.address(), section.size());
            let endian = self.file.endian();
            let header = section.elf_section_header();
            let alloc = header.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0;
            if !alloc || size == 0 || self.file_offset(addr, size).is_none() {
                fail(format!(
                    "section {name} (type {:#x}, flags {:#x}, {size} bytes at {addr:#x}) is \
                     not loaded contents of a PT_LOAD segment",
                    header.sh_type(endian),
                    header.sh_flags(endian)
                ));
                continue;
            }
            for (bound, want) in [("__start_", addr), ("__stop_", addr + size)] {
                let sym = format!("{bound}{name}");
                match self
                    .dynsyms
                    .iter()
                    .find(|s| s.name == sym && s.defined && !s.local)
                {
                    None => fail(format!(
                        "{sym} is not a global dynamic symbol; link_elf_lookup_set finds \
                         {name} only through it (sys/linker_set.h makes the reference, \
                         the linker defines it)"
                    )),
                    Some(s) if s.value != want => fail(format!(
                        "{sym} is {:#x}, not {want:#x} where {name} {}",
                        s.value,
                        if bound == "__start_" {
                            "starts"
                        } else {
                            "ends"
                        }
                    )),
                    Some(_) => {}
                }
            }
            if size % 8 != 0 {
                fail(format!(
                    "section {name} is {size} bytes, not a multiple of 8; a linker set is \
                     an array of pointers"
                ));
            }
            let mut targets = Vec::new();
            for slot in (0..size / 8).map(|i| addr + i * 8) {
                match relocs.get(&slot) {
                    Some(r) if r.r_type == elf::R_AARCH64_RELATIVE => {
                        targets.push(Some(r.addend as u64));
                    }
                    Some(r) if r.r_type == elf::R_AARCH64_ABS64 => {
                        targets.push(self.dynsyms.get(r.sym as usize).and_then(|s| {
                            s.defined.then(|| s.value.wrapping_add(r.addend as u64))
                        }));
                    }
                    _ => fail(format!(
                        "{name}+{:#x} (at {slot:#x}) has no RELATIVE or ABS64 dynamic \
                         relocation; every linker set entry must be a pointer the kernel \
                         linker relocates",
                        slot - addr
                    )),
                }
            }
            if name == "set_modmetadata_set"
                && !targets
                    .iter()
                    .flatten()
                    .any(|&t| self.is_module_declaration(t))
            {
                fail(format!(
                    "{name} has no MDT_MODULE entry; without DECLARE_MODULE (or \
                     DRIVER_MODULE) the kernel registers no module"
                ));
            }
        }
    }

    /// Whether `vaddr` holds a `struct mod_metadata` of type MDT_MODULE.
    fn is_module_declaration(&self, vaddr: u64) -> bool {
        self.u32_at(vaddr) == Some(MDT_STRUCT_VERSION)
            && vaddr.checked_add(4).and_then(|a| self.u32_at(a)) == Some(MDT_MODULE)
    }

    /// Undefined dynamic symbols, sorted, without duplicates: what the
    /// kernel linker resolves against the kernel and the module's
    /// dependencies.
    pub fn undefined_symbols(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .dynsyms
            .iter()
            .skip(1)
            .filter(|s| !s.defined && !s.name.is_empty())
            .map(|s| s.name.clone())
            .collect();
        set.into_iter().collect()
    }

    /// The `undefined-symbol` check. A weak undefined symbol the kernel
    /// lacks does not stop kldload (elf_lookup binds it to 0), but it is
    /// reported all the same: code calling through it would jump to 0.
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
            let weak = self
                .dynsyms
                .iter()
                .any(|s| &s.name == name && !s.defined && s.weak);
            out.push(Finding {
                check: check::UNDEFINED,
                detail: if weak {
                    format!(
                        "{name} is a weak undefined symbol not in the kernel symbol list; \
                         kldload would bind it to 0"
                    )
                } else {
                    format!(
                        "{name} is undefined in the module and not in the kernel symbol \
                         list; kldload would fail with \"undefined symbol\""
                    )
                },
            });
        }
    }
}

/// Name of an AArch64 relocation type.
pub fn relocation_name(r_type: u32) -> String {
    let name = match r_type {
        elf::R_AARCH64_NONE => "R_AARCH64_NONE",
        elf::R_AARCH64_ABS64 => "R_AARCH64_ABS64",
        elf::R_AARCH64_ABS32 => "R_AARCH64_ABS32",
        elf::R_AARCH64_ABS16 => "R_AARCH64_ABS16",
        elf::R_AARCH64_PREL64 => "R_AARCH64_PREL64",
        elf::R_AARCH64_PREL32 => "R_AARCH64_PREL32",
        elf::R_AARCH64_ADR_PREL_PG_HI21 => "R_AARCH64_ADR_PREL_PG_HI21",
        elf::R_AARCH64_ADD_ABS_LO12_NC => "R_AARCH64_ADD_ABS_LO12_NC",
        elf::R_AARCH64_TSTBR14 => "R_AARCH64_TSTBR14",
        elf::R_AARCH64_CONDBR19 => "R_AARCH64_CONDBR19",
        elf::R_AARCH64_JUMP26 => "R_AARCH64_JUMP26",
        elf::R_AARCH64_CALL26 => "R_AARCH64_CALL26",
        elf::R_AARCH64_COPY => "R_AARCH64_COPY",
        elf::R_AARCH64_GLOB_DAT => "R_AARCH64_GLOB_DAT",
        elf::R_AARCH64_JUMP_SLOT => "R_AARCH64_JUMP_SLOT",
        elf::R_AARCH64_RELATIVE => "R_AARCH64_RELATIVE",
        elf::R_AARCH64_TLS_DTPMOD => "R_AARCH64_TLS_DTPMOD",
        elf::R_AARCH64_TLS_DTPREL => "R_AARCH64_TLS_DTPREL",
        elf::R_AARCH64_TLS_TPREL => "R_AARCH64_TLS_TPREL",
        elf::R_AARCH64_TLSDESC => "R_AARCH64_TLSDESC",
        elf::R_AARCH64_IRELATIVE => "R_AARCH64_IRELATIVE",
        _ => return format!("relocation type {r_type}"),
    };
    name.to_owned()
}
