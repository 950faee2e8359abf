//! The boot image: El Torito no-emulation cdboot -> loader -> kernel, root
//! on cd9660 with the test program as /sbin/init and our module.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What goes on the image.
pub struct Image<'a> {
    pub boot: &'a Path,
    pub module: &'a Path,
    pub init: &'a Path,
    pub mode: &'a str,
}

/// The loader script: serial console, root on the CD, no debugger on panic.
pub fn loader_rc() -> String {
    [
        "set console=comconsole",
        "set boot_serial=YES",
        "set vfs.root.mountfrom=cd9660:/dev/cd0",
        "set debug.debugger_on_panic=0",
        "set kern.panic_reboot_wait_time=0",
        "load /boot/kernel/kernel",
        "boot",
        "",
    ]
    .join("\n")
}

/// The loader binary in a FreeBSD /boot directory.
pub fn loader_of(boot: &Path) -> Option<PathBuf> {
    ["loader", "loader_simp"]
        .iter()
        .map(|n| boot.join(n))
        .find(|p| p.is_file())
}

pub fn build(img: &Image<'_>, dir: &Path, iso: &Path) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    fn e(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    for d in ["boot/kernel", "boot/modules", "sbin", "dev", "etc"] {
        fs::create_dir_all(dir.join(d)).map_err(e("mkdir"))?;
    }
    let loader = loader_of(img.boot).ok_or("no loader in the boot directory")?;
    fs::copy(img.boot.join("cdboot"), dir.join("boot/cdboot")).map_err(e("cdboot"))?;
    fs::copy(loader, dir.join("boot/loader")).map_err(e("loader"))?;
    fs::copy(
        img.boot.join("kernel/kernel"),
        dir.join("boot/kernel/kernel"),
    )
    .map_err(e("kernel"))?;
    fs::copy(img.module, dir.join("boot/modules/vtballoonrs.ko")).map_err(e("module"))?;
    let theirs = img.boot.join("modules/virtio_balloon.ko");
    if theirs.is_file() {
        fs::copy(theirs, dir.join("boot/modules/virtio_balloon.ko"))
            .map_err(e("in-tree module"))?;
    }
    fs::copy(img.init, dir.join("sbin/init")).map_err(e("init"))?;
    fs::write(dir.join("boot/loader.rc"), loader_rc()).map_err(e("loader.rc"))?;
    fs::write(dir.join("etc/vtbtest.mode"), img.mode).map_err(e("mode"))?;
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-b",
            "boot/cdboot",
            "-no-emul-boot",
            "-o",
        ])
        .arg(iso)
        .arg(dir)
        .output()
        .map_err(|err| format!("xorriso: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "xorriso failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_script_boots_the_kernel_on_a_serial_console() {
        let rc = loader_rc();
        assert!(rc.contains("set console=comconsole"));
        assert!(rc.contains("cd9660:/dev/cd0"));
        assert!(rc.trim_end().ends_with("boot"));
    }

    #[test]
    fn finds_either_loader() {
        let d = std::env::temp_dir().join(format!("vtbiso-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        assert_eq!(loader_of(&d), None);
        fs::write(d.join("loader_simp"), b"x").unwrap();
        assert_eq!(loader_of(&d), Some(d.join("loader_simp")));
        fs::write(d.join("loader"), b"x").unwrap();
        assert_eq!(loader_of(&d), Some(d.join("loader")));
        fs::remove_dir_all(&d).unwrap();
    }
}
