//! A minimal arm64 kld for the tests: an ELF64 AArch64 shared object with
//! the layout `ld -Bshareable` gives one (program headers, .dynamic,
//! .dynsym, SysV .hash, .rela.dyn), written with `object::write::elf::Writer`
//! so no assembler or linker is needed. Everything is in one read-write-
//! execute PT_LOAD mapped at address = file offset.

use object::elf;
use object::write::elf::{FileHeader, ProgramHeader, Rel, SectionHeader, Sym, Writer};
use object::write::StringId;
use object::Endianness;

pub const MDT_DEPEND: u32 = 1;
pub const MDT_MODULE: u32 = 2;
pub const MDT_VERSION: u32 = 3;

/// stp x29, x30, [sp, #-16]!; mov x29, sp; ldr x0, [x1]; add x0, x0, #1;
/// str x0, [x1]; mov x3, x18 (reads x18); ldp x29, x30, [sp], #16; ret
pub const GOOD_CODE: [u32; 8] = [
    0xa9bf7bfd, 0x910003fd, 0xf9400020, 0x91000400, 0xf9000020, 0xaa1203e3, 0xa8c17bfd, 0xd65f03c0,
];

/// What a linker-set slot points at.
#[derive(Clone, Debug)]
pub enum Ptr {
    /// The `struct mod_metadata` number `n` in .data (RELATIVE).
    Metadata(usize),
    /// `func` (RELATIVE).
    Func,
    /// An ABS64 relocation against the dynamic symbol of that name.
    Abs64(&'static str),
    /// No relocation at all.
    Unrelocated,
}

#[derive(Clone, Debug)]
pub struct So {
    /// .text, as instruction words (or data words inside `$d`).
    pub code: Vec<u32>,
    /// .symtab entries in .text: (name, byte offset); `$x`/`$d` names are
    /// mapping symbols.
    pub text_symbols: Vec<(String, u64)>,
    /// The `md_type` of each `struct mod_metadata` in .data.
    pub metadata: Vec<u32>,
    /// Linker-set sections and their slots.
    pub sets: Vec<(String, Vec<Ptr>)>,
    /// Undefined dynamic symbols: (name, weak).
    pub undefined: Vec<(String, bool)>,
    /// Extra dynamic relocations, each patching its own 8-byte slot in
    /// .data: (type, symbol name or none).
    pub relocs: Vec<(u32, Option<String>)>,
    /// Extra sections: (name, type, flags, contents).
    pub extra: Vec<(String, u32, u64, Vec<u8>)>,
    pub interp: bool,
    pub hash: bool,
    /// Export `__start_set_X`/`__stop_set_X` as dynamic symbols.
    pub bounds: bool,
    /// Make those bounds local symbols instead of global ones.
    pub local_bounds: bool,
    /// Number of PT_LOAD segments (the extra ones are empty).
    pub loads: u32,
}

fn set_names() -> Vec<String> {
    [
        "set_modmetadata_set",
        "set_sysinit_set",
        "set_sysuninit_set",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl So {
    /// A module that passes: code without FP or x18 writes, a module
    /// declaration, the three sets, a call target `printf` reached through
    /// ABS64, GLOB_DAT and JUMP_SLOT relocations.
    pub fn good() -> So {
        let sets = set_names();
        So {
            code: GOOD_CODE.to_vec(),
            text_symbols: vec![("$x".into(), 0), ("func".into(), 0)],
            metadata: vec![MDT_DEPEND, MDT_MODULE],
            sets: vec![
                (sets[0].clone(), vec![Ptr::Metadata(0), Ptr::Metadata(1)]),
                (sets[1].clone(), vec![Ptr::Func]),
                (sets[2].clone(), vec![Ptr::Abs64("func")]),
            ],
            undefined: vec![("printf".into(), false)],
            relocs: vec![
                (elf::R_AARCH64_ABS64, Some("printf".into())),
                (elf::R_AARCH64_GLOB_DAT, Some("printf".into())),
                (elf::R_AARCH64_JUMP_SLOT, Some("printf".into())),
                (elf::R_AARCH64_RELATIVE, None),
            ],
            extra: Vec::new(),
            interp: false,
            hash: true,
            bounds: true,
            local_bounds: false,
            loads: 1,
        }
    }

    /// Remove the set of that name.
    pub fn without_set(mut self, name: &str) -> So {
        self.sets.retain(|(n, _)| n != name);
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        // Dynamic symbols: null, func, the set bounds, the undefined ones.
        struct D {
            name: StringId,
            text: String,
            section: Option<usize>, // index into `sections` below, or undefined
            value_in_section: u64,
            func: bool,
            weak: bool,
            local: bool,
        }
        let mut dyn_names: Vec<String> = vec!["func".into()];
        if self.bounds {
            for (set, _) in &self.sets {
                dyn_names.push(format!("__start_{set}"));
                dyn_names.push(format!("__stop_{set}"));
            }
        }
        for (name, _) in &self.undefined {
            dyn_names.push(name.clone());
        }
        let dyn_names = &dyn_names;
        let sym_names = &self.text_symbols;
        let set_names = &self.sets;
        let extra = &self.extra;
        let mut buffer = Vec::new();
        let mut w = Writer::new(Endianness::Little, true, &mut buffer);

        // Section contents.
        let text: Vec<u8> = self.code.iter().flat_map(|c| c.to_le_bytes()).collect();
        let mut data = Vec::new();
        for md_type in &self.metadata {
            data.extend_from_slice(&1u32.to_le_bytes());
            data.extend_from_slice(&md_type.to_le_bytes());
            data.extend_from_slice(&[0; 16]);
        }
        let reloc_slots_at = data.len() as u64;
        data.extend(std::iter::repeat_n(0u8, 8 * self.relocs.len()));

        // Reserve: headers, then sections in file order.
        w.reserve_file_header();
        let nphdr = 1 + self.loads + u32::from(self.interp);
        w.reserve_program_headers(nphdr);
        let _ = w.reserve_null_section_index();

        let interp_name = w.add_section_name(b".interp");
        let interp_index = self.interp.then(|| w.reserve_section_index());
        let interp_data = b"/red/herring\0";
        let interp_off = if self.interp {
            w.reserve(interp_data.len(), 1)
        } else {
            0
        };

        let dyn_ids: Vec<StringId> = dyn_names
            .iter()
            .map(|n| w.add_dynamic_string(n.as_bytes()))
            .collect();
        let _ = w.reserve_null_dynamic_symbol_index();
        for _ in dyn_names {
            w.reserve_dynamic_symbol_index();
        }
        let dynsym_index = w.reserve_dynsym_section_index();
        let _ = dynsym_index;
        let dynsym_off = w.reserve_dynsym();
        let _ = w.reserve_dynstr_section_index();
        let dynstr_off = w.reserve_dynstr();
        let nchain = dyn_names.len() as u32 + 1;
        let hash_off = if self.hash {
            let _ = w.reserve_hash_section_index();
            w.reserve_hash(3, nchain)
        } else {
            0
        };

        // Relocations: one per relocated set slot, plus the extra ones.
        let nrel = set_names
            .iter()
            .flat_map(|(_, slots)| slots.iter())
            .filter(|p| !matches!(p, Ptr::Unrelocated))
            .count()
            + self.relocs.len();
        let rela_name = w.add_section_name(b".rela.dyn");
        let rela_index = w.reserve_section_index();
        let rela_off = w.reserve_relocations(nrel, true);

        let text_name = w.add_section_name(b".text");
        let text_index = w.reserve_section_index();
        let text_off = w.reserve(text.len(), 4);
        let data_name = w.add_section_name(b".data");
        let data_index = w.reserve_section_index();
        let data_off = w.reserve(data.len(), 8);
        let mut set_sections = Vec::new();
        for (name, slots) in set_names {
            let id = w.add_section_name(name.as_bytes());
            let index = w.reserve_section_index();
            let off = w.reserve(slots.len() * 8, 8);
            set_sections.push((id, index, off, slots.len() * 8));
        }
        let mut extra_sections = Vec::new();
        for (name, _, _, contents) in extra {
            let id = w.add_section_name(name.as_bytes());
            let index = w.reserve_section_index();
            let off = w.reserve(contents.len(), 8);
            extra_sections.push((id, index, off));
        }
        let ndyn = 8 + usize::from(self.hash);
        let _ = w.reserve_dynamic_section_index();
        let dynamic_off = w.reserve_dynamic(ndyn);
        let load_end = w.reserved_len();

        // .symtab: null, the text symbols (local), func (global).
        let sym_ids: Vec<StringId> = sym_names
            .iter()
            .map(|(n, _)| w.add_string(n.as_bytes()))
            .collect();
        let _ = w.reserve_null_symbol_index();
        for _ in sym_names {
            w.reserve_symbol_index(Some(text_index));
        }
        let _ = w.reserve_symtab_section_index();
        w.reserve_symtab();
        let _ = w.reserve_strtab_section_index();
        w.reserve_strtab();
        let _ = w.reserve_shstrtab_section_index();
        w.reserve_shstrtab();
        w.reserve_section_headers();

        let addr = |off: usize| off as u64;
        let text_addr = addr(text_off);
        let data_addr = addr(data_off);

        // Dynamic symbols' values.
        let mut dsyms: Vec<D> = Vec::new();
        for (i, name) in dyn_names.iter().enumerate() {
            let mut d = D {
                name: dyn_ids[i],
                text: name.clone(),
                section: None,
                value_in_section: 0,
                func: false,
                weak: false,
                local: false,
            };
            if name == "func" {
                d.section = Some(usize::MAX);
                d.func = true;
            } else if let Some((k, (set, _))) = set_names.iter().enumerate().find(|(_, (s, _))| {
                name == &format!("__start_{s}") || name == &format!("__stop_{s}")
            }) {
                d.section = Some(k);
                d.value_in_section = if name.starts_with("__stop_") {
                    set_sections[k].3 as u64
                } else {
                    0
                };
                d.local = self.local_bounds;
                let _ = set;
            } else if let Some((_, weak)) = self.undefined.iter().find(|(n, _)| n == name) {
                d.weak = *weak;
            }
            dsyms.push(d);
        }
        let dyn_index = |name: &str| -> u32 {
            dsyms
                .iter()
                .position(|d| d.text == name)
                .map(|p| p as u32 + 1)
                .unwrap_or_else(|| panic!("no dynamic symbol {name}"))
        };

        // Write.
        w.write_file_header(&FileHeader {
            os_abi: elf::ELFOSABI_FREEBSD,
            abi_version: 0,
            e_type: elf::ET_DYN,
            e_machine: elf::EM_AARCH64,
            e_entry: 0,
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        if self.interp {
            w.write_program_header(&ProgramHeader {
                p_type: elf::PT_INTERP,
                p_flags: elf::PF_R,
                p_offset: interp_off as u64,
                p_vaddr: interp_off as u64,
                p_paddr: interp_off as u64,
                p_filesz: interp_data.len() as u64,
                p_memsz: interp_data.len() as u64,
                p_align: 1,
            });
        }
        w.write_program_header(&ProgramHeader {
            p_type: elf::PT_LOAD,
            p_flags: elf::PF_R | elf::PF_W | elf::PF_X,
            p_offset: 0,
            p_vaddr: 0,
            p_paddr: 0,
            p_filesz: load_end as u64,
            p_memsz: load_end as u64,
            p_align: 0x1000,
        });
        for i in 1..self.loads {
            let at = 0x10_0000 * u64::from(i);
            w.write_program_header(&ProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: elf::PF_R,
                p_offset: load_end as u64,
                p_vaddr: at,
                p_paddr: at,
                p_filesz: 0,
                p_memsz: 0,
                p_align: 0x1000,
            });
        }
        w.write_program_header(&ProgramHeader {
            p_type: elf::PT_DYNAMIC,
            p_flags: elf::PF_R | elf::PF_W,
            p_offset: dynamic_off as u64,
            p_vaddr: dynamic_off as u64,
            p_paddr: dynamic_off as u64,
            p_filesz: (ndyn * 16) as u64,
            p_memsz: (ndyn * 16) as u64,
            p_align: 8,
        });

        if self.interp {
            w.write_align(1);
            w.write(interp_data);
        }
        w.write_null_dynamic_symbol();
        for d in &dsyms {
            let (section, st_value, st_info, st_other) = match d.section {
                Some(usize::MAX) => (
                    Some(text_index),
                    text_addr,
                    (elf::STB_GLOBAL << 4) | elf::STT_FUNC,
                    elf::STV_DEFAULT,
                ),
                Some(k) => (
                    Some(set_sections[k].1),
                    addr(set_sections[k].2) + d.value_in_section,
                    if d.local {
                        elf::STB_LOCAL << 4
                    } else {
                        elf::STB_GLOBAL << 4
                    },
                    elf::STV_PROTECTED,
                ),
                None => (
                    None,
                    0,
                    if d.weak {
                        elf::STB_WEAK << 4
                    } else {
                        elf::STB_GLOBAL << 4
                    },
                    elf::STV_DEFAULT,
                ),
            };
            w.write_dynamic_symbol(&Sym {
                name: Some(d.name),
                section,
                st_info,
                st_other,
                st_shndx: 0,
                st_value,
                st_size: 0,
            });
        }
        w.write_dynstr();
        if self.hash {
            let names: Vec<String> = std::iter::once(String::new())
                .chain(dsyms.iter().map(|d| d.text.clone()))
                .collect();
            w.write_hash(3, nchain, |i| {
                (i != 0).then(|| elf_hash(names[i as usize].as_bytes()))
            });
        }

        w.write_align_relocation();
        for ((_, slots), (_, _, off, _)) in set_names.iter().zip(&set_sections) {
            for (i, slot) in slots.iter().enumerate() {
                let r_offset = addr(*off) + 8 * i as u64;
                let (r_type, r_sym, r_addend) = match slot {
                    Ptr::Metadata(n) => (
                        elf::R_AARCH64_RELATIVE,
                        0,
                        (data_addr + 24 * *n as u64) as i64,
                    ),
                    Ptr::Func => (elf::R_AARCH64_RELATIVE, 0, text_addr as i64),
                    Ptr::Abs64(name) => (elf::R_AARCH64_ABS64, dyn_index(name), 0),
                    Ptr::Unrelocated => continue,
                };
                w.write_relocation(
                    true,
                    &Rel {
                        r_offset,
                        r_sym,
                        r_type,
                        r_addend,
                    },
                );
            }
        }
        for (k, (r_type, sym)) in self.relocs.iter().enumerate() {
            let r_sym = sym.as_deref().map(dyn_index).unwrap_or(0);
            w.write_relocation(
                true,
                &Rel {
                    r_offset: data_addr + reloc_slots_at + 8 * k as u64,
                    r_sym,
                    r_type: *r_type,
                    r_addend: if r_sym == 0 { text_addr as i64 } else { 0 },
                },
            );
        }

        w.write_align(4);
        w.write(&text);
        w.write_align(8);
        w.write(&data);
        for (_, slots) in set_names {
            w.write_align(8);
            w.write(&vec![0; slots.len() * 8]);
        }
        for (_, _, _, contents) in extra {
            w.write_align(8);
            w.write(contents);
        }
        w.write_align_dynamic();
        if self.hash {
            w.write_dynamic(elf::DT_HASH, addr(hash_off));
        }
        w.write_dynamic(elf::DT_STRTAB, addr(dynstr_off));
        w.write_dynamic(elf::DT_SYMTAB, addr(dynsym_off));
        let strsz = w.dynstr_len() as u64;
        w.write_dynamic(elf::DT_STRSZ, strsz);
        w.write_dynamic(elf::DT_SYMENT, 24);
        w.write_dynamic(elf::DT_RELA, addr(rela_off));
        w.write_dynamic(elf::DT_RELASZ, (nrel * 24) as u64);
        w.write_dynamic(elf::DT_RELAENT, 24);
        w.write_dynamic(elf::DT_NULL, 0);

        w.write_null_symbol();
        for (i, (name, offset)) in sym_names.iter().enumerate() {
            let kind = if name.starts_with('$') {
                elf::STT_NOTYPE
            } else {
                elf::STT_FUNC
            };
            w.write_symbol(&Sym {
                name: Some(sym_ids[i]),
                section: Some(text_index),
                st_info: (elf::STB_LOCAL << 4) | kind,
                st_other: 0,
                st_shndx: 0,
                st_value: text_addr + offset,
                st_size: 0,
            });
        }
        w.write_strtab();
        w.write_shstrtab();

        // Section headers, in the order their indices were reserved.
        w.write_null_section_header();
        if let Some(index) = interp_index {
            let _ = index;
            w.write_section_header(&SectionHeader {
                name: Some(interp_name),
                sh_type: elf::SHT_PROGBITS,
                sh_flags: elf::SHF_ALLOC.into(),
                sh_addr: addr(interp_off),
                sh_offset: interp_off as u64,
                sh_size: interp_data.len() as u64,
                sh_link: 0,
                sh_info: 0,
                sh_addralign: 1,
                sh_entsize: 0,
            });
        }
        w.write_dynsym_section_header(addr(dynsym_off), 1);
        w.write_dynstr_section_header(addr(dynstr_off));
        if self.hash {
            w.write_hash_section_header(addr(hash_off));
        }
        w.write_section_header(&SectionHeader {
            name: Some(rela_name),
            sh_type: elf::SHT_RELA,
            sh_flags: elf::SHF_ALLOC.into(),
            sh_addr: addr(rela_off),
            sh_offset: rela_off as u64,
            sh_size: (nrel * 24) as u64,
            sh_link: dynsym_index.0,
            sh_info: 0,
            sh_addralign: 8,
            sh_entsize: 24,
        });
        let _ = rela_index;
        let progbits = |name, flags: u32, off: usize, size: usize, align| SectionHeader {
            name: Some(name),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: flags.into(),
            sh_addr: addr(off),
            sh_offset: off as u64,
            sh_size: size as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: align,
            sh_entsize: 0,
        };
        w.write_section_header(&progbits(
            text_name,
            elf::SHF_ALLOC | elf::SHF_EXECINSTR,
            text_off,
            text.len(),
            4,
        ));
        w.write_section_header(&progbits(
            data_name,
            elf::SHF_ALLOC | elf::SHF_WRITE,
            data_off,
            data.len(),
            8,
        ));
        let _ = data_index;
        for (id, _, off, size) in &set_sections {
            w.write_section_header(&progbits(
                *id,
                elf::SHF_ALLOC | elf::SHF_WRITE,
                *off,
                *size,
                8,
            ));
        }
        for ((_, sh_type, flags, contents), (id, _, off)) in extra.iter().zip(&extra_sections) {
            w.write_section_header(&SectionHeader {
                name: Some(*id),
                sh_type: *sh_type,
                sh_flags: *flags,
                sh_addr: if flags & u64::from(elf::SHF_ALLOC) != 0 {
                    addr(*off)
                } else {
                    0
                },
                sh_offset: *off as u64,
                sh_size: contents.len() as u64,
                sh_link: 0,
                sh_info: 0,
                sh_addralign: 8,
                sh_entsize: 0,
            });
        }
        w.write_dynamic_section_header(addr(dynamic_off));
        w.write_symtab_section_header(1 + sym_names.len() as u32);
        w.write_strtab_section_header();
        w.write_shstrtab_section_header();
        drop(w);
        buffer
    }
}

/// The SysV ELF hash.
pub fn elf_hash(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        h = (h << 4).wrapping_add(u32::from(c));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}
