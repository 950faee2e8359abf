//! What the guest's console lines mean to the harness.

/// One line from the serial console.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `HOST: <command> <arg>`: the guest asks the host to act.
    Host {
        cmd: String,
        arg: u64,
    },
    /// `N passed, N failed`: the guest's summary.
    Summary {
        passed: u32,
        failed: u32,
    },
    /// A kernel panic or a WITNESS lock-order warning.
    Fatal(String),
    Other,
}

pub fn parse(line: &str) -> Line {
    let l = line.trim();
    if let Some(rest) = l.strip_prefix("HOST: ") {
        let mut it = rest.split_whitespace();
        let cmd = it.next().unwrap_or("").to_string();
        let arg = it.next().and_then(|a| a.parse().ok()).unwrap_or(0);
        return Line::Host { cmd, arg };
    }
    if l.starts_with("panic:") || l.contains("lock order reversal") || l.contains("Fatal trap") {
        return Line::Fatal(l.to_string());
    }
    if let Some((p, f)) = l.split_once(" passed, ") {
        if let (Ok(passed), Some(Ok(failed))) = (
            p.trim().parse(),
            f.strip_suffix(" failed").map(|x| x.trim().parse()),
        ) {
            return Line::Summary { passed, failed };
        }
    }
    Line::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_requests() {
        assert_eq!(
            parse("HOST: balloon-mib 256\r"),
            Line::Host {
                cmd: "balloon-mib".into(),
                arg: 256
            }
        );
        assert_eq!(
            parse("HOST: actual 0"),
            Line::Host {
                cmd: "actual".into(),
                arg: 0
            }
        );
    }

    #[test]
    fn summary_and_fatal() {
        assert_eq!(
            parse("42 passed, 1 failed"),
            Line::Summary {
                passed: 42,
                failed: 1
            }
        );
        assert!(matches!(parse("panic: page fault"), Line::Fatal(_)));
        assert!(matches!(parse("lock order reversal:"), Line::Fatal(_)));
        assert_eq!(parse("ok - something"), Line::Other);
        assert_eq!(parse("3 passed, x failed"), Line::Other);
    }
}
