//! Audit a FreeBSD kld for constructs the FreeBSD kernel cannot accept:
//! an amd64 kld (an ELF64 relocatable object made by `ld -r`) or an arm64
//! one (an ELF64 shared object made by `ld -Bshareable`), chosen by the
//! ELF machine of the input.
//!
//! amd64: the checks over the ELF structure live in [`elf`], the
//! instruction checks in [`x86`]. arm64: [`arm64`] and [`a64`]. This file
//! holds the report types, the kernel symbol list and the driver that runs
//! every check.

pub mod a64;
pub mod arm64;
pub mod elf;
pub mod x86;

use std::collections::BTreeSet;
use std::fmt;

/// Check names, as printed after `FAIL`.
pub mod check {
    pub const RELOCATION: &str = "relocation";
    pub const FPU_SIMD: &str = "fpu-simd";
    pub const RED_ZONE: &str = "red-zone";
    pub const UNWIND: &str = "unwind";
    pub const METADATA: &str = "module-metadata";
    pub const UNDEFINED: &str = "undefined-symbol";
    /// arm64: an instruction writing x18.
    pub const X18: &str = "x18";
    /// arm64: a word in code that the decoder does not know.
    pub const DECODE: &str = "decode";
    /// arm64: what the kernel linker needs of the shared object's layout.
    pub const LAYOUT: &str = "layout";
}

/// One problem found in the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "koaudit: FAIL {}: {}", self.check, self.detail)
    }
}

/// The result of auditing one module.
#[derive(Debug, Default)]
pub struct Report {
    /// Number of checks that ran.
    pub checks: usize,
    pub findings: Vec<Finding>,
    /// Undefined symbols of the module, sorted and without duplicates.
    pub undefined: Vec<String>,
}

impl Report {
    /// Findings of one check.
    pub fn of(&self, check: &str) -> impl Iterator<Item = &Finding> {
        let check = check.to_owned();
        self.findings.iter().filter(move |f| f.check == check)
    }
}

/// Symbols the running kernel exports, from a file with one symbol per line
/// or `nm` output (`addr T name`: the last whitespace field is the name).
#[derive(Debug, Default, Clone)]
pub struct KernelSymbols(BTreeSet<String>);

impl KernelSymbols {
    pub fn parse(text: &str) -> Self {
        let mut set = BTreeSet::new();
        for line in text.lines() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(name) = fields.last() else { continue };
            // An `nm` line for a symbol the list itself does not define.
            if fields.len() >= 2 && fields[fields.len() - 2] == "U" {
                continue;
            }
            set.insert((*name).to_owned());
        }
        KernelSymbols(set)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Audit the bytes of a `.ko`. Fails only when the file is neither an amd64
/// ELF64 relocatable object nor an arm64 ELF64 shared object; problems in
/// such an object are findings.
pub fn audit(data: &[u8], kernel: Option<&KernelSymbols>) -> Result<Report, String> {
    match machine(data)? {
        object::elf::EM_X86_64 => audit_amd64(data, kernel),
        object::elf::EM_AARCH64 => audit_arm64(data, kernel),
        other => Err(format!("not an amd64 or arm64 object (e_machine {other})")),
    }
}

/// The ELF machine of an ELF64 file.
fn machine(data: &[u8]) -> Result<u16, String> {
    use object::read::elf::FileHeader;
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| format!("not an ELF64 object: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("not an ELF64 object: {e}"))?;
    Ok(header.e_machine(endian))
}

fn audit_arm64(data: &[u8], kernel: Option<&KernelSymbols>) -> Result<Report, String> {
    let module = arm64::Module::parse(data)?;
    let mut report = Report {
        // layout, relocation, fpu-simd, x18, decode, unwind, module-metadata
        checks: 7,
        ..Report::default()
    };
    module.check_layout(&mut report.findings);
    module.check_relocations(&mut report.findings);
    for text in module.executable_sections() {
        a64::check_code(&text, &mut report.findings);
    }
    module.check_unwind(&mut report.findings);
    module.check_metadata(&mut report.findings);
    report.undefined = module.undefined_symbols();
    if let Some(kernel) = kernel {
        report.checks += 1;
        module.check_undefined(&report.undefined, kernel, &mut report.findings);
    }
    Ok(report)
}

fn audit_amd64(data: &[u8], kernel: Option<&KernelSymbols>) -> Result<Report, String> {
    let module = elf::Module::parse(data)?;
    let mut report = Report {
        checks: 5,
        ..Report::default()
    };
    module.check_relocations(&mut report.findings);
    for text in module.executable_sections() {
        x86::check_code(&text, &mut report.findings);
    }
    module.check_unwind(&mut report.findings);
    module.check_metadata(&mut report.findings);
    report.undefined = module.undefined_symbols();
    if let Some(kernel) = kernel {
        report.checks += 1;
        module.check_undefined(&report.undefined, kernel, &mut report.findings);
    }
    Ok(report)
}
