//! The VM as the logic sees it: pages and runs from vm_page_alloc_noobj(9)
//! and vm_page_alloc_noobj_contig(9) (freed page by page: the KPI has no
//! batch free), free
//! blocks for reporting, the ballooned-page list threaded through each
//! page's own queue linkage (no memory of our own per page), and the VM
//! counters.

use core::ffi::c_void;

use super::sys;
use crate::platform::{BlockMemory, Memory, VmCounters};

/// Guest memory for one device. `list` is the TAILQ of ballooned pages.
pub struct KernelMemory {
    pub list: *mut c_void,
}

impl Memory for KernelMemory {
    type Page = *mut sys::vm_page;

    fn page_size(&self) -> u64 {
        u64::from(sys::PAGE_SIZE)
    }

    fn alloc_page(&mut self) -> Option<Self::Page> {
        // SAFETY: non-sleeping allocation, callable from any thread context.
        let m = unsafe { sys::vtbrs_page_alloc() };
        (!m.is_null()).then_some(m)
    }

    fn alloc_run(&mut self, order: u32) -> Option<Self::Page> {
        // SAFETY: non-sleeping, non-reclaiming contiguous allocation.
        let m = unsafe { sys::vtbrs_block_alloc(order as i32, 0, u64::MAX) };
        (!m.is_null()).then_some(m)
    }

    fn free_run(&mut self, first: Self::Page, n: usize) {
        // SAFETY: the logic frees only pages it allocated and holds alone,
        // as runs of consecutive physical addresses (checked in the shim).
        unsafe { sys::vtbrs_run_free(first, n as u64) }
    }

    fn phys_addr(&self, page: Self::Page) -> u64 {
        // SAFETY: `page` is a live vm_page we allocated.
        unsafe { sys::vtbrs_page_phys(page) }
    }

    fn page_at(&self, phys: u64) -> Option<Self::Page> {
        // SAFETY: PHYS_TO_VM_PAGE only looks the address up.
        let m = unsafe { sys::vtbrs_phys_page(phys) };
        (!m.is_null()).then_some(m)
    }

    fn push_ballooned(&mut self, first: Self::Page, n: usize) {
        // SAFETY: `list` is our TAILQ head, serialized by the balloon lock;
        // the pages are ours, unmanaged and on no queue, so the first page's
        // plinks.q linkage and pindex are free to use.
        unsafe { sys::vtbrs_run_push(self.list, first, n as u64) }
    }

    fn pop_ballooned(&mut self, max: usize) -> Option<(Self::Page, usize)> {
        let mut n = 0u64;
        // SAFETY: as above; `n` is our local.
        let m = unsafe { sys::vtbrs_run_pop(self.list, max as u64, &mut n) };
        (!m.is_null()).then_some((m, n as usize))
    }
}

/// Free blocks for reporting.
pub struct KernelBlocks;

impl BlockMemory for KernelBlocks {
    type Block = *mut sys::vm_page;

    fn alloc_block(&mut self, order: u32, window: core::ops::Range<u64>) -> Option<Self::Block> {
        // SAFETY: non-sleeping, non-reclaiming contiguous allocation.
        let m = unsafe { sys::vtbrs_block_alloc(order as i32, window.start, window.end) };
        (!m.is_null()).then_some(m)
    }

    fn free_block(&mut self, block: Self::Block, order: u32) {
        // SAFETY: `block` came from alloc_block with the same order (a run
        // of 2^order pages) and the host has acknowledged (or the device was
        // reset). vm_page_free() drops PG_ZERO: a reported page is never
        // assumed zero.
        unsafe { sys::vtbrs_run_free(block, 1 << order) }
    }

    fn block_phys(&self, block: Self::Block) -> u64 {
        // SAFETY: `block` is a live run of pages we hold.
        unsafe { sys::vtbrs_page_phys(block) }
    }
}

/// Reads the VM counters (never sleeps).
pub fn vm_counters() -> VmCounters {
    let mut c = sys::vtbrs_vmcounters::default();
    // SAFETY: fills a plain struct we own.
    unsafe { sys::vtbrs_vm_counters(&mut c) };
    VmCounters {
        page_size: c.page_size,
        page_count: c.page_count,
        free: c.free,
        inactive: c.inactive,
        laundry: c.laundry,
        active: c.active,
        wired: c.wired,
        free_target: c.free_target,
        free_reserved: c.free_reserved,
        free_min: c.free_min,
        inactive_target: c.inactive_target,
        swap_in: c.swap_in,
        swap_out: c.swap_out,
        major_faults: c.major_faults,
        faults: c.faults,
        swap_free: c.swap_free,
        freed_total: c.freed_total,
        pd_scanned: c.pd_scanned,
        pd_freed: c.pd_freed,
    }
}

/// Monotonic microseconds since boot.
pub fn now_us() -> u64 {
    // SAFETY: reads the uptime clock.
    unsafe { sys::vtbrs_now_us() }
}

/// Monotonic milliseconds since boot.
pub fn now_ms() -> u64 {
    // SAFETY: reads the uptime clock.
    unsafe { sys::vtbrs_now_ms() }
}

/// Zeroed kernel memory holding `len` u64 words (the reporting bitmap).
pub struct Words {
    ptr: *mut u64,
    len: usize,
}

impl Words {
    pub fn new(len: usize) -> Option<Words> {
        let bytes = len.checked_mul(8)?;
        // SAFETY: malloc(9) with M_NOWAIT|M_ZERO; checked for NULL below.
        let ptr = unsafe { sys::vtbrs_malloc(bytes) }.cast::<u64>();
        (!ptr.is_null()).then_some(Words { ptr, len })
    }
}

impl AsRef<[u64]> for Words {
    fn as_ref(&self) -> &[u64] {
        // SAFETY: `ptr` points to `len` zero-initialized words we own.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsMut<[u64]> for Words {
    fn as_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: allocated by vtbrs_malloc in `new`, freed once.
        unsafe { sys::vtbrs_free(self.ptr.cast()) }
    }
}
