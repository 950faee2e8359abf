//! `koaudit [--kernel-symbols FILE] path/to/x.ko`
//!
//! Exit status: 0 when the module passes, 1 when there are findings,
//! 2 on a usage error or an unreadable / non-kld input.

use std::process::ExitCode;

use koaudit::{audit, KernelSymbols};

const USAGE: &str = "usage: koaudit [--kernel-symbols FILE] path/to/x.ko";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(msg) => {
            eprintln!("koaudit: error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether the module passed.
fn run() -> Result<bool, String> {
    let mut ksyms_path = None;
    let mut ko_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--kernel-symbols" => {
                ksyms_path = Some(args.next().ok_or(USAGE)?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            _ if arg.starts_with("--kernel-symbols=") => {
                ksyms_path = Some(arg["--kernel-symbols=".len()..].to_owned());
            }
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}\n{USAGE}")),
            _ if ko_path.is_none() => ko_path = Some(arg),
            _ => return Err(USAGE.to_owned()),
        }
    }
    let ko_path = ko_path.ok_or(USAGE)?;

    let kernel = match &ksyms_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
            Some(KernelSymbols::parse(&text))
        }
        None => None,
    };
    let data = std::fs::read(&ko_path).map_err(|e| format!("{ko_path}: {e}"))?;
    let report = audit(&data, kernel.as_ref()).map_err(|e| format!("{ko_path}: {e}"))?;

    println!("koaudit: undefined symbols ({}):", report.undefined.len());
    for name in &report.undefined {
        println!("  {name}");
    }
    for finding in &report.findings {
        println!("{finding}");
    }
    println!(
        "koaudit: {ko_path}: {} checks, {} findings",
        report.checks,
        report.findings.len()
    );
    Ok(report.findings.is_empty())
}
