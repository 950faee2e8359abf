//! The boots: which guest phases run together in one fresh guest, with
//! how much memory, which loader tunables and which time limit.

use std::time::Duration;

/// One boot of the guest.
pub struct Boot {
    pub name: String,
    pub phases: String,
    pub kenv: Vec<String>,
    pub mem_mib: u64,
    pub needs_ours: bool,
    /// Upper bound for the whole boot.
    pub limit: Duration,
}

impl Boot {
    pub fn new(name: &str, phases: &str, mem_mib: u64, needs_ours: bool, limit_s: u64) -> Boot {
        let mut kenv = Vec::new();
        if phases.split(' ').any(|p| p == "tunable") {
            // What the guest's `tunable` phase expects to find.
            kenv.push("dev.vtballoonrs.0.oom_batch_pages=4096".into());
        }
        Boot {
            name: name.into(),
            phases: phases.into(),
            kenv,
            mem_mib,
            needs_ours,
            limit: Duration::from_secs(limit_s),
        }
    }
}

/// The boots of `vmharness test`, each a fresh guest so one failure does
/// not hide the next scenario.
pub fn test_boots() -> Vec<Boot> {
    let mut basic = Boot::new("basic", "tunable nodes resize stats", 2048, true, 900);
    basic
        .kenv
        .push("dev.vtballoonrs.0.oom_batch_pages=4096".into());
    vec![
        basic,
        Boot::new("pressure", "pressure", 2048, true, 1200),
        Boot::new("report", "report", 2048, true, 900),
        Boot::new("lifecycle", "unload cycles swap", 2048, true, 1200),
    ]
}

pub fn plan(args: &[String]) -> Vec<Boot> {
    match args.first().map(String::as_str) {
        None | Some("test") => test_boots(),
        Some("bench") => vec![Boot::new("bench", "bench", 4096, true, 2400)],
        Some("intree") => vec![Boot::new("intree", "intree", 2048, false, 600)],
        Some(_) => {
            // Options for the guest (--no-host) go along with the phases.
            let phases = args.join(" ");
            let needs = args.iter().any(|a| a != "intree" && !a.starts_with('-'));
            let name: Vec<&str> = args.iter().map(|a| a.trim_start_matches('-')).collect();
            vec![Boot::new(&name.join("-"), &phases, 2048, needs, 2400)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_boots() {
        let names = |a: &[&str]| {
            plan(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .iter()
                .map(|b| (b.name.clone(), b.phases.clone(), b.needs_ours))
                .collect::<Vec<_>>()
        };
        let t = names(&["test"]);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|(_, _, ours)| *ours));
        let all: String = t.iter().map(|(_, p, _)| p.clone() + " ").collect();
        for phase in [
            "nodes", "resize", "stats", "pressure", "report", "unload", "cycles", "swap",
        ] {
            assert!(all.split(' ').any(|p| p == phase), "{phase} is in no boot");
        }
        assert_eq!(names(&["bench"])[0].1, "bench");
        assert!(!names(&["intree"])[0].2, "the in-tree boot needs no module");
        assert_eq!(names(&["report", "pressure"])[0].1, "report pressure");
        assert_eq!(names(&["--no-host", "nodes"])[0].0, "no-host-nodes");
        assert!(test_boots()[0]
            .kenv
            .iter()
            .any(|k| k.starts_with("dev.vtballoonrs.0.oom_batch_pages=")));
    }
}
