//! "Available memory" (virtio `VIRTIO_BALLOON_S_AVAIL`) from FreeBSD's VM
//! counters.
//!
//! The spec means what Linux's `si_mem_available()` computes: memory that
//! could be handed to a new workload without swapping, i.e. free memory the
//! kernel does not keep in reserve plus caches it can reclaim cheaply. Linux:
//!
//! ```text
//! avail = free - reserves
//!       + pagecache - min(pagecache / 2, wmark_low)
//!       + reclaimable slab - min(slab / 2, wmark_low)
//! ```
//!
//! FreeBSD analogue used here, all in pages:
//!
//! ```text
//! avail = (free - free_reserved)                        free, less the kernel's reserve
//!       + inactive - min(inactive / 2, free_min)        clean/idle pages the page daemon frees first
//!       + laundry' - min(laundry' / 2, free_min)        laundry' = min(laundry, swap_free): dirty pages
//!                                                       are reclaimable only if there is swap to write them to
//! clamped to [0, page_count]
//! ```
//!
//! Why these pieces: `free - v_free_reserved` mirrors Linux's totalreserve
//! (pages only the kernel's own allocations may use). The inactive queue is
//! FreeBSD's reclaim-first pool, like Linux's file LRU; as in Linux, part of
//! it is assumed to be working set, bounded by the page daemon's wakeup
//! watermark (`v_free_min`, the counterpart of `wmark_low`). Laundry pages are
//! dirty and need swap, so only as many as swap can take count. Active and
//! wired pages never count. The buffer cache is not added: FreeBSD's cache
//! is unified, file data already sits in the page queues (`vfs.bufspace`
//! counts mappings of those pages), and reading it needs the sysctl lock,
//! which the stats interrupt path must not take. Free + inactive alone (what a naive port reports)
//! overstates availability when there is no swap and ignores reserves.

use crate::platform::VmCounters;

/// Estimated available memory, in pages of `vm.page_size`.
pub fn available_pages(vm: &VmCounters) -> u64 {
    let half_capped = |pool: u64| pool - (pool / 2).min(vm.free_min);
    let free = vm.free.saturating_sub(vm.free_reserved);
    let inactive = half_capped(vm.inactive);
    let laundry = half_capped(vm.laundry.min(vm.swap_free));
    free.saturating_add(inactive)
        .saturating_add(laundry)
        .min(vm.page_count)
}

/// Available memory in bytes.
pub fn available_bytes(vm: &VmCounters) -> u64 {
    available_pages(vm).saturating_mul(vm.page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmCounters {
        VmCounters {
            page_size: 4096,
            page_count: 1_000_000,
            free: 100_000,
            free_reserved: 2_000,
            free_min: 6_000,
            inactive: 200_000,
            laundry: 50_000,
            swap_free: 0,
            active: 300_000,
            wired: 100_000,
            ..Default::default()
        }
    }

    #[test]
    fn counts_free_less_reserve_and_reclaimable_inactive() {
        // 98_000 free + (200_000 - 6_000) inactive; laundry needs swap: none.
        assert_eq!(available_pages(&vm()), 98_000 + 194_000);
    }

    #[test]
    fn laundry_counts_only_as_far_as_swap_can_take_it() {
        let mut v = vm();
        v.swap_free = 10_000;
        // min(50_000, 10_000) = 10_000, less min(5_000, 6_000).
        assert_eq!(available_pages(&v), 98_000 + 194_000 + 5_000);
    }

    #[test]
    fn small_pools_keep_half_as_working_set() {
        let mut v = vm();
        v.inactive = 4_000; // half (2_000) < free_min: keep half.
        assert_eq!(available_pages(&v), 98_000 + 2_000);
    }

    #[test]
    fn never_negative_never_above_total() {
        let mut v = vm();
        v.free = 1_000; // below the reserve
        v.inactive = 0;
        assert_eq!(available_pages(&v), 0);
        v.free = 2_000_000;
        assert_eq!(available_pages(&v), v.page_count);
    }

    #[test]
    fn is_less_than_naive_free_plus_inactive() {
        let v = vm();
        assert!(available_pages(&v) < v.free + v.inactive + v.laundry);
        assert_eq!(available_bytes(&v), available_pages(&v) * 4096);
    }
}
