//! Keys: the repository key (KEK) from the key file, and per-artifact data keys (DEK).
//!
//! Every artifact is encrypted with its own random DEK. DEKs are stored only
//! wrapped by the KEK (see [`crate::envelope`]), so rotating the KEK rewrites
//! small envelopes instead of whole artifacts, and deleting an envelope makes
//! its backup unreadable (crypto-shredding).

use std::fmt;

use base64::Engine as _;
use rand::RngCore;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::ArtifactId;

pub const KEY_LEN: usize = 32;
const WRAP_NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// nonce || ciphertext || tag
pub const WRAPPED_KEY_LEN: usize = WRAP_NONCE_LEN + KEY_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the key file does not contain a base64-encoded 32-byte key ({reason}); create one with `backupctl init` or `head -c 32 /dev/urandom | base64`")]
    MalformedKeyFile { reason: String },
    #[error("the data key of artifact {artifact} cannot be unwrapped with repository key {key_id}: wrong key file, or the key envelope was altered")]
    UnwrapFailed { artifact: ArtifactId, key_id: KeyId },
    #[error("a wrapped data key has {0} bytes, expected {WRAPPED_KEY_LEN}")]
    BadWrappedLength(usize),
}

/// Public, non-secret name of a repository key: derived from the key itself,
/// so a wrong key file is recognised before any decryption is attempted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// The repository key-encryption key (KEK).
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey {{ id: {}, bytes: *** }}", self.id)
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"backupd key id v1\0");
        hasher.update(bytes);
        let id = KeyId(format!("k-{}", &hex::encode(hasher.finalize())[..16]));
        Self { bytes, id }
    }

    /// Parses the key file contents: base64 of exactly 32 bytes, surrounding whitespace ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| KeyError::MalformedKeyFile {
                reason: format!("not base64: {e}"),
            })?;
        let bytes: [u8; KEY_LEN] =
            decoded
                .try_into()
                .map_err(|v: Vec<u8>| KeyError::MalformedKeyFile {
                    reason: format!("decodes to {} bytes, expected {KEY_LEN}", v.len()),
                })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key file contents (base64 and a newline).
    pub fn to_base64(&self) -> String {
        let mut s = base64::engine::general_purpose::STANDARD.encode(self.bytes);
        s.push('\n');
        s
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte key"))
    }

    fn wrap_aad(&self, artifact: ArtifactId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        aad.extend_from_slice(b"backupd dek v1\0");
        aad.extend_from_slice(artifact.as_bytes());
        aad.extend_from_slice(self.id.as_str().as_bytes());
        aad
    }

    /// Wraps `dek` for `artifact`: AES-256-GCM under the KEK with a random nonce;
    /// the AAD binds the artifact id and key id so a wrapped key cannot be moved.
    pub fn wrap(&self, artifact: ArtifactId, dek: &DataKey) -> [u8; WRAPPED_KEY_LEN] {
        let mut out = [0u8; WRAPPED_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut out[..WRAP_NONCE_LEN]);
        let nonce =
            Nonce::try_assume_unique_for_key(&out[..WRAP_NONCE_LEN]).expect("12-byte nonce");
        let mut body = dek.0;
        let tag = self
            .aead_key()
            .seal_in_place_separate_tag(nonce, Aad::from(self.wrap_aad(artifact)), &mut body)
            .expect("sealing 32 bytes cannot fail");
        out[WRAP_NONCE_LEN..WRAP_NONCE_LEN + KEY_LEN].copy_from_slice(&body);
        out[WRAP_NONCE_LEN + KEY_LEN..].copy_from_slice(tag.as_ref());
        out
    }

    pub fn unwrap(&self, artifact: ArtifactId, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(KeyError::BadWrappedLength(wrapped.len()));
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&wrapped[..WRAP_NONCE_LEN]).expect("12-byte nonce");
        let mut body = wrapped[WRAP_NONCE_LEN..].to_vec();
        let plain = self
            .aead_key()
            .open_in_place(nonce, Aad::from(self.wrap_aad(artifact)), &mut body)
            .map_err(|_| KeyError::UnwrapFailed {
                artifact,
                key_id: self.id.clone(),
            })?;
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(plain);
        Ok(DataKey(key))
    }
}

/// Finds the repository key with a given id: a single [`MasterKey`], or a [`Keyring`].
pub trait KeyLookup {
    fn key_for(&self, id: &KeyId) -> Option<&MasterKey>;
    /// The ids held, for messages ("k-1, k-2").
    fn held_ids(&self) -> String;
}

impl KeyLookup for MasterKey {
    fn key_for(&self, id: &KeyId) -> Option<&MasterKey> {
        (self.id() == id).then_some(self)
    }
    fn held_ids(&self) -> String {
        self.id.to_string()
    }
}

/// The key file's keys: the first (active) one wraps the data keys of new backups; the others
/// are kept to read what is still wrapped under them (until `backupctl key rotate` re-wraps
/// it and retires them).
///
/// The file is one base64 key per line, active first; blank lines and `#` comments are
/// ignored, so a file with a single key (what `backupctl init` writes) is a keyring of one.
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring {{ keys: [{}] }}", self.held_ids())
    }
}

impl Keyring {
    pub fn new(active: MasterKey) -> Self {
        Self { keys: vec![active] }
    }

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = MasterKey::from_base64(line)?;
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(KeyError::MalformedKeyFile {
                    reason: format!("key {} is listed twice", key.id()),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyError::MalformedKeyFile {
                reason: "it holds no key".into(),
            });
        }
        Ok(Self { keys })
    }

    /// The key file contents.
    pub fn to_text(&self) -> String {
        if self.keys.len() == 1 {
            return self.keys[0].to_base64();
        }
        let mut out = String::from(
            "# backupd keyring: the first key wraps new backups; the others are kept to read\n\
             # backups not re-wrapped yet (`backupctl key rotate` re-wraps and retires them).\n",
        );
        for k in &self.keys {
            out.push_str(&k.to_base64());
        }
        out
    }

    pub fn active(&self) -> &MasterKey {
        &self.keys[0]
    }

    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    /// Makes `key` the active key; the others stay for reading.
    pub fn add_active(&mut self, key: MasterKey) {
        self.keys.insert(0, key);
    }

    /// Drops a key that is not the active one; false if it is not held (or is active).
    pub fn retire(&mut self, id: &KeyId) -> bool {
        match self.keys.iter().position(|k| k.id() == id) {
            Some(i) if i > 0 => {
                self.keys.remove(i);
                true
            }
            _ => false,
        }
    }
}

impl KeyLookup for Keyring {
    fn key_for(&self, id: &KeyId) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id() == id)
    }
    fn held_ids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.id().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A per-artifact data encryption key.
#[derive(Clone)]
pub struct DataKey([u8; KEY_LEN]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub(crate) fn aead_key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &self.0).expect("32-byte key"))
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort: do not leave key bytes in freed memory.
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.iter_mut().for_each(|b| *b = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_binding() {
        let kek = MasterKey::generate();
        let dek = DataKey::generate();
        let a = ArtifactId::new();
        let wrapped = kek.wrap(a, &dek);
        assert_eq!(kek.unwrap(a, &wrapped).unwrap().0, dek.0);
        // wrong artifact, wrong key, tampered bytes all fail
        assert!(kek.unwrap(ArtifactId::new(), &wrapped).is_err());
        assert!(MasterKey::generate().unwrap(a, &wrapped).is_err());
        let mut bad = wrapped;
        bad[20] ^= 1;
        assert!(kek.unwrap(a, &bad).is_err());
    }

    #[test]
    fn keyring_parses_one_or_several_keys_active_first() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let single = Keyring::parse(&a.to_base64()).unwrap();
        assert_eq!(single.active().id(), a.id());
        let mut ring = Keyring::new(MasterKey::from_base64(&a.to_base64()).unwrap());
        ring.add_active(MasterKey::from_base64(&b.to_base64()).unwrap());
        let parsed = Keyring::parse(&ring.to_text()).unwrap();
        assert_eq!(parsed.active().id(), b.id());
        assert!(parsed.key_for(a.id()).is_some());
        assert!(!format!("{parsed:?}").contains(a.to_base64().trim()));
        let twice = format!("{}{}", a.to_base64(), a.to_base64());
        assert!(Keyring::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(Keyring::parse("# nothing\n").is_err());
        let mut ring = parsed;
        assert!(!ring.retire(b.id()), "the active key is never retired");
        assert!(ring.retire(a.id()));
        assert_eq!(ring.keys().len(), 1);
    }

    #[test]
    fn key_file_parsing_and_secret_hygiene() {
        let kek = MasterKey::generate();
        let again = MasterKey::from_base64(&kek.to_base64()).unwrap();
        assert_eq!(kek.id(), again.id());
        assert!(!format!("{kek:?}").contains(kek.to_base64().trim()));
        assert!(format!("{:?}", DataKey::generate()).contains("***"));
        let err = MasterKey::from_base64("aGVsbG8=").unwrap_err().to_string();
        assert!(err.contains("5 bytes"), "{err}");
        assert!(MasterKey::from_base64("%%%").is_err());
    }
}
