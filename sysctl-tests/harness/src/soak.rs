//! The soak's seed and report: the guest draws every random choice from the
//! seed the host hands out (`soak-seed`), runs for `soak-secs`, and sends
//! its figures (`soak-<name> <value>`); the host prints them as a table
//! with what it saw itself on the console (panics, WITNESS warnings, kill
//! lines, failed checks).

use std::time::{SystemTime, UNIX_EPOCH};

/// One soak run's parameters and figures.
#[derive(Debug, Default, Clone)]
pub struct Soak {
    pub seed: u64,
    pub secs: u64,
    pub figures: Vec<(String, u64)>,
}

impl Soak {
    /// The seed from `VTB_SOAK_SEED` (a replay), else from the clock.
    pub fn new(secs: u64) -> Soak {
        let seed = std::env::var("VTB_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                (t ^ u64::from(std::process::id())) % 1_000_000_000 + 1
            });
        Soak {
            seed,
            secs,
            figures: Vec::new(),
        }
    }

    /// The last value the guest sent for `name` (without `soak-`).
    pub fn get(&self, name: &str) -> Option<u64> {
        let key = format!("soak-{name}");
        self.figures
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|f| f.1)
    }
}

/// What the host saw during the soak boot.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub panics: usize,
    pub warnings: usize,
    pub guest_failed: u32,
    pub kill_lines: u64,
    pub completed: bool,
}

/// The soak's table, one line each.
pub fn table(s: &Soak, seen: &Seen) -> Vec<String> {
    let g = |n: &str| s.get(n).map_or("?".to_string(), |v| v.to_string());
    let held = |ok: bool| if ok { "held" } else { "BROKEN" };
    let zero = |n: &str| s.get(n) == Some(0);
    let t = vec![
        format!(
            "soak: seed {} ({} s; replay: VTB_SOAK_SEED={} VTB_SOAK_S={} make vmsoak)",
            s.seed, s.secs, s.seed, s.secs
        ),
        format!("{:<44} {:>12}", "operations", g("ops")),
        format!("{:<44} {:>12}", "  host target changes", g("targets")),
        format!(
            "{:<44} {:>12}",
            "    of which absurd (all but 1 MiB)",
            g("absurd")
        ),
        format!(
            "{:<44} {:>12}",
            "  targets reached (host and driver checked)",
            g("reached")
        ),
        format!("{:<44} {:>12}", "  kldunload/kldload cycles", g("unloads")),
        format!(
            "{:<44} {:>12}",
            "    with the balloon inflated",
            g("unloads-inflated")
        ),
        format!(
            "{:<44} {:>12}",
            "    under memory pressure",
            g("unloads-pressure")
        ),
        format!("{:<44} {:>12}", "  hot-unplug and re-plug", g("plugs")),
        format!(
            "{:<44} {:>12}",
            "  pressure children (MiB touched)",
            format!("{} ({})", g("children"), g("child-mib"))
        ),
        format!("{:<44} {:>12}", "pages inflated (4 KiB)", g("inflated")),
        format!(
            "{:<44} {:>12}",
            "pages deflated (4 KiB; driver counters)",
            g("deflated")
        ),
        format!(
            "{:<44} {:>12}",
            "  and given back at detach (unload, unplug)",
            g("detach-pages")
        ),
        format!(
            "{:<44} {:>12}",
            "  deflated + given back at detach",
            s.get("deflated")
                .zip(s.get("detach-pages"))
                .map_or("?".to_string(), |(d, k)| (d + k).to_string())
        ),
        format!(
            "{:<44} {:>12}",
            "vm_lowmem events / pressure deflates",
            format!("{} / {}", g("lowmem"), g("oom-deflates"))
        ),
        format!(
            "{:<44} {:>12}",
            "guest-stats requests (polled every 1 s)",
            g("stats-requests")
        ),
        format!("{:<44} {:>12}", "faults injected", g("faults")),
        format!("{:<44} {:>24} {:>7}", "invariant", "worst observed", ""),
        format!(
            "{:<44} {:>24} {:>7}",
            "  no panic",
            seen.panics.to_string(),
            held(seen.panics == 0)
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  no WITNESS warning",
            seen.warnings.to_string(),
            held(seen.warnings == 0)
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  no `not ok`",
            seen.guest_failed.to_string(),
            held(seen.guest_failed == 0 && seen.completed)
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  host and driver agree on actual (reached)",
            format!("{} pages in {} checks", g("host-worst"), g("host-checks")),
            held(zero("host-worst"))
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  inflated - deflated = actual",
            format!(
                "{} pages in {} checks",
                g("counter-worst"),
                g("counter-checks")
            ),
            held(zero("counter-worst"))
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  free memory after the last unload (<= 1%)",
            format!(
                "{:.3}% ({} -> {} MiB)",
                s.get("free-ppm").unwrap_or(u64::MAX) as f64 / 10_000.0,
                g("free-start"),
                g("free-end")
            ),
            held(s.get("free-ppm").is_some_and(|p| p <= 10_000))
        ),
        format!(
            "{:<44} {:>24} {:>7}",
            "  no kill while the balloon held pages",
            format!(
                "{} (kills {}, kill lines {})",
                g("kills-held"),
                g("kills"),
                seen.kill_lines
            ),
            held(zero("kills-held"))
        ),
    ];
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_takes_its_seed_from_the_environment() {
        std::env::set_var("VTB_SOAK_SEED", "4242");
        assert_eq!(Soak::new(60).seed, 4242);
        std::env::remove_var("VTB_SOAK_SEED");
        let s = Soak::new(60);
        assert!(s.seed > 0 && s.secs == 60);
    }

    #[test]
    fn the_table_shows_figures_and_broken_invariants() {
        let mut s = Soak {
            seed: 7,
            secs: 1200,
            figures: vec![],
        };
        for (k, v) in [
            ("soak-ops", 1234),
            ("soak-host-worst", 0),
            ("soak-counter-worst", 3),
            ("soak-free-ppm", 2500),
            ("soak-kills-held", 0),
        ] {
            s.figures.push((k.to_string(), v));
        }
        let seen = Seen {
            completed: true,
            ..Seen::default()
        };
        let t = table(&s, &seen).join("\n");
        assert!(t.contains("seed 7"));
        assert!(t.contains("VTB_SOAK_SEED=7"));
        assert!(t
            .lines()
            .any(|l| l.starts_with("operations") && l.ends_with("1234")));
        let line = |k: &str| t.lines().find(|l| l.contains(k)).unwrap().to_string();
        assert!(line("inflated - deflated").ends_with("BROKEN"));
        assert!(line("agree on actual").ends_with("held"));
        assert!(line("free memory after").contains("0.250%"));
        assert!(line("no panic").ends_with("held"));
        let bad = Seen { panics: 1, ..seen };
        assert!(table(&s, &bad)
            .join("\n")
            .lines()
            .any(|l| l.contains("no panic") && l.ends_with("BROKEN")));
    }
}
