//! The VM as the logic sees it: pages and runs from vm_page_alloc_noobj(9)
//! and vm_page_alloc_noobj_contig(9), domain by domain through the shim
//! (failures must not add to the page daemon's deficit; freed page by page: the KPI has no
//! batch free), free blocks for reporting, the ballooned runs listed
//! through each run's first page ([`crate::runlist`]: no memory of our own
//! per page), and the VM counters.

use core::ptr::{addr_of, addr_of_mut, NonNull};

use super::kern::{kfree, kmalloc, ticks};
use super::sync::StateRef;
use super::sys;
use crate::counters::{BalloonClocks, Counter};
use crate::platform::{BlockMemory, HeldBlocks, Memory, VmCounters};
use crate::runlist::{run_pages, RunList, RunPages};

/// A page the driver holds: taken from the VM by the driver (unmanaged,
/// object-less, on no page queue), or found by the physical address of
/// such a page. Only the driver touches its list fields (`plinks.q`,
/// `pindex`) while it holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmPage(NonNull<sys::vm_page>);

// SAFETY: a held page is the driver's, whichever thread works on it (each
// list of them is behind a lock).
unsafe impl Send for VmPage {}

impl VmPage {
    fn new(m: *mut sys::vm_page) -> Option<VmPage> {
        NonNull::new(m).map(VmPage)
    }

    fn ptr(self) -> *mut sys::vm_page {
        self.0.as_ptr()
    }

    fn phys(self) -> u64 {
        // SAFETY: a live vm_page; phys_addr is constant from boot on.
        unsafe { addr_of!((*self.ptr()).phys_addr).read() }
    }
}

const PAGE_SIZE: u64 = sys::PAGE_SIZE as u64;

/// The held pages' list fields and the page lookups, for [`RunList`].
struct VmPages;

impl RunPages for VmPages {
    type Page = VmPage;

    fn next(&self, first: VmPage) -> Option<VmPage> {
        // SAFETY: a held page (see VmPage): its queue linkage is ours.
        VmPage::new(unsafe { addr_of!((*first.ptr()).plinks.q.tqe_next).read() })
    }

    fn set_next(&mut self, first: VmPage, next: Option<VmPage>) {
        let next = next.map_or(core::ptr::null_mut(), VmPage::ptr);
        // SAFETY: as above.
        unsafe { addr_of_mut!((*first.ptr()).plinks.q.tqe_next).write(next) }
    }

    fn len(&self, first: VmPage) -> usize {
        // SAFETY: as above: the VM leaves pindex to the owner of an
        // object-less page.
        unsafe { addr_of!((*first.ptr()).pindex).read() as usize }
    }

    fn set_len(&mut self, first: VmPage, n: usize) {
        // SAFETY: as above.
        unsafe { addr_of_mut!((*first.ptr()).pindex).write(n as u64) }
    }

    fn array_nth(&self, first: VmPage, i: usize) -> VmPage {
        // Only compared, or used for pages of a run the list checked to be
        // consecutive in the page array. Kernel addresses do not wrap to 0.
        VmPage::new(first.ptr().wrapping_add(i)).unwrap_or(first)
    }

    fn phys_nth(&self, first: VmPage, i: usize) -> Option<VmPage> {
        let pa = first.phys() + i as u64 * PAGE_SIZE;
        // SAFETY: PHYS_TO_VM_PAGE only looks the address up.
        VmPage::new(unsafe { sys::PHYS_TO_VM_PAGE(pa) })
    }
}

/// A free, naturally aligned run of 2^order pages within the physical
/// addresses `window`: no sleeping, no reclaim, so only pages that are free
/// right now.
fn alloc_contig(order: u32, window: core::ops::Range<u64>) -> Option<VmPage> {
    let n = 1u64 << order;
    let req = sys::VM_ALLOC_NOWAIT | sys::VM_ALLOC_NORECLAIM | sys::VM_ALLOC_NODUMP;
    // SAFETY: a non-sleeping allocation, callable from any thread context;
    // the shim takes back the deficit a failure added (see
    // vtbrs_alloc_contig_quiet).
    VmPage::new(unsafe {
        sys::vtbrs_alloc_contig_quiet(req as i32, n, window.start, window.end, n * PAGE_SIZE, 0)
    })
}

/// Gives `n` held pages from `first` on back to the VM.
fn free_pages(first: VmPage, n: usize) {
    for page in run_pages(&VmPages, first, n) {
        // SAFETY: the logic frees only pages it holds alone, once.
        // vm_page_free() drops PG_ZERO: a page the host discarded is never
        // assumed zero.
        unsafe { sys::vm_page_free(page.ptr()) }
    }
}

/// Guest memory for one device, and its ballooned runs; the time spent
/// taking and giving back pages goes to `clocks`.
pub struct KernelMemory {
    ballooned: RunList<VmPage>,
    clocks: StateRef<BalloonClocks>,
}

impl KernelMemory {
    pub fn new(clocks: StateRef<BalloonClocks>) -> Self {
        KernelMemory {
            ballooned: RunList::default(),
            clocks,
        }
    }

    /// Runs `f`, adding its time to the counter `pick` chooses.
    fn timed<R>(&self, pick: fn(&BalloonClocks) -> &Counter, f: impl FnOnce() -> R) -> R {
        let t0 = ticks();
        let r = f();
        pick(&self.clocks).add(ticks().saturating_sub(t0));
        r
    }
}

impl Memory for KernelMemory {
    type Page = VmPage;

    fn page_size(&self) -> u64 {
        PAGE_SIZE
    }

    fn alloc_page(&mut self) -> Option<VmPage> {
        let req = sys::VM_ALLOC_NOWAIT | sys::VM_ALLOC_NODUMP;
        self.timed(
            |c| &c.alloc_us,
            // SAFETY: a non-sleeping allocation, callable from any thread
            // context (vm_page_alloc_noobj_domain(9) domain by domain; a
            // failure adds nothing to the page daemon's deficit).
            || VmPage::new(unsafe { sys::vtbrs_alloc_page_quiet(req as i32) }),
        )
    }

    fn alloc_run(&mut self, order: u32) -> Option<VmPage> {
        self.timed(|c| &c.alloc_us, || alloc_contig(order, 0..u64::MAX))
    }

    fn free_run(&mut self, first: VmPage, n: usize) {
        self.timed(|c| &c.free_us, || free_pages(first, n));
    }

    fn phys_addr(&self, page: VmPage) -> u64 {
        page.phys()
    }

    fn page_at(&self, phys: u64) -> Option<VmPage> {
        // SAFETY: PHYS_TO_VM_PAGE only looks the address up.
        VmPage::new(unsafe { sys::PHYS_TO_VM_PAGE(phys) })
    }

    fn push_ballooned(&mut self, first: VmPage, n: usize) {
        self.ballooned.push(&mut VmPages, first, n);
    }

    fn pop_ballooned(&mut self, max: usize) -> Option<(VmPage, usize)> {
        self.ballooned.pop(&mut VmPages, max)
    }
}

/// Free blocks for reporting.
pub struct KernelBlocks;

impl BlockMemory for KernelBlocks {
    type Block = VmPage;

    fn alloc_block(&mut self, order: u32, window: core::ops::Range<u64>) -> Option<VmPage> {
        alloc_contig(order, window)
    }

    fn free_block(&mut self, block: VmPage, order: u32) {
        // The host has acknowledged the block, or the device was reset.
        free_pages(block, 1 << order);
    }

    fn block_phys(&self, block: VmPage) -> u64 {
        block.phys()
    }
}

/// Free blocks for hinting, and the blocks hinting holds until the host
/// says DONE, listed through each block's first page like ballooned runs
/// (no memory of our own per block; the order is the run's length).
#[derive(Default)]
pub struct KernelHeld {
    held: RunList<VmPage>,
}

impl BlockMemory for KernelHeld {
    type Block = VmPage;

    fn alloc_block(&mut self, order: u32, window: core::ops::Range<u64>) -> Option<VmPage> {
        alloc_contig(order, window)
    }

    fn free_block(&mut self, block: VmPage, order: u32) {
        // A hinted block may go back whenever the driver likes (virtio 1.2
        // "Free Page Hinting": the device never writes into it, and its
        // content is undefined afterwards; vm_page_free drops PG_ZERO).
        free_pages(block, 1 << order);
    }

    fn block_phys(&self, block: VmPage) -> u64 {
        block.phys()
    }
}

impl HeldBlocks for KernelHeld {
    fn hold(&mut self, block: VmPage, order: u32) {
        self.held.push(&mut VmPages, block, 1 << order);
    }

    fn unhold(&mut self) -> Option<(VmPage, u32)> {
        // A block is listed whole (a power of two), or page by page when
        // its vm_page structures are not consecutive: either way `n` is a
        // power of two.
        let (first, n) = self.held.pop(&mut VmPages, usize::MAX)?;
        Some((first, n.trailing_zeros()))
    }
}

/// Reads the VM counters (never sleeps).
pub fn vm_counters() -> VmCounters {
    let cnt = addr_of!(sys::vm_cnt);
    let mut stamp = 0;
    // SAFETY: vm_cnt is the kernel's; its plain fields are read as the
    // kernel reads them (racy by design, each one word), its counters with
    // counter_u64_fetch(9); the page daemon's request is read by the shim
    // with atomic loads into `stamp`, a local that outlives the call.
    unsafe {
        let word = |f: *const u32| u64::from(f.read_volatile());
        let count = |c: *const sys::counter_u64_t| sys::counter_u64_fetch(c.read());
        let (mut total, mut used) = (0, 0);
        sys::swap_pager_status(&mut total, &mut used);
        VmCounters {
            page_size: PAGE_SIZE,
            page_count: word(addr_of!((*cnt).v_page_count)),
            free: u64::from(sys::vm_free_count()),
            inactive: u64::from(sys::vm_inactive_count()),
            laundry: u64::from(sys::vm_laundry_count()),
            active: u64::from(sys::vm_active_count()),
            wired: count(addr_of!((*cnt).v_wire_count)),
            free_target: word(addr_of!((*cnt).v_free_target)),
            free_reserved: word(addr_of!((*cnt).v_free_reserved)),
            free_min: word(addr_of!((*cnt).v_free_min)),
            inactive_target: word(addr_of!((*cnt).v_inactive_target)),
            swap_in: count(addr_of!((*cnt).v_swappgsin)),
            swap_out: count(addr_of!((*cnt).v_swappgsout)),
            major_faults: count(addr_of!((*cnt).v_io_faults)),
            faults: count(addr_of!((*cnt).v_vm_faults)),
            swap_free: u64::try_from(total - used).unwrap_or(0),
            freed_total: count(addr_of!((*cnt).v_tfree)),
            pd_scanned: count(addr_of!((*cnt).v_pdpages)),
            pd_freed: count(addr_of!((*cnt).v_dfree)),
            pd_request: u64::from(sys::vtbrs_pageout_request(&mut stamp)),
            pd_stamp: u64::from(stamp),
        }
    }
}

/// The end of physical memory (`Maxmem`, in pages, as bytes).
pub fn max_phys() -> u64 {
    // SAFETY: set once at boot.
    let pages = unsafe { addr_of!(sys::Maxmem).read() };
    u64::try_from(pages).unwrap_or(0) * PAGE_SIZE
}

/// Zeroed kernel memory holding `len` u64 words (the reporting bitmap).
pub struct Words {
    ptr: NonNull<u64>,
    len: usize,
}

// SAFETY: the words belong to this value.
unsafe impl Send for Words {}

impl Words {
    pub fn new(len: usize) -> Option<Words> {
        let ptr = NonNull::new(kmalloc(len.checked_mul(8)?).cast::<u64>())?;
        Some(Words { ptr, len })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.len * 8
    }
}

impl AsRef<[u64]> for Words {
    fn as_ref(&self) -> &[u64] {
        // SAFETY: `ptr` points to `len` zero-initialized words we own.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u64]> for Words {
    fn as_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        // SAFETY: allocated by kmalloc in `new`, freed once.
        unsafe { kfree(self.ptr.as_ptr().cast()) }
    }
}
