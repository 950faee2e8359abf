//! The virtio balloon device as the logic sees it: config space and
//! virtqueues. Buffers the host reads are copied into memory owned by the
//! driver state (allocated once, never moved), so the logic never lends its
//! own memory to the host.

use core::ffi::c_void;

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

/// Device-readable copies of the PFN buffers in flight.
pub struct PfnBuffers {
    data: [[u8; PFNS_PER_BUFFER * 4]; MAX_INFLIGHT],
    len: [usize; MAX_INFLIGHT],
}

/// Device-readable copies of the statistics buffers (pull, push).
pub struct StatsBuffers {
    data: [[u8; MAX_STATS_BYTES]; 2],
    len: [usize; 2],
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
        match &mut self.bufs {
            Buffers::Pfn(b)
                if matches!(q, Queue::Inflate | Queue::Deflate) && token < MAX_INFLIGHT =>
            {
                Ok((&mut b.data[token][..], &mut b.len[token]))
            }
            Buffers::Stats(b) if q == Queue::Stats && token < 2 => {
                Ok((&mut b.data[token][..], &mut b.len[token]))
            }
            _ => Err(Error::QueueFull),
        }
    }

    fn read4(&self, offset: usize) -> u32 {
        // SAFETY: `dev` is our attached device; offsets are within the config
        // space the negotiated features imply.
        unsafe { sys::vtbrs_config_read4(self.dev, offset as i32) }
    }
}

fn dequeue(vq: *mut sys::virtqueue) -> Option<Token> {
    // SAFETY: `vq` is live while the driver is attached; callers serialize
    // access to each queue (balloon lock, stats mutex, reporting thread).
    let cookie = unsafe { sys::vtbrs_vq_dequeue(vq) };
    (!cookie.is_null()).then(|| cookie as usize - 1)
}

impl Device for KernelDevice<'_> {
    fn num_pages(&mut self) -> u32 {
        self.read4(config_offset::NUM_PAGES)
    }

    fn set_actual(&mut self, actual: u32) {
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
        // SAFETY: the buffer lives in the driver state until detach, and the
        // logic does not reuse this slot before the host returns it; the
        // cookie (token + 1) is never NULL.
        let rc = unsafe { sys::vtbrs_vq_post(vq, (token + 1) as *mut c_void, ptr.cast(), n) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::QueueFull)
        }
    }

    fn posted(&self, queue: Queue, token: Token) -> &[u8] {
        match (&self.bufs, queue) {
            (Buffers::Pfn(b), Queue::Inflate | Queue::Deflate) if token < MAX_INFLIGHT => {
                &b.data[token][..b.len[token]]
            }
            (Buffers::Stats(b), Queue::Stats) if token < 2 => &b.data[token][..b.len[token]],
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
            return dequeue(vq).ok_or(Error::Timeout);
        }
        let deadline = now_ms().saturating_add(u64::from(timeout_ms));
        let chan = (self.wait as *const Mutex).cast::<c_void>();
        let guard = self.wait.lock();
        loop {
            if let Some(token) = dequeue(vq) {
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
            // SAFETY: converts a duration; no other effect.
            let ticks = unsafe { sys::vtbrs_ms_to_ticks(left) };
            guard.sleep(chan, cstr!("vtbwait"), ticks);
        }
    }
}
