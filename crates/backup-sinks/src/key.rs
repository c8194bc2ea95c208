//! Object key rules, shared by every sink so a key valid on one backend is valid on all.
//!
//! Keys are relative, '/'-separated paths such as `backups/<uuid>/data-0000.bkpd`. The rules
//! keep a key from escaping a local repository directory (`..`, leading '/'), from colliding
//! with in-progress uploads (components starting with '.' are reserved for temp files), and
//! within what S3 and common filesystems accept.

use crate::SinkError;

/// Longest key, in bytes (S3's limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest key component, in bytes: leaves room for the temp-file decoration
/// (`.<name>.tmp-<uuid>`) within the usual 255-byte filename limit.
pub const MAX_COMPONENT_LEN: usize = 200;

/// Checks that `key` names an object; see the module docs for the rules.
pub fn validate_key(key: &str) -> Result<(), SinkError> {
    let invalid = |reason| {
        Err(SinkError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("the key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("the key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return invalid("keys are relative and must not start with '/'");
    }
    if let Some(reason) = bad_chars(key) {
        return invalid(reason);
    }
    for component in key.split('/') {
        if let Some(reason) = bad_component(component) {
            return invalid(reason);
        }
    }
    Ok(())
}

/// Checks a `list` prefix: "" (everything) or a key prefix, possibly ending in '/' or in
/// the middle of a component. Complete components follow the key rules.
pub fn validate_prefix(prefix: &str) -> Result<(), SinkError> {
    let invalid = |reason| {
        Err(SinkError::InvalidKey {
            key: prefix.to_owned(),
            reason,
        })
    };
    if prefix.len() > MAX_KEY_LEN {
        return invalid("the prefix is longer than 1024 bytes");
    }
    if prefix.starts_with('/') {
        return invalid("keys are relative and must not start with '/'");
    }
    if let Some(reason) = bad_chars(prefix) {
        return invalid(reason);
    }
    if let Some((complete, _partial)) = prefix.rsplit_once('/') {
        for component in complete.split('/') {
            if let Some(reason) = bad_component(component) {
                return invalid(reason);
            }
        }
    }
    Ok(())
}

fn bad_chars(s: &str) -> Option<&'static str> {
    if s.contains('\\') {
        return Some("keys use '/' as separator and must not contain '\\'");
    }
    if s.chars().any(char::is_control) {
        return Some("keys must not contain control characters");
    }
    None
}

fn bad_component(component: &str) -> Option<&'static str> {
    if component.is_empty() {
        Some("keys must not contain empty components ('//' or a trailing '/')")
    } else if component == "." || component == ".." {
        Some("keys must not contain '.' or '..' components")
    } else if component.starts_with('.') {
        Some("key components must not start with '.' (reserved for in-progress uploads)")
    } else if component.len() > MAX_COMPONENT_LEN {
        Some("a key component is longer than 200 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_keys() {
        for key in [
            "a",
            "backups/0192f0c4-7b6e-7cc1-9f5e-000000000000/data-0000.bkpd",
            "x/y.z/w-1_2",
            "a..b/c.",
        ] {
            validate_key(key).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_keys() {
        let long_component = "x".repeat(MAX_COMPONENT_LEN + 1);
        let long_key = "a/".repeat(MAX_KEY_LEN / 2) + "b";
        for key in [
            "",
            "/abs",
            "a//b",
            "a/",
            "..",
            "a/../b",
            "./a",
            "a/./b",
            ".hidden",
            "a/.b.tmp-123",
            "a\0b",
            "a\\b",
            "a\nb",
            long_component.as_str(),
            long_key.as_str(),
        ] {
            let err = validate_key(key).expect_err(key);
            assert!(matches!(err, SinkError::InvalidKey { .. }), "{err:?}");
        }
    }

    #[test]
    fn prefixes() {
        for prefix in ["", "a", "a/", "a/b", "backups/01", ".", "a/."] {
            validate_prefix(prefix).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        }
        for prefix in ["/", "/a", "a//", "../", "a/../b", ".x/", "a\\"] {
            validate_prefix(prefix).expect_err(prefix);
        }
    }
}
