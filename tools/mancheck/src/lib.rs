//! Reads the driver's manual page (`kmod/vtballoonrs.4`, mdoc) far enough
//! to check it against the driver: its sections, the node entries of its
//! lists, its cross references; and finds which manual pages a FreeBSD
//! source tree installs, so the references can be checked against it.
//!
//! The checks themselves are in `tests/page.rs`: every sysctl node of the
//! node table (`kmod/src/nodes.rs`) has exactly one entry under SYSCTL
//! VARIABLES and every setting one under LOADER TUNABLES, with its range
//! and unit, nothing else is listed there, `mandoc -Tlint` is clean, and
//! `make install` puts the page where FreeBSD keeps third-party pages.

use std::collections::BTreeSet;
use std::path::Path;

/// How an entry for node `NAME` starts: `.It Va dev.vtballoonrs.\& Ns Ar N
/// Ns Va .NAME` (the `\&` keeps mandoc from reading the dot as a closing
/// delimiter).
pub const ENTRY_PREFIX: &str = r".It Va dev.vtballoonrs.\& Ns Ar N Ns Va .";

/// The lines of section `title` (`.Sh TITLE`), without the `.Sh` line.
pub fn section<'a>(text: &'a str, title: &str) -> Option<Vec<&'a str>> {
    let mut lines = text.lines();
    lines.find(|l| l.strip_prefix(".Sh ") == Some(title))?;
    Some(lines.take_while(|l| !l.starts_with(".Sh ")).collect())
}

/// Titles of every section, in order.
pub fn section_titles(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(".Sh "))
        .collect()
}

/// One node entry of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node's leaf name.
    pub name: String,
    /// Which top-level list of the section it is in, from 0.
    pub list: usize,
    /// Its text up to the next item or the end of its list, lines joined
    /// with spaces (macros kept).
    pub body: String,
}

/// The node entries of a section's lines, in order. Nested lists (`.Bl`
/// inside an item) belong to the item's body.
pub fn entries(lines: &[&str]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut depth = 0usize;
    let mut lists = 0usize;
    // Whether body lines go to the last entry.
    let mut open = false;
    for l in lines {
        if l.starts_with(".Bl") {
            depth += 1;
            if depth == 1 {
                lists += 1;
                open = false;
                continue;
            }
        } else if l.starts_with(".El") {
            if depth == 1 {
                open = false;
                depth = 0;
                continue;
            }
            depth = depth.saturating_sub(1);
        } else if depth == 1 && l.starts_with(".It") {
            open = false;
            if let Some(name) = l.strip_prefix(ENTRY_PREFIX) {
                out.push(Entry {
                    name: name.trim().to_string(),
                    list: lists - 1,
                    body: String::new(),
                });
                open = true;
            }
            continue;
        }
        if open {
            if let Some(e) = out.last_mut() {
                if !e.body.is_empty() {
                    e.body.push(' ');
                }
                e.body.push_str(l);
            }
        }
    }
    out
}

/// Every `Xr name section` of the page, once each, sorted.
pub fn xrefs(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for l in text.lines().filter(|l| l.starts_with('.')) {
        let words: Vec<&str> = l.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            if *w != "Xr" && *w != ".Xr" {
                continue;
            }
            if let (Some(n), Some(s)) = (words.get(i + 1), words.get(i + 2)) {
                out.insert((n.to_string(), s.to_string()));
            }
        }
    }
    out
}

/// A minimal page named `name(section)`, for a manual path that mandoc
/// resolves cross references against.
pub fn stub(name: &str, section: &str) -> String {
    format!(
        ".Dd December 1, 2026\n.Dt {} {section}\n.Os\n.Sh NAME\n.Nm {name}\n.Nd stub\n.Sh DESCRIPTION\nStub.\n",
        name.to_uppercase()
    )
}

/// The manual pages a FreeBSD source tree installs, as (name, section):
/// every `name.N` file under the directories that hold programs' and the
/// system's pages, and the names that `MLINKS` in `share/man/man*/Makefile`
/// add.
pub fn freebsd_pages(src: &Path) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for dir in [
        "bin",
        "sbin",
        "usr.bin",
        "usr.sbin",
        "libexec",
        "lib",
        "stand",
        "share/man",
        "cddl",
    ] {
        walk(&src.join(dir), &mut |p| {
            if let Some(page) = p.file_name().and_then(|f| f.to_str()).and_then(page_name) {
                out.insert(page);
            }
        });
    }
    for sec in 1..=9 {
        let mk = src.join(format!("share/man/man{sec}/Makefile"));
        if let Ok(text) = std::fs::read_to_string(mk) {
            out.extend(mlinks(&text));
        }
    }
    out
}

/// `name.N` (N a digit from 1 to 9) as (name, "N").
pub fn page_name(file: &str) -> Option<(String, String)> {
    let (name, sec) = file.rsplit_once('.')?;
    let ok = !name.is_empty()
        && sec.len() == 1
        && sec.as_bytes()[0].is_ascii_digit()
        && sec != "0"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b));
    ok.then(|| (name.to_string(), sec.to_string()))
}

/// The page names in the `MLINKS` assignments of a FreeBSD man Makefile
/// (continued lines included).
pub fn mlinks(makefile: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    // Inside an assignment continued on this line.
    let mut continued = false;
    for l in makefile.lines() {
        let t = l.trim_start();
        let words = if t.starts_with("MLINKS") {
            t.split_once('=').map_or("", |(_, rest)| rest)
        } else if continued {
            t
        } else {
            continue;
        };
        out.extend(words.split_whitespace().filter_map(page_name));
        continued = t.ends_with('\\');
    }
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&p, f),
            Ok(t) if t.is_file() => f(&p),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#".Dd December 1, 2026
.Dt X 4
.Sh NAME
.Nm x
.Sh SYSCTL VARIABLES
Intro.
.Bl -tag -width indent
.It Va dev.vtballoonrs.\& Ns Ar N Ns Va .one
First, in
.Xr sysctl 8 .
.Bl -bullet
.It
nested
.El
still one.
.It Va dev.vtballoonrs.\& Ns Ar N Ns Va .two
Second.
.El
Between.
.Bl -tag -width indent
.It Va dev.vtballoonrs.\& Ns Ar N Ns Va .three
Third
.Pq Xr kldload 8 No and Xr devctl 8 .
.El
.Sh SEE ALSO
.Xr sysctl 8
"#;

    #[test]
    fn finds_sections() {
        assert_eq!(
            section_titles(PAGE),
            ["NAME", "SYSCTL VARIABLES", "SEE ALSO"]
        );
        assert_eq!(section(PAGE, "SEE ALSO").unwrap(), [".Xr sysctl 8"]);
        assert!(section(PAGE, "EXAMPLES").is_none());
    }

    #[test]
    fn reads_entries_with_nested_lists_and_list_numbers() {
        let e = entries(&section(PAGE, "SYSCTL VARIABLES").unwrap());
        let names: Vec<(&str, usize)> = e.iter().map(|e| (e.name.as_str(), e.list)).collect();
        assert_eq!(names, [("one", 0), ("two", 0), ("three", 1)]);
        assert_eq!(
            e[0].body,
            "First, in .Xr sysctl 8 . .Bl -bullet .It nested .El still one."
        );
        assert_eq!(e[1].body, "Second.");
        assert!(!e[1].body.contains("Between"));
    }

    #[test]
    fn reads_cross_references_inline_too() {
        let x: Vec<(String, String)> = xrefs(PAGE).into_iter().collect();
        let want = [("devctl", "8"), ("kldload", "8"), ("sysctl", "8")];
        assert_eq!(
            x,
            want.map(|(n, s)| (n.to_string(), s.to_string())).to_vec()
        );
    }

    #[test]
    fn tells_page_file_names() {
        assert_eq!(
            page_name("loader.conf.5"),
            Some(("loader.conf".into(), "5".into()))
        );
        assert_eq!(page_name("devctl.8"), Some(("devctl".into(), "8".into())));
        assert_eq!(page_name("Makefile"), None);
        assert_eq!(page_name("foo.c"), None);
        assert_eq!(page_name("foo.0"), None);
        assert_eq!(page_name(".9"), None);
    }

    #[test]
    fn reads_mlinks() {
        let mk = "MAN=\tvm_page_alloc.9\nMLINKS=\tvm_page_alloc.9 vm_page_alloc_noobj.9 \\\n\tvm_page_alloc.9 vm_page_alloc_noobj_contig.9\nMLINKS+=sysctl.9 SYSCTL_INT.9\nOTHER=\tnot_a_link.9\n";
        let l = mlinks(mk);
        assert!(l.contains(&("vm_page_alloc_noobj_contig".into(), "9".into())));
        assert!(l.contains(&("SYSCTL_INT".into(), "9".into())));
        assert!(!l.contains(&("not_a_link".into(), "9".into())));
    }

    #[test]
    fn stubs_are_pages() {
        let s = stub("loader.conf", "5");
        assert!(s.contains(".Dt LOADER.CONF 5\n") && s.contains(".Nm loader.conf\n"));
    }
}
