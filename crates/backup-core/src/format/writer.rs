//! Streaming, parallel artifact encoder.

use std::collections::VecDeque;
use std::io::{self, Cursor, Write};
use std::sync::Arc;

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey};

use super::*;
use crate::keys::DataKey;
use crate::pool::{BackgroundHasher, Task, WorkerPool};

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Plaintext bytes per segment.
    pub segment_size: usize,
    /// zstd level (1-19; 3 is the default, a good speed/ratio balance).
    pub zstd_level: i32,
    /// Segments being compressed/encrypted at once; bounds memory.
    pub max_in_flight: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            zstd_level: 3,
            max_in_flight: WorkerPool::global().threads() * 2 + 1,
        }
    }
}

impl WriteOptions {
    pub fn validate(&self) -> Result<(), FormatError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(FormatError::InvalidOptions(format!(
                "segment size {} must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes",
                self.segment_size
            )));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(FormatError::InvalidOptions(format!(
                "zstd level {} must be between 1 and 19",
                self.zstd_level
            )));
        }
        if self.max_in_flight == 0 {
            return Err(FormatError::InvalidOptions(
                "max in flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What was written, for the catalog and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactSummary {
    pub artifact_id: ArtifactId,
    pub kind: ArtifactKind,
    pub plaintext_size: u64,
    #[serde(with = "hex_32")]
    pub plaintext_sha256: [u8; 32],
    pub stored_size: u64,
    #[serde(with = "hex_32")]
    pub stored_sha256: [u8; 32],
    pub segment_count: u64,
}

pub(crate) mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes of hex"))
    }
}

struct SealContext {
    key: LessSafeKey,
    header_digest: [u8; 32],
    nonce_prefix: [u8; 8],
    level: i32,
}

/// Encodes plaintext written to it into an artifact written to `out`.
///
/// Segments are compressed and sealed on the worker pool; output stays in
/// order and at most `max_in_flight` segments are held, so memory is bounded
/// whatever the input size. Call [`ArtifactWriter::finish`]; dropping the writer
/// without it leaves an artifact without trailer, which readers reject.
pub struct ArtifactWriter<W: Write> {
    out: W,
    artifact_id: ArtifactId,
    kind: ArtifactKind,
    ctx: Arc<SealContext>,
    pool: &'static WorkerPool,
    segment_size: usize,
    max_in_flight: usize,
    buf: Vec<u8>,
    next_index: u64,
    in_flight: VecDeque<Task<Vec<u8>>>,
    plain_hasher: Option<BackgroundHasher>,
    stored_hasher: Option<BackgroundHasher>,
    plain_len: u64,
    stored_len: u64,
}

impl<W: Write> ArtifactWriter<W> {
    pub fn new(
        mut out: W,
        artifact_id: ArtifactId,
        kind: ArtifactKind,
        key_id: &KeyId,
        dek: &DataKey,
        options: &WriteOptions,
    ) -> Result<Self, FormatError> {
        options.validate()?;
        let mut nonce_prefix = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut nonce_prefix);
        let header = ArtifactHeader {
            artifact_id,
            kind,
            key_id: key_id.clone(),
            nonce_prefix,
            segment_size: options.segment_size as u32,
        };
        let raw = header.encode();
        out.write_all(&raw)?;
        let stored_hasher = BackgroundHasher::new();
        stored_hasher.update(Arc::new(raw.clone()));
        Ok(Self {
            out,
            artifact_id,
            kind,
            ctx: Arc::new(SealContext {
                key: dek.aead_key(),
                header_digest: header_digest(&raw),
                nonce_prefix,
                level: options.zstd_level,
            }),
            pool: WorkerPool::global(),
            segment_size: options.segment_size,
            max_in_flight: options.max_in_flight,
            buf: Vec::with_capacity(options.segment_size),
            next_index: 0,
            in_flight: VecDeque::new(),
            plain_hasher: Some(BackgroundHasher::new()),
            stored_hasher: Some(stored_hasher),
            plain_len: 0,
            stored_len: raw.len() as u64,
        })
    }

    pub fn artifact_id(&self) -> ArtifactId {
        self.artifact_id
    }

    /// Plaintext bytes accepted so far.
    pub fn plaintext_len(&self) -> u64 {
        self.plain_len + self.buf.len() as u64
    }

    fn submit_segment(&mut self) -> Result<(), FormatError> {
        if self.next_index >= u32::MAX as u64 {
            return Err(FormatError::InvalidOptions(
                "artifact exceeds 2^32 segments".into(),
            ));
        }
        let data = Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.segment_size),
        ));
        self.plain_len += data.len() as u64;
        self.plain_hasher
            .as_ref()
            .expect("until finish")
            .update(data.clone());
        let ctx = self.ctx.clone();
        let index = self.next_index;
        self.next_index += 1;
        self.in_flight.push_back(
            self.pool
                .spawn(move || seal_data_segment(&ctx, index, &data)),
        );
        while self.in_flight.len() > self.max_in_flight {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> Result<(), FormatError> {
        let task = self.in_flight.pop_front().expect("caller checked");
        let record = task.wait().ok_or(FormatError::WorkerPanicked {
            artifact: self.artifact_id,
        })?;
        self.emit(Arc::new(record))
    }

    fn emit(&mut self, record: Arc<Vec<u8>>) -> Result<(), FormatError> {
        self.out.write_all(&record)?;
        self.stored_len += record.len() as u64;
        self.stored_hasher
            .as_ref()
            .expect("until finish")
            .update(record);
        Ok(())
    }

    /// Flushes the last segment, writes the trailer and returns the output and a summary.
    pub fn finish(mut self) -> Result<(W, ArtifactSummary), FormatError> {
        if !self.buf.is_empty() {
            self.submit_segment()?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        let plain_sha = self.plain_hasher.take().expect("finish once").finish();
        let segment_count = self.next_index;
        let mut trailer = Vec::with_capacity(TRAILER_PLAINTEXT_LEN);
        trailer.extend_from_slice(&self.plain_len.to_le_bytes());
        trailer.extend_from_slice(&segment_count.to_le_bytes());
        trailer.extend_from_slice(&plain_sha);
        let record = seal_record(&self.ctx, segment_count, FLAG_FINAL, trailer);
        self.emit(Arc::new(record))?;
        self.out.flush()?;
        let stored_sha = self.stored_hasher.take().expect("finish once").finish();
        let summary = ArtifactSummary {
            artifact_id: self.artifact_id,
            kind: self.kind,
            plaintext_size: self.plain_len,
            plaintext_sha256: plain_sha,
            stored_size: self.stored_len,
            stored_sha256: stored_sha,
            segment_count,
        };
        // Move `out` out of a type with Drop-free fields.
        let Self { out, .. } = self;
        Ok((out, summary))
    }
}

impl<W: Write> Write for ArtifactWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = self.segment_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.segment_size {
                self.submit_segment().map_err(FormatError::into_io)?;
            }
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Segments are only complete at segment boundaries or at finish().
        Ok(())
    }
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn seal_data_segment(ctx: &SealContext, index: u64, data: &[u8]) -> Vec<u8> {
    // Room for the record header, the compressed body and the tag, so sealing needs no copy.
    let bound = zstd::zstd_safe::compress_bound(data.len());
    let mut record = Cursor::new(Vec::with_capacity(
        RECORD_HEADER_LEN + bound.max(data.len()) + TAG_LEN,
    ));
    record
        .get_mut()
        .extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    record.set_position(RECORD_HEADER_LEN as u64);
    let compressed_len = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(level, _)| *level != ctx.level) {
            *slot = Some((
                ctx.level,
                zstd::bulk::Compressor::new(ctx.level).expect("valid zstd level"),
            ));
        }
        let (_, c) = slot.as_mut().expect("just set");
        c.compress_to_buffer(data, &mut record).ok()
    });
    let mut record = record.into_inner();
    let flags = match compressed_len {
        Some(n) if n < data.len() => FLAG_COMPRESSED,
        _ => {
            // Incompressible: store raw, flagged.
            record.truncate(RECORD_HEADER_LEN);
            record.extend_from_slice(data);
            0
        }
    };
    finish_record(ctx, index, flags, record)
}

fn seal_record(ctx: &SealContext, index: u64, flags: u8, body: Vec<u8>) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + body.len() + TAG_LEN);
    record.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    record.extend_from_slice(&body);
    finish_record(ctx, index, flags, record)
}

/// Seals `record[RECORD_HEADER_LEN..]` in place and fills in the record header.
fn finish_record(ctx: &SealContext, index: u64, flags: u8, mut record: Vec<u8>) -> Vec<u8> {
    let aad = aad_for(&ctx.header_digest, index, flags);
    let tag = ctx
        .key
        .seal_in_place_separate_tag(
            nonce_for(&ctx.nonce_prefix, index),
            Aad::from(&aad[..]),
            &mut record[RECORD_HEADER_LEN..],
        )
        .expect("AES-GCM sealing of a bounded segment cannot fail");
    record.extend_from_slice(tag.as_ref());
    let len = (record.len() - RECORD_HEADER_LEN) as u32;
    record[0] = flags;
    record[1..5].copy_from_slice(&len.to_le_bytes());
    record
}
