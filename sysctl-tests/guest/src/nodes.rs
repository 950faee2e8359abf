//! The driver's sysctl nodes, as the basic boot checks them (see
//! [`crate::basic::phase_nodes`]).

pub const RO_NODES: &[&str] = &[
    "target_pages",
    "actual_pages",
    "target_bytes",
    "actual_bytes",
    "held_bytes",
    "memory_accounting",
    "inflated_pages",
    "deflated_pages",
    "lowmem_events",
    "lowmem_pages",
    "config_changes",
    "alloc_failures",
    "host_timeouts",
    "errors",
    "buffers_posted",
    "stats_requests",
    "stats_pushes",
    "stats_errors",
    "stats_push_interval_ms",
    "features",
    "report_blocks",
    "report_bytes",
    "report_inflight",
    "report_acks",
    "report_errors",
    "report_passes",
    "report_time_ms",
    "lowmem_last_us",
    "thread_wakeups",
    "report_wakeups",
    "memory_bytes",
    "notify_us",
];
pub const RW_NODES: &[&str] = &[
    "debug",
    "oom_batch_pages",
    "inflate_run_pages",
    "kick_thread",
    "stats_linux_tags",
    "report_enabled",
];
/// RW nodes with values they must refuse.
pub const BAD_VALUES: &[(&str, &[i32])] = &[
    ("debug", &[2, -1]),
    ("oom_batch_pages", &[0, 65_537, -1]),
    ("inflate_run_pages", &[0, 3, 512, -1]),
    ("kick_thread", &[2, -1]),
    ("stats_linux_tags", &[2, -1]),
    ("report_enabled", &[2, -1]),
];
