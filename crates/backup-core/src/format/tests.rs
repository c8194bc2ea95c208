use std::io::{Read, Write};

use proptest::prelude::*;

use super::*;
use crate::keys::{DataKey, MasterKey};

const SEG: usize = MIN_SEGMENT_SIZE;

fn opts(segment_size: usize) -> WriteOptions {
    WriteOptions {
        segment_size,
        zstd_level: 3,
        max_in_flight: 3,
    }
}

fn encode(
    plain: &[u8],
    id: ArtifactId,
    dek: &DataKey,
    segment_size: usize,
) -> (Vec<u8>, ArtifactSummary) {
    let kek = MasterKey::generate();
    let mut w = ArtifactWriter::new(
        Vec::new(),
        id,
        ArtifactKind::Data,
        kek.id(),
        dek,
        &opts(segment_size),
    )
    .unwrap();
    // Uneven write sizes exercise segment boundaries.
    for chunk in plain.chunks(1000) {
        w.write_all(chunk).unwrap();
    }
    w.finish().unwrap()
}

fn decode(stored: &[u8], expected: ArtifactId, dek: &DataKey) -> Result<Vec<u8>, FormatError> {
    decode_with(stored, expected, dek, true)
}

fn decode_with(
    stored: &[u8],
    expected: ArtifactId,
    dek: &DataKey,
    check_plaintext_sha256: bool,
) -> Result<Vec<u8>, FormatError> {
    let options = ReadOptions {
        max_in_flight: 2,
        check_plaintext_sha256,
    };
    let (mut r, _) = ArtifactReader::open(stored, Some(expected), dek, &options)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(FormatError::from_io)?;
    Ok(out)
}

/// Compressible but not trivial: text-ish with some randomness.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 7 == 0 {
                (x % 256) as u8
            } else {
                b'a' + (i % 13) as u8
            }
        })
        .collect()
}

#[test]
fn round_trips_at_edge_sizes() {
    let dek = DataKey::generate();
    for len in [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 17] {
        let id = ArtifactId::new();
        let plain = sample(len, len as u64);
        let (stored, summary) = encode(&plain, id, &dek, SEG);
        assert_eq!(summary.plaintext_size, len as u64);
        assert_eq!(summary.stored_size, stored.len() as u64);
        assert_eq!(summary.segment_count, len.div_ceil(SEG) as u64);
        use sha2::Digest;
        assert_eq!(
            summary.stored_sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&stored))
        );
        assert_eq!(
            summary.plaintext_sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&plain))
        );
        assert_eq!(decode(&stored, id, &dek).unwrap(), plain, "len {len}");
    }
}

#[test]
fn incompressible_segments_are_stored_raw_and_compressible_ones_shrink() {
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let mut random = vec![0u8; 3 * SEG];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    let (stored, _) = encode(&random, id, &dek, SEG);
    // header + 3 raw records + trailer: overhead is tiny and bounded
    assert!(stored.len() < random.len() + 200, "{}", stored.len());
    assert_eq!(decode(&stored, id, &dek).unwrap(), random);

    let zeros = vec![0u8; 3 * SEG];
    let (stored, _) = encode(&zeros, id, &dek, SEG);
    assert!(stored.len() < 400, "{}", stored.len());
}

fn tamper_case(stored: &[u8], id: ArtifactId, dek: &DataKey) -> FormatError {
    decode(stored, id, dek).expect_err("tampering must be detected")
}

/// Offsets of every record start in a stored artifact.
fn record_offsets(stored: &[u8]) -> Vec<(usize, usize)> {
    let (_, raw) = ArtifactHeader::read_from(&mut &stored[..]).unwrap();
    let mut at = raw.len();
    let mut out = Vec::new();
    while at < stored.len() {
        let len = u32::from_le_bytes(stored[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((at, RECORD_HEADER_LEN + len));
        at += RECORD_HEADER_LEN + len;
    }
    out
}

#[test]
fn every_single_bit_flip_is_detected() {
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let plain = sample(2 * SEG + 100, 9);
    let (stored, _) = encode(&plain, id, &dek, SEG);
    // Every byte position, one bit each (rotating which bit), with and without the
    // plaintext SHA-256 recomputed: authentication alone catches every flip.
    assert_eq!(decode_with(&stored, id, &dek, false).unwrap(), plain);
    for pos in 0..stored.len() {
        let mut bad = stored.clone();
        bad[pos] ^= 1 << (pos % 8);
        for check in [true, false] {
            assert!(
                decode_with(&bad, id, &dek, check).is_err(),
                "flip at byte {pos} went unnoticed (SHA-256 checked: {check})"
            );
        }
    }
}

#[test]
fn truncation_at_any_point_is_detected() {
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let (stored, _) = encode(&sample(3 * SEG, 3), id, &dek, SEG);
    for cut in (0..stored.len())
        .step_by(97)
        .chain(record_offsets(&stored).iter().map(|r| r.0))
    {
        let err = tamper_case(&stored[..cut], id, &dek);
        assert!(err.is_integrity_failure(), "cut at {cut}: {err}");
        let err = decode_with(&stored[..cut], id, &dek, false).unwrap_err();
        assert!(
            err.is_integrity_failure(),
            "cut at {cut}, SHA-256 unchecked: {err}"
        );
    }
    // Dropping whole records (e.g. the trailer, or the last data segment) names the segment.
    let recs = record_offsets(&stored);
    let without_trailer = &stored[..recs.last().unwrap().0];
    assert!(matches!(
        tamper_case(without_trailer, id, &dek),
        FormatError::Truncated { segment: 3, .. }
    ));
    let mut without_last_data = stored[..recs[2].0].to_vec();
    without_last_data.extend_from_slice(&stored[recs[3].0..]);
    let err = tamper_case(&without_last_data, id, &dek);
    assert!(
        matches!(err, FormatError::Tampered { segment: 2, .. }),
        "{err}"
    );
}

#[test]
fn swapped_segments_are_detected() {
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let (stored, _) = encode(&sample(3 * SEG, 5), id, &dek, SEG);
    let recs = record_offsets(&stored);
    let mut swapped = stored[..recs[0].0].to_vec();
    swapped.extend_from_slice(&stored[recs[1].0..recs[1].0 + recs[1].1]);
    swapped.extend_from_slice(&stored[recs[0].0..recs[0].0 + recs[0].1]);
    swapped.extend_from_slice(&stored[recs[2].0..]);
    assert!(matches!(
        tamper_case(&swapped, id, &dek),
        FormatError::Tampered { segment: 0, .. }
    ));
}

#[test]
fn splicing_segments_from_another_artifact_is_detected() {
    let dek = DataKey::generate();
    let (a_id, b_id) = (ArtifactId::new(), ArtifactId::new());
    let (a, _) = encode(&sample(2 * SEG, 1), a_id, &dek, SEG);
    let (b, _) = encode(&sample(2 * SEG, 1), b_id, &dek, SEG);
    // Same key, same plaintext, same index: still rejected because the AAD binds the header.
    let (ra, rb) = (record_offsets(&a), record_offsets(&b));
    let mut spliced = a[..ra[1].0].to_vec();
    spliced.extend_from_slice(&b[rb[1].0..rb[1].0 + rb[1].1]);
    spliced.extend_from_slice(&a[ra[2].0..]);
    assert!(matches!(
        tamper_case(&spliced, a_id, &dek),
        FormatError::Tampered { segment: 1, .. }
    ));
    // A whole artifact from elsewhere put in its place.
    assert!(matches!(
        tamper_case(&b, a_id, &dek),
        FormatError::WrongArtifact { .. }
    ));
}

#[test]
fn wrong_key_and_garbage_are_rejected() {
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let (stored, _) = encode(&sample(SEG, 2), id, &dek, SEG);
    assert!(matches!(
        tamper_case(&stored, id, &DataKey::generate()),
        FormatError::Tampered { segment: 0, .. }
    ));
    assert!(matches!(
        tamper_case(b"hello world, definitely not an artifact!!", id, &dek),
        FormatError::NotAnArtifact
    ));
    let mut extra = stored.clone();
    extra.push(0);
    assert!(matches!(
        tamper_case(&extra, id, &dek),
        FormatError::TrailingData { .. }
    ));
}

/// Streams 4 GiB through writer and reader without holding them: peak memory
/// stays bounded by the segments in flight, whatever the input size. (nextest
/// runs each test in its own process, so VmHWM is this test's peak.)
#[test]
fn streams_several_gib() {
    struct Pattern(u64, u64);
    impl Read for Pattern {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0 as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = ((self.1 + i as u64) % 251) as u8;
            }
            self.0 -= n as u64;
            self.1 += n as u64;
            Ok(n)
        }
    }
    let total = 4u64 << 30;
    let dek = DataKey::generate();
    let id = ArtifactId::new();
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    let kek = MasterKey::generate();
    let writer = std::thread::spawn({
        let dek = dek.clone();
        let key_id = kek.id().clone();
        move || {
            let mut w = ArtifactWriter::new(
                pipe_w,
                id,
                ArtifactKind::Data,
                &key_id,
                &dek,
                &WriteOptions::default(),
            )
            .unwrap();
            std::io::copy(&mut Pattern(total, 0), &mut w).unwrap();
            w.finish().unwrap().1
        }
    });
    let (mut r, _) = ArtifactReader::open(pipe_r, Some(id), &dek, &ReadOptions::default()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((seen + i as u64) % 251) as u8));
        seen += n as u64;
    }
    assert_eq!(seen, total);
    assert_eq!(writer.join().unwrap().plaintext_size, total);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        peak_kib < 200 * 1024,
        "peak RSS {peak_kib} KiB while streaming 4 GiB"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip_any_size(len in 0usize..(5 * SEG), seed in any::<u64>(), write_chunk in 1usize..20_000) {
        let dek = DataKey::generate();
        let id = ArtifactId::new();
        let plain = sample(len, seed);
        let kek = MasterKey::generate();
        let mut w = ArtifactWriter::new(Vec::new(), id, ArtifactKind::Data, kek.id(), &dek, &opts(SEG)).unwrap();
        for chunk in plain.chunks(write_chunk) {
            w.write_all(chunk).unwrap();
        }
        let (stored, _) = w.finish().unwrap();
        prop_assert_eq!(decode(&stored, id, &dek).unwrap(), plain);
    }

    #[test]
    fn random_corruption_is_detected(len in 1usize..(3 * SEG), pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dek = DataKey::generate();
        let id = ArtifactId::new();
        let (mut stored, _) = encode(&sample(len, len as u64), id, &dek, SEG);
        let at = pos.index(stored.len());
        stored[at] ^= xor;
        prop_assert!(decode(&stored, id, &dek).is_err());
    }
}
