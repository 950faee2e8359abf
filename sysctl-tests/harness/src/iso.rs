//! The boot image: El Torito no-emulation cdboot -> loader (/boot/loader.rc)
//! -> kernel, root on cd9660 with the test program as /sbin/init, the
//! modules under /boot/modules and the phases to run in /etc/vtbtest.mode.
//! For UEFI (arm64) the El Torito entry is instead a FAT image holding
//! loader.efi as `/EFI/BOOT/BOOTAA64.EFI`, the removable-media path the
//! firmware boots; the loader then reads the same cd9660 tree.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What goes on the image.
pub struct Image<'a> {
    /// A FreeBSD /boot-like directory: kernel/kernel, loader, cdboot,
    /// optionally modules/virtio_balloon.ko.
    pub boot: &'a Path,
    /// Our module, if this boot uses it.
    pub module: Option<&'a Path>,
    /// The test program (becomes /sbin/init).
    pub init: &'a Path,
    /// The guest's phases, space-separated.
    pub phases: &'a str,
    /// Extra kernel environment (tunables), `name=value`.
    pub kenv: &'a [String],
    /// UEFI boot (arm64): `boot` has loader.efi instead of cdboot and loader.
    pub efi: bool,
}

/// The FAT image's place in the cd9660 tree (El Torito's boot image).
pub const EFI_IMAGE: &str = "boot/efi.img";

/// The loader script: serial console, root on the CD, no debugger on panic,
/// the tunables, then boot.
pub fn loader_rc(kenv: &[String]) -> String {
    let mut lines: Vec<String> = [
        "set console=comconsole",
        "set boot_serial=YES",
        "set autoboot_delay=0",
        "set vfs.root.mountfrom=cd9660:/dev/cd0",
        "set debug.debugger_on_panic=0",
        "set kern.panic_reboot_wait_time=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lines.extend(kenv.iter().map(|kv| format!("set {kv}")));
    lines.push("load /boot/kernel/kernel".into());
    lines.push("boot".into());
    lines.join("\n") + "\n"
}

/// The loader binary in a FreeBSD /boot directory.
pub fn loader_of(boot: &Path) -> Option<PathBuf> {
    ["loader", "loader_simp"]
        .iter()
        .map(|n| boot.join(n))
        .find(|p| p.is_file())
}

/// The UEFI loader in a FreeBSD/arm64 boot directory.
pub fn efi_loader_of(boot: &Path) -> Option<PathBuf> {
    ["loader.efi", "loader_simp.efi"]
        .iter()
        .map(|n| boot.join(n))
        .find(|p| p.is_file())
}

/// The commands that make the FAT image `img` holding `loader` where UEFI
/// firmware looks on removable media. mkfs.fat (dosfstools) and not
/// mtools' mformat: mformat writes a partition entry, and loader.efi then
/// stops with "Failed to find bootable partition".
pub fn efi_image_commands(loader: &Path, img: &Path) -> Vec<Vec<String>> {
    let img = img.display().to_string();
    let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        cmd(&["mkfs.fat", "-C", "-n", "EFIBOOT", &img, "2880"]),
        cmd(&["mmd", "-i", &img, "::/EFI", "::/EFI/BOOT"]),
        cmd(&[
            "mcopy",
            "-i",
            &img,
            &loader.display().to_string(),
            "::/EFI/BOOT/BOOTAA64.EFI",
        ]),
    ]
}

fn run(cmd: &[String]) -> Result<(), String> {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|err| format!("{}: {err}", cmd[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The in-tree balloon module in the boot directory, if there is one.
pub fn in_tree_module(boot: &Path) -> Option<PathBuf> {
    let p = boot.join("modules/virtio_balloon.ko");
    p.is_file().then_some(p)
}

/// Lays out the image's tree in `dir` (emptied first).
pub fn stage(img: &Image<'_>, dir: &Path) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(e("clean the image tree"))?;
    }
    for d in ["boot/kernel", "boot/modules", "sbin", "dev", "etc"] {
        fs::create_dir_all(dir.join(d)).map_err(e("mkdir"))?;
    }
    if img.efi {
        let loader = efi_loader_of(img.boot).ok_or("no loader.efi in the boot directory")?;
        for cmd in efi_image_commands(&loader, &dir.join(EFI_IMAGE)) {
            run(&cmd)?;
        }
    } else {
        let loader = loader_of(img.boot).ok_or("no loader in the boot directory")?;
        fs::copy(img.boot.join("cdboot"), dir.join("boot/cdboot")).map_err(e("cdboot"))?;
        fs::copy(loader, dir.join("boot/loader")).map_err(e("loader"))?;
    }
    fs::copy(
        img.boot.join("kernel/kernel"),
        dir.join("boot/kernel/kernel"),
    )
    .map_err(e("kernel"))?;
    if let Some(m) = img.module {
        fs::copy(m, dir.join("boot/modules/vtballoonrs.ko")).map_err(e("module"))?;
    }
    if let Some(theirs) = in_tree_module(img.boot) {
        fs::copy(theirs, dir.join("boot/modules/virtio_balloon.ko"))
            .map_err(e("in-tree module"))?;
    }
    let init = dir.join("sbin/init");
    fs::copy(img.init, &init).map_err(e("init"))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o555)).map_err(e("chmod init"))?;
    fs::write(dir.join("boot/loader.rc"), loader_rc(img.kenv)).map_err(e("loader.rc"))?;
    fs::write(dir.join("etc/vtbtest.mode"), format!("{}\n", img.phases)).map_err(e("mode"))?;
    Ok(())
}

/// The xorriso arguments for a bootable cd9660 image of `dir`: El Torito
/// with cdboot (BIOS) or with the FAT image as the EFI entry (`-e`).
pub fn xorriso_args(dir: &Path, iso: &Path, efi: bool) -> Vec<String> {
    let boot: [&str; 2] = if efi {
        ["-e", EFI_IMAGE]
    } else {
        ["-b", "boot/cdboot"]
    };
    ["-as", "mkisofs", "-quiet", "-R", "-V", "VTBTEST"]
        .iter()
        .chain(&boot)
        .chain(&["-no-emul-boot", "-o"])
        .map(|s| s.to_string())
        .chain([iso.display().to_string(), dir.display().to_string()])
        .collect()
}

pub fn build(img: &Image<'_>, dir: &Path, iso: &Path) -> Result<(), String> {
    stage(img, dir)?;
    let out = Command::new("xorriso")
        .args(xorriso_args(dir, iso, img.efi))
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

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vtbiso-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loader_script_boots_the_kernel_on_a_serial_console() {
        let rc = loader_rc(&["dev.vtballoonrs.0.oom_batch_pages=4096".into()]);
        let lines: Vec<&str> = rc.lines().collect();
        assert_eq!(lines[0], "set console=comconsole");
        assert!(lines.contains(&"set vfs.root.mountfrom=cd9660:/dev/cd0"));
        assert!(lines.contains(&"set debug.debugger_on_panic=0"));
        assert!(lines.contains(&"set dev.vtballoonrs.0.oom_batch_pages=4096"));
        let load = lines
            .iter()
            .position(|l| *l == "load /boot/kernel/kernel")
            .unwrap();
        let tun = lines
            .iter()
            .position(|l| l.starts_with("set dev."))
            .unwrap();
        assert!(tun < load, "tunables before the kernel is booted");
        assert_eq!(lines.last(), Some(&"boot"));
    }

    #[test]
    fn finds_either_loader() {
        let d = tmp("loader");
        assert_eq!(loader_of(&d), None);
        fs::write(d.join("loader_simp"), b"x").unwrap();
        assert_eq!(loader_of(&d), Some(d.join("loader_simp")));
        fs::write(d.join("loader"), b"x").unwrap();
        assert_eq!(loader_of(&d), Some(d.join("loader")));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stages_the_image_layout() {
        let boot = tmp("boot");
        fs::create_dir_all(boot.join("kernel")).unwrap();
        fs::create_dir_all(boot.join("modules")).unwrap();
        fs::write(boot.join("kernel/kernel"), b"K").unwrap();
        fs::write(boot.join("loader"), b"L").unwrap();
        fs::write(boot.join("cdboot"), b"C").unwrap();
        fs::write(boot.join("modules/virtio_balloon.ko"), b"T").unwrap();
        let ko = boot.join("ours.ko");
        fs::write(&ko, b"O").unwrap();
        let init = boot.join("vtbtest");
        fs::write(&init, b"I").unwrap();
        let dir = boot.join("tree");
        let kenv = ["a.b=1".to_string()];
        let img = Image {
            boot: &boot,
            module: Some(&ko),
            init: &init,
            phases: "nodes resize",
            kenv: &kenv,
            efi: false,
        };
        stage(&img, &dir).unwrap();
        let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("boot/cdboot"), "C");
        assert_eq!(read("boot/loader"), "L");
        assert_eq!(read("boot/kernel/kernel"), "K");
        assert_eq!(read("boot/modules/vtballoonrs.ko"), "O");
        assert_eq!(read("boot/modules/virtio_balloon.ko"), "T");
        assert_eq!(read("sbin/init"), "I");
        assert_eq!(read("etc/vtbtest.mode"), "nodes resize\n");
        assert!(read("boot/loader.rc").contains("set a.b=1\n"));
        assert!(dir.join("dev").is_dir(), "devfs mount point");
        let mode = fs::metadata(dir.join("sbin/init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "init is executable");

        // Without our module (in-tree only) and without the in-tree one.
        fs::remove_file(boot.join("modules/virtio_balloon.ko")).unwrap();
        let img = Image {
            module: None,
            ..img
        };
        stage(&img, &dir).unwrap();
        assert!(!dir.join("boot/modules/vtballoonrs.ko").exists());
        assert!(!dir.join("boot/modules/virtio_balloon.ko").exists());
        fs::remove_dir_all(&boot).unwrap();
    }

    #[test]
    fn iso_is_el_torito_no_emulation() {
        let a = xorriso_args(Path::new("/t/tree"), Path::new("/t/boot.iso"), false);
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("-b") + 1], "boot/cdboot");
        assert!(pos("-no-emul-boot") > pos("-b"));
        assert!(
            a.contains(&"-R".to_string()),
            "Rock Ridge keeps init's mode"
        );
        assert_eq!(a[pos("-o") + 1], "/t/boot.iso");
        assert_eq!(a.last().unwrap(), "/t/tree");
        assert!(!a.contains(&"-e".to_string()));
    }

    #[test]
    fn uefi_iso_boots_the_fat_image_holding_the_loader() {
        let a = xorriso_args(Path::new("/t/tree"), Path::new("/t/boot.iso"), true);
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("-e") + 1], EFI_IMAGE);
        assert!(pos("-no-emul-boot") > pos("-e"));
        assert!(!a.contains(&"-b".to_string()), "no BIOS entry");
        assert_eq!(a.last().unwrap(), "/t/tree");
        let c = efi_image_commands(
            Path::new("/b/loader.efi"),
            Path::new("/t/tree/boot/efi.img"),
        );
        assert_eq!(c[0][0], "mkfs.fat", "not mformat: no partition entry");
        assert!(c[0].contains(&"/t/tree/boot/efi.img".to_string()));
        assert_eq!(c[2][0], "mcopy");
        assert_eq!(c[2][3], "/b/loader.efi");
        assert_eq!(c[2][4], "::/EFI/BOOT/BOOTAA64.EFI");
        let d = tmp("efi");
        assert_eq!(efi_loader_of(&d), None);
        fs::write(d.join("loader.efi"), b"x").unwrap();
        assert_eq!(efi_loader_of(&d), Some(d.join("loader.efi")));
        fs::remove_dir_all(&d).unwrap();
    }
}
