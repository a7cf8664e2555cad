//! Sandbox and snapshot identifiers.
//!
//! A sandbox id becomes part of a host name (`<port>-<id>.<domain>`), of paths and of cgroup
//! and interface names, so it is validated before it is used anywhere: a DNS label of
//! lowercase ASCII letters, digits and inner hyphens, at most 63 characters. Generated ids are
//! 20 random characters from `[a-z0-9]` (about 103 bits), like E2B's.

use std::fmt;

use crate::error::{Error, Result};

/// Length of generated sandbox ids.
pub const GENERATED_ID_LEN: usize = 20;
/// Longest id accepted (the DNS label limit).
pub const MAX_ID_LEN: usize = 63;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A validated sandbox id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SandboxId(String);

impl SandboxId {
    /// Validate `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `id` is empty, longer than 63 characters, or not a
    /// lowercase DNS label.
    pub fn parse(id: &str) -> Result<Self> {
        validate_dns_label("sandbox id", id)?;
        Ok(Self(id.to_owned()))
    }

    /// A fresh random id.
    ///
    /// # Panics
    ///
    /// When the operating system's random source fails, which `getrandom` documents as not
    /// happening on Linux after early boot.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0_u8; GENERATED_ID_LEN];
        // The OS random source does not fail on any supported kernel; an id is worthless without it.
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        let id = bytes
            .iter()
            // 256 % 36 leaves a small bias on the first 4 characters; irrelevant for ids.
            .map(|byte| char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]))
            .collect();
        Self(id)
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for SandboxId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Check that `value` is a lowercase DNS label; `what` names it in the error.
pub(crate) fn validate_dns_label(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidRequest(format!("{what} is empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::InvalidRequest(format!(
            "{what} is {} characters long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(Error::InvalidRequest(format!(
            "{what} {value:?} contains {bad:?}; use lowercase letters, digits and '-'"
        )));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(Error::InvalidRequest(format!(
            "{what} {value:?} must not start or end with '-'"
        )));
    }
    Ok(())
}

/// Check a snapshot or template id: 1–128 characters of `[A-Za-z0-9_.-]`, not `.` or `..`,
/// so that it is always safe as one path component.
pub(crate) fn validate_snapshot_id(value: &str) -> Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if value.is_empty() || value.len() > 128 {
        return Err(Error::InvalidRequest(format!(
            "snapshot id {value:?} must be 1 to 128 characters long"
        )));
    }
    if value == "." || value == ".." || !value.chars().all(allowed) {
        return Err(Error::InvalidRequest(format!(
            "snapshot id {value:?} may use only letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| SandboxId::generate()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.as_str().len(), GENERATED_ID_LEN);
            SandboxId::parse(id.as_str()).unwrap();
        }
    }

    #[test]
    fn rejects_non_dns_ids_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Upper", "contains 'U'"),
            ("sbx_avz_1", "contains '_'"),
            ("a.b", "contains '.'"),
            ("../etc", "contains '.'"),
            ("-lead", "must not start"),
            ("trail-", "must not start or end"),
        ] {
            let error = SandboxId::parse(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        let long = "a".repeat(64);
        assert!(
            SandboxId::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("limit is 63")
        );
        SandboxId::parse(&"a".repeat(63)).unwrap();
        SandboxId::parse("sbx-one").unwrap();
    }

    #[test]
    fn snapshot_ids_are_single_path_components() {
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_snapshot_id(bad).is_err(), "{bad:?}");
        }
        validate_snapshot_id("base-snapshot_1.v2").unwrap();
    }
}
