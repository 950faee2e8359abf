//! Micro-benchmark of the driver logic on the host, so regressions show up
//! without a VM: `cargo bench -p vtballoon --bench logic`. Prints figures;
//! asserts nothing about speed.
//!
//! The device acks at once and memory is a plain free stack, so the numbers
//! are the logic's own cost per page (PFN packing, slot bookkeeping, list
//! handling), an upper bound on what it adds to a kernel inflate.

use std::time::Instant;

use vtballoon::balloon::{Balloon, Step, Tunables};
use vtballoon::platform::{Device, Error, Memory, PhysRange, Token, VmCounters};
use vtballoon::protocol::{Features, Queue};
use vtballoon::stats::Stats;

/// Returns every buffer at once; remembers nothing but counts.
#[derive(Default)]
struct FastDevice {
    target: u32,
    used: Vec<(Queue, Token)>,
    posts: u64,
    bufs: Vec<Vec<u8>>,
}

impl Device for FastDevice {
    fn num_pages(&mut self) -> u32 {
        self.target
    }
    fn set_actual(&mut self, _: u32) {}
    fn stats_push_interval_ms(&mut self) -> u32 {
        0
    }
    fn post(&mut self, queue: Queue, token: Token, data: &[u8]) -> Result<(), Error> {
        self.posts += 1;
        if self.bufs.len() <= token {
            self.bufs.resize(token + 1, Vec::new());
        }
        self.bufs[token].clear();
        self.bufs[token].extend_from_slice(data);
        if queue != Queue::Stats {
            self.used.push((queue, token));
        }
        Ok(())
    }
    fn posted(&self, _: Queue, token: Token) -> &[u8] {
        &self.bufs[token]
    }
    fn post_ranges(&mut self, _: Queue, _: Token, _: &[PhysRange]) -> Result<(), Error> {
        Ok(())
    }
    fn wait_used(&mut self, queue: Queue, _: u32) -> Result<Token, Error> {
        let i = self
            .used
            .iter()
            .position(|u| u.0 == queue)
            .ok_or(Error::Timeout)?;
        Ok(self.used.swap_remove(i).1)
    }
}

struct FastMemory {
    free: Vec<u64>,
    /// Ballooned runs (first page, pages).
    list: Vec<(u64, usize)>,
    /// Next never-used page: contiguous runs come from here.
    next_run: u64,
}

impl Memory for FastMemory {
    type Page = u64;
    fn page_size(&self) -> u64 {
        4096
    }
    fn alloc_page(&mut self) -> Option<u64> {
        self.free.pop()
    }
    fn alloc_run(&mut self, order: u32) -> Option<u64> {
        let first = self.next_run;
        self.next_run += 1 << order;
        Some(first)
    }
    fn free_run(&mut self, first: u64, n: usize) {
        self.free.extend(first..first + n as u64);
    }
    fn phys_addr(&self, page: u64) -> u64 {
        page << 12
    }
    fn page_at(&self, phys: u64) -> Option<u64> {
        Some(phys >> 12)
    }
    fn push_ballooned(&mut self, first: u64, n: usize) {
        self.list.push((first, n));
    }
    fn pop_ballooned(&mut self, max: usize) -> Option<(u64, usize)> {
        let (first, n) = self.list.last_mut()?;
        if *n <= max {
            return self.list.pop();
        }
        *n -= max;
        Some((*first + *n as u64, max))
    }
}

fn resize(b: &mut Balloon, dev: &mut FastDevice, mem: &mut FastMemory) {
    b.config_changed();
    while b.step(dev, mem) != Step::Idle {}
}

fn main() {
    const GIB_PAGES: u32 = 262_144;
    println!(
        "{:<44} {:>12} {:>14}",
        "operation", "ns/page", "GiB/s (logic)"
    );
    for (inflight, run) in [(1usize, 1u32), (4, 1), (4, 256), (8, 256)] {
        let mut free: Vec<u64> = (0x10_0000..0x10_0000 + 4 * u64::from(GIB_PAGES)).collect();
        // Room for pages that came from runs: no reallocation while timed.
        free.reserve(8 * GIB_PAGES as usize);
        let mut mem = FastMemory {
            free,
            list: Vec::new(),
            next_run: 0x200_0000,
        };
        let mut dev = FastDevice::default();
        let tun = Tunables {
            inflight_buffers: inflight,
            inflate_run_pages: run,
            ..Tunables::default()
        };
        let mut b = Balloon::new(Features::MUST_TELL_HOST, tun);
        for gib in [1u32, 3] {
            dev.target = gib * GIB_PAGES;
            let t = Instant::now();
            resize(&mut b, &mut dev, &mut mem);
            let inflate = t.elapsed();
            dev.target = 0;
            let t = Instant::now();
            resize(&mut b, &mut dev, &mut mem);
            let deflate = t.elapsed();
            for (what, d) in [("inflate", inflate), ("deflate", deflate)] {
                let pages = f64::from(gib * GIB_PAGES);
                let ns = d.as_nanos() as f64 / pages;
                let rate = f64::from(gib) / d.as_secs_f64();
                println!(
                    "{:<44} {:>12.2} {:>14.1}",
                    format!("{what} {gib} GiB, {inflight} in flight, runs {run}"),
                    ns,
                    rate
                );
            }
        }
    }
    // Stats refill: the work done in the stats interrupt per host request.
    let vm = VmCounters {
        page_size: 4096,
        page_count: 1 << 20,
        free: 1 << 19,
        ..Default::default()
    };
    let s = Stats::new(Features::STATS_VQ, true);
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(s.fill(std::hint::black_box(&vm)));
    }
    println!(
        "{:<44} {:>12.1} ns",
        "stats buffer fill (10 tags)",
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
}
