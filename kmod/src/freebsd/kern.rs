//! Small kernel services: malloc(9) under the driver's malloc type, the
//! uptime clocks, console lines, and kernel threads.

use core::ffi::{c_void, CStr};
use core::ptr::{addr_of, addr_of_mut};

use super::sys;
use crate::events::{Event, SYSTEM};

fn malloc_type() -> *mut sys::malloc_type {
    addr_of_mut!(sys::M_VTBRS).cast()
}

const FLAGS: i32 = (sys::M_NOWAIT | sys::M_ZERO) as i32;

/// `size` zeroed bytes of kernel memory without sleeping; null when short.
pub fn kmalloc(size: usize) -> *mut c_void {
    // SAFETY: malloc(9) with M_NOWAIT may be called from any sleepable or
    // non-sleepable thread context; the result is checked by the caller.
    unsafe { sys::malloc(size, malloc_type(), FLAGS) }
}

/// As [`kmalloc`], aligned to `align` (a power of two).
pub fn kmalloc_aligned(size: usize, align: usize) -> *mut c_void {
    // SAFETY: as above; malloc_aligned(9) takes any power-of-two alignment.
    unsafe { sys::malloc_aligned(size, align, malloc_type(), FLAGS) }
}

/// Frees what [`kmalloc`] or [`kmalloc_aligned`] returned.
///
/// # Safety
/// `p` came from them, is freed once and not used afterwards.
pub unsafe fn kfree(p: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { sys::free(p, malloc_type()) }
}

/// The device this driver attaches or is attached to: the `device_t`
/// newbus hands the driver's methods (and the queue interrupts registered
/// with it), valid until detach returns.
#[derive(Clone, Copy)]
pub struct Dev(sys::device_t);

// SAFETY: the kernel's device functions may be called from any thread; the
// handle holds no data of its own.
unsafe impl Send for Dev {}
// SAFETY: as above.
unsafe impl Sync for Dev {}

impl Dev {
    /// # Safety
    /// `dev` is a device this driver attaches or is attached to, and the
    /// handle is not used after its detach has returned.
    pub unsafe fn new(dev: sys::device_t) -> Dev {
        Dev(dev)
    }

    pub fn raw(self) -> sys::device_t {
        self.0
    }
}

/// Writes `words` separated by `sep`, NUL-terminated, truncating.
pub fn write_text<'a>(buf: &mut [u8], sep: u8, words: impl Iterator<Item = &'a str>) {
    let mut n = 0;
    for (i, w) in words.enumerate() {
        let sep: &[u8] = if i > 0 { &[sep] } else { b"" };
        for &b in sep.iter().chain(w.as_bytes()) {
            if n + 1 < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    }
    buf[n] = 0;
}

/// Tells devd(8): `!system=VTBALLOON subsystem=<device> type=<TYPE> <data>`.
/// devctl_notify(9) copies the strings and allocates without sleeping (a
/// notice is dropped when memory is short or nobody reads /dev/devctl).
pub fn devd_notify(dev: Dev, event: Event, data: &CStr) {
    // SAFETY: our device (see Dev); every string is NUL-terminated and lives
    // through the call, which copies what it keeps.
    unsafe {
        sys::devctl_notify(
            SYSTEM.as_ptr(),
            sys::device_get_nameunit(dev.raw()),
            event.name().as_ptr(),
            data.as_ptr(),
        )
    };
}

/// A line on the console, prefixed with the device's name.
pub fn log(dev: Dev, msg: &CStr) {
    // SAFETY: our device (see Dev); the format takes one string.
    unsafe { sys::device_printf(dev.raw(), c"%s\n".as_ptr(), msg.as_ptr()) };
}

/// A line with a number.
pub fn log_u64(dev: Dev, msg: &CStr, v: u64) {
    // SAFETY: as above; %ju takes a uintmax_t, which is u64.
    unsafe { sys::device_printf(dev.raw(), c"%s %ju\n".as_ptr(), msg.as_ptr(), v) };
}

/// `bt`'s fraction of a second in units of `1/per_second`.
fn frac(bt: &sys::bintime, per_second: u64) -> u64 {
    ((bt.frac >> 32) * per_second) >> 32
}

/// Monotonic microseconds since boot, from the timecounter itself.
pub fn now_us() -> u64 {
    let mut bt = sys::bintime::default();
    // SAFETY: fills our local.
    unsafe { sys::binuptime(&mut bt) };
    (bt.sec as u64) * 1_000_000 + frac(&bt, 1_000_000)
}

/// The counter the driver times its own work with (the shim's
/// `vtbrs_cycles`): the TSC on amd64 (`cpu_ticks`), the generic timer's
/// virtual count on arm64, where `cpu_ticks` is the timecounter widened
/// per CPU and differs between CPUs. Cheap to read; the timecounter is not
/// on amd64: under QEMU's TCG it is the emulated HPET, and every read is a
/// device access that waits for QEMU's big lock, which a vCPU inside a
/// balloon notification holds for the host's whole work on the buffer.
pub fn ticks() -> u64 {
    // SAFETY: reads a CPU counter; no side effects.
    unsafe { sys::vtbrs_cycles() }
}

/// Microseconds in `ticks` of [`ticks`].
pub fn ticks_to_us(ticks: u64) -> u64 {
    // SAFETY: reads the counter's rate (a kernel variable or a CPU
    // register); no side effects.
    let per_second = unsafe { sys::vtbrs_cycles_per_second() };
    crate::sleep::cycles_to_us(ticks, per_second)
}

/// Monotonic milliseconds since boot, as of the last tick (cheap).
pub fn now_ms() -> u64 {
    let mut bt = sys::bintime::default();
    // SAFETY: fills our local.
    unsafe { sys::getbinuptime(&mut bt) };
    (bt.sec as u64) * 1_000 + frac(&bt, 1_000)
}

/// Clock ticks per second.
pub fn hz() -> u32 {
    // SAFETY: set once at boot, read-only after.
    let hz = unsafe { addr_of!(sys::hz).read() };
    hz.max(1) as u32
}

/// Sleeps `ticks` clock ticks (pause(9)).
pub fn pause(wmesg: &'static CStr, ticks: i32) {
    // SAFETY: `tick_sbt` is set once at boot; pause_sbt(9) only sleeps.
    unsafe {
        let tick = addr_of!(sys::tick_sbt).read();
        sys::pause_sbt(
            wmesg.as_ptr(),
            tick * i64::from(ticks),
            0,
            sys::C_HARDCLOCK as i32,
        );
    }
}

/// A kernel thread's entry point.
pub type ThreadFn = unsafe extern "C" fn(*mut c_void);

/// Starts a kernel thread running `f(arg)`; the errno when it cannot.
///
/// # Safety
/// `arg` stays valid for as long as the thread uses it.
pub unsafe fn kthread_add(f: ThreadFn, arg: *mut c_void, name: &CStr) -> Result<(), i32> {
    // SAFETY: per the contract; the name goes through "%s".
    let rc = unsafe {
        sys::kthread_add(
            Some(f),
            arg,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            0,
            0,
            c"%s".as_ptr(),
            name.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// Ends the calling kernel thread.
///
/// # Safety
/// The caller is one of the driver's kthreads, done with everything it used.
pub unsafe fn kthread_exit() -> ! {
    // SAFETY: per the contract.
    unsafe { sys::kthread_exit() }
}
