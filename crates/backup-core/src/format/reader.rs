//! Streaming, parallel artifact decoder with integrity checks.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey};

use super::*;
use crate::keys::DataKey;
use crate::pool::{BackgroundHasher, Task, WorkerPool};

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Segments decoded ahead of the consumer; bounds memory.
    pub max_in_flight: usize,
    /// Recompute the plaintext SHA-256 and compare it with the trailer's (on by default).
    /// Every segment and the trailer are authenticated by AES-GCM either way, so a changed,
    /// missing, reordered or truncated byte is still an error; a reader that checks the
    /// content itself (restore checks each file's BLAKE3) may skip this second full hash,
    /// which is a single-threaded third of its CPU. `verify` always checks it.
    pub check_plaintext_sha256: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            max_in_flight: WorkerPool::global().threads() * 2 + 1,
            check_plaintext_sha256: true,
        }
    }
}

struct OpenContext {
    key: LessSafeKey,
    header_digest: [u8; 32],
    nonce_prefix: [u8; 8],
    artifact: ArtifactId,
    segment_size: usize,
}

/// What a fully read, verified artifact contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedArtifact {
    pub plaintext_size: u64,
    pub segment_count: u64,
    pub plaintext_sha256: [u8; 32],
}

struct Trailer {
    plaintext_len: u64,
    segment_count: u64,
    sha256: [u8; 32],
}

/// Decodes an artifact, yielding its plaintext through `Read`.
///
/// Every segment is authenticated before its bytes are returned. End of
/// stream (`Ok(0)`) is only reported once the trailer has been authenticated
/// and the plaintext length, segment count and SHA-256 all match; any
/// corruption surfaces as an `io::Error` wrapping a [`FormatError`]
/// (use [`FormatError::from_io`]).
pub struct ArtifactReader<R: Read> {
    input: R,
    ctx: Arc<OpenContext>,
    pool: &'static WorkerPool,
    max_in_flight: usize,
    next_index: u64,
    in_flight: VecDeque<Task<Result<Vec<u8>, FormatError>>>,
    /// The sealed trailer record and its index, once read.
    trailer: Option<(u64, Vec<u8>)>,
    current: Arc<Vec<u8>>,
    pos: usize,
    hasher: Option<BackgroundHasher>,
    plain_len: u64,
    finished: bool,
    verified_sha256: Option<[u8; 32]>,
}

impl<R: Read> ArtifactReader<R> {
    /// Reads the header and prepares to decode. `expected`, when given, must
    /// match the artifact id in the header (detects swapped objects).
    pub fn open(
        mut input: R,
        expected: Option<ArtifactId>,
        dek: &DataKey,
        options: &ReadOptions,
    ) -> Result<(Self, ArtifactHeader), FormatError> {
        let (header, raw) = ArtifactHeader::read_from(&mut input)?;
        Ok((
            Self::with_header(input, &header, &raw, expected, dek, options)?,
            header,
        ))
    }

    /// Continues after [`ArtifactHeader::read_from`] (when the key depends on the header).
    pub fn with_header(
        input: R,
        header: &ArtifactHeader,
        raw_header: &[u8],
        expected: Option<ArtifactId>,
        dek: &DataKey,
        options: &ReadOptions,
    ) -> Result<Self, FormatError> {
        if let Some(expected) = expected {
            if expected != header.artifact_id {
                return Err(FormatError::WrongArtifact {
                    expected,
                    found: header.artifact_id,
                });
            }
        }
        Ok(Self {
            input,
            ctx: Arc::new(OpenContext {
                key: dek.aead_key(),
                header_digest: header_digest(raw_header),
                nonce_prefix: header.nonce_prefix,
                artifact: header.artifact_id,
                segment_size: header.segment_size as usize,
            }),
            pool: WorkerPool::global(),
            max_in_flight: options.max_in_flight.max(1),
            next_index: 0,
            in_flight: VecDeque::new(),
            trailer: None,
            current: Arc::new(Vec::new()),
            pos: 0,
            hasher: options.check_plaintext_sha256.then(BackgroundHasher::new),
            plain_len: 0,
            finished: false,
            verified_sha256: None,
        })
    }

    pub fn artifact_id(&self) -> ArtifactId {
        self.ctx.artifact
    }

    /// Reads records and queues them for decoding until enough are in flight or the trailer is seen.
    fn fill(&mut self) -> Result<(), FormatError> {
        while self.trailer.is_none() && self.in_flight.len() < self.max_in_flight {
            let index = self.next_index;
            let artifact = self.ctx.artifact;
            let mut head = [0u8; RECORD_HEADER_LEN];
            read_exact_or(&mut self.input, &mut head, || FormatError::Truncated {
                artifact,
                segment: index,
            })?;
            let flags = head[0];
            let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
            if flags & !(FLAG_FINAL | FLAG_COMPRESSED) != 0 || flags == FLAG_FINAL | FLAG_COMPRESSED
            {
                return Err(FormatError::BadRecord {
                    artifact,
                    segment: index,
                    reason: format!("unknown flags {flags:#04x}"),
                });
            }
            let max_len = if flags & FLAG_FINAL != 0 {
                TRAILER_PLAINTEXT_LEN
            } else {
                self.ctx.segment_size
            } + TAG_LEN;
            if len < TAG_LEN || len > max_len {
                return Err(FormatError::BadRecord {
                    artifact,
                    segment: index,
                    reason: format!("length {len} outside 16..={max_len}"),
                });
            }
            let mut body = vec![0u8; len];
            read_exact_or(&mut self.input, &mut body, || FormatError::Truncated {
                artifact,
                segment: index,
            })?;
            self.next_index += 1;
            if flags & FLAG_FINAL != 0 {
                let mut probe = [0u8; 1];
                loop {
                    match self.input.read(&mut probe) {
                        Ok(0) => break,
                        Ok(_) => return Err(FormatError::TrailingData { artifact }),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(FormatError::from_io(e)),
                    }
                }
                // Opened only after every data segment, so errors name the earliest bad segment.
                self.trailer = Some((index, body));
            } else {
                let ctx = self.ctx.clone();
                self.in_flight.push_back(
                    self.pool
                        .spawn(move || open_data_segment(&ctx, index, flags, body)),
                );
            }
        }
        Ok(())
    }

    /// Next plaintext segment, or `None` at a verified end.
    fn next_segment(&mut self) -> Result<Option<Vec<u8>>, FormatError> {
        self.fill()?;
        let Some(task) = self.in_flight.pop_front() else {
            self.verify_trailer()?;
            return Ok(None);
        };
        let plain = task.wait().ok_or(FormatError::WorkerPanicked {
            artifact: self.ctx.artifact,
        })??;
        self.fill()?;
        Ok(Some(plain))
    }

    fn verify_trailer(&mut self) -> Result<(), FormatError> {
        let artifact = self.ctx.artifact;
        let (index, body) = self
            .trailer
            .take()
            .expect("fill() stops only at the trailer or an error");
        let plain = open_record(&self.ctx, index, FLAG_FINAL, body)?;
        if plain.len() != TRAILER_PLAINTEXT_LEN {
            return Err(FormatError::BadRecord {
                artifact,
                segment: index,
                reason: "trailer has the wrong size".into(),
            });
        }
        let trailer = Trailer {
            plaintext_len: u64::from_le_bytes(plain[0..8].try_into().expect("8")),
            segment_count: u64::from_le_bytes(plain[8..16].try_into().expect("8")),
            sha256: plain[16..48].try_into().expect("32"),
        };
        let data_segments = self.next_index - 1;
        if trailer.segment_count != data_segments {
            return Err(FormatError::TrailerMismatch {
                artifact,
                what: "segment count",
                expected: trailer.segment_count.to_string(),
                found: data_segments.to_string(),
            });
        }
        if trailer.plaintext_len != self.plain_len {
            return Err(FormatError::TrailerMismatch {
                artifact,
                what: "plaintext length",
                expected: trailer.plaintext_len.to_string(),
                found: self.plain_len.to_string(),
            });
        }
        if let Some(hasher) = self.hasher.take() {
            let sha = hasher.finish();
            if sha != trailer.sha256 {
                return Err(FormatError::TrailerMismatch {
                    artifact,
                    what: "plaintext SHA-256",
                    expected: hex::encode(trailer.sha256),
                    found: hex::encode(sha),
                });
            }
        }
        self.finished = true;
        // Unchecked (see `ReadOptions`), this is the authenticated trailer's value.
        self.verified_sha256 = Some(trailer.sha256);
        Ok(())
    }

    /// Reads the artifact to its verified end, discarding the plaintext.
    pub fn verify_to_end(mut self) -> Result<VerifiedArtifact, FormatError> {
        while !self.finished {
            if self.next_segment_into_current()? == 0 {
                break;
            }
        }
        Ok(self.verified().expect("finished"))
    }

    /// Length, segment count and SHA-256 of the plaintext, once the end has been reached and checked.
    pub fn verified(&self) -> Option<VerifiedArtifact> {
        Some(VerifiedArtifact {
            plaintext_size: self.plain_len,
            segment_count: self.next_index.saturating_sub(1),
            plaintext_sha256: self.verified_sha256?,
        })
    }

    fn next_segment_into_current(&mut self) -> Result<usize, FormatError> {
        loop {
            match self.next_segment()? {
                None => return Ok(0),
                Some(seg) if seg.is_empty() => continue,
                Some(seg) => {
                    let n = seg.len();
                    self.plain_len += n as u64;
                    let seg = Arc::new(seg);
                    if let Some(hasher) = &self.hasher {
                        hasher.update(seg.clone());
                    }
                    self.current = seg;
                    self.pos = 0;
                    return Ok(n);
                }
            }
        }
    }
}

impl<R: Read> Read for ArtifactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.current.len() {
            if self.finished {
                return Ok(0);
            }
            if self
                .next_segment_into_current()
                .map_err(FormatError::into_io)?
                == 0
            {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn open_record(
    ctx: &OpenContext,
    index: u64,
    flags: u8,
    mut body: Vec<u8>,
) -> Result<Vec<u8>, FormatError> {
    let aad = aad_for(&ctx.header_digest, index, flags);
    let plain_len = ctx
        .key
        .open_in_place(
            nonce_for(&ctx.nonce_prefix, index),
            Aad::from(&aad[..]),
            &mut body,
        )
        .map_err(|_| FormatError::Tampered {
            artifact: ctx.artifact,
            segment: index,
        })?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn open_data_segment(
    ctx: &OpenContext,
    index: u64,
    flags: u8,
    body: Vec<u8>,
) -> Result<Vec<u8>, FormatError> {
    let plain = open_record(ctx, index, flags, body)?;
    if flags & FLAG_COMPRESSED == 0 {
        return Ok(plain);
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d =
            slot.get_or_insert_with(|| zstd::bulk::Decompressor::new().expect("zstd decompressor"));
        d.decompress(&plain, ctx.segment_size)
            .map_err(|e| FormatError::Decompress {
                artifact: ctx.artifact,
                segment: index,
                reason: e.to_string(),
            })
    })
}
