//! The boot image: El Torito no-emulation cdboot -> loader (/boot/loader.rc)
//! -> kernel, root on cd9660 with the test program as /sbin/init, the
//! modules under /boot/modules and the phases to run in /etc/vtbtest.mode.

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
}

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
    let loader = loader_of(img.boot).ok_or("no loader in the boot directory")?;
    fs::copy(img.boot.join("cdboot"), dir.join("boot/cdboot")).map_err(e("cdboot"))?;
    fs::copy(loader, dir.join("boot/loader")).map_err(e("loader"))?;
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

/// The xorriso arguments for a bootable cd9660 image of `dir`.
pub fn xorriso_args(dir: &Path, iso: &Path) -> Vec<String> {
    [
        "-as",
        "mkisofs",
        "-quiet",
        "-R",
        "-V",
        "VTBTEST",
        "-b",
        "boot/cdboot",
        "-no-emul-boot",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([iso.display().to_string(), dir.display().to_string()])
    .collect()
}

pub fn build(img: &Image<'_>, dir: &Path, iso: &Path) -> Result<(), String> {
    stage(img, dir)?;
    let out = Command::new("xorriso")
        .args(xorriso_args(dir, iso))
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
        let a = xorriso_args(Path::new("/t/tree"), Path::new("/t/boot.iso"));
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("-b") + 1], "boot/cdboot");
        assert!(pos("-no-emul-boot") > pos("-b"));
        assert!(
            a.contains(&"-R".to_string()),
            "Rock Ridge keeps init's mode"
        );
        assert_eq!(a[pos("-o") + 1], "/t/boot.iso");
        assert_eq!(a.last().unwrap(), "/t/tree");
    }
}
