//! The per-backup key envelope: the backup's data keys, each wrapped by the
//! repository key. Stored as a small JSON object next to the backup's artifacts.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ids::{ArtifactId, BackupId};
use crate::keys::{DataKey, KeyError, KeyId, KeyLookup, MasterKey};

pub const ENVELOPE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("key envelope of backup {backup} is not valid JSON: {source}")]
    Malformed {
        backup: String,
        source: serde_json::Error,
    },
    #[error("key envelope of backup {backup} has format {found}; this backupctl reads format {ENVELOPE_FORMAT}, upgrade backupd")]
    UnsupportedFormat { backup: BackupId, found: u32 },
    #[error("backup {backup} was encrypted with repository key {expected}, but the key file holds key {found}: use the key file the backup was made with")]
    WrongKey {
        backup: BackupId,
        expected: KeyId,
        /// The ids the key file holds.
        found: String,
    },
    #[error("key envelope of backup {backup} has no data key for artifact {artifact}")]
    MissingKey {
        backup: BackupId,
        artifact: ArtifactId,
    },
    #[error("key envelope of backup {backup}: {source}")]
    Key { backup: BackupId, source: KeyError },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEnvelope {
    pub format: u32,
    pub backup_id: BackupId,
    pub key_id: KeyId,
    /// artifact id -> base64(nonce || wrapped key || tag)
    pub keys: BTreeMap<ArtifactId, String>,
}

impl KeyEnvelope {
    pub fn new(backup_id: BackupId, kek: &MasterKey) -> Self {
        Self {
            format: ENVELOPE_FORMAT,
            backup_id,
            key_id: kek.id().clone(),
            keys: BTreeMap::new(),
        }
    }

    /// Generates a data key for `artifact`, records it wrapped, and returns it.
    pub fn new_data_key(&mut self, kek: &MasterKey, artifact: ArtifactId) -> DataKey {
        let dek = DataKey::generate();
        let wrapped = kek.wrap(artifact, &dek);
        self.keys.insert(
            artifact,
            base64::engine::general_purpose::STANDARD.encode(wrapped),
        );
        dek
    }

    pub fn data_key(
        &self,
        keys: &impl KeyLookup,
        artifact: ArtifactId,
    ) -> Result<DataKey, EnvelopeError> {
        let Some(kek) = keys.key_for(&self.key_id) else {
            return Err(EnvelopeError::WrongKey {
                backup: self.backup_id,
                expected: self.key_id.clone(),
                found: keys.held_ids(),
            });
        };
        let encoded = self.keys.get(&artifact).ok_or(EnvelopeError::MissingKey {
            backup: self.backup_id,
            artifact,
        })?;
        let wrapped = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| EnvelopeError::Key {
                backup: self.backup_id,
                source: KeyError::BadWrappedLength(0),
            })?;
        kek.unwrap(artifact, &wrapped)
            .map_err(|source| EnvelopeError::Key {
                backup: self.backup_id,
                source,
            })
    }

    /// Re-wraps every data key under `new` (key rotation): artifacts are untouched.
    pub fn rewrap(&self, old: &impl KeyLookup, new: &MasterKey) -> Result<Self, EnvelopeError> {
        let mut out = Self::new(self.backup_id, new);
        for artifact in self.keys.keys() {
            let dek = self.data_key(old, *artifact)?;
            out.keys.insert(
                *artifact,
                base64::engine::general_purpose::STANDARD.encode(new.wrap(*artifact, &dek)),
            );
        }
        Ok(out)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("envelope serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(backup_hint: &str, bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Self =
            serde_json::from_slice(bytes).map_err(|source| EnvelopeError::Malformed {
                backup: backup_hint.to_owned(),
                source,
            })?;
        if env.format != ENVELOPE_FORMAT {
            return Err(EnvelopeError::UnsupportedFormat {
                backup: env.backup_id,
                found: env.format,
            });
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_rotation_and_wrong_key() {
        let kek = MasterKey::generate();
        let backup = BackupId::new();
        let a = ArtifactId::new();
        let mut env = KeyEnvelope::new(backup, &kek);
        let dek = env.new_data_key(&kek, a);
        let parsed = KeyEnvelope::from_json("x", &env.to_json()).unwrap();
        assert_eq!(parsed, env);
        assert_eq!(
            format!("{:?}", parsed.data_key(&kek, a).unwrap()),
            format!("{dek:?}")
        );

        let other = MasterKey::generate();
        let err = parsed.data_key(&other, a).unwrap_err().to_string();
        assert!(
            err.contains(kek.id().as_str()) && err.contains(other.id().as_str()),
            "{err}"
        );
        assert!(matches!(
            parsed.data_key(&kek, ArtifactId::new()),
            Err(EnvelopeError::MissingKey { .. })
        ));

        let rotated = parsed.rewrap(&kek, &other).unwrap();
        assert_eq!(rotated.key_id, *other.id());
        rotated.data_key(&other, a).unwrap();
        assert!(rotated.data_key(&kek, a).is_err());
    }
}
