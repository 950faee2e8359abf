//! Raw FreeBSD system calls on amd64 and arm64: no libc, so the program runs
//! as init of an image with no userland. System call numbers are the same on
//! every FreeBSD architecture; on both the carry flag marks an error and the
//! first return register (rax, x0) holds errno then.

use core::arch::asm;

const SYS_EXIT: u64 = 1;
const SYS_FORK: u64 = 2;
const SYS_READ: u64 = 3;
const SYS_WRITE: u64 = 4;
const SYS_OPEN: u64 = 5;
const SYS_CLOSE: u64 = 6;
const SYS_WAIT4: u64 = 7;
const SYS_GETPID: u64 = 20;
const SYS_SETUID: u64 = 23;
const SYS_KILL: u64 = 37;
const SYS_IOCTL: u64 = 54;
const SYS_REBOOT: u64 = 55;
const SYS_SYSCTL: u64 = 202;
const SYS_POLL: u64 = 209;
const SYS_CLOCK_GETTIME: u64 = 232;
const SYS_NANOSLEEP: u64 = 240;
const SYS_KENV: u64 = 390;
const SYS_KLDLOAD: u64 = 304;
const SYS_KLDUNLOAD: u64 = 305;
const SYS_KLDFIND: u64 = 306;
const SYS_MMAP: u64 = 477;
const SYS_MUNMAP: u64 = 73;
const SYS_JAIL: u64 = 338;
const SYS_SYSCTLBYNAME: u64 = 570;

pub const EPERM: i64 = 1;
pub const ENOENT: i64 = 2;
pub const EEXIST: i64 = 17;
pub const EINVAL: i64 = 22;

pub const O_RDONLY: u64 = 0;
pub const O_RDWR: u64 = 2;

pub type Res = Result<u64, i64>;

/// # Safety
/// The arguments must be valid for system call `n` (pointers to memory of
/// the sizes the call expects).
#[cfg(target_arch = "x86_64")]
pub unsafe fn syscall6(n: u64, a: [u64; 6]) -> Res {
    let ret: u64;
    let failed: u8;
    // SAFETY: FreeBSD amd64 syscall ABI: arguments in rdi, rsi, rdx, r10,
    // r8, r9; `syscall` clobbers rcx and r11; rdx may carry a second return
    // value; and the kernel's sysretq path zeroes r8, r9 and r10 (see
    // fast_syscall_common in amd64/exception.S), so every argument register
    // is declared clobbered. The caller vouches for the arguments.
    unsafe {
        asm!(
            "syscall",
            "setc {failed}",
            failed = out(reg_byte) failed,
            inlateout("rax") n => ret,
            inlateout("rdi") a[0] => _, inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _, inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _, inlateout("r9") a[5] => _,
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        );
    }
    if failed != 0 {
        Err(ret as i64)
    } else {
        Ok(ret)
    }
}

/// # Safety
/// The arguments must be valid for system call `n` (pointers to memory of
/// the sizes the call expects).
#[cfg(target_arch = "aarch64")]
pub unsafe fn syscall6(n: u64, a: [u64; 6]) -> Res {
    let ret: u64;
    let failed: u64;
    // SAFETY: FreeBSD arm64 syscall ABI (lib/libc/aarch64/SYS.h,
    // cpu_fetch_syscall_args in arm64/trap.c, cpu_set_syscall_retval in
    // arm64/vm_machdep.c): the number in x8, arguments in x0-x5, `svc #0`;
    // results in x0 and x1, the carry flag set on error with errno in x0
    // (read into x9 with cset). Every caller-saved register is declared
    // clobbered (clobber_abi), more than the kernel changes. The caller
    // vouches for the arguments.
    unsafe {
        asm!(
            "svc #0",
            "cset x9, cs",
            lateout("x9") failed,
            in("x8") n,
            inlateout("x0") a[0] => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3],
            in("x4") a[4], in("x5") a[5],
            clobber_abi("C"),
            options(nostack)
        );
    }
    if failed != 0 {
        Err(ret as i64)
    } else {
        Ok(ret)
    }
}

pub fn write(fd: u64, buf: &[u8]) -> Res {
    // SAFETY: buf is valid for its length.
    unsafe {
        syscall6(
            SYS_WRITE,
            [fd, buf.as_ptr() as u64, buf.len() as u64, 0, 0, 0],
        )
    }
}

pub fn read(fd: u64, buf: &mut [u8]) -> Res {
    // SAFETY: buf is valid for its length.
    unsafe {
        syscall6(
            SYS_READ,
            [fd, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0],
        )
    }
}

/// `path` must end with a NUL byte.
pub fn open(path: &[u8], flags: u64) -> Res {
    if path.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated path.
    unsafe { syscall6(SYS_OPEN, [path.as_ptr() as u64, flags, 0, 0, 0, 0]) }
}

/// Waits up to `ms` for `fd` to become readable (poll(2), POLLIN).
pub fn poll_in(fd: u64, ms: u64) -> bool {
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    let mut p = PollFd {
        fd: fd as i32,
        events: 1,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { syscall6(SYS_POLL, [&mut p as *mut PollFd as u64, 1, ms, 0, 0, 0]) };
    matches!(r, Ok(n) if n > 0) && p.revents & 1 != 0
}

/// devctl(8)'s `set driver [-f]`: moves device `dev` to driver `driver`
/// through /dev/devctl2 (DEV_SET_DRIVER). Both names end with NUL.
pub fn devctl_set_driver(dev: &[u8], driver: &[u8], detach: bool) -> Res {
    #[repr(C)]
    struct DevReq {
        name: [u8; 128],
        flags: i32,
        data: *const u8,
        _len: usize,
    }
    const DEV_SET_DRIVER: u64 = 0x8098_4407; // _IOW('D', 7, struct devreq)
    const DEVF_SET_DRIVER_DETACH: i32 = 1;
    const _: () = assert!(core::mem::size_of::<DevReq>() == 0x98);
    if dev.last() != Some(&0) || driver.last() != Some(&0) || dev.len() > 128 {
        return Err(EINVAL);
    }
    let mut req = DevReq {
        name: [0; 128],
        flags: if detach { DEVF_SET_DRIVER_DETACH } else { 0 },
        data: driver.as_ptr(),
        _len: 0,
    };
    req.name[..dev.len()].copy_from_slice(dev);
    let fd = open(b"/dev/devctl2\0", O_RDWR)?;
    // SAFETY: req is a devreq whose name and data are NUL-terminated.
    let r = unsafe {
        syscall6(
            SYS_IOCTL,
            [fd, DEV_SET_DRIVER, &req as *const DevReq as u64, 0, 0, 0],
        )
    };
    close(fd);
    r
}

pub fn close(fd: u64) {
    // SAFETY: plain descriptor.
    let _ = unsafe { syscall6(SYS_CLOSE, [fd, 0, 0, 0, 0, 0]) };
}

/// Waits until the terminal's output queue has been sent (tcdrain), so our
/// lines reach the serial port before the kernel prints anything else.
pub fn drain(fd: u64) {
    const TIOCDRAIN: u64 = 0x2000_745e; // _IO('t', 94)
                                        // SAFETY: TIOCDRAIN takes no argument; on a non-tty it fails harmlessly.
    let _ = unsafe { syscall6(SYS_IOCTL, [fd, TIOCDRAIN, 0, 0, 0, 0]) };
}

pub fn exit(code: u64) -> ! {
    // SAFETY: exit does not return.
    let _ = unsafe { syscall6(SYS_EXIT, [code, 0, 0, 0, 0, 0]) };
    loop {
        core::hint::spin_loop();
    }
}

pub fn getpid() -> u64 {
    // SAFETY: no arguments.
    unsafe { syscall6(SYS_GETPID, [0; 6]) }.unwrap_or(0)
}

/// Returns 0 in the child, the child's pid in the parent.
#[cfg(target_arch = "x86_64")]
pub fn fork() -> Res {
    let ret: u64;
    let rdx: u64;
    let failed: u8;
    // SAFETY: FreeBSD fork returns the child's pid in rax and 1 in rdx in
    // the child (0 in the parent); every register the kernel may change is
    // declared clobbered.
    unsafe {
        asm!(
            "syscall",
            "setc {failed}",
            failed = out(reg_byte) failed,
            inlateout("rax") SYS_FORK => ret,
            inlateout("rdx") 0u64 => rdx,
            lateout("rcx") _, lateout("r11") _,
            lateout("rdi") _, lateout("rsi") _, lateout("r8") _, lateout("r9") _, lateout("r10") _,
            options(nostack)
        );
    }
    if failed != 0 {
        Err(ret as i64)
    } else if rdx != 0 {
        Ok(0)
    } else {
        Ok(ret)
    }
}

/// Returns 0 in the child, the child's pid in the parent.
#[cfg(target_arch = "aarch64")]
pub fn fork() -> Res {
    let ret: u64;
    let x1: u64;
    let failed: u64;
    // SAFETY: FreeBSD arm64 fork: the parent gets the child's pid in x0 and
    // 0 in x1; cpu_fork (arm64/vm_machdep.c) starts the child with x0 and
    // x1 both 0 (libc's vfork.S relies on x1 as the flag, so both are
    // looked at); every caller-saved register is declared clobbered.
    unsafe {
        asm!(
            "svc #0",
            "cset x9, cs",
            lateout("x9") failed,
            in("x8") SYS_FORK,
            inlateout("x0") 0u64 => ret,
            inlateout("x1") 0u64 => x1,
            clobber_abi("C"),
            options(nostack)
        );
    }
    if failed != 0 {
        Err(ret as i64)
    } else if x1 != 0 || ret == 0 {
        Ok(0)
    } else {
        Ok(ret)
    }
}

/// wait4: `Ok(None)` while the child runs (with `nohang`), else its raw status.
pub fn wait(pid: u64, nohang: bool) -> Result<Option<i32>, i64> {
    const WNOHANG: u64 = 1;
    let mut status: i32 = 0;
    let opts = if nohang { WNOHANG } else { 0 };
    // SAFETY: status is a valid out pointer; no rusage.
    let r = unsafe {
        syscall6(
            SYS_WAIT4,
            [pid, &mut status as *mut i32 as u64, opts, 0, 0, 0],
        )
    }?;
    Ok(if r == 0 { None } else { Some(status) })
}

pub fn kill(pid: u64, sig: u64) -> Res {
    // SAFETY: plain integers.
    unsafe { syscall6(SYS_KILL, [pid, sig, 0, 0, 0, 0]) }
}

/// CLOCK_MONOTONIC as (seconds, nanoseconds).
fn monotonic() -> (u64, u64) {
    const CLOCK_MONOTONIC: u64 = 4;
    let mut ts = [0u64; 2];
    // SAFETY: ts is a valid timespec out pointer.
    let _ = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as u64, 0, 0, 0, 0],
        )
    };
    (ts[0], ts[1])
}

/// Seconds of CLOCK_REALTIME: the guest's wall clock (set from the RTC the
/// host gives it at boot).
pub fn realtime_s() -> u64 {
    const CLOCK_REALTIME: u64 = 0;
    let mut ts = [0u64; 2];
    // SAFETY: ts is a valid timespec out pointer.
    let _ = unsafe {
        syscall6(
            SYS_CLOCK_GETTIME,
            [CLOCK_REALTIME, ts.as_mut_ptr() as u64, 0, 0, 0, 0],
        )
    };
    ts[0]
}

/// Milliseconds of CLOCK_MONOTONIC.
pub fn now_ms() -> u64 {
    let (s, ns) = monotonic();
    s * 1000 + ns / 1_000_000
}

/// Microseconds of CLOCK_MONOTONIC.
pub fn now_us() -> u64 {
    let (s, ns) = monotonic();
    s * 1_000_000 + ns / 1000
}

pub fn sleep_ms(ms: u64) {
    let ts = [ms / 1000, (ms % 1000) * 1_000_000];
    // SAFETY: ts is a valid timespec.
    let _ = unsafe { syscall6(SYS_NANOSLEEP, [ts.as_ptr() as u64, 0, 0, 0, 0, 0]) };
}

/// kldload(2): `path` must end with a NUL byte. Returns the file id.
pub fn kldload(path: &[u8]) -> Res {
    if path.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated path.
    unsafe { syscall6(SYS_KLDLOAD, [path.as_ptr() as u64, 0, 0, 0, 0, 0]) }
}

pub fn kldunload(fileid: u64) -> Res {
    // SAFETY: plain id.
    unsafe { syscall6(SYS_KLDUNLOAD, [fileid, 0, 0, 0, 0, 0]) }
}

/// kldfind(2): the file id of a loaded kld file (`name` ends with NUL).
pub fn kldfind(name: &[u8]) -> Res {
    if name.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated name.
    unsafe { syscall6(SYS_KLDFIND, [name.as_ptr() as u64, 0, 0, 0, 0, 0]) }
}

/// kenv(2) KENV_GET: the kernel environment's value of `name` (ends with
/// NUL) in `buf`, without its NUL.
pub fn kenv_get<'a>(name: &[u8], buf: &'a mut [u8]) -> Option<&'a [u8]> {
    if name.last() != Some(&0) {
        return None;
    }
    // SAFETY: NUL-terminated name; buf valid for its length.
    let n = unsafe {
        syscall6(
            SYS_KENV,
            [
                0,
                name.as_ptr() as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
                0,
                0,
            ],
        )
    }
    .ok()? as usize;
    let s = &buf[..n.min(buf.len())];
    Some(s.split(|&b| b == 0).next().unwrap_or(s))
}

/// kenv(2) KENV_SET: sets `name` to `value` in the kernel environment
/// (both end with NUL), as a loader variable would be: a driver reads its
/// tunables from there when it attaches.
pub fn kenv_set(name: &[u8], value: &[u8]) -> Res {
    const KENV_SET: u64 = 1;
    if name.last() != Some(&0) || value.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated name and value, the value's length with its NUL.
    unsafe {
        syscall6(
            SYS_KENV,
            [
                KENV_SET,
                name.as_ptr() as u64,
                value.as_ptr() as u64,
                value.len() as u64,
                0,
                0,
            ],
        )
    }
}

/// kenv(2) KENV_UNSET: removes `name` (ends with NUL); Err(ENOENT) when
/// it was not set.
pub fn kenv_unset(name: &[u8]) -> Res {
    const KENV_UNSET: u64 = 2;
    if name.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: NUL-terminated name; no value.
    unsafe { syscall6(SYS_KENV, [KENV_UNSET, name.as_ptr() as u64, 0, 0, 0, 0]) }
}

/// Anonymous mapping of `len` bytes, private or shared with children.
pub fn mmap_anon(len: u64, shared: bool) -> Res {
    const PROT_RW: u64 = 0x3;
    const MAP_SHARED: u64 = 0x1;
    const MAP_PRIVATE: u64 = 0x2;
    const MAP_ANON: u64 = 0x1000;
    let flags = MAP_ANON | if shared { MAP_SHARED } else { MAP_PRIVATE };
    // SAFETY: a fresh anonymous mapping (fd -1) disturbs no existing memory.
    unsafe { syscall6(SYS_MMAP, [0, len, PROT_RW, flags, u64::MAX, 0]) }
}

/// setuid(2): drops root for good (in a child).
pub fn setuid(uid: u64) -> Res {
    // SAFETY: plain integer.
    unsafe { syscall6(SYS_SETUID, [uid, 0, 0, 0, 0, 0]) }
}

/// jail(2) (struct jail, version 2): creates a jail rooted at `path` with
/// no addresses and moves the calling process into it. The strings end
/// with NUL.
pub fn jail(path: &[u8], name: &[u8]) -> Res {
    #[repr(C)]
    struct Jail {
        version: u32,
        path: *const u8,
        hostname: *const u8,
        jailname: *const u8,
        ip4s: u32,
        ip6s: u32,
        ip4: *const u8,
        ip6: *const u8,
    }
    const _: () = assert!(core::mem::size_of::<Jail>() == 56);
    if path.last() != Some(&0) || name.last() != Some(&0) {
        return Err(EINVAL);
    }
    let j = Jail {
        version: 2,
        path: path.as_ptr(),
        hostname: name.as_ptr(),
        jailname: name.as_ptr(),
        ip4s: 0,
        ip6s: 0,
        ip4: core::ptr::null(),
        ip6: core::ptr::null(),
    };
    // SAFETY: a struct jail whose strings are NUL-terminated and whose
    // address arrays are empty.
    unsafe { syscall6(SYS_JAIL, [&j as *const Jail as u64, 0, 0, 0, 0, 0]) }
}

/// One PCI config register of device `sel` (domain, bus, slot, function)
/// through /dev/pci: read when `write` is None, written otherwise.
pub fn pci_config(sel: [u32; 4], reg: u32, width: u32, write: Option<u32>) -> Res {
    #[repr(C)]
    struct PciIo {
        domain: u32,
        bus: u8,
        dev: u8,
        func: u8,
        _pad: u8,
        reg: i32,
        width: i32,
        data: u32,
    }
    const _: () = assert!(core::mem::size_of::<PciIo>() == 20);
    const PCIOCREAD: u64 = 0xc014_7002; // _IOWR('p', 2, struct pci_io)
    const PCIOCWRITE: u64 = 0xc014_7003; // _IOWR('p', 3, struct pci_io)
    let mut io = PciIo {
        domain: sel[0],
        bus: sel[1] as u8,
        dev: sel[2] as u8,
        func: sel[3] as u8,
        _pad: 0,
        reg: reg as i32,
        width: width as i32,
        data: write.unwrap_or(0),
    };
    let fd = open(b"/dev/pci\0", O_RDWR)?;
    let cmd = if write.is_some() {
        PCIOCWRITE
    } else {
        PCIOCREAD
    };
    // SAFETY: io is a valid struct pci_io for the ioctl.
    let r = unsafe { syscall6(SYS_IOCTL, [fd, cmd, &mut io as *mut PciIo as u64, 0, 0, 0]) };
    close(fd);
    r.map(|_| u64::from(io.data))
}

/// sysctl(2) by MIB into `len` bytes at `old` (a buffer the caller owns,
/// e.g. a fresh mapping). Returns the length written.
///
/// # Safety
/// `old` is valid for writes of `len` bytes.
pub unsafe fn sysctl_raw(mib: &[i32], old: u64, len: usize) -> Result<usize, i64> {
    let mut oldlen: usize = len;
    // SAFETY: per the contract; the MIB and length are ours.
    unsafe {
        syscall6(
            SYS_SYSCTL,
            [
                mib.as_ptr() as u64,
                mib.len() as u64,
                old,
                &mut oldlen as *mut usize as u64,
                0,
                0,
            ],
        )
    }?;
    Ok(oldlen)
}

/// munmap(2).
///
/// # Safety
/// Nothing refers to the pages of `addr..addr + len` any more.
pub unsafe fn munmap(addr: u64, len: u64) -> Res {
    // SAFETY: per the contract.
    unsafe { syscall6(SYS_MUNMAP, [addr, len, 0, 0, 0, 0]) }
}

/// sysctlbyname(2): `name` without NUL. Returns the old value's length.
pub fn sysctlbyname(name: &[u8], old: Option<&mut [u8]>, new: Option<&[u8]>) -> Result<usize, i64> {
    let mut oldlen: usize = old.as_ref().map_or(0, |o| o.len());
    let (op, olp) = match old {
        Some(o) => (o.as_mut_ptr() as u64, &mut oldlen as *mut usize as u64),
        None => (0, 0),
    };
    let (np, nl) = new.map_or((0, 0), |n| (n.as_ptr() as u64, n.len() as u64));
    // SAFETY: pointers valid for the given lengths.
    unsafe {
        syscall6(
            SYS_SYSCTLBYNAME,
            [name.as_ptr() as u64, name.len() as u64, op, olp, np, nl],
        )
    }?;
    Ok(oldlen)
}

/// sysctl(2) by MIB. Returns the old value's length.
pub fn sysctl(mib: &[i32], old: &mut [u8], new: Option<&[u8]>) -> Result<usize, i64> {
    let mut oldlen: usize = old.len();
    let (np, nl) = new.map_or((0, 0), |n| (n.as_ptr() as u64, n.len() as u64));
    // SAFETY: pointers valid for the given lengths.
    unsafe {
        syscall6(
            SYS_SYSCTL,
            [
                mib.as_ptr() as u64,
                mib.len() as u64,
                old.as_mut_ptr() as u64,
                &mut oldlen as *mut usize as u64,
                np,
                nl,
            ],
        )
    }?;
    Ok(oldlen)
}

pub fn poweroff() -> ! {
    const RB_POWEROFF: u64 = 0x4000;
    // SAFETY: reboot(2); as init this powers the guest off.
    let _ = unsafe { syscall6(SYS_REBOOT, [RB_POWEROFF, 0, 0, 0, 0, 0]) };
    exit(0)
}

/// procctl(2) PROC_SPROTECT on this process: the page daemon's OOM killer
/// passes it over.
pub fn protect_me() -> Res {
    const SYS_PROCCTL: u64 = 544;
    const P_PID: u64 = 0;
    const PROC_SPROTECT: u64 = 1;
    const PPROT_SET: i32 = 1;
    let flags = PPROT_SET;
    // SAFETY: `flags` is an int that outlives the call, as PROC_SPROTECT reads.
    unsafe {
        syscall6(
            SYS_PROCCTL,
            [
                P_PID,
                getpid(),
                PROC_SPROTECT,
                &flags as *const i32 as u64,
                0,
                0,
            ],
        )
    }
}
