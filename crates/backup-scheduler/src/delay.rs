//! Delays: jitter that spreads sources sharing a cron slot, and exponential backoff between
//! retries. Both are deterministic (a stable hash, not a random generator), so every replica
//! computes the same value and tests can assert exact results.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A stable 64-bit hash of `text` (FNV-1a, finished with a SplitMix64 mix), the same on every
/// platform and Rust version; use it to derive a [`backoff`] seed from a job id.
pub fn seed(text: &str) -> u64 {
    mix(fnv1a(text.as_bytes(), FNV_OFFSET))
}

/// How long after `slot` the job of `source` becomes due: uniform in `[0, max)` over
/// sources and slots (millisecond resolution), and the same for the same inputs. Zero when
/// `max` is under a millisecond.
pub fn jitter(source: &str, slot: DateTime<Utc>, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    if max_ms == 0 {
        return Duration::ZERO;
    }
    let h = fnv1a(source.as_bytes(), FNV_OFFSET);
    let h = fnv1a(&slot.timestamp_micros().to_le_bytes(), h);
    Duration::from_millis(mix(h) % max_ms)
}

/// The delay before retry number `attempt` (1 = the first retry, after one failure):
/// exponential (`base * 2^(attempt - 1)`, capped at `max`), with "equal jitter": the delay is
/// in `[cap / 2, cap]`, chosen by `seed` (see [`seed`]), so retries of jobs that failed
/// together spread out but never come sooner than half the nominal delay. `attempt` 0 is
/// treated as 1; the result never exceeds `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, seed: u64) -> Duration {
    let attempt = attempt.max(1);
    let exponent = (attempt - 1).min(64);
    let nominal = base.as_nanos().saturating_mul(1u128 << exponent);
    let cap_nanos = nominal.min(max.as_nanos());
    // At most `max`, so the seconds fit in a u64.
    let cap = Duration::new(
        u64::try_from(cap_nanos / 1_000_000_000).unwrap_or(u64::MAX),
        (cap_nanos % 1_000_000_000) as u32,
    );
    let half = cap / 2;
    let spread = u64::try_from((cap - half).as_millis()).unwrap_or(u64::MAX);
    let extra = if spread == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(mix(seed ^ u64::from(attempt).wrapping_mul(GOLDEN)) % (spread + 1))
    };
    (half + extra).min(cap)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// SplitMix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn jitter_is_stable_and_spreads_sources() {
        let slot = utc("2026-01-01T00:00:00Z");
        let max = Duration::from_secs(300);
        assert_eq!(jitter("db-1", slot, max), jitter("db-1", slot, max));
        assert_eq!(jitter("db-1", slot, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            jitter("db-1", slot, Duration::from_micros(999)),
            Duration::ZERO
        );
        // 100 sources on one slot land in (nearly) all 10 buckets of 30 s.
        let mut buckets = [0u32; 10];
        for i in 0..100 {
            let j = jitter(&format!("db-{i}"), slot, max);
            assert!(j < max);
            buckets[(j.as_secs() / 30) as usize] += 1;
        }
        assert!(
            buckets.iter().filter(|n| **n > 0).count() >= 8,
            "{buckets:?}"
        );
        // The next slot of the same source gets another jitter (usually).
        let differs = (0..20)
            .filter(|h| {
                jitter("db-1", slot + chrono::TimeDelta::hours(*h), max)
                    != jitter("db-1", slot, max)
            })
            .count();
        assert!(differs >= 18, "{differs}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(30 * 60);
        let s = seed("0192f0c4-7b1e-7c3a-9d6e-2f4b5a6c7d8e");
        let nominal = [30, 60, 120, 240, 480, 960, 1800, 1800, 1800];
        for (i, cap) in nominal.iter().enumerate() {
            let d = backoff(i as u32 + 1, base, max, s);
            let cap = Duration::from_secs(*cap);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {}: {d:?} vs cap {cap:?}",
                i + 1
            );
        }
        assert_eq!(backoff(0, base, max, s), backoff(1, base, max, s));
        assert_eq!(backoff(u32::MAX, base, max, s).max(max), max);
        assert_eq!(backoff(3, Duration::ZERO, max, s), Duration::ZERO);
        assert_eq!(seed("a"), seed("a"));
        assert_ne!(seed("a"), seed("b"));
    }

    proptest! {
        #[test]
        fn jitter_is_below_max(
            source in "[a-z0-9-]{1,20}",
            secs in 0i64..4_000_000_000,
            max_ms in 0u64..100_000_000,
        ) {
            let slot = DateTime::from_timestamp(secs, 0).unwrap();
            let max = Duration::from_millis(max_ms);
            let j = jitter(&source, slot, max);
            prop_assert!(j < max || (max_ms == 0 && j.is_zero()));
            prop_assert_eq!(j, jitter(&source, slot, max));
        }

        #[test]
        fn backoff_is_capped_and_grows(
            attempt in 1u32..100,
            base_ms in 1u64..600_000,
            max_ms in 1u64..86_400_000,
            s in any::<u64>(),
        ) {
            let base = Duration::from_millis(base_ms);
            let max = Duration::from_millis(max_ms);
            let d = backoff(attempt, base, max, s);
            prop_assert!(d <= max);
            let cap = base
                .saturating_mul(1u32 << (attempt - 1).min(31))
                .min(max);
            prop_assert!(d <= cap && d >= cap / 2, "{:?} not in [{:?}, {:?}]", d, cap / 2, cap);
            // The lower bound never shrinks as attempts go up.
            let next_cap = base.saturating_mul(1u32 << attempt.min(31)).min(max);
            prop_assert!(next_cap / 2 >= cap / 2);
        }
    }
}
