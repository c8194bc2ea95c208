//! Sealed objects: one artifact that carries its own wrapped data key, for objects that live
//! alone rather than in a backup with a key envelope (WAL segments and history files, which
//! `wal-push` stores one at a time and `wal-fetch` must read without any other object).
//!
//! ```text
//! magic        8   "BKPDSEAL"
//! version      1   1
//! artifact_id 16   must equal the artifact header's id (it is in the wrapping AAD)
//! key_id_len   1   1..=64
//! key_id       key_id_len bytes, ASCII
//! wrapped_dek 60   MasterKey::wrap(artifact_id, dek): AES-256-GCM under the repository key
//! artifact     the artifact (docs/format.md), sealed with that DEK
//! ```
//!
//! Tampering with the prefix fails the unwrap (artifact id and key id are authenticated) or
//! the artifact id check; tampering with the artifact fails as for any artifact.

use std::io::{self, Read, Write};

use crate::format::{ArtifactHeader, WriteOptions};
use crate::format::{ArtifactKind, ArtifactReader, ArtifactWriter, FormatError, ReadOptions};
use crate::keys::{DataKey, KeyError, KeyId, KeyLookup, MasterKey, WRAPPED_KEY_LEN};
use crate::ArtifactId;

pub const SEALED_MAGIC: &[u8; 8] = b"BKPDSEAL";
const SEALED_VERSION: u8 = 1;
const MAX_KEY_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(
        "not a sealed backupd object (bad magic bytes): the object is corrupt or of another kind"
    )]
    NotSealed,
    #[error("sealed object version {0} is not supported by this build: upgrade backupd")]
    UnsupportedVersion(u8),
    #[error("sealed object prefix is corrupt: {0}")]
    CorruptPrefix(String),
    #[error("the object was sealed with repository key {found}, but the key file holds key {expected}: use the key file this repository was created with")]
    WrongKey { expected: String, found: KeyId },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl SealedError {
    /// Stored data is damaged (as opposed to a wrong key or an unreadable object).
    pub fn is_integrity_failure(&self) -> bool {
        match self {
            Self::NotSealed | Self::CorruptPrefix(_) => true,
            Self::Key(KeyError::UnwrapFailed { .. }) => true,
            Self::Format(e) => e.is_integrity_failure(),
            _ => false,
        }
    }
}

/// Starts a sealed object on `out`: writes the prefix and returns the artifact writer.
pub fn seal<W: Write>(
    mut out: W,
    kek: &MasterKey,
    kind: ArtifactKind,
    options: &WriteOptions,
) -> Result<ArtifactWriter<W>, FormatError> {
    let artifact_id = ArtifactId::new();
    let dek = DataKey::generate();
    let key_id = kek.id().as_str().as_bytes();
    let mut prefix = Vec::with_capacity(8 + 1 + 16 + 1 + key_id.len() + WRAPPED_KEY_LEN);
    prefix.extend_from_slice(SEALED_MAGIC);
    prefix.push(SEALED_VERSION);
    prefix.extend_from_slice(artifact_id.as_bytes());
    prefix.push(u8::try_from(key_id.len()).expect("key ids are short"));
    prefix.extend_from_slice(key_id);
    prefix.extend_from_slice(&kek.wrap(artifact_id, &dek));
    out.write_all(&prefix).map_err(FormatError::from_io)?;
    ArtifactWriter::new(out, artifact_id, kind, kek.id(), &dek, options)
}

/// Opens a sealed object: checks the prefix, unwraps its key with `kek` and returns the
/// artifact reader (read it to the end: the trailer check happens there).
pub fn open_sealed<R: Read>(
    mut input: R,
    keys: &impl KeyLookup,
    options: &ReadOptions,
) -> Result<(ArtifactReader<R>, ArtifactHeader), SealedError> {
    let mut fixed = [0u8; 8 + 1 + 16 + 1];
    read_prefix(&mut input, &mut fixed)?;
    if &fixed[..8] != SEALED_MAGIC {
        return Err(SealedError::NotSealed);
    }
    if fixed[8] != SEALED_VERSION {
        return Err(SealedError::UnsupportedVersion(fixed[8]));
    }
    let artifact_id = ArtifactId::from_bytes(fixed[9..25].try_into().expect("16 bytes"));
    let key_id_len = usize::from(fixed[25]);
    if key_id_len == 0 || key_id_len > MAX_KEY_ID_LEN {
        return Err(SealedError::CorruptPrefix(format!(
            "key id length {key_id_len}"
        )));
    }
    let mut rest = vec![0u8; key_id_len + WRAPPED_KEY_LEN];
    read_prefix(&mut input, &mut rest)?;
    let key_id = std::str::from_utf8(&rest[..key_id_len])
        .map_err(|_| SealedError::CorruptPrefix("key id is not UTF-8".into()))?;
    let Some(kek) = keys.key_for(&KeyId::new(key_id)) else {
        return Err(SealedError::WrongKey {
            expected: keys.held_ids(),
            found: KeyId::new(key_id),
        });
    };
    let dek = kek.unwrap(artifact_id, &rest[key_id_len..])?;
    Ok(ArtifactReader::open(
        input,
        Some(artifact_id),
        &dek,
        options,
    )?)
}

/// The id of the repository key a sealed object's data key is wrapped with, from the object's
/// first bytes (at least 90 of them, or the whole object if shorter).
pub fn sealed_key_id(prefix: &[u8]) -> Result<KeyId, SealedError> {
    if prefix.len() < 26 || &prefix[..8] != SEALED_MAGIC {
        return Err(SealedError::NotSealed);
    }
    let len = usize::from(prefix[25]);
    if len == 0 || len > MAX_KEY_ID_LEN || prefix.len() < 26 + len {
        return Err(SealedError::CorruptPrefix(format!("key id length {len}")));
    }
    std::str::from_utf8(&prefix[26..26 + len])
        .map(KeyId::new)
        .map_err(|_| SealedError::CorruptPrefix("key id is not UTF-8".into()))
}

/// Bytes that always hold a sealed object's key id.
pub const SEALED_KEY_ID_PREFIX: usize = 26 + MAX_KEY_ID_LEN;

fn read_prefix<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<(), SealedError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            SealedError::CorruptPrefix("the object ends inside its prefix (truncated)".into())
        }
        _ => SealedError::Format(FormatError::from_io(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_bytes(kek: &MasterKey, data: &[u8]) -> (Vec<u8>, ArtifactId) {
        let mut w = seal(Vec::new(), kek, ArtifactKind::Wal, &WriteOptions::default()).unwrap();
        w.write_all(data).unwrap();
        let (out, summary) = w.finish().unwrap();
        (out, summary.artifact_id)
    }

    fn open_all(kek: &MasterKey, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let (mut reader, _) = open_sealed(io::Cursor::new(bytes), kek, &ReadOptions::default())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_rejects_tampering_wrong_keys_and_truncation() {
        let kek = MasterKey::generate();
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (bytes, _) = sealed_bytes(&kek, &data);
        assert_eq!(open_all(&kek, bytes.clone()).unwrap(), data);

        let other = MasterKey::generate();
        let err = open_all(&other, bytes.clone()).unwrap_err();
        assert!(err.contains("key file holds key"), "{err}");

        // Every byte of the prefix matters.
        let prefix_len = 8 + 1 + 16 + 1 + kek.id().as_str().len() + WRAPPED_KEY_LEN;
        for i in 0..prefix_len {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                open_all(&kek, bad).is_err(),
                "flip at prefix byte {i} went unnoticed"
            );
        }
        // And of the artifact.
        let mut bad = bytes.clone();
        let middle = prefix_len + (bytes.len() - prefix_len) / 2;
        bad[middle] ^= 0x80;
        assert!(open_all(&kek, bad).is_err());
        for cut in [3, prefix_len - 1, prefix_len + 10, bytes.len() - 1] {
            assert!(
                open_all(&kek, bytes[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        // Another sealed object's prefix on this artifact: the artifact id check catches it.
        let (other_bytes, _) = sealed_bytes(&kek, b"other");
        let mut spliced = other_bytes[..prefix_len].to_vec();
        spliced.extend_from_slice(&bytes[prefix_len..]);
        assert!(open_all(&kek, spliced).is_err());
    }
}
