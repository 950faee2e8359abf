//! The virtio balloon device as the logic sees it: config space and
//! virtqueues. Buffers the host reads are copied into DMA slots the driver
//! state owns (allocated at attach, freed after the device reset), so the
//! logic never lends its own memory to the host.

use core::ffi::c_void;
use core::ptr::NonNull;

use super::kern::{kfree, kmalloc_aligned, now_ms, ticks, Dev};
use super::kick::Kick;
use super::sync::Mutex;
use super::sys;
use crate::balloon::MAX_INFLIGHT;
use crate::counters::BalloonClocks;
use crate::platform::{Device, Error, PhysRange, Token};
use crate::protocol::{
    config_from_device, config_offset, config_to_device, Features, Queue, PFNS_PER_BUFFER,
};
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

/// Reads a 32-bit device config field (`offset`: a `config_offset` the
/// negotiated features imply).
pub fn read_config(dev: Dev, features: Features, offset: usize) -> u32 {
    let mut raw = 0u32;
    let dst = (&mut raw as *mut u32).cast();
    // SAFETY: our device (see Dev); 4 bytes into our local.
    unsafe { sys::virtio_read_device_config(dev.raw(), offset as u64, dst, 4) };
    config_from_device(raw, features)
}

/// Writes a driver-writable 32-bit config field.
pub fn write_config(dev: Dev, features: Features, offset: usize, value: u32) {
    let raw = config_to_device(value, features);
    let src = (&raw as *const u32).cast();
    // SAFETY: as above; `actual` is the only field the driver writes.
    unsafe { sys::virtio_write_device_config(dev.raw(), offset as u64, src, 4) };
}

/// An empty scatter-gather list over `segs` (sglist_init(9)).
fn sglist(segs: &mut [sys::sglist_seg]) -> sys::sglist {
    sys::sglist {
        sg_segs: segs.as_mut_ptr(),
        sg_refs: 1,
        sg_nseg: 0,
        sg_maxseg: segs.len() as u16,
    }
}

/// Enqueues `len` device-readable bytes at `buf` on `vq`, without notifying.
///
/// # Safety
/// The caller is the queue's only producer now, and `buf` stays put and
/// unchanged until the host returns the buffer (or the device is reset).
pub unsafe fn enqueue(
    vq: *mut sys::virtqueue,
    cookie: *mut c_void,
    buf: *const u8,
    len: usize,
) -> Result<(), Error> {
    let mut segs = [sys::sglist_seg::default(); 4];
    let mut sg = sglist(&mut segs);
    // SAFETY: per the contract; sglist_append only looks up the physical
    // addresses, and the queue copies the segments into its descriptors.
    let rc = unsafe {
        match sys::sglist_append(&mut sg, buf.cast_mut().cast(), len) {
            0 => sys::virtqueue_enqueue(vq, cookie, &mut sg, i32::from(sg.sg_nseg), 0),
            e => e,
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::QueueFull)
    }
}

/// Tells the host about what was enqueued on `vq`.
///
/// # Safety
/// Nobody enqueues on `vq` meanwhile.
pub unsafe fn notify(vq: *mut sys::virtqueue) {
    // SAFETY: per the contract.
    unsafe { sys::virtqueue_notify(vq) }
}

/// Takes a returned buffer's cookie off `vq` (null: none).
///
/// # Safety
/// The caller is the queue's only consumer now.
pub unsafe fn dequeue(vq: *mut sys::virtqueue) -> *mut c_void {
    // SAFETY: per the contract.
    unsafe { sys::virtqueue_dequeue(vq, core::ptr::null_mut()) }
}

/// `N` device-readable slots of up to `S` bytes each, in one malloc(9)
/// block where every slot lies within one page: one physically contiguous
/// segment per buffer, whatever the transport or host (some hosts read only
/// a chain's first descriptor). Freed on drop, which the driver state does
/// only after the device reset.
pub struct DmaSlots<const N: usize, const S: usize> {
    base: NonNull<u8>,
    len: [usize; N],
}

// SAFETY: the slots are plain memory owned by this value.
unsafe impl<const N: usize, const S: usize> Send for DmaSlots<N, S> {}

/// Device-readable copies of the PFN buffers in flight.
pub type PfnBuffers = DmaSlots<MAX_INFLIGHT, { PFNS_PER_BUFFER * 4 }>;
/// Device-readable copies of the statistics buffers (pull, push).
pub type StatsBuffers = DmaSlots<2, MAX_STATS_BYTES>;
/// Device-readable copies of the free page hint command buffers: a round's
/// start (`hinting::TOKEN_START`) and stop (`hinting::TOKEN_STOP`), 4 bytes
/// each.
pub type HintBuffers = DmaSlots<2, 4>;

impl<const N: usize, const S: usize> DmaSlots<N, S> {
    /// Distance between slots: a power of two, so slots never straddle a page
    /// (malloc(9) aligns the block to it).
    const STRIDE: usize = S.next_power_of_two();
    /// Bytes the slots take.
    pub const BYTES: usize = N * Self::STRIDE;

    /// Allocates the slots (M_NOWAIT); `None` if memory is short.
    pub fn new() -> Option<Self> {
        const { assert!(Self::STRIDE <= sys::PAGE_SIZE as usize) };
        let base = kmalloc_aligned(Self::BYTES, Self::STRIDE);
        Some(DmaSlots {
            base: NonNull::new(base.cast())?,
            len: [0; N],
        })
    }

    fn slot_ptr(&self, i: usize) -> Option<*mut u8> {
        // SAFETY: `i < N`, so the offset stays inside the N * STRIDE bytes.
        (i < N).then(|| unsafe { self.base.as_ptr().add(i * Self::STRIDE) })
    }

    /// Slot `i` to fill, and its length.
    fn slot_mut(&mut self, i: usize) -> Option<(&mut [u8], &mut usize)> {
        let p = self.slot_ptr(i)?;
        // SAFETY: `p` points to S bytes of our zero-initialized block;
        // `&mut self` makes the access exclusive (the device only reads a
        // slot while it is posted, and the logic never refills a posted
        // slot).
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
}

impl<const N: usize, const S: usize> Drop for DmaSlots<N, S> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once, after the device reset.
        unsafe { kfree(self.base.as_ptr().cast()) }
    }
}

/// Which buffer memory a view of the device may post from.
pub enum Buffers<'a> {
    Pfn(&'a mut PfnBuffers),
    Stats(&'a mut StatsBuffers),
    /// Hinting's command buffers (its hints are guest memory itself).
    Hint(&'a mut HintBuffers),
    /// Reporting posts guest memory itself.
    None,
}

/// One user's view of the device (balloon, stats or reporting path).
pub struct KernelDevice<'a> {
    pub dev: Dev,
    pub features: Features,
    pub queues: &'a Queues,
    /// Serializes sleeping waits with the interrupt handler's wakeup.
    pub wait: &'a Mutex,
    pub bufs: Buffers<'a>,
    /// Posts inflate and deflate buffers (balloon side only).
    pub kick: Option<&'a Kick>,
    /// Post in place rather than through the kick thread.
    pub urgent: bool,
    /// Where the time spent posting and waiting goes (balloon side only).
    pub clocks: Option<&'a BalloonClocks>,
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
            Buffers::Hint(b) if q == Queue::FreePageHint => b.slot_mut(token),
            _ => None,
        };
        slot.ok_or(Error::QueueFull)
    }

    /// A returned buffer's token from `vq` (of `queue`), if any.
    fn dequeue(&self, queue: Queue, vq: *mut sys::virtqueue) -> Option<Token> {
        let cookie = match self.kick {
            // SAFETY: callers serialize access to each queue (the balloon
            // lock and the kick ring, the stats mutex, the reporting lock).
            Some(k) if matches!(queue, Queue::Inflate | Queue::Deflate) => unsafe { k.dequeue(vq) },
            // SAFETY: as above.
            _ => unsafe { dequeue(vq) },
        };
        (!cookie.is_null()).then(|| cookie as usize - 1)
    }
}

impl Device for KernelDevice<'_> {
    fn num_pages(&mut self) -> u32 {
        read_config(self.dev, self.features, config_offset::NUM_PAGES)
    }

    fn set_actual(&mut self, actual: u32) {
        // Even when urgent: the host only reads it for reports.
        if self.kick.is_some_and(|k| k.set_actual(actual)) {
            return;
        }
        write_config(self.dev, self.features, config_offset::ACTUAL, actual);
    }

    fn stats_push_interval_ms(&mut self) -> u32 {
        if self.features.contains(Features::STATS_PUSH) {
            read_config(
                self.dev,
                self.features,
                config_offset::STATS_PUSH_INTERVAL_MS,
            )
        } else {
            0
        }
    }

    fn post(&mut self, queue: Queue, token: Token, data: &[u8]) -> Result<(), Error> {
        let t0 = ticks();
        let vq = self.vq(queue)?;
        let (buf, len) = self.buffer(queue, token)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        *len = n;
        let ptr = buf.as_ptr();
        // The cookie (token + 1) is never NULL.
        let cookie = (token + 1) as *mut c_void;
        if let Some(k) = self.kick {
            // SAFETY: as below; the balloon lock makes us the only poster.
            let notified = unsafe { k.post(vq, cookie, ptr, n, self.urgent) }?;
            if let Some(c) = self.clocks {
                let t = ticks().saturating_sub(t0);
                c.post_us.add(t.saturating_sub(notified));
            }
            return Ok(());
        }
        // SAFETY: the slot stays allocated until detach has reset the
        // device, and the logic does not reuse it before the host returns
        // it; the stats mutex (the hinting lock) makes us the stats queue's
        // (the free page queue's) only producer.
        unsafe {
            enqueue(vq, cookie, ptr, n)?;
            notify(vq);
        }
        Ok(())
    }

    fn posted(&self, queue: Queue, token: Token) -> &[u8] {
        match (&self.bufs, queue) {
            (Buffers::Pfn(b), Queue::Inflate | Queue::Deflate) => b.slot(token),
            (Buffers::Stats(b), Queue::Stats) => b.slot(token),
            (Buffers::Hint(b), Queue::FreePageHint) => b.slot(token),
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
        let mut segs = [sys::sglist_seg::default(); MAX_BATCH];
        let mut sg = sglist(&mut segs);
        for r in ranges.iter().take(MAX_BATCH) {
            // SAFETY: appends one segment to our local list.
            if unsafe { sys::sglist_append_phys(&mut sg, r.addr, r.len as usize) } != 0 {
                return Err(Error::QueueFull);
            }
        }
        // SAFETY: the ranges are blocks the reporter holds out of the free
        // lists until the host returns this buffer or the device is reset
        // (hinted blocks: the hinter holds them until DONE, and the host
        // never writes into them, so freeing one earlier is allowed too);
        // device-writable, since the host may discard what they hold. The
        // reporting thread (the hinting thread) is the queue's only user.
        let rc = unsafe {
            sys::virtqueue_enqueue(
                vq,
                (token + 1) as *mut c_void,
                &mut sg,
                0,
                i32::from(sg.sg_nseg),
            )
        };
        if rc != 0 {
            return Err(Error::QueueFull);
        }
        // SAFETY: as above.
        unsafe { notify(vq) };
        Ok(())
    }

    fn wait_used(&mut self, queue: Queue, timeout_ms: u32) -> Result<Token, Error> {
        let vq = self.vq(queue)?;
        if timeout_ms == 0 {
            return self.dequeue(queue, vq).ok_or(Error::Timeout);
        }
        let t0 = ticks();
        let r = self.wait_sleeping(queue, vq, timeout_ms);
        if let Some(c) = self.clocks {
            c.wait_us.add(ticks().saturating_sub(t0));
        }
        r
    }
}

impl KernelDevice<'_> {
    /// [`Device::wait_used`] with a timeout: sleeps until the interrupt.
    fn wait_sleeping(
        &mut self,
        queue: Queue,
        vq: *mut sys::virtqueue,
        timeout_ms: u32,
    ) -> Result<Token, Error> {
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
            if unsafe { sys::virtqueue_enable_intr(vq) } != 0 {
                continue;
            }
            let now = now_ms();
            if now >= deadline {
                return Err(Error::Timeout);
            }
            let left = u32::try_from(deadline - now).unwrap_or(u32::MAX);
            guard.sleep(chan, c"vtbwait", left);
        }
    }
}
