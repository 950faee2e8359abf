//! A simulated virtio balloon device and guest memory for host tests.
//!
//! The device behaves like QEMU's: it keeps its own set of ballooned PFNs,
//! processes a buffer when it returns it to the guest, and records every
//! protocol violation it sees instead of panicking, so tests can assert on
//! them. Time is simulated: waits advance a clock instead of sleeping.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;

use vtballoon::platform::{
    BlockMemory, Device, Error, HeldBlocks, Memory, PhysRange, Token, VmCounters,
};
use vtballoon::protocol::{Features, Queue, PFN_SHIFT};
use vtballoon::runlist::{RunList, RunPages};

/// When the host returns a buffer it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// As soon as the guest waits for it.
    Immediate,
    /// This many simulated milliseconds after it was posted.
    AfterMs(u64),
    /// Never: a stuck host.
    Never,
}

#[derive(Debug)]
struct Posted {
    token: Token,
    data: Vec<u8>,
    ready_at: u64,
}

/// QEMU's free page hint states (`FREE_PAGE_HINT_S_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintStatus {
    Stop,
    Requested,
    Start,
    Done,
}

/// The host side of free page hinting, as QEMU's hw/virtio/virtio-balloon.c
/// does it: `get_free_page_hints` for buffers, `virtio_balloon_get_config`
/// for what the driver reads, `_free_page_start/_stop/_done` for the
/// migration's commands.
#[derive(Debug)]
pub struct HintHost {
    pub status: HintStatus,
    pub cmd_id: u32,
    /// A config change the driver has not been told about yet (the interrupt).
    pub config_pending: bool,
    /// Ids the host issued, and ids whose start buffer it received.
    pub issued: BTreeSet<u32>,
    pub started: BTreeSet<u32>,
    /// Pages clean in the migration's dirty bitmap thanks to hints (a page
    /// the guest writes again leaves the set).
    pub clean: BTreeSet<usize>,
    /// Hinted pages received in START, and outside it (dropped).
    pub hinted_pages: u64,
    pub ignored_pages: u64,
    pub start_buffers: u64,
    pub stop_buffers: u64,
    pub hint_buffers: u64,
    /// Most hint buffers posted and not yet returned.
    pub most_outstanding: usize,
}

impl Default for HintHost {
    fn default() -> Self {
        HintHost {
            status: HintStatus::Stop,
            cmd_id: vtballoon::protocol::hint_cmd::QEMU_MIN,
            config_pending: false,
            issued: BTreeSet::new(),
            started: BTreeSet::new(),
            clean: BTreeSet::new(),
            hinted_pages: 0,
            ignored_pages: 0,
            start_buffers: 0,
            stop_buffers: 0,
            hint_buffers: 0,
            most_outstanding: 0,
        }
    }
}

/// Everything the simulation knows; shared by [`SimDevice`] and [`SimMemory`].
#[derive(Debug)]
pub struct World {
    // Device side.
    pub features: Features,
    pub driver_ok: bool,
    pub num_pages: u32,
    /// Reads of `num_pages` (each one a trap to the host).
    pub target_reads: u64,
    pub actual: u32,
    /// Writes of `actual` (each one a trap to the host).
    pub actual_writes: u64,
    pub push_interval_ms: u32,
    pub ack: Ack,
    pub now_ms: u64,
    pub ballooned: BTreeSet<u32>,
    pending: HashMap<Queue, VecDeque<Posted>>,
    pub violations: Vec<String>,
    pub notifications: u64,
    pub inflate_buffers: u64,
    pub deflate_buffers: u64,
    /// Pages freed so far (`freed_total`) at each deflate post.
    pub freed_at_deflate_post: Vec<u64>,
    /// Tag list of the first statistics buffer; later ones must match.
    pub stats_tags: Option<Vec<u16>>,
    pub last_stats: Vec<(u16, u64)>,
    pub stats_buffers: u64,
    /// Reject tags above 9, like Firecracker.
    pub strict_tags: bool,
    // Guest memory side.
    pub page_size: u64,
    pub total_pages: usize,
    free: VecDeque<usize>,
    allocated: Vec<bool>,
    /// The guest's ballooned runs, linked through the pages' own fields as
    /// the kernel glue links them (the driver's run list itself).
    ballooned_runs: RunList<usize>,
    page_fields: PageFields,
    /// Fail this many allocations from now on.
    pub fail_allocs: usize,
    /// Keep this many pages that alloc_page never hands out (memory "runs low").
    pub reserve: usize,
    pub alloc_calls: u64,
    /// Fail this many posts with QueueFull.
    pub fail_posts: usize,
    /// Most inflate/deflate buffers outstanding at once.
    pub max_outstanding: usize,
    // Free page reporting.
    /// Pages the host dropped (reported or ballooned) and not touched since.
    pub discarded: BTreeSet<usize>,
    /// Pages taken by the reporter (alloc_block) and not yet freed.
    pub reporter_pages: BTreeSet<usize>,
    /// Pages a guest workload holds.
    pub workload: Vec<usize>,
    /// The page daemon's free target ([`World::vm`]).
    pub free_target: u64,
    /// Fewest free pages seen while the reporter took blocks.
    pub free_floor_seen: usize,
    /// Pages freed since boot (`v_tfree`).
    pub freed_total: u64,
    pub reports: u64,
    pub reported_bytes: u64,
    block_cursor: usize,
    pub most_blocks_held: usize,
    /// Hand out free blocks lowest address first instead of round-robin.
    pub address_order: bool,
    /// Largest contiguous run alloc_run hands out (fragmentation); 0: none.
    pub max_run_order: u32,
    /// alloc_run calls, and those that found a run.
    pub run_calls: u64,
    pub runs_given: u64,
    run_cursor: usize,
    // Free page hinting.
    pub hint: HintHost,
    /// Pages the hinter holds (`HeldBlocks::hold`), and its list of blocks.
    pub hint_held: BTreeSet<usize>,
    hint_list: Vec<(usize, u32)>,
}

pub type Shared = Rc<RefCell<World>>;

/// Base physical address of simulated RAM (not zero, to catch PFN mix-ups).
pub const RAM_BASE: u64 = 0x1_0000_0000;

impl World {
    pub fn new(features: Features, total_pages: usize, page_size: u64) -> Shared {
        Rc::new(RefCell::new(World {
            features,
            driver_ok: true,
            num_pages: 0,
            actual: 0,
            push_interval_ms: 0,
            ack: Ack::Immediate,
            now_ms: 0,
            ballooned: BTreeSet::new(),
            pending: HashMap::new(),
            violations: Vec::new(),
            notifications: 0,
            inflate_buffers: 0,
            deflate_buffers: 0,
            freed_at_deflate_post: Vec::new(),
            stats_tags: None,
            last_stats: Vec::new(),
            stats_buffers: 0,
            strict_tags: false,
            page_size,
            total_pages,
            free: (0..total_pages).rev().collect(),
            allocated: vec![false; total_pages],
            ballooned_runs: RunList::new(),
            page_fields: PageFields {
                next: vec![None; total_pages],
                len: vec![0; total_pages],
            },
            fail_allocs: 0,
            reserve: 0,
            alloc_calls: 0,
            target_reads: 0,
            actual_writes: 0,
            fail_posts: 0,
            max_outstanding: 0,
            discarded: BTreeSet::new(),
            reporter_pages: BTreeSet::new(),
            workload: Vec::new(),
            free_target: 0,
            free_floor_seen: usize::MAX,
            freed_total: 0,
            reports: 0,
            reported_bytes: 0,
            block_cursor: 0,
            most_blocks_held: 0,
            address_order: false,
            max_run_order: 8,
            run_calls: 0,
            runs_given: 0,
            run_cursor: 0,
            hint: HintHost::default(),
            hint_held: BTreeSet::new(),
            hint_list: Vec::new(),
        }))
    }

    fn units_per_page(&self) -> u32 {
        (self.page_size >> PFN_SHIFT) as u32
    }

    pub fn pfn_of_page(&self, page: usize) -> u32 {
        ((RAM_BASE + page as u64 * self.page_size) >> PFN_SHIFT) as u32
    }

    fn page_of_pfn(&self, pfn: u32) -> Option<usize> {
        let phys = u64::from(pfn) << PFN_SHIFT;
        let off = phys.checked_sub(RAM_BASE)?;
        let page = (off / self.page_size) as usize;
        (page < self.total_pages).then_some(page)
    }

    /// Pages on the guest's ballooned list, last listed first.
    pub fn guest_list(&self) -> Vec<usize> {
        self.ballooned_runs
            .runs(&self.page_fields)
            .flat_map(|(first, n)| first..first + n)
            .collect()
    }

    /// Buffers posted and not yet returned on `queue`.
    pub fn outstanding(&self, queue: Queue) -> usize {
        self.pending.get(&queue).map_or(0, |q| q.len())
    }

    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Ballooned bytes as the host counts them, in 4 KiB units.
    pub fn host_units(&self) -> u32 {
        self.ballooned.len() as u32
    }

    /// The host returns the pull stats buffer (a stats request).
    pub fn request_stats(&mut self) -> bool {
        let q = self.pending.entry(Queue::Stats).or_default();
        match q.iter_mut().find(|p| p.token == 0) {
            Some(p) => {
                p.ready_at = 0;
                true
            }
            None => false,
        }
    }

    /// A device reset: the host forgets everything in flight and ballooned.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.ballooned.clear();
        self.driver_ok = false;
        // virtio_balloon_device_reset -> virtio_balloon_free_page_stop.
        if self.hint.status != HintStatus::Stop {
            self.hint.status = HintStatus::Stop;
            self.hint.config_pending = true;
        }
    }

    /// The migration starts a hinting round (after a dirty bitmap sync):
    /// `virtio_balloon_free_page_start`. Returns the new id.
    pub fn hint_start(&mut self) -> u32 {
        let h = &mut self.hint;
        h.cmd_id = if h.cmd_id == u32::MAX {
            vtballoon::protocol::hint_cmd::QEMU_MIN
        } else {
            h.cmd_id + 1
        };
        h.issued.insert(h.cmd_id);
        h.status = HintStatus::Requested;
        h.config_pending = true;
        h.cmd_id
    }

    /// Before a bitmap sync: `virtio_balloon_free_page_stop`.
    pub fn hint_stop(&mut self) {
        if self.hint.status != HintStatus::Stop {
            self.hint.status = HintStatus::Stop;
            self.hint.config_pending = true;
        }
    }

    /// The migration is over: `virtio_balloon_free_page_done`.
    pub fn hint_done(&mut self) {
        if self.hint.status != HintStatus::Done {
            self.hint.status = HintStatus::Done;
            self.hint.config_pending = true;
        }
    }

    /// `free_page_hint_cmd_id` as QEMU's `virtio_balloon_get_config` shows
    /// it: the id only while requested, 0 while started (left zeroed).
    pub fn hint_config(&self) -> u32 {
        match self.hint.status {
            HintStatus::Requested => self.hint.cmd_id,
            HintStatus::Done => vtballoon::protocol::hint_cmd::DONE,
            HintStatus::Stop | HintStatus::Start => vtballoon::protocol::hint_cmd::STOP,
        }
    }

    /// The config-change interrupt, if one is pending: the value the driver
    /// reads then.
    pub fn take_hint_config(&mut self) -> Option<u32> {
        if std::mem::take(&mut self.hint.config_pending) {
            Some(self.hint_config())
        } else {
            None
        }
    }

    /// What the host does with a buffer on the free page queue
    /// (`get_free_page_hints`), at once: QEMU's iothread takes it as soon as
    /// it is notified.
    fn process_hint(&mut self, data: &[u8], ranges: bool) {
        if !ranges {
            if data.len() != 4 {
                self.violation(format!("hint command buffer of {} bytes", data.len()));
                return;
            }
            let id = u32::from_le_bytes(data.try_into().unwrap());
            if id == vtballoon::protocol::hint_cmd::STOP {
                self.hint.stop_buffers += 1;
            } else {
                self.hint.start_buffers += 1;
                if !self.hint.issued.contains(&id) {
                    self.violation(format!("start buffer for id {id:#x} never issued"));
                }
                if !self.hint.started.insert(id) {
                    self.violation(format!("start buffer for id {id:#x} sent twice"));
                }
            }
            if self.hint.status == HintStatus::Requested && id == self.hint.cmd_id {
                self.hint.status = HintStatus::Start;
            } else if self.hint.status == HintStatus::Start {
                self.hint.status = HintStatus::Stop;
            }
            return;
        }
        self.hint.hint_buffers += 1;
        for page in self.hint_pages(data) {
            if self.hint.status == HintStatus::Start {
                self.hint.clean.insert(page);
                self.hint.hinted_pages += 1;
            } else {
                self.hint.ignored_pages += 1;
            }
        }
    }

    /// The pages of a hint buffer's ranges.
    fn hint_pages(&self, data: &[u8]) -> Vec<usize> {
        let mut pages = Vec::new();
        for c in data.chunks_exact(16) {
            let addr = u64::from_le_bytes(c[..8].try_into().unwrap());
            let len = u64::from_le_bytes(c[8..].try_into().unwrap());
            let first = ((addr - RAM_BASE) / self.page_size) as usize;
            pages.extend(first..first + (len / self.page_size) as usize);
        }
        pages
    }

    /// A hint covers only memory the hinter holds when it posts it.
    fn check_hint_ranges(&mut self, data: &[u8]) {
        for page in self.hint_pages(data) {
            if !self.hint_held.contains(&page) {
                let what = if self.guest_list().contains(&page) {
                    "ballooned"
                } else if self.reporter_pages.contains(&page) {
                    "being reported"
                } else if self.allocated[page] {
                    "in use"
                } else {
                    "free, not held"
                };
                self.violation(format!("hinted page {page} is {what}"));
            }
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    /// The host consumes a buffer as it returns it.
    fn process(&mut self, queue: Queue, data: &[u8]) {
        match queue {
            Queue::Inflate | Queue::Deflate => {
                if data.len() > 256 * 4 {
                    self.violation(format!("{queue:?} buffer of {} PFNs", data.len() / 4));
                }
                if !data.len().is_multiple_of(4) {
                    self.violation(format!("{queue:?} buffer of {} bytes", data.len()));
                }
                for chunk in data.chunks_exact(4) {
                    let pfn = u32::from_le_bytes(chunk.try_into().unwrap());
                    if let Some(page) = self.page_of_pfn(pfn) {
                        if queue == Queue::Inflate {
                            self.discarded.insert(page);
                        }
                    }
                    if queue == Queue::Inflate {
                        if !self.ballooned.insert(pfn) {
                            self.violation(format!("PFN {pfn:#x} inflated twice"));
                        }
                    } else if !self.ballooned.remove(&pfn) {
                        self.violation(format!("deflate of PFN {pfn:#x} never inflated"));
                    }
                }
            }
            Queue::Stats => {
                if !data.len().is_multiple_of(10) {
                    self.violation(format!("stats buffer of {} bytes", data.len()));
                }
                let entries: Vec<(u16, u64)> = data
                    .chunks_exact(10)
                    .map(|c| {
                        (
                            u16::from_le_bytes([c[0], c[1]]),
                            u64::from_le_bytes(c[2..10].try_into().unwrap()),
                        )
                    })
                    .collect();
                let tags: Vec<u16> = entries.iter().map(|e| e.0).collect();
                if self.strict_tags && tags.iter().any(|&t| t > 9) {
                    self.violation(format!("unknown stats tag in {tags:?}"));
                }
                match &self.stats_tags {
                    None => self.stats_tags = Some(tags),
                    Some(first) if *first != tags => {
                        let msg = format!("stats tag set changed: {first:?} -> {tags:?}");
                        self.violation(msg);
                    }
                    Some(_) => {}
                }
                self.last_stats = entries;
                self.stats_buffers += 1;
            }
            Queue::Reporting => {
                let ranges: Vec<PhysRange> = data
                    .chunks_exact(16)
                    .map(|c| PhysRange {
                        addr: u64::from_le_bytes(c[..8].try_into().unwrap()),
                        len: u64::from_le_bytes(c[8..].try_into().unwrap()),
                    })
                    .collect();
                self.process_report(&ranges);
            }
            _ => {}
        }
    }

    /// The host discards reported ranges; they must be free memory the
    /// reporter holds, never a ballooned or in-use page.
    fn process_report(&mut self, ranges: &[PhysRange]) {
        self.reports += 1;
        for r in ranges {
            self.reported_bytes += r.len;
            let first = (r.addr - RAM_BASE) / self.page_size;
            let n = r.len / self.page_size;
            for page in first as usize..(first + n) as usize {
                if !self.reporter_pages.contains(&page) {
                    let what = if self.guest_list().contains(&page) {
                        "ballooned"
                    } else {
                        "in use"
                    };
                    self.violation(format!("reported page {page} is {what}"));
                }
                self.discarded.insert(page);
            }
        }
    }

    /// The guest's VM counters as the driver would read them: free memory
    /// is the simulated free list, everything else in use is active.
    pub fn vm(&self) -> VmCounters {
        let free = self.free.len() as u64;
        VmCounters {
            page_size: self.page_size,
            page_count: self.total_pages as u64,
            free,
            active: self.total_pages as u64 - free,
            free_target: self.free_target,
            free_min: self.free_target / 4,
            free_reserved: self.free_target / 16,
            freed_total: self.freed_total,
            ..Default::default()
        }
    }

    /// Host RSS in pages: guest memory not discarded.
    pub fn resident(&self) -> usize {
        self.total_pages - self.discarded.len()
    }

    /// A guest workload takes and touches `n` pages.
    pub fn workload_alloc(&mut self, n: usize) -> usize {
        let mut got = 0;
        while got < n {
            let Some(page) = self.free.pop_back() else {
                break;
            };
            self.allocated[page] = true;
            self.discarded.remove(&page);
            self.hint.clean.remove(&page);
            self.workload.push(page);
            got += 1;
        }
        got
    }

    /// The workload takes one particular page (to fragment free memory).
    pub fn workload_pin(&mut self, page: usize) {
        if !self.allocated[page] {
            self.free.retain(|&p| p != page);
            self.allocated[page] = true;
            self.discarded.remove(&page);
            self.workload.push(page);
        }
    }

    /// The workload frees everything it holds.
    pub fn workload_free(&mut self) {
        while let Some(page) = self.workload.pop() {
            self.allocated[page] = false;
            self.free.push_front(page);
            self.freed_total += 1;
        }
    }

    /// PFNs the host still has a claim on: ballooned or in a posted buffer.
    fn host_claims(&self, pfn: u32) -> bool {
        self.ballooned.contains(&pfn)
            || [Queue::Inflate, Queue::Deflate].iter().any(|q| {
                self.pending.get(q).is_some_and(|v| {
                    v.iter().any(|p| {
                        p.data
                            .chunks_exact(4)
                            .any(|c| u32::from_le_bytes(c.try_into().unwrap()) == pfn)
                    })
                })
            })
    }
}

/// The device half of the simulation.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub w: Shared,
    /// The device's copy of the last buffer posted in each slot.
    posted: HashMap<(Queue, Token), Vec<u8>>,
}

impl SimDevice {
    pub fn new(w: Shared) -> Self {
        SimDevice {
            w,
            posted: HashMap::new(),
        }
    }
}

impl Device for SimDevice {
    fn num_pages(&mut self) -> u32 {
        let mut w = self.w.borrow_mut();
        w.target_reads += 1;
        w.num_pages
    }

    fn set_actual(&mut self, actual: u32) {
        self.w.borrow_mut().actual_writes += 1;
        self.w.borrow_mut().actual = actual;
    }

    fn stats_push_interval_ms(&mut self) -> u32 {
        let w = self.w.borrow();
        if w.features.contains(Features::STATS_PUSH) {
            w.push_interval_ms
        } else {
            0
        }
    }

    fn post(&mut self, queue: Queue, token: Token, data: &[u8]) -> Result<(), Error> {
        self.post_buffer(queue, token, data, false)
    }

    fn posted(&self, queue: Queue, token: Token) -> &[u8] {
        self.posted
            .get(&(queue, token))
            .map_or(&[], |v| v.as_slice())
    }

    fn post_ranges(
        &mut self,
        queue: Queue,
        token: Token,
        ranges: &[PhysRange],
    ) -> Result<(), Error> {
        let mut data = Vec::new();
        for r in ranges {
            data.extend_from_slice(&r.addr.to_le_bytes());
            data.extend_from_slice(&r.len.to_le_bytes());
        }
        self.post_buffer(queue, token, &data, true)
    }

    fn wait_used(&mut self, queue: Queue, timeout_ms: u32) -> Result<Token, Error> {
        self.wait_used_sim(queue, timeout_ms)
    }
}

impl SimDevice {
    /// `ranges`: the buffer is guest memory itself (device-writable ranges),
    /// encoded as le64 (addr, len) pairs; otherwise device-readable bytes.
    fn post_buffer(
        &mut self,
        queue: Queue,
        token: Token,
        data: &[u8],
        ranges: bool,
    ) -> Result<(), Error> {
        self.posted.insert((queue, token), data.to_vec());
        let mut w = self.w.borrow_mut();
        if !w.driver_ok {
            w.violation(format!("notification on {queue:?} before DRIVER_OK"));
        }
        if queue.index(w.features).is_none() {
            w.violation(format!("post on absent queue {queue:?}"));
        }
        if w.pending
            .get(&queue)
            .is_some_and(|q| q.iter().any(|p| p.token == token))
        {
            w.violation(format!(
                "token {token} reused on {queue:?} while outstanding"
            ));
        }
        if w.fail_posts > 0 {
            w.fail_posts -= 1;
            return Err(Error::QueueFull);
        }
        w.notifications += 1;
        let ready_at = match (queue, w.ack) {
            // Pull statistics wait for the host to ask; pushes come back at once.
            (Queue::Stats, _) if token == 0 => u64::MAX,
            (_, Ack::Immediate) => w.now_ms,
            (_, Ack::AfterMs(ms)) => w.now_ms + ms,
            (_, Ack::Never) => u64::MAX,
        };
        match queue {
            Queue::Inflate => w.inflate_buffers += 1,
            Queue::Deflate => {
                w.deflate_buffers += 1;
                let freed = w.freed_total;
                w.freed_at_deflate_post.push(freed);
            }
            _ => {}
        }
        if queue == Queue::FreePageHint {
            if ranges {
                w.check_hint_ranges(data);
            }
            // QEMU's iothread takes the buffer as soon as it is notified; a
            // dead host (or a stopped VM's blocked iothread) never does.
            if w.ack != Ack::Never {
                w.process_hint(data, ranges);
            }
        }
        w.pending.entry(queue).or_default().push_back(Posted {
            token,
            data: data.to_vec(),
            ready_at,
        });
        let out = w.outstanding(Queue::Inflate) + w.outstanding(Queue::Deflate);
        w.max_outstanding = w.max_outstanding.max(out);
        let hint_out = w.outstanding(Queue::FreePageHint);
        w.hint.most_outstanding = w.hint.most_outstanding.max(hint_out);
        Ok(())
    }

    fn wait_used_sim(&mut self, queue: Queue, timeout_ms: u32) -> Result<Token, Error> {
        let mut w = self.w.borrow_mut();
        let now = w.now_ms;
        let deadline = now.saturating_add(u64::from(timeout_ms));
        let q = w.pending.entry(queue).or_default();
        let best = q
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.ready_at)
            .map(|(i, p)| (i, p.ready_at));
        match best {
            Some((i, ready_at)) if ready_at <= deadline => {
                let p = q.remove(i).unwrap();
                w.now_ms = now.max(ready_at);
                w.process(queue, &p.data);
                Ok(p.token)
            }
            _ => {
                w.now_ms = deadline;
                Err(Error::Timeout)
            }
        }
    }
}

/// The guest memory half of the simulation. Pages are indices.
#[derive(Debug, Clone)]
pub struct SimMemory(pub Shared);

impl Memory for SimMemory {
    type Page = usize;

    fn page_size(&self) -> u64 {
        self.0.borrow().page_size
    }

    fn alloc_page(&mut self) -> Option<usize> {
        let mut w = self.0.borrow_mut();
        w.alloc_calls += 1;
        if w.fail_allocs > 0 {
            w.fail_allocs -= 1;
            return None;
        }
        if w.free.len() <= w.reserve {
            return None;
        }
        let page = w.free.pop_back()?;
        w.allocated[page] = true;
        Some(page)
    }

    fn alloc_run(&mut self, order: u32) -> Option<usize> {
        let mut w = self.0.borrow_mut();
        w.run_calls += 1;
        let n = 1usize << order;
        // Short of memory: no runs either (and no failure consumed).
        if order > w.max_run_order || w.fail_allocs > 0 || w.free.len() < w.reserve + n {
            return None;
        }
        let runs = w.total_pages / n;
        for i in 0..runs {
            let first = ((w.run_cursor + i) % runs) * n;
            if (first..first + n).all(|p| !w.allocated[p]) {
                w.run_cursor = first / n + 1;
                for p in first..first + n {
                    w.allocated[p] = true;
                }
                w.free.retain(|p| !(first..first + n).contains(p));
                w.runs_given += 1;
                return Some(first);
            }
        }
        None
    }

    fn free_run(&mut self, first: usize, n: usize) {
        for page in first..first + n {
            self.free_page(page);
        }
    }

    fn phys_addr(&self, page: usize) -> u64 {
        RAM_BASE + page as u64 * self.0.borrow().page_size
    }

    fn page_at(&self, phys: u64) -> Option<usize> {
        self.0.borrow().page_of_pfn((phys >> PFN_SHIFT) as u32)
    }

    fn push_ballooned(&mut self, first: usize, n: usize) {
        let mut w = self.0.borrow_mut();
        for page in first..first + n {
            if page >= w.total_pages || !w.allocated[page] {
                w.violation(format!("page {page} listed as ballooned but not allocated"));
            }
            if w.hint_held.contains(&page) {
                w.violation(format!("page {page} ballooned while held for hinting"));
            }
        }
        let w = &mut *w;
        w.ballooned_runs.push(&mut w.page_fields, first, n);
    }

    fn pop_ballooned(&mut self, max: usize) -> Option<(usize, usize)> {
        let w = &mut *self.0.borrow_mut();
        w.ballooned_runs.pop(&mut w.page_fields, max)
    }
}

/// The list fields of each simulated page (`plinks.q` and `pindex` in
/// FreeBSD). Page structures are one array, as within one vm_phys segment.
#[derive(Debug)]
struct PageFields {
    next: Vec<Option<usize>>,
    len: Vec<usize>,
}

impl RunPages for PageFields {
    type Page = usize;
    fn next(&self, first: usize) -> Option<usize> {
        self.next[first]
    }
    fn set_next(&mut self, first: usize, next: Option<usize>) {
        self.next[first] = next;
    }
    fn len(&self, first: usize) -> usize {
        self.len[first]
    }
    fn set_len(&mut self, first: usize, n: usize) {
        self.len[first] = n;
    }
    fn array_nth(&self, first: usize, i: usize) -> usize {
        first + i
    }
    fn phys_nth(&self, first: usize, i: usize) -> Option<usize> {
        (first + i < self.len.len()).then_some(first + i)
    }
}

impl SimMemory {
    /// Frees one page, checking the host no longer claims it.
    pub fn free_page(&mut self, page: usize) {
        let mut w = self.0.borrow_mut();
        if !w.allocated[page] {
            w.violation(format!("page {page} freed twice"));
            return;
        }
        let units = w.units_per_page();
        let first = w.pfn_of_page(page);
        if (first..first + units).any(|pfn| w.host_claims(pfn)) {
            w.violation(format!(
                "page {page} reused before the host acked its deflate"
            ));
        }
        w.allocated[page] = false;
        w.free.push_back(page);
        w.freed_total += 1;
    }
}

/// A device and memory sharing one world.
pub fn sim(features: Features, total_pages: usize) -> (Shared, SimDevice, SimMemory) {
    let w = World::new(features, total_pages, 4096);
    (w.clone(), SimDevice::new(w.clone()), SimMemory(w))
}

/// A small deterministic PRNG (xorshift64*), so property tests need no crate
/// and print a seed that replays a failure.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Free blocks for the reporter: naturally aligned runs of free pages, found
/// round-robin (FreeBSD takes from the head of a free list and frees to its
/// tail, so recently freed blocks come last).
impl BlockMemory for SimMemory {
    type Block = usize;

    fn alloc_block(&mut self, order: u32, window: std::ops::Range<u64>) -> Option<usize> {
        let mut w = self.0.borrow_mut();
        let n = 1usize << order;
        let blocks = w.total_pages / n;
        if w.free.len() < w.reserve + n {
            return None;
        }
        let page_of = |a: u64| (a.saturating_sub(RAM_BASE) / w.page_size).min(w.total_pages as u64);
        let (low, high) = (page_of(window.start) as usize, page_of(window.end) as usize);
        for i in 0..blocks {
            // Lowest address first, as FreeBSD's contiguous search may do:
            // the reporter must make progress even then.
            let b = (w.block_cursor + i) % blocks;
            let first = b * n;
            let inside = first >= low && first + n <= high;
            if inside && (first..first + n).all(|p| !w.allocated[p]) {
                w.block_cursor = if w.address_order { 0 } else { b + 1 };
                for p in first..first + n {
                    w.allocated[p] = true;
                    w.reporter_pages.insert(p);
                }
                w.free.retain(|p| !(first..first + n).contains(p));
                w.free_floor_seen = w.free_floor_seen.min(w.free.len());
                let held = w.reporter_pages.len() / n;
                w.most_blocks_held = w.most_blocks_held.max(held);
                return Some(first);
            }
        }
        None
    }

    fn free_block(&mut self, block: usize, order: u32) {
        let mut w = self.0.borrow_mut();
        for p in block..block + (1usize << order) {
            if !w.reporter_pages.remove(&p) {
                w.violation(format!("block page {p} freed but not held"));
            }
            w.allocated[p] = false;
            w.free.push_front(p);
            w.freed_total += 1;
        }
    }

    fn block_phys(&self, block: usize) -> u64 {
        RAM_BASE + block as u64 * self.0.borrow().page_size
    }
}

/// The hinter's held list: pages move from the blocks the allocator handed
/// out (`reporter_pages`, as `alloc_block` records them) to `hint_held`, and
/// back when unheld, so `free_block` checks them as for the reporter.
impl HeldBlocks for SimMemory {
    fn hold(&mut self, block: usize, order: u32) {
        let mut w = self.0.borrow_mut();
        for p in block..block + (1usize << order) {
            if !w.reporter_pages.remove(&p) {
                w.violation(format!(
                    "page {p} held for hinting but not allocated as a block"
                ));
            }
            w.hint_held.insert(p);
        }
        w.hint_list.push((block, order));
    }

    fn unhold(&mut self) -> Option<(usize, u32)> {
        let mut w = self.0.borrow_mut();
        let (block, order) = w.hint_list.pop()?;
        for p in block..block + (1usize << order) {
            w.hint_held.remove(&p);
            w.reporter_pages.insert(p);
        }
        Some((block, order))
    }
}
