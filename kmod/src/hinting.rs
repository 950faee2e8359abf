//! Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT, feature bit 3): during
//! a live migration the guest tells the host which pages are free, so the
//! host does not copy them.
//!
//! # The protocol, as the peers implement it
//!
//! Read from QEMU `hw/virtio/virtio-balloon.c` (qemu/qemu at commit
//! d1c81c34, a 7.x-era revision: `sysemu/` headers, three-argument
//! `virtio_init`; this machine runs Debian's QEMU 7.2), QEMU
//! `migration/ram.c` (`qemu_guest_free_page_hint`: only while a migration is
//! set up or active), Linux `drivers/virtio/virtio_balloon.c`
//! (torvalds/linux, the MAX_PAGE_ORDER era, 6.8+) and the virtio 1.2 spec
//! (oasis-tcs/virtio-spec `device-types/balloon/description.tex`, "Free Page
//! Hinting" and "Page Poison").
//!
//! - **Config.** `free_page_hint_cmd_id` is the le32 at config offset 8
//!   (`protocol::config_offset::FREE_PAGE_HINT_CMD_ID`); Linux reads it with
//!   `virtio_cread_le` whatever the transport (`virtio_balloon_cmd_id_received`).
//!   QEMU's `virtio_balloon_get_config` shows the round's id only while the
//!   round is *requested*, `VIRTIO_BALLOON_CMD_ID_STOP` (0) in its STOP state,
//!   `VIRTIO_BALLOON_CMD_ID_DONE` (1) in DONE, and also 0 while the round has
//!   *started* (the field is left zeroed in the START state). So the field must
//!   be read only when the host signals a change: every state change goes with
//!   `virtio_notify_config` (`virtio_balloon_free_page_start`, `_stop`,
//!   `_done`), i.e. a config-change interrupt. Linux reads it only then and
//!   caches it (`config_read_bitmap`, `cmd_id_received_cache`). A config
//!   interrupt for another reason during a round (a new balloon target,
//!   `virtio_balloon_to_target`) makes the driver read 0 and end its round,
//!   in Linux and here alike; QEMU starts the next round at its next bitmap
//!   sync. [`Hinter::config_changed`] is that cache: the glue calls it from
//!   its config-change handler with the value just read.
//! - **Ids.** QEMU starts at `VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN`
//!   (0x8000_0000) and increments before each round (`_free_page_start`), so
//!   the first id is 0x8000_0001; after `UINT_MAX` it goes back to the minimum.
//!   The spec: the device does not reuse an id before it got the driver's
//!   STOP for it; the driver sends an id's start buffer at most once.
//! - **When.** QEMU's precopy notifier (`virtio_balloon_free_page_hint_notify`)
//!   stops the round before each dirty bitmap sync
//!   (PRECOPY_NOTIFY_BEFORE_BITMAP_SYNC → STOP) and starts a new one after it
//!   (AFTER_BITMAP_SYNC → new id) while the VM runs; after the last sync, with
//!   the VM stopped, and at cleanup (completed, failed, cancelled) it says
//!   DONE. Nothing happens with postcopy enabled (`migrate_postcopy_ram()`).
//!   A device reset (`virtio_balloon_device_reset`) sets STOP.
//! - **The free page queue** comes after inflate, deflate and stats (if
//!   negotiated), before reporting (`protocol::Queue::FreePageHint`; Linux's
//!   `enum virtio_balloon_vq`, QEMU's `virtio_add_queue` order); QEMU makes it
//!   `VIRTQUEUE_MAX_SIZE` (1024) entries. QEMU creates its queues by what it
//!   *offers*, not by what is negotiated (`virtio_balloon_device_realize`:
//!   stats always, the free page queue whenever `free-page-hint=on`), so a
//!   driver that declines an offered FREE_PAGE_HINT but numbers its queues by
//!   negotiated features, as this one does, posts its free page reports on
//!   QEMU's free page queue, where they are acknowledged and ignored: accept
//!   FREE_PAGE_HINT whenever offered (`protocol::with_queue_features`), as
//!   Linux does. A round on the queue is: one *output*
//!   buffer of exactly 4 bytes holding the round's id (le32 with VERSION_1,
//!   guest-native for legacy; `send_cmd_id_start`), then free memory as
//!   device-writable *input* buffers (Linux: one 4 MiB block per buffer,
//!   `get_free_page_and_send`; QEMU takes every `in_sg` entry of a buffer),
//!   then one output buffer holding STOP (`send_cmd_id_stop`) when the driver
//!   has nothing more to give. QEMU's `get_free_page_hints`: an output buffer
//!   that is not 4 bytes is a device error ("received an incorrect cmd id"); in
//!   the REQUESTED state an output buffer with the current id moves it to
//!   START; in START any output buffer moves it to STOP; input buffers count
//!   only in START (each entry goes to `qemu_guest_free_page_hint`, which clears
//!   those pages in the migration dirty bitmap and in the memory region's dirty
//!   log); every buffer is returned with used length 0 and nothing written.
//!   A page the guest writes after the hint is dirtied again and sent again,
//!   which is why hinting is safe.
//! - **The iothread.** `free-page-hint=on` needs `iothread=` ("'free-page-hint'
//!   requires 'iothread' to be set", `virtio_balloon_device_realize`). A
//!   notification on the queue schedules a bottom half in that iothread
//!   (`virtio_balloon_handle_free_page_vq`), which pops buffers with the queue's
//!   notifications off and, while the round is in START, keeps polling the
//!   queue (`virtio_ballloon_get_free_page_hints`): the host spends a CPU for
//!   the length of a round. While the VM is stopped the iothread blocks
//!   (`block_iothread`, `virtio_balloon_set_status`).
//! - **A slow guest.** QEMU never waits for the guest: hints that arrive after
//!   the migration thread sent a page save nothing in that pass, hints that
//!   arrive after STOP are dropped, and the migration goes on whatever the
//!   guest does. The whole benefit is what the guest hints before the first
//!   pass reaches those pages.
//! - **Holding and DONE.** Linux holds every block it hinted on a list
//!   (`free_page_list`) across rounds and frees them all on DONE
//!   (`return_free_pages_to_mm(vb, ULONG_MAX)` in `report_free_page_func`),
//!   or earlier through its shrinker under memory pressure
//!   (`virtio_balloon_shrinker_scan`), and on remove before resetting the
//!   device (`remove_common`). The spec lets the driver free hinted pages at
//!   any time, even before the device used the buffer, as long as it treats
//!   their content as uninitialized.
//! - **How much.** Linux takes `MAX_PAGE_ORDER` blocks (4 MiB on x86) with
//!   `__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC` until the allocation
//!   fails, i.e. every free block of that size, keeping one queue entry for
//!   the STOP buffer and freeing a block at once when the queue is full.
//! - **PAGE_POISON** (bit 4, QEMU's `page-poison` defaults to on). The spec: a
//!   driver that does not initialize freed pages rejects it. QEMU uses
//!   `poison_val` only to skip discarding reported pages
//!   (`virtio_balloon_handle_report`); hinting ignores it. Linux drops
//!   PAGE_POISON unless it poisons or zeroes freed pages
//!   (`virtballoon_validate`). FreeBSD does neither, so this driver never
//!   negotiates PAGE_POISON, never writes `poison_val`, and hinting and
//!   reporting both work with it off.
//!
//! QEMU 7.2 on this machine offers the device (`qemu-system-x86_64 -device
//! virtio-balloon-pci,help`): `free-page-hint` (default off), `iothread`,
//! `page-poison` (default on), `free-page-reporting`, `deflate-on-oom`.
//!
//! # Policy here, and why
//!
//! - **Blocks** of `2^order` pages, default order 10 (4 MiB, Linux's block),
//!   falling back one order at a time down to `min_order` (5, 128 KiB) when
//!   no block of the size is free, and staying at the smaller size for the
//!   rest of the round. Taken with the same non-sleeping, non-reclaiming
//!   allocation as free page reporting ([`crate::platform::BlockMemory`]):
//!   only memory that is free right now. FreeBSD's buddy allocator merges up
//!   to 2^12 pages (`VM_NFREEORDER` 13 on amd64), so 4 MiB blocks exist
//!   wherever memory is idle; free pages inside partly used superpage
//!   reservations are not on the free lists and cannot be hinted (nor
//!   reported).
//! - **Bound.** Linux takes everything. FreeBSD's page daemon wakes below 90%
//!   of `v_free_target` (`vmd_pageout_wakeup_thresh`, sys/vm/vm_pageout.c)
//!   and `v_free_target` is about 2% of RAM. A block is taken only while free
//!   memory stays above twice the free target after taking it (the reporter's
//!   floor); while blocks are held and free memory falls below 1.5 times the
//!   free target, blocks are given back until it is above twice the target
//!   again plus one batch. So the guest never runs its page daemon because
//!   of hinting, and holds at most free memory less about 4% of RAM.
//! - **Batching.** Up to [`MAX_BATCH`] blocks (128 MiB at order 10) per input
//!   buffer, each block one scatter-gather entry, up to `slots` buffers in
//!   flight; one [`Hinter::step`] posts one buffer, so the caller can look at
//!   the host's next command between buffers. The start and the stop buffer
//!   have slots of their own (tokens [`TOKEN_START`], [`TOKEN_STOP`]).
//! - **Rounds.** A new id starts a round: its start buffer, then buffers of
//!   blocks, then STOP when no more can be taken. STOP from the host ends the
//!   round (our STOP buffer, as Linux does), keeping what is held. A new id
//!   while a round runs (the host's STOP and next id coalesced into one read)
//!   ends the old round with STOP and starts the new one; held blocks stay
//!   held and are not hinted again: nobody wrote them, so the host's bitmap
//!   still has them clean. An id is never started twice.
//! - **DONE** gives every held block back at once. So do a device reset
//!   ([`Hinter::release`]) and, if the host never says DONE, `hold_max_ms`
//!   after the last round ended (a host that lost track must not keep the
//!   guest's memory forever; the spec allows freeing hinted pages any time).
//! - **Pressure** (vm_lowmem, which the lowmem path passes on to
//!   [`Hinter::pressure`] before deflating the balloon): everything held is
//!   given back at once, the running round ends at the next step, and no new
//!   round takes memory for `pressure_cooldown_ms`; a round id that arrived
//!   meanwhile is started after the cooldown if it is still current.
//! - **Free page reporting** (QEMU allows both features). Both take free
//!   blocks. While a round runs or blocks are held, the reporter pauses
//!   ([`Hinter::reporting_paused`]): the hinter keeps free memory at its floor,
//!   where the reporter, which wants twice the free target free, would find
//!   nothing anyway, and a reported block is one the hinter cannot hint.
//!   The reporter also pauses from the host's first round id to DONE (a
//!   migration under way; bounded by `hold_max_ms` if DONE never comes):
//!   QEMU discards reported pages even during precopy (safe: a page
//!   discarded after it was sent is free, and a later write is tracked),
//!   but a block the reporter holds is one the hinter cannot hint, and a
//!   discard in the middle of a round only costs the host. (Guests seen
//!   corrupted after migrations on this machine were QEMU 7.2's lost TCG
//!   writes, with either driver: see the VM harness, boots.rs.) Memory
//!   reported before the migration is already discarded on the host and
//!   migrates as zero pages, cheaply, hinted or not; after DONE the blocks
//!   the hinter gives back are reported again as usual.
//! - **Freed content.** Freed hinted blocks must not keep `PG_ZERO` (their
//!   content is undefined on the destination): the kernel glue frees them
//!   with `vm_page_free`, as it does reported blocks. A hinted block freed
//!   while its buffer is still with the host is allowed (spec, and QEMU never
//!   writes into it): the glue must not treat posted hint ranges as owned by
//!   the device the way reported ranges are.
//!
//! Counters (guest pages unless named otherwise) are in [`HintCounters`].

use core::ops::Deref;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::counters::{Counter, Gauge, Owned};
use crate::platform::{Device, HeldBlocks, PhysRange, Token, VmCounters};
use crate::protocol::{hint_cmd, hint_cmd_bytes, HintCmd, Queue};

/// Most blocks in one hint buffer (one scatter-gather list): the glue's
/// range buffers hold as many as the reporter's.
pub const MAX_BATCH: usize = crate::reporting::MAX_BATCH;
/// Slot of the output buffer that opens a round.
pub const TOKEN_START: Token = 0;
/// Slot of the output buffer that closes a round.
pub const TOKEN_STOP: Token = 1;
/// Slots of hint buffers are `FIRST_HINT_TOKEN..FIRST_HINT_TOKEN + slots`.
pub const FIRST_HINT_TOKEN: Token = 2;
/// Most hint buffers in flight.
pub const MAX_SLOTS: usize = 8;

/// Knobs of the hinting policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Preferred block size is `2^order` guest pages (10: 4 MiB on amd64).
    pub order: u32,
    /// Smallest block size tried when larger ones run out.
    pub min_order: u32,
    /// Blocks per hint buffer, 1..=[`MAX_BATCH`].
    pub batch_blocks: usize,
    /// Hint buffers in flight, 1..=[`MAX_SLOTS`].
    pub slots: usize,
    /// Longest wait for the host to return a hint buffer when every slot is
    /// in use.
    pub host_timeout_ms: u32,
    /// Held blocks go back this long after the last round ended if the host
    /// never says DONE.
    pub hold_max_ms: u64,
    /// No memory is taken for this long after vm_lowmem.
    pub pressure_cooldown_ms: u64,
    /// While blocks are held, the caller steps at least this often so free
    /// memory is watched.
    pub check_ms: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            order: 10,
            min_order: 5,
            batch_blocks: MAX_BATCH,
            slots: 4,
            host_timeout_ms: 5_000,
            hold_max_ms: 600_000,
            pressure_cooldown_ms: 10_000,
            check_ms: 1_000,
        }
    }
}

/// Counters for sysctl.
#[derive(Debug, Default)]
pub struct HintCounters {
    /// Rounds started (a start buffer sent for a new command id).
    pub rounds: Counter,
    /// Pages hinted to the host, all rounds.
    pub hinted_pages: Counter,
    /// Pages held right now (hinted, not yet given back).
    pub held_pages: Gauge,
    /// Pages given back under memory pressure (vm_lowmem) or because free
    /// memory fell low while they were held.
    pub pressure_pages: Counter,
    /// Times pages were given back under pressure or low memory.
    pub pressure_events: Counter,
    /// Pages given back on DONE.
    pub done_pages: Counter,
    /// Pages given back because the host never said DONE (`hold_max_ms`).
    pub expired_pages: Counter,
    /// Hint buffers posted.
    pub buffers: Counter,
    /// Waits for the host that ran out of time.
    pub host_timeouts: Counter,
    /// Buffers that could not be posted.
    pub errors: Counter,
}

/// What a config-change interrupt changed, from `(num_pages,
/// free_page_hint_cmd_id)` as read at the interrupt before and now: whether
/// it is (also) for the balloon's size. QEMU notifies a config change at
/// every hinting state change (`virtio_balloon_free_page_start`, `_stop`,
/// `_done`: a new id, STOP, DONE, several per migration), and the balloon
/// thread takes a config change for the host speaking about its target
/// (WANTSIZE): it would move back to the target, undoing a deflate done for
/// memory pressure, at every hinting round. So a change of the command id
/// alone is hinting's; anything else (a new target, or nothing visible
/// changed: the host repeated its target) is the balloon's. A repeated
/// target that coincides with a hinting change in one interrupt is taken
/// for hinting's alone.
pub fn config_for_balloon(before: (u32, u32), now: (u32, u32)) -> bool {
    now.0 != before.0 || now.1 == before.1
}

/// What the caller should do after a [`Hinter::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do until the host changes the command id.
    Idle,
    /// A round is under way: step again now.
    Now,
    /// Blocks are held, or a round waits out a pressure cooldown: step again
    /// within this many milliseconds (or sooner, on a config change).
    After(u32),
}

/// The free page hinter. Its counters are reached through `C` (see
/// [`crate::counters`]): kept inside by default, in the driver state in the
/// kernel.
#[derive(Debug)]
pub struct Hinter<C = Owned<HintCounters>> {
    policy: Policy,
    page_size: u64,
    /// The host's command id as last read from config (the config-change
    /// handler writes it without the hinter's lock).
    received: AtomicU32,
    /// The id of the round under way (its start buffer sent, no STOP yet).
    active: Option<u32>,
    /// The last id a round was started (or refused) for: never started again.
    last_id: Option<u32>,
    /// Order of the blocks being taken in the current round.
    order: u32,
    /// Pages held (all rounds).
    held: u64,
    /// Bit `t` set: token `t` is with the host.
    outstanding: u32,
    /// A pressure event ended the round; STOP goes out at the next step.
    stop_pending: bool,
    pressure_until_ms: u64,
    /// When a round last started or ended, for `hold_max_ms`.
    last_round_ms: u64,
    /// The host sent a round id since the last DONE or reset: a migration
    /// is under way (QEMU sends DONE when it ends, completed or not).
    migrating: bool,
    /// Off: rounds are followed (for the reporter's pause) but none started.
    enabled: bool,
    counters: C,
}

impl Hinter {
    pub fn new(policy: Policy, page_size: u64) -> Self {
        Hinter::with_counters(policy, page_size, Owned(HintCounters::default()))
    }
}

impl<C: Deref<Target = HintCounters>> Hinter<C> {
    /// A hinter counting through `counters`.
    pub fn with_counters(mut policy: Policy, page_size: u64, counters: C) -> Self {
        policy.batch_blocks = policy.batch_blocks.clamp(1, MAX_BATCH);
        policy.slots = policy.slots.clamp(1, MAX_SLOTS);
        policy.min_order = policy.min_order.min(policy.order);
        Hinter {
            policy,
            page_size,
            received: AtomicU32::new(hint_cmd::STOP),
            active: None,
            last_id: None,
            order: policy.order,
            held: 0,
            outstanding: 0,
            stop_pending: false,
            pressure_until_ms: 0,
            last_round_ms: 0,
            migrating: false,
            enabled: true,
            counters,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn counters(&self) -> &HintCounters {
        &self.counters
    }

    /// The config-change handler's part: the value of
    /// `free_page_hint_cmd_id` it just read (little-endian on the wire).
    /// Read it only on a config change (see the module notes: QEMU shows 0
    /// while a round runs).
    pub fn config_changed(&self, cmd_id: u32) {
        self.received.store(cmd_id, Ordering::Relaxed);
    }

    /// Switches hinting on or off (the `hint_enabled` setting). Off, a new
    /// round id is acknowledged by nothing (QEMU goes on without hints: it
    /// never waits for the guest) and no memory is taken; a round under way
    /// ends at the next step; what is held stays held until DONE, pressure
    /// or expiry. The reporter still pauses during the migration.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The host's command as last received.
    pub fn command(&self) -> HintCmd {
        HintCmd::from_config(self.received.load(Ordering::Relaxed))
    }

    /// The id of the round under way, if any.
    pub fn active(&self) -> Option<u32> {
        self.active
    }

    /// Pages held now.
    pub fn held_pages(&self) -> u64 {
        self.held
    }

    /// True while a migration is under way (from the host's first round id
    /// to DONE, at most `hold_max_ms` after the last round), a round runs or
    /// hinted blocks are held: the free page reporter should not take blocks
    /// then.
    pub fn reporting_paused(&self) -> bool {
        self.migrating || self.active.is_some() || self.held > 0
    }

    /// Free memory the hinter leaves alone: twice the page daemon's target.
    fn floor(vm: &VmCounters) -> u64 {
        vm.free_target.saturating_mul(2)
    }

    /// Below this, held blocks go back: 1.5 times the free target, above the
    /// page daemon's wakeup threshold (0.9 times).
    fn low_water(vm: &VmCounters) -> u64 {
        vm.free_target.saturating_add(vm.free_target / 2)
    }

    fn slot_bit(token: Token) -> u32 {
        1 << token
    }

    fn in_flight(&self, token: Token) -> bool {
        self.outstanding & Self::slot_bit(token) != 0
    }

    /// Collects every buffer the host has returned, without waiting.
    fn reap<D: Device>(&mut self, dev: &mut D) {
        while self.outstanding != 0 {
            match dev.wait_used(Queue::FreePageHint, 0) {
                Ok(t) if t < 32 => self.outstanding &= !Self::slot_bit(t),
                _ => break,
            }
        }
    }

    fn free_slot(&self) -> Option<Token> {
        (FIRST_HINT_TOKEN..FIRST_HINT_TOKEN + self.policy.slots).find(|&t| !self.in_flight(t))
    }

    /// Posts a 4-byte command buffer in `token`'s slot.
    fn post_cmd<D: Device>(&mut self, dev: &mut D, token: Token, id: u32) -> bool {
        if self.in_flight(token) {
            // The host never used the last one: the queue is stuck.
            self.counters.errors.inc();
            return false;
        }
        match dev.post(Queue::FreePageHint, token, &hint_cmd_bytes(id)) {
            Ok(()) => {
                self.outstanding |= Self::slot_bit(token);
                true
            }
            Err(_) => {
                self.counters.errors.inc();
                false
            }
        }
    }

    /// Ends the round under way with a STOP buffer.
    fn end_round<D: Device>(&mut self, dev: &mut D, now_ms: u64) {
        if self.active.take().is_some() {
            self.post_cmd(dev, TOKEN_STOP, hint_cmd::STOP);
            self.last_round_ms = now_ms;
        }
        self.stop_pending = false;
    }

    fn start_round<D: Device>(&mut self, dev: &mut D, id: u32, now_ms: u64) {
        self.last_id = Some(id);
        self.last_round_ms = now_ms;
        if self.post_cmd(dev, TOKEN_START, id) {
            self.active = Some(id);
            self.order = self.policy.order;
            self.counters.rounds.inc();
        }
    }

    /// What to return when no round is under way.
    fn resting(&self, now_ms: u64) -> Next {
        let waiting_id = matches!(self.command(), HintCmd::Id(id) if Some(id) != self.last_id);
        if waiting_id && now_ms < self.pressure_until_ms {
            let left = self.pressure_until_ms - now_ms;
            let ms = u32::try_from(left).unwrap_or(u32::MAX);
            return Next::After(ms.min(self.policy.check_ms).max(1));
        }
        if self.held > 0 {
            Next::After(self.policy.check_ms)
        } else {
            Next::Idle
        }
    }

    /// One step: follow the host's command, watch memory while holding, and
    /// during a round post one buffer of free blocks. `vm` is read just
    /// before; `now_ms` is monotonic.
    pub fn step<D: Device, M: HeldBlocks>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        vm: &VmCounters,
        now_ms: u64,
    ) -> Next {
        self.reap(dev);
        if self.stop_pending || (!self.enabled && self.active.is_some()) {
            self.end_round(dev, now_ms);
        }
        match self.command() {
            HintCmd::Done => {
                self.migrating = false;
                self.end_round(dev, now_ms);
                let n = self.give_back(mem, u64::MAX);
                self.counters.done_pages.add(n);
            }
            HintCmd::Stop => self.end_round(dev, now_ms),
            HintCmd::Id(id) if self.active == Some(id) => {}
            HintCmd::Id(id) => {
                // A new id: the old round (if the host's STOP was missed)
                // ends first.
                self.end_round(dev, now_ms);
                if Some(id) != self.last_id {
                    self.migrating = true;
                    if !self.enabled {
                        // Refused: never started, later either.
                        self.last_id = Some(id);
                        self.last_round_ms = now_ms;
                    } else if now_ms >= self.pressure_until_ms {
                        self.start_round(dev, id, now_ms);
                    }
                }
            }
        }
        // Free memory fell low while blocks are held: give some back.
        if self.held > 0 && vm.free < Self::low_water(vm) {
            let want = Self::floor(vm)
                .saturating_sub(vm.free)
                .saturating_add(self.batch_pages());
            let n = self.give_back(mem, want);
            self.counters.pressure_pages.add(n);
            self.counters.pressure_events.inc();
            self.end_round(dev, now_ms);
            return self.resting(now_ms);
        }
        if self.active.is_none() {
            if now_ms.saturating_sub(self.last_round_ms) >= self.policy.hold_max_ms {
                // No DONE came: the host lost track of its migration.
                self.migrating = false;
                if self.held > 0 {
                    let n = self.give_back(mem, u64::MAX);
                    self.counters.expired_pages.add(n);
                }
            }
            return self.resting(now_ms);
        }
        self.hint_batch(dev, mem, vm, now_ms)
    }

    fn batch_pages(&self) -> u64 {
        (self.policy.batch_blocks as u64) << self.policy.order
    }

    /// Takes up to one batch of free blocks, holds them and posts them.
    fn hint_batch<D: Device, M: HeldBlocks>(
        &mut self,
        dev: &mut D,
        mem: &mut M,
        vm: &VmCounters,
        now_ms: u64,
    ) -> Next {
        let token = match self.free_slot() {
            Some(t) => t,
            None => match dev.wait_used(Queue::FreePageHint, self.policy.host_timeout_ms) {
                Ok(t) if t < 32 => {
                    self.outstanding &= !Self::slot_bit(t);
                    match self.free_slot() {
                        Some(t) => t,
                        // The host returned a command buffer: try again.
                        None => return Next::Now,
                    }
                }
                _ => {
                    // A host that does not take hints: the round ends, what
                    // is held stays held until DONE, pressure or expiry.
                    self.counters.host_timeouts.inc();
                    self.end_round(dev, now_ms);
                    return self.resting(now_ms);
                }
            },
        };
        let mut ranges = [PhysRange { addr: 0, len: 0 }; MAX_BATCH];
        let mut n = 0;
        let mut pages = 0u64;
        let floor = Self::floor(vm);
        while n < self.policy.batch_blocks {
            let block_pages = 1u64 << self.order;
            let free_after = vm.free.saturating_sub(pages + block_pages);
            if free_after <= floor {
                break;
            }
            match mem.alloc_block(self.order, 0..u64::MAX) {
                Some(b) => {
                    ranges[n] = PhysRange {
                        addr: mem.block_phys(b),
                        len: self.page_size << self.order,
                    };
                    mem.hold(b, self.order);
                    n += 1;
                    pages += block_pages;
                }
                None if self.order > self.policy.min_order => self.order -= 1,
                None => break,
            }
        }
        self.held += pages;
        self.counters.held_pages.set(self.held);
        if n == 0 {
            // Nothing more can be taken: the round is complete.
            self.end_round(dev, now_ms);
            return self.resting(now_ms);
        }
        match dev.post_ranges(Queue::FreePageHint, token, &ranges[..n]) {
            Ok(()) => {
                self.outstanding |= Self::slot_bit(token);
                self.counters.buffers.inc();
                self.counters.hinted_pages.add(pages);
                Next::Now
            }
            Err(_) => {
                // Not hinted: the blocks just taken (the last n held) go back.
                self.counters.errors.inc();
                for _ in 0..n {
                    if let Some((b, order)) = mem.unhold() {
                        mem.free_block(b, order);
                        self.held = self.held.saturating_sub(1 << order);
                    }
                }
                self.counters.held_pages.set(self.held);
                self.end_round(dev, now_ms);
                self.resting(now_ms)
            }
        }
    }

    /// Gives held blocks back to the free lists, most recent first, until at
    /// least `pages` went back or none is held. Returns the pages freed.
    fn give_back<M: HeldBlocks>(&mut self, mem: &mut M, pages: u64) -> u64 {
        let mut freed = 0u64;
        while freed < pages {
            let Some((b, order)) = mem.unhold() else {
                break;
            };
            mem.free_block(b, order);
            freed += 1 << order;
        }
        self.held = self.held.saturating_sub(freed);
        self.counters.held_pages.set(self.held);
        freed
    }

    /// Memory pressure (vm_lowmem): gives every held block back at once and
    /// ends the round under way at the next step; no memory is taken for
    /// `pressure_cooldown_ms`. Returns the pages freed.
    pub fn pressure<M: HeldBlocks>(&mut self, mem: &mut M, now_ms: u64) -> u64 {
        let n = self.give_back(mem, u64::MAX);
        self.counters.pressure_pages.add(n);
        self.counters.pressure_events.inc();
        self.pressure_until_ms = now_ms.saturating_add(self.policy.pressure_cooldown_ms);
        if self.active.is_some() {
            self.stop_pending = true;
        }
        n
    }

    /// After a device reset (detach, or re-initialization): the host forgot
    /// every buffer; every held block goes back and no round is under way.
    /// Returns the pages freed.
    pub fn release<M: HeldBlocks>(&mut self, mem: &mut M) -> u64 {
        self.outstanding = 0;
        self.active = None;
        self.stop_pending = false;
        self.migrating = false;
        self.received.store(hint_cmd::STOP, Ordering::Relaxed);
        self.give_back(mem, u64::MAX)
    }
}
