//! Artifact format v1 (specified in docs/format.md).
//!
//! ```text
//! header  : magic(8) version(u16) kind(u8) key_id_len(u8) artifact_id(16)
//!           nonce_prefix(8) segment_size(u32) key_id(key_id_len)
//! record* : flags(u8) len(u32) ciphertext(len)       -- data segments, then one trailer
//! trailer : sealed record with FINAL set; plaintext = plaintext_len(u64)
//!           segment_count(u64) plaintext_sha256(32)
//! ```
//! All integers little-endian except the nonce counter. Each record is
//! AES-256-GCM sealed with nonce = nonce_prefix || index (u32 BE) and
//! AAD = SHA-256(header) || index (u64) || flags, which detects bit flips,
//! truncation, reordering, splicing between artifacts and wrong keys.

mod reader;
mod writer;

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::ids::ArtifactId;
use crate::keys::KeyId;

pub use reader::{ArtifactReader, ReadOptions, VerifiedArtifact};
pub use writer::{ArtifactSummary, ArtifactWriter, WriteOptions};

pub const MAGIC: [u8; 8] = *b"\x89BKPD\r\n\x1a";
pub const FORMAT_VERSION: u16 = 1;
pub const FIXED_HEADER_LEN: usize = 40;
pub const TAG_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 5;
pub const TRAILER_PLAINTEXT_LEN: usize = 48;
pub const DEFAULT_SEGMENT_SIZE: usize = 4 << 20;
pub const MIN_SEGMENT_SIZE: usize = 4 << 10;
pub const MAX_SEGMENT_SIZE: usize = 64 << 20;

pub(crate) const FLAG_FINAL: u8 = 0b01;
pub(crate) const FLAG_COMPRESSED: u8 = 0b10;

/// What an artifact holds; recorded in the header so a bare repository can be interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Data,
    Manifest,
    Wal,
    Other,
}

impl ArtifactKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Manifest => 1,
            Self::Wal => 2,
            Self::Other => 3,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Data,
            1 => Self::Manifest,
            2 => Self::Wal,
            3 => Self::Other,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Manifest => "manifest",
            Self::Wal => "wal",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a backupd artifact (bad magic bytes): the object is corrupt or is not a backupd artifact")]
    NotAnArtifact,
    #[error("artifact format version {0} is not supported by this build (supports {FORMAT_VERSION}): upgrade backupd")]
    UnsupportedVersion(u16),
    #[error("artifact header is corrupt: {0}")]
    CorruptHeader(String),
    #[error("expected artifact {expected} but the object holds artifact {found}: an object was replaced or moved")]
    WrongArtifact {
        expected: ArtifactId,
        found: ArtifactId,
    },
    #[error("artifact {artifact} is truncated at segment {segment}: the object is incomplete")]
    Truncated { artifact: ArtifactId, segment: u64 },
    #[error("segment {segment} of artifact {artifact} failed authentication: the data was altered, segments were reordered or taken from another artifact, or the key is wrong")]
    Tampered { artifact: ArtifactId, segment: u64 },
    #[error("segment {segment} of artifact {artifact} is malformed: {reason}")]
    BadRecord {
        artifact: ArtifactId,
        segment: u64,
        reason: String,
    },
    #[error("segment {segment} of artifact {artifact} does not decompress: {reason}")]
    Decompress {
        artifact: ArtifactId,
        segment: u64,
        reason: String,
    },
    #[error("artifact {artifact} has data after its trailer: the object was altered")]
    TrailingData { artifact: ArtifactId },
    #[error(
        "artifact {artifact} trailer mismatch: {what} is {found}, the trailer says {expected}"
    )]
    TrailerMismatch {
        artifact: ArtifactId,
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("invalid artifact options: {0}")]
    InvalidOptions(String),
    #[error("a pipeline worker panicked while processing artifact {artifact}")]
    WorkerPanicked { artifact: ArtifactId },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FormatError {
    /// The segment index named by this error, if any.
    pub fn segment(&self) -> Option<u64> {
        match self {
            Self::Truncated { segment, .. }
            | Self::Tampered { segment, .. }
            | Self::BadRecord { segment, .. }
            | Self::Decompress { segment, .. } => Some(*segment),
            _ => None,
        }
    }

    /// True when the error means the stored data is not what was written
    /// (as opposed to an I/O failure while reading it).
    pub fn is_integrity_failure(&self) -> bool {
        !matches!(
            self,
            Self::Io(_) | Self::InvalidOptions(_) | Self::WorkerPanicked { .. }
        )
    }

    /// Recovers a `FormatError` carried inside an `io::Error` (the `Read`/`Write`
    /// impls must return `io::Error`).
    pub fn from_io(err: io::Error) -> FormatError {
        if err.get_ref().is_some_and(|e| e.is::<FormatError>()) {
            let inner = err.into_inner().expect("checked");
            *inner.downcast::<FormatError>().expect("checked")
        } else {
            FormatError::Io(err)
        }
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// The parsed artifact header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactHeader {
    pub artifact_id: ArtifactId,
    pub kind: ArtifactKind,
    pub key_id: KeyId,
    pub nonce_prefix: [u8; 8],
    pub segment_size: u32,
}

impl ArtifactHeader {
    pub fn encode(&self) -> Vec<u8> {
        let key = self.key_id.as_str().as_bytes();
        assert!(
            !key.is_empty() && key.len() <= 64,
            "key id must be 1..=64 bytes"
        );
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + key.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(self.kind.to_byte());
        out.push(key.len() as u8);
        out.extend_from_slice(self.artifact_id.as_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        out.extend_from_slice(&self.segment_size.to_le_bytes());
        out.extend_from_slice(key);
        out
    }

    /// Reads and parses a header; returns it with its raw bytes (whose digest is bound into every segment).
    pub fn read_from(input: &mut impl Read) -> Result<(Self, Vec<u8>), FormatError> {
        let mut fixed = [0u8; FIXED_HEADER_LEN];
        read_exact_or(input, &mut fixed, || FormatError::NotAnArtifact)?;
        if fixed[..8] != MAGIC {
            return Err(FormatError::NotAnArtifact);
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let kind = ArtifactKind::from_byte(fixed[10]).ok_or_else(|| {
            FormatError::CorruptHeader(format!("unknown artifact kind {}", fixed[10]))
        })?;
        let key_len = fixed[11] as usize;
        if key_len == 0 || key_len > 64 {
            return Err(FormatError::CorruptHeader(format!(
                "key id length {key_len}"
            )));
        }
        let artifact_id = ArtifactId::from_bytes(fixed[12..28].try_into().expect("16 bytes"));
        let nonce_prefix: [u8; 8] = fixed[28..36].try_into().expect("8 bytes");
        let segment_size = u32::from_le_bytes(fixed[36..40].try_into().expect("4 bytes"));
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&(segment_size as usize)) {
            return Err(FormatError::CorruptHeader(format!(
                "segment size {segment_size}"
            )));
        }
        let mut key = vec![0u8; key_len];
        read_exact_or(input, &mut key, || {
            FormatError::CorruptHeader("truncated key id".into())
        })?;
        let key_id = String::from_utf8(key.clone())
            .map_err(|_| FormatError::CorruptHeader("key id is not UTF-8".into()))?;
        let mut raw = fixed.to_vec();
        raw.extend_from_slice(&key);
        Ok((
            Self {
                artifact_id,
                kind,
                key_id: KeyId::new(key_id),
                nonce_prefix,
                segment_size,
            },
            raw,
        ))
    }
}

pub(crate) fn header_digest(raw_header: &[u8]) -> [u8; 32] {
    Sha256::digest(raw_header).into()
}

pub(crate) fn nonce_for(prefix: &[u8; 8], index: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&(index as u32).to_be_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

pub(crate) fn aad_for(header_digest: &[u8; 32], index: u64, flags: u8) -> [u8; 41] {
    let mut a = [0u8; 41];
    a[..32].copy_from_slice(header_digest);
    a[32..40].copy_from_slice(&index.to_le_bytes());
    a[40] = flags;
    a
}

/// `read_exact`, but a clean or partial EOF becomes `on_eof()`.
pub(crate) fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    on_eof: impl FnOnce() -> FormatError,
) -> Result<(), FormatError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(on_eof()),
        Err(e) => Err(FormatError::from_io(e)),
    }
}

#[cfg(test)]
mod tests;
