//! The manual page against the driver: the node table (`kmod/src/nodes.rs`)
//! and the page list the same nodes, in both directions; `mandoc -Tlint` is
//! clean; every cross reference names a FreeBSD page; `make install` puts
//! the page where FreeBSD keeps third-party section-4 pages.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use mancheck::{entries, section, section_titles, xrefs, Entry};
use vtballoon::nodes::{Accepts, Kind, Node, NODES};

const PAGE: &str = include_str!("../../../kmod/vtballoonrs.4");

fn page_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kmod/vtballoonrs.4")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn name(n: &Node) -> &str {
    n.name.to_str().expect("node names are ASCII")
}

fn entries_of(title: &str) -> Vec<Entry> {
    let lines = section(PAGE, title).unwrap_or_else(|| panic!("no section {title}"));
    entries(&lines)
}

/// What an entry must say about the unit its name implies.
fn unit_of(name: &str) -> Option<&'static str> {
    [
        ("_pages", "pages"),
        ("_bytes", "bytes"),
        ("_ms", "millisecond"),
        ("_us", "microsecond"),
    ]
    .into_iter()
    .find(|(suffix, _)| name.ends_with(suffix))
    .map(|(_, unit)| unit)
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mancheck-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_page_has_the_sections_of_a_freebsd_driver_page() {
    let titles = section_titles(PAGE);
    let want = [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "HARDWARE",
        "LOADER TUNABLES",
        "SYSCTL VARIABLES",
        "EVENTS",
        "EXAMPLES",
        "DIAGNOSTICS",
        "SEE ALSO",
        "HISTORY",
        "CAVEATS",
    ];
    assert_eq!(titles, want);
    let synopsis = section(PAGE, "SYNOPSIS").unwrap().join("\n");
    assert!(synopsis.contains("vtballoonrs_load=\"YES\""));
    assert!(synopsis.contains(".Xr loader.conf 5"));
    let see = xrefs(&section(PAGE, "SEE ALSO").unwrap().join("\n"));
    for (n, s) in [
        ("virtio", "4"),
        ("virtio_balloon", "4"),
        ("devctl", "8"),
        ("loader.conf", "5"),
    ] {
        assert!(
            see.contains(&(n.into(), s.into())),
            "SEE ALSO lacks {n}({s})"
        );
    }
    let examples = section(PAGE, "EXAMPLES").unwrap().join("\n");
    for what in [
        "autodeflate='on'",
        "freePageReporting='on'",
        "<stats period='2'/>",
        "-device virtio-balloon-pci",
        "devctl set driver -f vtballoon0 vtballoonrs",
    ] {
        assert!(examples.contains(what), "EXAMPLES lacks {what}");
    }
    // The devd(8) events the driver raises (kmod/src/events.rs), each with
    // the data it carries, and a devd.conf(5) example.
    let events = section(PAGE, "EVENTS").unwrap().join("\n");
    assert!(events.contains("VTBALLOON"));
    for (event, data) in [
        ("ATTACH", "features"),
        ("DETACH", "pages"),
        ("LOWMEM", "actual_pages"),
        ("FLOOR", "refused_pages"),
        ("TIMEOUT", "timeouts"),
        ("RESET", "pages"),
    ] {
        assert!(
            events.contains(&format!(".It Dv {event}")),
            "EVENTS lacks {event}"
        );
        assert!(
            events.contains(&format!(".Va {data}")),
            "{event} lacks {data}"
        );
    }
    assert!(xrefs(&events).contains(&("devd.conf".into(), "5".into())));
}

/// Every node of the table has one entry under SYSCTL VARIABLES, in the
/// table's order, and nothing else is listed; the nodes that exist only with
/// free page reporting are in the second list, which says so.
#[test]
fn sysctl_variables_list_exactly_the_driver_nodes() {
    let listed = entries_of("SYSCTL VARIABLES");
    let page: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    let table: Vec<&str> = NODES.iter().map(name).collect();
    let missing: Vec<&&str> = table.iter().filter(|n| !page.contains(n)).collect();
    let extra: Vec<&&str> = page.iter().filter(|n| !table.contains(n)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "nodes without an entry in the page: {missing:?}; entries that are no node: {extra:?}"
    );
    let unique: BTreeSet<&str> = page.iter().copied().collect();
    assert_eq!(unique.len(), page.len(), "a node listed twice: {page:?}");
    let mut table_order = table.clone();
    table_order.sort_by_key(|n| usize::from(NODES.iter().any(|m| name(m) == *n && m.reporting)));
    assert_eq!(
        page, table_order,
        "entries in the node table's order (reporting nodes in their own list)"
    );
    let intro = section(PAGE, "SYSCTL VARIABLES").unwrap().join(" ");
    assert!(intro.contains("With .Dv REPORTING negotiated, these nodes exist too:"));
    for e in &listed {
        let node = NODES.iter().find(|n| name(n) == e.name).unwrap();
        let n = &e.name;
        assert_eq!(
            e.list,
            usize::from(node.reporting),
            "{n}: the reporting nodes, and only they, are in the REPORTING list"
        );
        let body = e.body.to_lowercase();
        match node.kind {
            Kind::Setting(_) => assert!(
                e.body.contains("Read-write") && e.body.contains(".Sx LOADER TUNABLES"),
                "{n} is a setting: its entry points to LOADER TUNABLES ({})",
                e.body
            ),
            Kind::U64 | Kind::Text => {
                assert!(!body.contains("read-write"), "{n} is read-only: {}", e.body);
                if let Some(unit) = unit_of(n) {
                    assert!(body.contains(unit), "{n}: the entry gives no {unit}");
                }
            }
        }
        if node.kind == Kind::Text {
            assert!(e.body.starts_with("Text:"), "{n} is text: {}", e.body);
        }
    }
}

/// Every setting (a read-write node, also a loader tunable) has one entry
/// under LOADER TUNABLES, in the table's order, with the range the driver
/// accepts, its unit and its default; nothing else is listed.
#[test]
fn loader_tunables_are_the_settings_with_their_ranges() {
    let listed = entries_of("LOADER TUNABLES");
    let page: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    let settings: Vec<&str> = NODES
        .iter()
        .filter(|n| matches!(n.kind, Kind::Setting(_)))
        .map(name)
        .collect();
    assert_eq!(
        page, settings,
        "LOADER TUNABLES lists the settings of the node table, in its order"
    );
    for e in &listed {
        let node = NODES.iter().find(|n| name(n) == e.name).unwrap();
        let Kind::Setting(accepts) = node.kind else {
            unreachable!()
        };
        let n = &e.name;
        let body = &e.body;
        let range = match accepts {
            Accepts::Flag => "0 or 1".to_string(),
            Accepts::Range { min, max } => format!("from {min} to {max}"),
            Accepts::PowerOfTwo { max } => format!("a power of two from 1 to {max}"),
            Accepts::Pages => "to all of the guest's memory".to_string(),
        };
        assert!(
            body.contains(&range),
            "{n}: the entry does not say \"{range}\": {body}"
        );
        assert!(body.contains("The default is"), "{n}: no default: {body}");
        if let Some(unit) = unit_of(n) {
            assert!(
                body.to_lowercase().contains(unit),
                "{n}: the entry gives no {unit}"
            );
        }
    }
}

/// The EXAMPLES' loader.conf line names a real tunable with a value it
/// accepts.
#[test]
fn the_loader_conf_example_is_a_tunable_the_driver_takes() {
    let examples = section(PAGE, "EXAMPLES").unwrap();
    let mut seen = 0;
    for l in examples
        .iter()
        .filter(|l| l.starts_with("dev.vtballoonrs.0."))
    {
        let (key, value) = l["dev.vtballoonrs.0.".len()..].split_once('=').unwrap();
        let node = NODES
            .iter()
            .find(|n| name(n) == key)
            .unwrap_or_else(|| panic!("{key} is no node"));
        let Kind::Setting(accepts) = node.kind else {
            panic!("{key} is not a tunable")
        };
        let v: i64 = value.trim_matches('"').parse().unwrap();
        assert!(accepts.check(v, 1 << 20).is_some(), "{l}: refused");
        seen += 1;
    }
    assert!(seen > 0, "no loader.conf example");
}

/// `mandoc -Tlint` finds nothing. The page's cross references are resolved
/// against a manual path of stub pages (FreeBSD's pages are not installed
/// on a Linux host; whether they exist in FreeBSD is the next test's).
#[cfg_attr(
    not(mancheck_mandoc),
    ignore = "skipped: mandoc or makewhatis not found (Debian package mandoc, tools/install-deps.sh)"
)]
#[test]
fn mandoc_lint_is_clean() {
    let dir = TempDir::new("lint");
    for (n, s) in xrefs(PAGE) {
        let sub = dir.0.join(format!("man{s}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("{n}.{s}")), mancheck::stub(&n, &s)).unwrap();
    }
    let idx = Command::new("makewhatis").arg(&dir.0).output().unwrap();
    assert!(idx.status.success(), "makewhatis: {idx:?}");
    let out = Command::new("mandoc")
        .args(["-Tlint", "-Wstyle", "-M"])
        .arg(&dir.0)
        .arg(page_path())
        .output()
        .expect("mandoc runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "mandoc -Tlint:\n{text}"
    );
}

/// Manual pages the page refers to that are not in FreeBSD's base system.
const PORTS_PAGES: &[(&str, &str)] = &[("virsh", "1")];

/// Every cross reference names a page of FreeBSD's base system (found in
/// the source tree at FREEBSD_SRC, default /usr/src) or of a port listed
/// above.
#[cfg_attr(
    not(mancheck_freebsd_src),
    ignore = "skipped: no FreeBSD source tree (share/man/man4) at FREEBSD_SRC or /usr/src"
)]
#[test]
fn every_cross_reference_names_a_freebsd_page() {
    let src = PathBuf::from(env!("MANCHECK_FREEBSD_SRC"));
    let have = mancheck::freebsd_pages(&src);
    assert!(
        have.contains(&("virtio".into(), "4".into())),
        "the tree lists no pages"
    );
    let unknown: Vec<String> = xrefs(PAGE)
        .into_iter()
        .filter(|(n, s)| {
            !have.contains(&(n.clone(), s.clone()))
                && !PORTS_PAGES.contains(&(n.as_str(), s.as_str()))
        })
        .map(|(n, s)| format!("{n}({s})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "not FreeBSD pages (in {}): {unknown:?}",
        src.display()
    );
}

fn make(args: &[&str]) -> std::process::Output {
    Command::new("make")
        .arg("-C")
        .arg(root())
        .args(args)
        .output()
        .expect("make runs")
}

/// `make install-man DESTDIR=...` installs the page, compressed as FreeBSD
/// does, under /usr/local/share/man/man4; `make` alone installs nothing.
#[cfg_attr(not(mancheck_make), ignore = "skipped: make or gzip not found")]
#[test]
fn make_install_puts_the_page_in_mandir() {
    let dest = TempDir::new("install");
    let d = format!("DESTDIR={}", dest.0.display());
    let out = make(&["install-man", &d]);
    assert!(out.status.success(), "make install-man: {out:?}");
    let gz = dest.0.join("usr/local/share/man/man4/vtballoonrs.4.gz");
    let unpacked = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert!(
        unpacked.status.success(),
        "{} is not there: {out:?}",
        gz.display()
    );
    assert_eq!(String::from_utf8_lossy(&unpacked.stdout), PAGE);

    let other = TempDir::new("mandir");
    let m = format!("MANDIR={}/man4", other.0.display());
    let out = make(&["install-man", &d, &m]);
    assert!(out.status.success(), "make install-man MANDIR=: {out:?}");
    assert!(dest
        .0
        .join(other.0.strip_prefix("/").unwrap())
        .join("man4/vtballoonrs.4.gz")
        .is_file());

    // The default target only builds: no install command is in its recipe.
    let dry = make(&["-n"]);
    let recipe = String::from_utf8_lossy(&dry.stdout);
    assert!(
        !recipe.contains("install ")
            && !recipe.contains("share/man")
            && !recipe.contains("kldxref"),
        "make -n: {recipe}"
    );
}

/// On a host that is not FreeBSD, `make install` without DESTDIR refuses
/// and touches nothing.
#[cfg(not(target_os = "freebsd"))]
#[cfg_attr(not(mancheck_make), ignore = "skipped: make or gzip not found")]
#[test]
fn make_install_off_freebsd_needs_destdir() {
    let other = TempDir::new("nodest");
    let m = format!("MANDIR={}/man4", other.0.display());
    let k = format!("KMODDIR={}/modules", other.0.display());
    for target in ["install-man", "install"] {
        let out = make(&[target, &m, &k]);
        assert!(
            !out.status.success(),
            "make {target} without DESTDIR ran: {out:?}"
        );
        let err = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("DESTDIR"), "make {target}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(&other.0).unwrap().collect();
    assert!(left.is_empty(), "make wrote {left:?}");
}
