//! Just enough JSON for QMP replies: find a numeric field by key.

/// The unsigned integer value of the first `"key": <number>` in `text`.
pub fn u64_field(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let at = text.find(&pat)? + pat.len();
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// True if a QMP reply is an error.
pub fn is_error(text: &str) -> bool {
    text.contains("\"error\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_by_key() {
        let r = r#"{"return": {"actual": 1073741824}}"#;
        assert_eq!(u64_field(r, "actual"), Some(1 << 30));
        let s = r#"{"return": {"stats": {"stat-free-memory": 12, "stat-total-memory":34}, "last-update": 5}}"#;
        assert_eq!(u64_field(s, "stat-free-memory"), Some(12));
        assert_eq!(u64_field(s, "stat-total-memory"), Some(34));
        assert_eq!(u64_field(s, "last-update"), Some(5));
        assert_eq!(u64_field(s, "missing"), None);
    }

    #[test]
    fn negative_or_absent_values_are_none() {
        let s = r#"{"return": {"stats": {"stat-available-memory": -1}}}"#;
        assert_eq!(u64_field(s, "stat-available-memory"), None);
        assert!(is_error(r#"{"error": {"class": "GenericError"}}"#));
        assert!(!is_error(r#"{"return": {}}"#));
    }
}
