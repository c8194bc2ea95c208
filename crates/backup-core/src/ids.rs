//! Identifiers. Backups and artifacts use UUIDv7 so ids sort by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| InvalidId { kind: stringify!($name), value: s.to_owned() })
            }
        }
    };
}

uuid_id!(
    /// One backup run of one source.
    BackupId,
    "BackupId"
);
uuid_id!(
    /// One artifact (an encrypted, compressed object) inside a backup.
    ArtifactId,
    "ArtifactId"
);

/// A string that is not a valid id.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{value:?} is not a valid {kind} (expected a UUID such as 0192f0c4-7b1e-7c3a-9d6e-2f4b5a6c7d8e)")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_sort_by_time() {
        let a = BackupId::new();
        let b = BackupId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<BackupId>().unwrap(), a);
        let err = "nope".parse::<ArtifactId>().unwrap_err();
        assert!(err.to_string().contains("ArtifactId"));
    }
}
