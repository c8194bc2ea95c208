//! Backup manifests: what a backup holds, stored encrypted next to its data
//! so that the repository alone is enough to rebuild the catalog.
//!
//! A manifest is JSON Lines: a header line, one line per entry (file,
//! directory, symlink, or skipped path), and a footer line. Entries stream
//! out as the backup runs, so memory does not grow with the number of files.

use std::io::{self, BufRead, Write};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::format::ArtifactSummary;
use crate::ids::{ArtifactId, BackupId};
use crate::keys::KeyId;

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManifestLine {
    Header(ManifestHeader),
    Entry(FileEntry),
    Skipped(SkippedEntry),
    Footer(ManifestFooter),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: u32,
    pub backup_id: BackupId,
    pub source_name: String,
    pub source_kind: String,
    pub backup_type: String,
    pub repository: String,
    pub started_at: DateTime<Utc>,
    pub host: String,
    pub tool_version: String,
    pub key_id: KeyId,
    /// The backup's tag, if it has one. Optional in the format: older manifests have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A path as bytes: plain UTF-8 when possible, base64 otherwise (Unix names need not be UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryPath {
    Utf8(String),
    Bytes { b64: String },
}

impl EntryPath {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Self::Utf8(s.to_owned()),
            Err(_) => Self::Bytes {
                b64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        match self {
            Self::Utf8(s) => Ok(s.as_bytes().to_vec()),
            Self::Bytes { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ManifestError::Invalid(format!("path {b64:?} is not valid base64"))),
        }
    }

    /// For messages only.
    pub fn display(&self) -> String {
        match self {
            Self::Utf8(s) => s.clone(),
            Self::Bytes { b64 } => format!("<non-UTF-8 path base64:{b64}>"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, '/'-separated, starting with the source root's label.
    pub path: EntryPath,
    pub kind: EntryKind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Bytes of content stored (files only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Offset of the content in the backup's data stream (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// BLAKE3 of the content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<EntryPath>,
    /// Incremental backups: the file is unchanged since this earlier backup of the chain,
    /// which (or whose own base) holds its content; this backup stores no data for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged_from: Option<BackupId>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub path: EntryPath,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFooter {
    pub finished_at: DateTime<Utc>,
    pub file_count: u64,
    pub skipped_count: u64,
    pub plaintext_bytes: u64,
    /// Every data artifact of the backup (the manifest cannot describe itself).
    pub artifacts: Vec<ArtifactSummary>,
    /// PostgreSQL base backups: where the backup starts and stops in the WAL, so a catalog
    /// rebuilt from the repository can still restore to a point in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresPosition>,
    /// MongoDB logical backups: the oplog range the backup is consistent over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<MongoPosition>,
    /// Atlas sources: the cloud backup snapshot the backup took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas: Option<AtlasSnapshotRef>,
}

/// The Atlas cloud backup snapshot an `atlas` source's backup took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtlasSnapshotRef {
    pub project_id: String,
    pub cluster: String,
    pub snapshot_id: String,
    pub created_at: Option<DateTime<Utc>>,
    pub storage_size_bytes: u64,
    /// Whether the snapshot's files are in the backup's data (`export = true`).
    pub exported: bool,
}

/// Where a MongoDB logical backup is in the oplog: its documents were read between `start`
/// and `end` (oplog timestamps `SECONDS.INCREMENT`), and its oplog file holds the entries
/// after `start` up to `end`, so a restore is consistent at `end` (or any point between).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MongoPosition {
    pub start: String,
    pub end: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub collections: u64,
    pub documents: u64,
    pub oplog_entries: u64,
    /// Documents per `db.collection` counted at the end (only when the source's drills
    /// check counts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub document_counts: std::collections::BTreeMap<String, u64>,
}

/// The WAL position of a PostgreSQL base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresPosition {
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// The backup an incremental one builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_backup_id: Option<BackupId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    #[error("manifest line {line} is not valid: {source}")]
    BadLine {
        line: u64,
        source: serde_json::Error,
    },
    #[error("manifest ends without a footer: the backup did not complete")]
    MissingFooter,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes manifest lines to any `Write` (normally an [`crate::format::ArtifactWriter`]).
pub struct ManifestWriter<W: Write> {
    out: W,
}

impl<W: Write> ManifestWriter<W> {
    pub fn new(out: W, header: &ManifestHeader) -> io::Result<Self> {
        let mut w = Self { out };
        w.line(&ManifestLine::Header(header.clone()))?;
        Ok(w)
    }

    pub fn entry(&mut self, entry: &FileEntry) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &EntryRef::Entry(entry))?;
        self.out.write_all(b"\n")
    }

    pub fn skipped(&mut self, skipped: SkippedEntry) -> io::Result<()> {
        self.line(&ManifestLine::Skipped(skipped))
    }

    pub fn finish(mut self, footer: ManifestFooter) -> io::Result<W> {
        self.line(&ManifestLine::Footer(footer))?;
        Ok(self.out)
    }

    fn line(&mut self, line: &ManifestLine) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }
}

/// Borrowing twin of `ManifestLine::Entry`, to avoid cloning every entry.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EntryRef<'a> {
    Entry(&'a FileEntry),
}

/// Reads a manifest line by line. The header is read on open; entries are
/// streamed; the footer is returned by [`ManifestReader::next_item`] as the last item.
pub struct ManifestReader<R: BufRead> {
    input: R,
    line_no: u64,
    buf: String,
    footer_seen: bool,
}

impl<R: BufRead> ManifestReader<R> {
    pub fn open(mut input: R) -> Result<(Self, ManifestHeader), ManifestError> {
        let mut buf = String::new();
        input.read_line(&mut buf)?;
        let header = match serde_json::from_str(&buf)
            .map_err(|source| ManifestError::BadLine { line: 1, source })?
        {
            ManifestLine::Header(h) => h,
            _ => return Err(ManifestError::Invalid("first line is not a header".into())),
        };
        if header.format != MANIFEST_FORMAT {
            return Err(ManifestError::Invalid(format!(
                "manifest format {} is not supported (this build reads {MANIFEST_FORMAT})",
                header.format
            )));
        }
        Ok((
            Self {
                input,
                line_no: 1,
                buf,
                footer_seen: false,
            },
            header,
        ))
    }

    /// The next entry, skipped entry or footer; `None` after the footer.
    pub fn next_item(&mut self) -> Result<Option<ManifestLine>, ManifestError> {
        if self.footer_seen {
            return Ok(None);
        }
        self.buf.clear();
        if self.input.read_line(&mut self.buf)? == 0 {
            return Err(ManifestError::MissingFooter);
        }
        self.line_no += 1;
        let line: ManifestLine =
            serde_json::from_str(&self.buf).map_err(|source| ManifestError::BadLine {
                line: self.line_no,
                source,
            })?;
        match line {
            ManifestLine::Header(_) => Err(ManifestError::Invalid(format!(
                "second header at line {}",
                self.line_no
            ))),
            ManifestLine::Footer(_) => {
                self.footer_seen = true;
                Ok(Some(line))
            }
            other => Ok(Some(other)),
        }
    }

    /// The underlying reader (e.g. to read an artifact to its verified end).
    pub fn into_inner(self) -> R {
        self.input
    }

    /// Skips entries and returns the footer (for catalog rebuild).
    pub fn footer(&mut self) -> Result<ManifestFooter, ManifestError> {
        while let Some(item) = self.next_item()? {
            if let ManifestLine::Footer(f) = item {
                return Ok(f);
            }
        }
        Err(ManifestError::MissingFooter)
    }
}

/// Object keys of a backup inside a repository.
pub mod layout {
    use super::*;

    pub const BACKUPS_PREFIX: &str = "backups/";
    pub const WAL_PREFIX: &str = "wal/";

    /// A source's archived WAL file (`file` is a validated WAL file name; sources are
    /// validated config names).
    pub fn wal_key(source: &str, file: &str) -> String {
        format!("{WAL_PREFIX}{source}/{file}.bkpd")
    }

    pub fn backup_prefix(backup: BackupId) -> String {
        format!("{BACKUPS_PREFIX}{backup}/")
    }
    pub fn envelope_key(backup: BackupId) -> String {
        format!("{BACKUPS_PREFIX}{backup}/keys.json")
    }
    /// The envelope `backupctl key rotate` writes when it re-wraps a backup's data keys under
    /// repository key `key` (objects are immutable: a rotation adds one, then deletes the old).
    pub fn rotated_envelope_key(backup: BackupId, key: &crate::keys::KeyId) -> String {
        format!("{BACKUPS_PREFIX}{backup}/keys-{key}.json")
    }
    /// Whether `key` is one of `backup`'s key envelopes (original or rotated).
    pub fn is_envelope_key(backup: BackupId, key: &str) -> bool {
        key.strip_prefix(&backup_prefix(backup))
            .is_some_and(|name| {
                name == "keys.json" || (name.starts_with("keys-") && name.ends_with(".json"))
            })
    }
    pub fn manifest_key(backup: BackupId, artifact: ArtifactId) -> String {
        format!("{BACKUPS_PREFIX}{backup}/manifest-{artifact}.bkpd")
    }
    pub fn data_key(backup: BackupId, artifact: ArtifactId) -> String {
        format!("{BACKUPS_PREFIX}{backup}/data-{artifact}.bkpd")
    }

    /// The backup id a key belongs to, if it is under `backups/`.
    pub fn backup_of_key(key: &str) -> Option<BackupId> {
        key.strip_prefix(BACKUPS_PREFIX)?
            .split('/')
            .next()?
            .parse()
            .ok()
    }

    /// The manifest artifact id, if `key` names a manifest.
    pub fn manifest_artifact_of_key(key: &str) -> Option<ArtifactId> {
        let name = key.rsplit('/').next()?;
        name.strip_prefix("manifest-")?
            .strip_suffix(".bkpd")?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ManifestHeader {
        ManifestHeader {
            format: MANIFEST_FORMAT,
            backup_id: BackupId::new(),
            source_name: "files".into(),
            source_kind: "files".into(),
            backup_type: "full".into(),
            repository: "region-a".into(),
            started_at: Utc::now(),
            host: "h".into(),
            tool_version: crate::TOOL_VERSION.into(),
            key_id: KeyId::new("k-1"),
            tag: None,
        }
    }

    #[test]
    fn the_tag_is_optional_in_headers() {
        let untagged = header();
        let line = serde_json::to_string(&ManifestLine::Header(untagged.clone())).unwrap();
        assert!(
            !line.contains("tag\""),
            "no tag field when there is none: {line}"
        );
        // Manifests written before tags existed read as untagged.
        let back: ManifestLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ManifestLine::Header(untagged.clone()));
        let tagged = ManifestHeader {
            tag: Some("pre-upgrade".into()),
            ..untagged
        };
        let line = serde_json::to_string(&ManifestLine::Header(tagged.clone())).unwrap();
        assert!(line.contains(r#""tag":"pre-upgrade""#), "{line}");
        let back: ManifestLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ManifestLine::Header(tagged));
    }

    #[test]
    fn manifest_round_trip_with_odd_paths() {
        let h = header();
        let mut w = ManifestWriter::new(Vec::new(), &h).unwrap();
        let e = FileEntry {
            path: EntryPath::from_bytes(b"data/caf\xe9.txt"),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            size: 12,
            offset: Some(0),
            blake3: Some("ab".into()),
            target: None,
            unchanged_from: None,
        };
        w.entry(&e).unwrap();
        w.skipped(SkippedEntry {
            path: EntryPath::Utf8("data/secret".into()),
            error: "denied".into(),
        })
        .unwrap();
        let footer = ManifestFooter {
            finished_at: Utc::now(),
            file_count: 1,
            skipped_count: 1,
            plaintext_bytes: 12,
            artifacts: vec![],
            postgres: None,
            mongodb: None,
            atlas: None,
        };
        let bytes = w.finish(footer.clone()).unwrap();
        let (mut r, got) = ManifestReader::open(&bytes[..]).unwrap();
        assert_eq!(got, h);
        assert_eq!(r.next_item().unwrap(), Some(ManifestLine::Entry(e.clone())));
        assert!(matches!(
            r.next_item().unwrap(),
            Some(ManifestLine::Skipped(_))
        ));
        assert_eq!(r.next_item().unwrap(), Some(ManifestLine::Footer(footer)));
        assert_eq!(r.next_item().unwrap(), None);
        assert_eq!(e.path.to_bytes().unwrap(), b"data/caf\xe9.txt");

        // Without the footer the manifest is incomplete.
        let cut = &bytes[..bytes.len() - 10];
        let cut = &cut[..cut.iter().rposition(|b| *b == b'\n').unwrap() + 1];
        assert!(matches!(
            ManifestReader::open(cut).unwrap().0.footer(),
            Err(ManifestError::MissingFooter)
        ));
    }

    #[test]
    fn layout_keys_parse_back() {
        let b = BackupId::new();
        let a = ArtifactId::new();
        assert_eq!(layout::backup_of_key(&layout::manifest_key(b, a)), Some(b));
        assert_eq!(
            layout::manifest_artifact_of_key(&layout::manifest_key(b, a)),
            Some(a)
        );
        assert_eq!(
            layout::manifest_artifact_of_key(&layout::data_key(b, a)),
            None
        );
    }
}
