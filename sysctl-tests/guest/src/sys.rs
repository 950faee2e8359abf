//! Raw FreeBSD amd64 system calls: no libc, so the program runs as init of
//! an image with no userland. The carry flag marks an error; rax is errno.

use core::arch::asm;

pub const SYS_EXIT: u64 = 1;
pub const SYS_FORK: u64 = 2;
pub const SYS_READ: u64 = 3;
pub const SYS_WRITE: u64 = 4;
pub const SYS_OPEN: u64 = 5;
pub const SYS_WAIT4: u64 = 7;
pub const SYS_GETPID: u64 = 20;
pub const SYS_REBOOT: u64 = 55;
pub const SYS_SYSCTL: u64 = 202;
pub const SYS_NANOSLEEP: u64 = 240;
pub const SYS_KLDLOAD: u64 = 304;
pub const SYS_KLDUNLOAD: u64 = 305;
pub const SYS_MMAP: u64 = 477;
pub const SYS_SYSCTLBYNAME: u64 = 570;

pub const EINVAL: i64 = 22;

pub type Res = Result<u64, i64>;

/// # Safety
/// The arguments must be valid for system call `n`.
pub unsafe fn syscall6(n: u64, a: [u64; 6]) -> Res {
    let ret: u64;
    let failed: u8;
    // SAFETY: FreeBSD amd64 syscall ABI; rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "syscall",
            "setc {failed}",
            failed = out(reg_byte) failed,
            inlateout("rax") n => ret,
            in("rdi") a[0], in("rsi") a[1], inlateout("rdx") a[2] => _,
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
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

pub fn write(fd: u64, buf: &[u8]) {
    // SAFETY: buf is valid for its length.
    let _ = unsafe {
        syscall6(
            SYS_WRITE,
            [fd, buf.as_ptr() as u64, buf.len() as u64, 0, 0, 0],
        )
    };
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
    // SAFETY: NUL-terminated path.
    unsafe { syscall6(SYS_OPEN, [path.as_ptr() as u64, flags, 0, 0, 0, 0]) }
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
pub fn fork() -> Res {
    // SAFETY: FreeBSD fork returns the child pid in rax and 1 in rdx for the
    // child; we read rdx to tell them apart.
    let ret: u64;
    let rdx: u64;
    let failed: u8;
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

/// Waits for `pid`; returns the raw wait status.
pub fn wait(pid: u64) -> Result<i32, i64> {
    let mut status: i32 = 0;
    // SAFETY: status is a valid out pointer.
    unsafe { syscall6(SYS_WAIT4, [pid, &mut status as *mut i32 as u64, 0, 0, 0, 0]) }?;
    Ok(status)
}

pub fn sleep_ms(ms: u64) {
    let ts = [ms / 1000, (ms % 1000) * 1_000_000];
    // SAFETY: ts is a valid timespec.
    let _ = unsafe { syscall6(SYS_NANOSLEEP, [ts.as_ptr() as u64, 0, 0, 0, 0, 0]) };
}

pub fn kldload(path: &[u8]) -> Res {
    // SAFETY: NUL-terminated path.
    unsafe { syscall6(SYS_KLDLOAD, [path.as_ptr() as u64, 0, 0, 0, 0, 0]) }
}

pub fn kldunload(fileid: u64) -> Res {
    // SAFETY: plain id.
    unsafe { syscall6(SYS_KLDUNLOAD, [fileid, 0, 0, 0, 0, 0]) }
}

/// Anonymous private mapping of `len` bytes.
pub fn mmap_anon(len: u64) -> Res {
    const PROT_RW: u64 = 0x3;
    const MAP_PRIVATE_ANON: u64 = 0x2 | 0x1000;
    // SAFETY: fresh anonymous mapping; fd -1.
    unsafe { syscall6(SYS_MMAP, [0, len, PROT_RW, MAP_PRIVATE_ANON, u64::MAX, 0]) }
}

/// sysctlbyname(2): `name` without NUL.
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

/// sysctl(2) by MIB.
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
    // SAFETY: reboot(2) as init.
    let _ = unsafe { syscall6(SYS_REBOOT, [RB_POWEROFF, 0, 0, 0, 0, 0]) };
    exit(0)
}
