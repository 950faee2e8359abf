//! The sysctl node table against the logic's own rules for its settings.

use vtballoon::balloon::Tunables;
use vtballoon::nodes::{Accepts, Id, Kind, NODES};

fn accepts(id: Id) -> Accepts {
    match NODES.iter().find(|n| n.id == id).map(|n| n.kind) {
        Some(Kind::Setting(a)) => a,
        other => panic!("{id:?} is no setting: {other:?}"),
    }
}

#[test]
fn settings_take_what_the_balloon_takes() {
    let oom = accepts(Id::OomBatchPages);
    let run = accepts(Id::InflateRunPages);
    for v in -2..=70_000i64 {
        let as_u32 = u32::try_from(v).ok();
        assert_eq!(
            oom.check(v).is_some(),
            as_u32.is_some_and(Tunables::valid_oom_batch),
            "oom_batch_pages {v}"
        );
        assert_eq!(
            run.check(v).is_some(),
            as_u32.is_some_and(Tunables::valid_inflate_run),
            "inflate_run_pages {v}"
        );
    }
    let d = Tunables::default();
    assert!(oom.check(i64::from(d.oom_batch_pages)).is_some());
    assert!(run.check(i64::from(d.inflate_run_pages)).is_some());
}

#[test]
fn only_settings_are_writable() {
    let rw: Vec<_> = NODES
        .iter()
        .filter(|n| n.writable())
        .map(|n| n.id)
        .collect();
    assert_eq!(
        rw,
        [
            Id::Debug,
            Id::OomBatchPages,
            Id::InflateRunPages,
            Id::KickThread,
            Id::StatsLinuxTags,
            Id::ReportEnabled
        ]
    );
}
