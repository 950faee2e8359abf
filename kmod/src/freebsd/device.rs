//! The virtio balloon device as the logic sees it: config space and
//! virtqueues. Buffers the host reads are copied into DMA slots the driver
//! state owns (allocated at attach, freed after the device reset), so the
//! logic never lends its own memory to the host.

use core::ffi::c_void;

use super::kick::Kick;
use super::memory::now_ms;
use super::sync::Mutex;
use super::{cstr, sys};
use crate::balloon::MAX_INFLIGHT;
use crate::platform::{Device, Error, PhysRange, Token};
use crate::protocol::{config_offset, Features, Queue, PFNS_PER_BUFFER};
use crate::reporting::MAX_BATCH;
use crate::stats::MAX_STATS_BYTES;

/// Slot in [`Queues`] for each queue kind.
pub fn queue_slot(q: Queue) -> usize {
    match q {
        Queue::Inflate => 0,
        Queue::Deflate => 1,
        Queue::Stats => 2,
        Queue::FreePageHint => 3,
        Queue::Reporting => 4,
    }
}

/// The device's virtqueues, null where absent.
pub type Queues = [*mut sys::virtqueue; 5];

/// `N` device-readable slots of up to `S` bytes each, in one malloc(9)
/// block where every slot lies within one page: one physically contiguous
/// segment per buffer, whatever the transport or host (some hosts read only
/// a chain's first descriptor). All zero (no block) until [`DmaSlots::alloc`].
pub struct DmaSlots<const N: usize, const S: usize> {
    base: *mut u8,
    len: [usize; N],
}

/// Device-readable copies of the PFN buffers in flight.
pub type PfnBuffers = DmaSlots<MAX_INFLIGHT, { PFNS_PER_BUFFER * 4 }>;
/// Device-readable copies of the statistics buffers (pull, push).
pub type StatsBuffers = DmaSlots<2, MAX_STATS_BYTES>;

impl<const N: usize, const S: usize> DmaSlots<N, S> {
    /// Distance between slots: a power of two, so slots never straddle a page.
    const STRIDE: usize = S.next_power_of_two();
    /// Bytes the slots take once allocated.
    pub const BYTES: usize = N * Self::STRIDE;

    /// Allocates the slots (M_NOWAIT); false if memory is short.
    pub fn alloc(&mut self) -> bool {
        const { assert!(Self::STRIDE <= sys::PAGE_SIZE as usize) };
        // SAFETY: malloc_aligned(9) with a power-of-two alignment no larger
        // than a page, M_NOWAIT|M_ZERO; checked for NULL below.
        let base = unsafe { sys::vtbrs_dma_alloc(N * Self::STRIDE, Self::STRIDE) };
        self.base = base.cast();
        !self.base.is_null()
    }

    fn slot_ptr(&self, i: usize) -> Option<*mut u8> {
        if self.base.is_null() || i >= N {
            return None;
        }
        // SAFETY: `i < N`, so the offset stays inside the N * STRIDE bytes
        // allocated in `alloc`.
        Some(unsafe { self.base.add(i * Self::STRIDE) })
    }

    /// Slot `i` to fill, and its length.
    fn slot_mut(&mut self, i: usize) -> Option<(&mut [u8], &mut usize)> {
        let p = self.slot_ptr(i)?;
        // SAFETY: `p` points to S bytes of our allocation, zero-initialized
        // at allocation; `&mut self` makes the access exclusive (the device
        // only reads a slot while it is posted, and the logic never refills
        // a posted slot).
        let buf = unsafe { core::slice::from_raw_parts_mut(p, S) };
        Some((buf, &mut self.len[i]))
    }

    /// The bytes last copied into slot `i`.
    fn slot(&self, i: usize) -> &[u8] {
        match self.slot_ptr(i) {
            // SAFETY: as in `slot_mut`, shared access; `len[i] <= S`.
            Some(p) => unsafe { core::slice::from_raw_parts(p, self.len[i]) },
            None => &[],
        }
    }

    /// Frees the slots; only once the device can no longer read them.
    pub fn free(&mut self) {
        if !self.base.is_null() {
            // SAFETY: allocated in `alloc`, freed once (the pointer is cleared).
            unsafe { sys::vtbrs_free(self.base.cast()) };
            self.base = core::ptr::null_mut();
        }
    }
}

/// Which buffer memory a view of the device may post from.
pub enum Buffers<'a> {
    Pfn(&'a mut PfnBuffers),
    Stats(&'a mut StatsBuffers),
    /// Reporting posts guest memory itself.
    None,
}

/// One user's view of the device (balloon, stats or reporting path).
pub struct KernelDevice<'a> {
    pub dev: sys::device_t,
    pub features: Features,
    pub queues: &'a Queues,
    /// Serializes sleeping waits with the interrupt handler's wakeup.
    pub wait: &'a Mutex,
    pub bufs: Buffers<'a>,
    /// Posts inflate and deflate buffers (balloon side only).
    pub kick: Option<&'a Kick>,
    /// Post in place rather than through the kick thread.
    pub urgent: bool,
}

impl KernelDevice<'_> {
    fn vq(&self, q: Queue) -> Result<*mut sys::virtqueue, Error> {
        let vq = self.queues[queue_slot(q)];
        if vq.is_null() {
            Err(Error::Stopping)
        } else {
            Ok(vq)
        }
    }

    fn buffer(&mut self, q: Queue, token: Token) -> Result<(&mut [u8], &mut usize), Error> {
        let slot = match &mut self.bufs {
            Buffers::Pfn(b) if matches!(q, Queue::Inflate | Queue::Deflate) => b.slot_mut(token),
            Buffers::Stats(b) if q == Queue::Stats => b.slot_mut(token),
            _ => None,
        };
        slot.ok_or(Error::QueueFull)
    }

    /// A returned buffer's token from `vq` (of `queue`), if any.
    fn dequeue(&self, queue: Queue, vq: *mut sys::virtqueue) -> Option<Token> {
        let cookie = match self.kick {
            Some(k) if matches!(queue, Queue::Inflate | Queue::Deflate) => k.dequeue(vq),
            // SAFETY: `vq` is live while the driver is attached; callers
            // serialize access to each queue (stats mutex, reporting thread).
            _ => unsafe { sys::vtbrs_vq_dequeue(vq) },
        };
        (!cookie.is_null()).then(|| cookie as usize - 1)
    }

    fn read4(&self, offset: usize) -> u32 {
        // SAFETY: `dev` is our attached device; offsets are within the config
        // space the negotiated features imply.
        unsafe { sys::vtbrs_config_read4(self.dev, offset as i32) }
    }
}

impl Device for KernelDevice<'_> {
    fn num_pages(&mut self) -> u32 {
        self.read4(config_offset::NUM_PAGES)
    }

    fn set_actual(&mut self, actual: u32) {
        // Even when urgent: the host only reads it for reports.
        if self.kick.is_some_and(|k| k.set_actual(actual)) {
            return;
        }
        // SAFETY: `actual` is a driver-writable config field.
        unsafe { sys::vtbrs_config_write4(self.dev, config_offset::ACTUAL as i32, actual) }
    }

    fn stats_push_interval_ms(&mut self) -> u32 {
        if self.features.contains(Features::STATS_PUSH) {
            self.read4(config_offset::STATS_PUSH_INTERVAL_MS)
        } else {
            0
        }
    }

    fn post(&mut self, queue: Queue, token: Token, data: &[u8]) -> Result<(), Error> {
        let vq = self.vq(queue)?;
        let (buf, len) = self.buffer(queue, token)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        *len = n;
        let ptr = buf.as_ptr();
        // The slot stays allocated until detach has reset the device, and the
        // logic does not reuse it before the host returns it; the cookie
        // (token + 1) is never NULL.
        let cookie = (token + 1) as *mut c_void;
        if let Some(k) = self.kick {
            return k.post(vq, cookie, ptr, n, self.urgent);
        }
        // SAFETY: as above.
        let rc = unsafe { sys::vtbrs_vq_post(vq, cookie, ptr.cast(), n) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::QueueFull)
        }
    }

    fn posted(&self, queue: Queue, token: Token) -> &[u8] {
        match (&self.bufs, queue) {
            (Buffers::Pfn(b), Queue::Inflate | Queue::Deflate) => b.slot(token),
            (Buffers::Stats(b), Queue::Stats) => b.slot(token),
            _ => &[],
        }
    }

    fn post_ranges(
        &mut self,
        queue: Queue,
        token: Token,
        ranges: &[PhysRange],
    ) -> Result<(), Error> {
        let vq = self.vq(queue)?;
        let mut addr = [0u64; MAX_BATCH];
        let mut len = [0u64; MAX_BATCH];
        let n = ranges.len().min(MAX_BATCH);
        for (i, r) in ranges[..n].iter().enumerate() {
            addr[i] = r.addr;
            len[i] = r.len;
        }
        // SAFETY: the ranges are blocks the reporter holds out of the free
        // lists until the host returns this buffer or the device is reset.
        let rc = unsafe {
            sys::vtbrs_vq_post_phys(
                vq,
                (token + 1) as *mut c_void,
                addr.as_ptr(),
                len.as_ptr(),
                n as i32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::QueueFull)
        }
    }

    fn wait_used(&mut self, queue: Queue, timeout_ms: u32) -> Result<Token, Error> {
        let vq = self.vq(queue)?;
        if timeout_ms == 0 {
            return self.dequeue(queue, vq).ok_or(Error::Timeout);
        }
        let deadline = now_ms().saturating_add(u64::from(timeout_ms));
        let chan = (self.wait as *const Mutex).cast::<c_void>();
        let guard = self.wait.lock();
        loop {
            if let Some(token) = self.dequeue(queue, vq) {
                return Ok(token);
            }
            // Re-arm the interrupt the filter disabled; if buffers raced in,
            // look again instead of sleeping.
            // SAFETY: as for dequeue.
            if unsafe { sys::vtbrs_vq_enable_intr(vq) } != 0 {
                continue;
            }
            let now = now_ms();
            if now >= deadline {
                return Err(Error::Timeout);
            }
            let left = u32::try_from(deadline - now).unwrap_or(u32::MAX);
            guard.sleep(chan, cstr!("vtbwait"), left);
        }
    }
}
