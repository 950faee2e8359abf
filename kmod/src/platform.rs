//! What the balloon logic needs from its environment. The FreeBSD glue
//! implements these traits over the VM and virtqueues; the host tests
//! implement them over a simulated device and guest memory.

use crate::protocol::Queue;

/// Why an operation against the device or the VM did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The host did not return a buffer within the allowed time.
    Timeout,
    /// The virtqueue had no room for the buffer.
    QueueFull,
    /// The device is going away; stop work.
    Stopping,
}

/// Token naming a posted buffer; returned when the host is done with it.
pub type Token = usize;

/// A range of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    pub addr: u64,
    pub len: u64,
}

/// The device side: config space and virtqueues.
///
/// Buffers are copied by [`Device::post`] into memory the device may read for
/// as long as the buffer is posted, so the logic never lends its own memory
/// to the host.
pub trait Device {
    /// Host's requested balloon size, in 4 KiB units (config `num_pages`).
    fn num_pages(&mut self) -> u32;
    /// Tells the host how many 4 KiB units the balloon holds (config `actual`).
    fn set_actual(&mut self, actual: u32);
    /// STATS_PUSH interval from config, in milliseconds (0 = pull only).
    fn stats_push_interval_ms(&mut self) -> u32;
    /// Copies `data` into slot `token` of `queue`, enqueues it (device-readable)
    /// and notifies the host.
    fn post(&mut self, queue: Queue, token: Token, data: &[u8]) -> Result<(), Error>;
    /// The bytes last posted in slot `token` of `queue` (the device's copy),
    /// valid until that slot is posted again.
    fn posted(&self, queue: Queue, token: Token) -> &[u8];
    /// Enqueues guest memory itself, as device-writable ranges, in slot
    /// `token` of `queue` and notifies the host (free page reporting: the
    /// host may discard the ranges' contents). The ranges stay out of the
    /// guest's hands until the buffer comes back.
    fn post_ranges(
        &mut self,
        queue: Queue,
        token: Token,
        ranges: &[PhysRange],
    ) -> Result<(), Error>;
    /// Waits at most `timeout_ms` for the host to return a buffer on `queue`,
    /// and returns its token. Never blocks longer than the timeout.
    fn wait_used(&mut self, queue: Queue, timeout_ms: u32) -> Result<Token, Error>;
}

/// The guest's page allocator and the list of ballooned pages.
///
/// Pages move in runs: `n` pages starting at `first` whose physical
/// addresses are consecutive. Ballooned runs are linked through structures
/// the VM already has (the FreeBSD glue uses the first page's queue linkage
/// and keeps the run length in its otherwise unused `pindex`), so the logic
/// keeps no per-page memory of its own.
pub trait Memory {
    /// Handle of one guest page.
    type Page: Copy;
    /// Bytes per guest page (a multiple of 4096).
    fn page_size(&self) -> u64;
    /// Takes a page out of the VM without sleeping; `None` when memory is short.
    fn alloc_page(&mut self) -> Option<Self::Page>;
    /// Takes a naturally aligned run of `2^order` physically contiguous pages
    /// without sleeping and without reclaiming; `None` when no such run is
    /// free right now. Its pages may later be freed or listed in parts.
    fn alloc_run(&mut self, order: u32) -> Option<Self::Page>;
    /// Gives `n` pages with consecutive physical addresses, from `first` on,
    /// back to the VM.
    fn free_run(&mut self, first: Self::Page, n: usize);
    /// Physical address of the page.
    fn phys_addr(&self, page: Self::Page) -> u64;
    /// The page at a physical address the logic got from [`Memory::phys_addr`]
    /// (`PHYS_TO_VM_PAGE`): lets in-flight buffers hold PFNs only.
    fn page_at(&self, phys: u64) -> Option<Self::Page>;
    /// Adds `n` pages with consecutive physical addresses, from `first` on,
    /// to the ballooned list.
    fn push_ballooned(&mut self, first: Self::Page, n: usize);
    /// Takes up to `max` (≥ 1) pages off the end of the most recently
    /// ballooned run: `(first, n)` with `1 <= n <= max`.
    fn pop_ballooned(&mut self, max: usize) -> Option<(Self::Page, usize)>;
}

/// The guest's VM counters, in pages of [`Memory::page_size`] unless noted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmCounters {
    pub page_size: u64,
    /// Pages managed by the VM (`vm_cnt.v_page_count`).
    pub page_count: u64,
    /// Free pages (`vm_free_count()`).
    pub free: u64,
    /// Inactive queue (`vm_inactive_count()`).
    pub inactive: u64,
    /// Laundry queue: dirty inactive pages waiting for swap (`vm_laundry_count()`).
    pub laundry: u64,
    /// Active queue (`vm_active_count()`).
    pub active: u64,
    /// Wired pages (`vm_wire_count()`).
    pub wired: u64,
    /// Free target the page daemon keeps (`vm_cnt.v_free_target`).
    pub free_target: u64,
    /// Free pages reserved for the kernel (`vm_cnt.v_free_reserved`).
    pub free_reserved: u64,
    /// Minimum free pages (`vm_cnt.v_free_min`).
    pub free_min: u64,
    /// Inactive target (`vm_cnt.v_inactive_target`).
    pub inactive_target: u64,
    /// Pages swapped in / out since boot (`v_swappgsin`, `v_swappgsout`).
    pub swap_in: u64,
    pub swap_out: u64,
    /// Page faults needing I/O (`v_io_faults`) and all faults (`v_vm_faults`).
    pub major_faults: u64,
    pub faults: u64,
    /// Free swap, in pages (0 without swap): bounds how much of the laundry
    /// queue the page daemon can actually reclaim.
    pub swap_free: u64,
    /// Pages freed since boot, by anyone (`v_tfree`): the reporter's only
    /// sign that memory it reported may have been used and freed again.
    pub freed_total: u64,
    /// Pages examined by the page daemon (`v_pdpages`).
    pub pd_scanned: u64,
    /// Pages freed by the page daemon (`v_dfree`).
    pub pd_freed: u64,
    /// Pages the page daemon's controller asks for in the interval under
    /// way (0 once it has passed). Each of its passes that frees none of
    /// them counts toward an OOM kill.
    pub pd_request: u64,
    /// When that interval started (kernel ticks): the same request is seen
    /// at every look within it.
    pub pd_stamp: u64,
}

/// Free blocks of contiguous guest memory, for free page reporting.
pub trait BlockMemory {
    /// Handle of one block.
    type Block: Copy;
    /// Takes a free, naturally aligned block of `2^order` pages lying within
    /// physical addresses `window` out of the free lists, without sleeping
    /// and without reclaiming: only memory that is free right now. `None`
    /// when there is none.
    fn alloc_block(&mut self, order: u32, window: core::ops::Range<u64>) -> Option<Self::Block>;
    /// Gives a block back to the free lists.
    fn free_block(&mut self, block: Self::Block, order: u32);
    /// Physical address of the block's first byte.
    fn block_phys(&self, block: Self::Block) -> u64;
}

/// Blocks kept out of the free lists for a long, unbounded time: free page
/// hinting holds every block it hinted until the host says DONE (thousands
/// of blocks for a large idle guest). No memory of the driver's own: the
/// kernel links a held block through its first page's queue linkage, with
/// its order in that page's otherwise unused `pindex`, as for ballooned runs.
/// A list of its own, apart from [`BlockMemory::park`], which the reporter
/// uses during a scan.
pub trait HeldBlocks: BlockMemory {
    /// Adds an allocated block of `2^order` pages to the held list.
    fn hold(&mut self, block: Self::Block, order: u32);
    /// Takes the most recently held block off the list (it stays
    /// allocated): `(block, order)`.
    fn unhold(&mut self) -> Option<(Self::Block, u32)>;
}
