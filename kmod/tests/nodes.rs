//! The sysctl node table against the logic's own rules for its settings.

use vtballoon::balloon::Tunables;
use vtballoon::nodes::{Accepts, Id, Kind, NODES};
use vtballoon::pressure::OomTunables;

fn accepts(id: Id) -> Accepts {
    match NODES.iter().find(|n| n.id == id).map(|n| n.kind) {
        Some(Kind::Setting(a)) => a,
        other => panic!("{id:?} is no setting: {other:?}"),
    }
}

#[test]
fn settings_take_what_the_logic_takes() {
    type Rule = (Id, fn(u32) -> bool);
    let rules: [Rule; 5] = [
        (Id::OomBatchPages, OomTunables::valid_batch),
        (Id::OomHeadroomPages, OomTunables::valid_headroom),
        (Id::OomWatchMs, OomTunables::valid_watch),
        (Id::OomWatchIntervalMs, OomTunables::valid_interval),
        (Id::InflateRunPages, Tunables::valid_inflate_run),
    ];
    for (id, valid) in rules {
        let a = accepts(id);
        for v in (-2..=1_100i64)
            .chain(65_530..=65_540)
            .chain(262_140..=262_150)
        {
            let logic = u32::try_from(v).is_ok_and(valid);
            assert_eq!(a.check(v, 0).is_some(), logic, "{id:?} {v}");
        }
        for v in [599_999, 600_000, 600_001] {
            assert_eq!(a.check(v, 0).is_some(), valid(v as u32), "{id:?} {v}");
        }
    }
    let o = OomTunables::default();
    let defaults = [
        (Id::OomBatchPages, o.min_batch_pages),
        (Id::OomHeadroomPages, o.headroom_pages),
        (Id::OomWatchMs, o.watch_ms),
        (Id::OomWatchIntervalMs, o.interval_ms),
        (Id::InflateRunPages, Tunables::default().inflate_run_pages),
        (
            Id::InflightBuffers,
            Tunables::default().inflight_buffers as u32,
        ),
    ];
    for (id, v) in defaults {
        assert!(
            accepts(id).check(i64::from(v), 0).is_some(),
            "{id:?} default"
        );
    }
}

#[test]
fn the_floor_takes_up_to_all_of_memory() {
    let floor = accepts(Id::FloorPages);
    assert_eq!(floor.check(0, 524_288), Some(0));
    assert_eq!(floor.check(524_288, 524_288), Some(524_288));
    assert_eq!(floor.check(524_289, 524_288), None);
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
            Id::OomHeadroomPages,
            Id::OomWatchMs,
            Id::OomWatchIntervalMs,
            Id::FloorPages,
            Id::InflateRunPages,
            Id::InflightBuffers,
            Id::KickThread,
            Id::StatsLinuxTags,
            Id::HintEnabled,
            Id::ReportEnabled
        ]
    );
}
