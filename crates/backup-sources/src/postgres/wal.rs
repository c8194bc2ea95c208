//! PostgreSQL write-ahead log (WAL) positions, file names and timelines, as
//! pure functions: no I/O, so `wal-push`, `wal-fetch`, `check`, point-in-time
//! restore and WAL retention all share one tested model of PostgreSQL 15's
//! rules.
//!
//! The model, in PostgreSQL's own terms:
//!
//! - An [`Lsn`] ("log sequence number") is a byte position in one endless
//!   64-bit WAL stream, written `X/Y` (high and low 32 bits in hex).
//! - The stream is cut into segments of `wal_segment_size` bytes
//!   ([`WalSegmentSize`]); segment number `segno` holds the LSNs
//!   `segno * size .. (segno + 1) * size`.
//! - Each segment exists once per *timeline*: a promotion or a point-in-time
//!   recovery starts a new timeline that branches off its parent at a switch
//!   point. A segment's file name is the timeline, then `segno` split into a
//!   "log" and a "seg" part, each as 8 uppercase hex digits ([`SegmentName`]).
//! - A `TTTTTTTT.history` file records, for timeline `T`, at which LSN each
//!   ancestor timeline ended ([`TimelineHistory`]).
//! - `archive_command` and `restore_command` see four kinds of files
//!   ([`WalFileName`]): segments, `.partial` segments, timeline history files
//!   and backup history files.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// What is wrong with a WAL position, file name, history file or replay range.
///
/// Every variant is permanent: the input itself is wrong, retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("invalid LSN {input:?}: {reason}; expected two hex numbers of 1 to 8 digits separated by '/', like 0/3000028")]
    InvalidLsn { input: String, reason: &'static str },
    #[error("invalid WAL segment size of {bytes} bytes: PostgreSQL's wal_segment_size is a power of two from 1 MiB to 1 GiB (default 16 MiB)")]
    InvalidSegmentSize { bytes: u64 },
    #[error("{name:?} is not a WAL archive file name PostgreSQL writes: {reason}")]
    InvalidFileName { name: String, reason: String },
    #[error("timeline history of timeline {timeline}: {reason}")]
    InvalidHistory { timeline: u32, reason: String },
    #[error(
        "cannot replay WAL from {from} to {to}: the start segment comes after the end segment"
    )]
    ReplayRangeReversed { from: String, to: String },
    #[error("the timeline history given is for timeline {history_timeline}, but the replay target {to} is on timeline {to_timeline}; pass the history file of the target's timeline")]
    HistoryMismatch {
        history_timeline: u32,
        to: String,
        to_timeline: u32,
    },
    #[error("replaying WAL from {from} to {to} crosses from timeline {from_timeline} to timeline {to_timeline}; the history file {to_timeline:08X}.history is needed to know where the timelines switch")]
    MissingHistory {
        from: String,
        to: String,
        from_timeline: u32,
        to_timeline: u32,
    },
    #[error("{segment} is not on the way to timeline {target_timeline}: {reason}")]
    NotOnTimelinePath {
        segment: String,
        target_timeline: u32,
        reason: String,
    },
}

/// A position in the WAL stream (PostgreSQL's `pg_lsn`, C type `XLogRecPtr`).
///
/// Its text form is PostgreSQL's `X/Y`: the high and the low 32 bits in hex,
/// without leading zeros (`0/3000028`, `16/B374D848`). Parsing accepts either
/// case and 1 to 8 digits per half, like `pg_lsn_in`; formatting writes
/// uppercase, like `pg_lsn_out`. Serde uses the text form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`; no WAL record starts there, so it also
    /// stands for "the start of WAL" as the beginning of the first timeline.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| WalError::InvalidLsn {
            input: input.to_owned(),
            reason,
        };
        let (high, low) = input.split_once('/').ok_or_else(|| invalid("no '/'"))?;
        let high = parse_lsn_half(high).map_err(invalid)?;
        let low = parse_lsn_half(low).map_err(invalid)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

fn parse_lsn_half(half: &str) -> Result<u32, &'static str> {
    if half.is_empty() {
        return Err("a half is empty");
    }
    if half.len() > 8 {
        return Err("a half has more than 8 hex digits");
    }
    // Checked first because `from_str_radix` would also accept a leading '+'.
    if !half.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a half has a character that is not a hex digit");
    }
    u32::from_str_radix(half, 16).map_err(|_| "a half is not a 32-bit hex number")
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The cluster's `wal_segment_size`: a power of two from 1 MiB to 1 GiB,
/// fixed at `initdb` time; 16 MiB unless `initdb --wal-segsize` said otherwise.
///
/// Segment numbers and file names depend on it, so every conversion between
/// them takes the size. Serde uses the number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegmentSize(u64);

impl WalSegmentSize {
    /// 1 MiB, PostgreSQL's `WalSegMinSize`.
    pub const MIN: WalSegmentSize = WalSegmentSize(1 << 20);
    /// 1 GiB, PostgreSQL's `WalSegMaxSize`.
    pub const MAX: WalSegmentSize = WalSegmentSize(1 << 30);
    /// 16 MiB, `initdb`'s default.
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 << 20);

    /// Validates a size in bytes as PostgreSQL's `IsValidWalSegSize` does.
    pub fn new(bytes: u64) -> Result<Self, WalError> {
        if bytes.is_power_of_two() && (Self::MIN.0..=Self::MAX.0).contains(&bytes) {
            Ok(WalSegmentSize(bytes))
        } else {
            Err(WalError::InvalidSegmentSize { bytes })
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// How many segments share one "log" number (the middle 8 hex digits of a
    /// file name): PostgreSQL's `XLogSegmentsPerXLogId`, `0x1_0000_0000 / size`
    /// (256 for 16 MiB, 4096 for 1 MiB, 4 for 1 GiB).
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }

    /// The number of the segment holding the last byte of the 64-bit LSN
    /// space; no segment number above it has a file name.
    pub fn last_segno(self) -> u64 {
        u64::MAX / self.0
    }
}

impl Default for WalSegmentSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u64> for WalSegmentSize {
    type Error = WalError;

    fn try_from(bytes: u64) -> Result<Self, Self::Error> {
        Self::new(bytes)
    }
}

impl From<WalSegmentSize> for u64 {
    fn from(size: WalSegmentSize) -> u64 {
        size.0
    }
}

/// One WAL segment file: a segment number on a timeline.
///
/// The file name is `TTTTTTTTLLLLLLLLSSSSSSSS`: timeline, `segno /
/// segments_per_xlogid` ("log") and `segno % segments_per_xlogid` ("seg"), each
/// as 8 uppercase hex digits (PostgreSQL's `XLogFileName`). So
/// `000000010000000000000003` is timeline 1, segment 3, and with 16 MiB
/// segments `000000010000000100000000` (log 1, seg 0) follows
/// `0000000100000000000000FF`.
///
/// The derived order (timeline, then segment number) is the order of the
/// file names as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: u32,
    pub segno: u64,
}

impl SegmentName {
    /// Parses a 24-character segment file name, accepting only the exact form
    /// PostgreSQL writes: uppercase hex, timeline at least 1, "seg" part below
    /// [`WalSegmentSize::segments_per_xlogid`]. Every accepted name is the
    /// [`file_name`](Self::file_name) of its result.
    pub fn parse(name: &str, size: WalSegmentSize) -> Result<Self, WalError> {
        parse_segment(name, name, size)
    }

    /// The file name, e.g. `000000010000000000000003`.
    ///
    /// # Panics
    /// If `segno` is above `size.last_segno()`. [`parse`](Self::parse) and
    /// [`from_lsn`](Self::from_lsn) never produce such a name; it can only come
    /// from setting `segno` by hand or from [`next`](Self::next) on the very last
    /// segment.
    pub fn file_name(self, size: WalSegmentSize) -> String {
        assert!(
            self.segno <= size.last_segno(),
            "WAL segment number {:#X} is beyond the LSN space for {}-byte segments",
            self.segno,
            size.bytes()
        );
        let per_xlogid = size.segments_per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_xlogid,
            self.segno % per_xlogid
        )
    }

    /// The segment holding the byte at `lsn` (PostgreSQL's `XLByteToSeg`): an
    /// LSN exactly on a boundary belongs to the segment that starts there.
    ///
    /// PostgreSQL 15's `pg_walfile_name()` and `pg_walfile_name_offset()` differ
    /// exactly on boundaries: they name the *preceding* segment, which is what
    /// [`ending_at`](Self::ending_at) computes.
    pub fn from_lsn(timeline: u32, lsn: Lsn, size: WalSegmentSize) -> Self {
        SegmentName {
            timeline,
            segno: lsn.0 / size.bytes(),
        }
    }

    /// The last segment holding WAL before `end` (PostgreSQL's
    /// `XLByteToPrevSeg`, and what PostgreSQL 15's `pg_walfile_name()`
    /// returns): for an `end` exactly on a boundary, the segment before it.
    /// This is the last segment needed for WAL that ends at `end`, e.g. the
    /// stop LSN of `pg_backup_stop()`. `None` for [`Lsn::ZERO`], before which
    /// there is no WAL.
    pub fn ending_at(timeline: u32, end: Lsn, size: WalSegmentSize) -> Option<Self> {
        let last_byte = end.0.checked_sub(1)?;
        Some(Self::from_lsn(timeline, Lsn(last_byte), size))
    }

    /// The LSN of the segment's first byte.
    ///
    /// # Panics
    /// Like [`file_name`](Self::file_name), if `segno` is above
    /// `size.last_segno()`.
    pub fn start_lsn(self, size: WalSegmentSize) -> Lsn {
        assert!(
            self.segno <= size.last_segno(),
            "WAL segment number {:#X} is beyond the LSN space for {}-byte segments",
            self.segno,
            size.bytes()
        );
        Lsn(self.segno * size.bytes())
    }

    /// The LSN of the segment's last byte.
    fn last_lsn(self, size: WalSegmentSize) -> Lsn {
        Lsn(self.start_lsn(size).0 + (size.bytes() - 1))
    }

    /// The following segment on the same timeline.
    pub fn next(self) -> Self {
        SegmentName {
            timeline: self.timeline,
            segno: self.segno + 1,
        }
    }
}

/// Names a segment for an error message without panicking on a segment
/// number that has no file name.
fn describe(segment: SegmentName, size: WalSegmentSize) -> String {
    if segment.segno <= size.last_segno() {
        segment.file_name(size)
    } else {
        format!(
            "timeline {} segment number {:#X} (beyond the LSN space)",
            segment.timeline, segment.segno
        )
    }
}

/// Parses the 24 characters of a segment name; `whole` is the full file name
/// for the error message.
fn parse_segment(part: &str, whole: &str, size: WalSegmentSize) -> Result<SegmentName, WalError> {
    let invalid = |reason: String| WalError::InvalidFileName {
        name: whole.to_owned(),
        reason,
    };
    if part.len() != 24 {
        return Err(invalid(format!(
            "a segment name has 24 hex digits, not {}",
            part.len()
        )));
    }
    let field = |range: std::ops::Range<usize>| {
        part.get(range)
            .and_then(parse_upper_hex_u32)
            .ok_or_else(|| invalid("a segment name is 24 uppercase hex digits".to_owned()))
    };
    let timeline = field(0..8)?;
    let log = field(8..16)?;
    let seg = field(16..24)?;
    if timeline == 0 {
        return Err(invalid(
            "timeline 0 does not exist; timelines start at 1".to_owned(),
        ));
    }
    let per_xlogid = size.segments_per_xlogid();
    if u64::from(seg) >= per_xlogid {
        return Err(invalid(format!(
            "segment part {seg:#X} is not below {per_xlogid:#X}, the number of {}-byte segments per log",
            size.bytes()
        )));
    }
    Ok(SegmentName {
        timeline,
        segno: u64::from(log) * per_xlogid + u64::from(seg),
    })
}

/// Exactly 8 characters of `0-9A-F`, the way PostgreSQL prints `%08X`.
fn parse_upper_hex_u32(text: &str) -> Option<u32> {
    if text.len() != 8
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// A file name that PostgreSQL passes to `archive_command` (`%f`) or asks
/// `restore_command` for.
///
/// [`parse`](Self::parse) is a security boundary: these names become object
/// keys and local paths, so it accepts only the exact forms PostgreSQL writes
/// (fixed lengths, uppercase hex, no separators or other characters) and every
/// accepted name is exactly the [`file_name`](Self::file_name) of its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// A complete segment, `000000010000000000000003`.
    Segment(SegmentName),
    /// `000000010000000000000003.partial`: the last, incomplete segment of a
    /// timeline that a promotion ended in the middle of the segment. The same
    /// segment number exists complete on the new timeline.
    Partial(SegmentName),
    /// `00000002.history`: the history of a timeline (see [`TimelineHistory`]).
    History { timeline: u32 },
    /// `000000010000000000000002.00000028.backup`: written by `pg_backup_stop()`
    /// for a base backup that started in `segment` at byte `offset` of it.
    BackupHistory { segment: SegmentName, offset: u32 },
}

impl WalFileName {
    /// Classifies a bare file name (no directory). Anything else, including
    /// lowercase hex, other suffixes and path separators, is an error naming
    /// the file.
    pub fn parse(name: &str, size: WalSegmentSize) -> Result<Self, WalError> {
        let invalid = |reason: &str| WalError::InvalidFileName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        // ASCII only, so that byte offsets below are character boundaries.
        if !name.is_ascii() {
            return Err(invalid("it contains non-ASCII characters"));
        }
        if let Some(segment) = name.strip_suffix(".partial") {
            return parse_segment(segment, name, size).map(Self::Partial);
        }
        if let Some(timeline) = name.strip_suffix(".history") {
            let timeline = parse_upper_hex_u32(timeline).ok_or_else(|| {
                invalid("a timeline history file is 8 uppercase hex digits then .history")
            })?;
            if timeline == 0 {
                return Err(invalid("timeline 0 does not exist; timelines start at 1"));
            }
            return Ok(Self::History { timeline });
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let Some((segment, offset)) = rest.split_once('.') else {
                return Err(invalid(
                    "a backup history file is a segment name, '.', 8 uppercase hex digits, then .backup",
                ));
            };
            let segment = parse_segment(segment, name, size)?;
            let offset = parse_upper_hex_u32(offset).ok_or_else(|| {
                invalid("the offset of a backup history file is 8 uppercase hex digits")
            })?;
            if u64::from(offset) >= size.bytes() {
                return Err(invalid(
                    "the offset of a backup history file is not inside the segment",
                ));
            }
            return Ok(Self::BackupHistory { segment, offset });
        }
        if name.len() == 24 {
            return parse_segment(name, name, size).map(Self::Segment);
        }
        Err(invalid(
            "expected a segment (24 uppercase hex digits), a .partial segment, a TIMELINE.history file or a SEGMENT.OFFSET.backup file",
        ))
    }

    /// The file name as PostgreSQL writes it.
    ///
    /// # Panics
    /// Like [`SegmentName::file_name`], for a segment number beyond the LSN
    /// space.
    pub fn file_name(&self, size: WalSegmentSize) -> String {
        match self {
            Self::Segment(segment) => segment.file_name(size),
            Self::Partial(segment) => format!("{}.partial", segment.file_name(size)),
            Self::History { timeline } => format!("{timeline:08X}.history"),
            Self::BackupHistory { segment, offset } => {
                format!("{}.{offset:08X}.backup", segment.file_name(size))
            }
        }
    }
}

/// One line of a timeline history file: `timeline` ended, and its child
/// began, at `switch_lsn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The ancestor timeline that ended here.
    pub timeline: u32,
    /// The first LSN that belongs to the next timeline, not to `timeline`.
    pub switch_lsn: Lsn,
    /// Free text PostgreSQL wrote, e.g. `no recovery target specified`.
    pub reason: String,
}

/// The stretch of WAL, `start..end`, that recovery along a history reads from
/// `timeline`. `end` is `None` for the newest timeline, which goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Option<Lsn>,
}

/// The content of a `TTTTTTTT.history` file: the ancestors of one timeline and
/// where each of them ended.
///
/// PostgreSQL writes one line per ancestor, oldest first,
/// `parentTLI<TAB>switchpoint<TAB>reason`, with the parent timeline in
/// *decimal* and the switch point as an [`Lsn`], e.g. for timeline 3:
///
/// ```text
/// 1<TAB>0/3000158<TAB>no recovery target specified
///
/// 2<TAB>0/5000000<TAB>before 2024-05-01 12:00:00+00
/// ```
///
/// Timeline 1 has no history file; it is the history with no switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    timeline: u32,
    switches: Vec<TimelineSwitch>,
}

impl TimelineHistory {
    /// Parses the content of the history file of `timeline`, the way
    /// PostgreSQL's `readTimeLineHistory` does: blank lines and lines starting
    /// with `#` are skipped, fields are separated by whitespace, the reason is
    /// the rest of the line. Like PostgreSQL it requires the ancestors'
    /// timeline IDs to increase and to be below `timeline`; it also requires
    /// switch points not to go backwards, since a history that does cannot
    /// say which timeline an LSN is on.
    pub fn parse(timeline: u32, content: &str) -> Result<Self, WalError> {
        let invalid = |reason: String| WalError::InvalidHistory { timeline, reason };
        if timeline == 0 {
            return Err(invalid(
                "timeline 0 does not exist; timelines start at 1".to_owned(),
            ));
        }
        let mut switches: Vec<TimelineSwitch> = Vec::new();
        for (index, line) in content.lines().enumerate() {
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let at = |problem: String| invalid(format!("line {} {text:?}: {problem}", index + 1));
            let (parent, rest) = split_field(text);
            let (switch_lsn, reason) = split_field(rest);
            if parent.is_empty() || !parent.bytes().all(|b| b.is_ascii_digit()) {
                return Err(at("expected a decimal parent timeline ID first".to_owned()));
            }
            let parent: u32 = parent
                .parse()
                .map_err(|_| at("the parent timeline ID is not a 32-bit number".to_owned()))?;
            if switch_lsn.is_empty() {
                return Err(at(
                    "expected the switch point LSN after the timeline ID".to_owned()
                ));
            }
            let switch_lsn: Lsn = switch_lsn
                .parse()
                .map_err(|e: WalError| at(e.to_string()))?;
            if parent == 0 {
                return Err(at(
                    "timeline 0 does not exist; timelines start at 1".to_owned()
                ));
            }
            if parent >= timeline {
                return Err(at(format!(
                    "parent timeline {parent} is not below timeline {timeline}"
                )));
            }
            if let Some(previous) = switches.last() {
                if parent <= previous.timeline {
                    return Err(at(format!(
                        "timeline IDs must increase, but {parent} follows {}",
                        previous.timeline
                    )));
                }
                if switch_lsn < previous.switch_lsn {
                    return Err(at(format!(
                        "switch point {switch_lsn} is before the previous one, {}",
                        previous.switch_lsn
                    )));
                }
            }
            switches.push(TimelineSwitch {
                timeline: parent,
                switch_lsn,
                reason: reason.to_owned(),
            });
        }
        Ok(TimelineHistory { timeline, switches })
    }

    /// A timeline without ancestors, like timeline 1.
    fn without_ancestors(timeline: u32) -> Self {
        TimelineHistory {
            timeline,
            switches: Vec::new(),
        }
    }

    /// The timeline whose history this is, the newest on it.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The ancestors and their switch points, oldest first.
    pub fn switches(&self) -> &[TimelineSwitch] {
        &self.switches
    }

    /// The timeline that the WAL at `lsn` is on when following this history
    /// (PostgreSQL's `tliOfPointInHistory`). A switch point itself belongs to
    /// the child timeline.
    pub fn timeline_of(&self, lsn: Lsn) -> u32 {
        self.switches
            .iter()
            .find(|switch| lsn < switch.switch_lsn)
            .map_or(self.timeline, |switch| switch.timeline)
    }

    /// The timelines recovery to this history's timeline passes through, oldest
    /// first, each with the LSNs it contributes. The first starts at
    /// [`Lsn::ZERO`]; each later one starts where the previous ends.
    pub fn ranges(&self) -> Vec<TimelineRange> {
        let mut start = Lsn::ZERO;
        let mut ranges = Vec::with_capacity(self.switches.len() + 1);
        for switch in &self.switches {
            ranges.push(TimelineRange {
                timeline: switch.timeline,
                start,
                end: Some(switch.switch_lsn),
            });
            start = switch.switch_lsn;
        }
        ranges.push(TimelineRange {
            timeline: self.timeline,
            start,
            end: None,
        });
        ranges
    }

    /// Whether the point `lsn` on `timeline` lies on this history, i.e. is a
    /// position recovery to this history's timeline passes (a valid
    /// point-in-time target for it). A parent's switch point itself is not:
    /// from there on, the WAL is the child's.
    pub fn contains(&self, timeline: u32, lsn: Lsn) -> bool {
        self.ranges().iter().any(|range| {
            range.timeline == timeline
                && range.start <= lsn
                && range.end.is_none_or(|end| lsn < end)
        })
    }

    /// The segment file recovery along this history reads for segment number
    /// `segno`: the one on the newest timeline that has started by the end of
    /// that segment. So the segment holding a switch point comes from the
    /// child timeline, which starts with a copy of the parent's WAL up to the
    /// switch point (the parent keeps only a `.partial` of it); segments
    /// before it come from the parent. This is the file PostgreSQL's
    /// `XLogFileReadAnyTLI` tries first.
    pub fn replay_segment(&self, segno: u64, size: WalSegmentSize) -> SegmentName {
        let timeline = self
            .ranges()
            .iter()
            .rev()
            .find(|range| range.start.0 / size.bytes() <= segno)
            .map_or(self.timeline, |range| range.timeline);
        SegmentName { timeline, segno }
    }

    /// Checks that `segment` holds WAL of this history: its timeline is one of
    /// the history's and the segment overlaps that timeline's range.
    fn check_on_path(&self, segment: SegmentName, size: WalSegmentSize) -> Result<(), WalError> {
        let not_on_path = |reason: String| WalError::NotOnTimelinePath {
            segment: describe(segment, size),
            target_timeline: self.timeline,
            reason,
        };
        if segment.segno > size.last_segno() {
            return Err(not_on_path(
                "its segment number is beyond the LSN space".to_owned(),
            ));
        }
        let ranges = self.ranges();
        let Some(range) = ranges.iter().find(|r| r.timeline == segment.timeline) else {
            return Err(not_on_path(format!(
                "timeline {} is not an ancestor of timeline {}",
                segment.timeline, self.timeline
            )));
        };
        if segment.last_lsn(size) < range.start {
            return Err(not_on_path(format!(
                "timeline {} starts at {}, after this segment ends",
                range.timeline, range.start
            )));
        }
        if let Some(end) = range.end {
            if segment.start_lsn(size) >= end {
                return Err(not_on_path(format!(
                    "timeline {} ends at {}, before this segment starts (WAL written there after the switch belongs to another branch)",
                    range.timeline, end
                )));
            }
        }
        Ok(())
    }
}

/// Splits off the first whitespace-separated field; returns it and the rest,
/// trimmed.
fn split_field(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], text[end..].trim()),
        None => (text, ""),
    }
}

/// The first segment file that replaying WAL from `from` to `to` (both
/// included) needs and that is not in `archived`, or `None` if the archive has
/// them all.
///
/// `from` is where replay starts, typically the start segment of a base
/// backup on the timeline it was taken on; `to` is the last segment to
/// replay, on the target timeline. `history` is the history of `to`'s
/// timeline; `None` means `to`'s timeline has no ancestors that matter, so
/// `from` must be on the same timeline.
///
/// The needed file for each segment number is
/// [`TimelineHistory::replay_segment`]: segments before the one holding a
/// switch point come from the parent timeline, that segment and later ones
/// from the child. So when a switch happens in the middle of segment 3, the
/// child's segment 3 is needed; the parent's segment 3 (or its `.partial`)
/// does not count. `.partial` files never count: `archived` holds complete
/// segments only.
///
/// Errors when the range cannot be replayed at all, whatever is archived:
/// `from` after `to`, `history` not for `to`'s timeline, or `from` or `to`
/// not on the history (e.g. a base backup taken on the old primary after
/// the promotion that started `to`'s timeline).
pub fn first_gap(
    archived: impl IntoIterator<Item = SegmentName>,
    from: SegmentName,
    to: SegmentName,
    history: Option<&TimelineHistory>,
    size: WalSegmentSize,
) -> Result<Option<SegmentName>, WalError> {
    Ok(missing_segments(archived, from, to, history, size, 1)?
        .into_iter()
        .next())
}

/// Like [`first_gap`], but the first `limit` missing segment files in replay
/// order, so a report can list them without listing millions.
pub fn missing_segments(
    archived: impl IntoIterator<Item = SegmentName>,
    from: SegmentName,
    to: SegmentName,
    history: Option<&TimelineHistory>,
    size: WalSegmentSize,
    limit: usize,
) -> Result<Vec<SegmentName>, WalError> {
    let own_history;
    let history = match history {
        Some(history) if history.timeline != to.timeline => {
            return Err(WalError::HistoryMismatch {
                history_timeline: history.timeline,
                to: describe(to, size),
                to_timeline: to.timeline,
            });
        }
        Some(history) => history,
        None if from.timeline != to.timeline => {
            return Err(WalError::MissingHistory {
                from: describe(from, size),
                to: describe(to, size),
                from_timeline: from.timeline,
                to_timeline: to.timeline,
            });
        }
        None => {
            own_history = TimelineHistory::without_ancestors(to.timeline);
            &own_history
        }
    };
    if from.segno > to.segno {
        return Err(WalError::ReplayRangeReversed {
            from: describe(from, size),
            to: describe(to, size),
        });
    }
    history.check_on_path(from, size)?;
    history.check_on_path(to, size)?;

    let mut missing = Vec::new();
    if limit == 0 {
        return Ok(missing);
    }
    let archived: HashSet<SegmentName> = archived.into_iter().collect();
    for segno in from.segno..=to.segno {
        let needed = history.replay_segment(segno, size);
        if !archived.contains(&needed) {
            missing.push(needed);
            if missing.len() == limit {
                break;
            }
        }
    }
    Ok(missing)
}

/// Which archived WAL files restoring the oldest retained base backup (or
/// any newer one) may still need. Made by [`segments_needed_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRetention {
    oldest_needed_segno: u64,
}

/// The retention rule for an archive whose oldest retained base backup
/// started in `oldest_base_backup_start`.
///
/// Like `pg_archivecleanup`, it compares segment numbers and ignores
/// timelines: the backup's start segment may be needed from a newer timeline
/// (if a switch happened inside it) and newer timelines branch off older ones,
/// so comparing by timeline could delete a segment that recovery still reads.
pub fn segments_needed_from(oldest_base_backup_start: SegmentName) -> WalRetention {
    WalRetention {
        oldest_needed_segno: oldest_base_backup_start.segno,
    }
}

impl WalRetention {
    /// Whether `file` must be kept:
    /// - segments and `.partial` segments from the oldest base backup's start
    ///   segment on, on any timeline;
    /// - timeline history files always: they are tiny, and recovery needs the
    ///   whole chain of them to pick timelines;
    /// - backup history files whose base backup started in or after that
    ///   segment, i.e. along with the segment they describe.
    pub fn is_needed(&self, file: &WalFileName) -> bool {
        match file {
            WalFileName::Segment(segment)
            | WalFileName::Partial(segment)
            | WalFileName::BackupHistory { segment, .. } => {
                segment.segno >= self.oldest_needed_segno
            }
            WalFileName::History { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn size(bytes: u64) -> WalSegmentSize {
        WalSegmentSize::new(bytes).unwrap()
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn seg(timeline: u32, segno: u64) -> SegmentName {
        SegmentName { timeline, segno }
    }

    fn name(text: &str) -> SegmentName {
        SegmentName::parse(text, WalSegmentSize::DEFAULT).unwrap()
    }

    // ---- Lsn ----

    #[test]
    fn lsn_parses_postgres_text() {
        assert_eq!(lsn("0/3000028"), Lsn(0x300_0028));
        assert_eq!(lsn("16/B374D848"), Lsn(0x16_B374_D848));
        assert_eq!(lsn("0/0"), Lsn::ZERO);
        assert_eq!(lsn("FFFFFFFF/FFFFFFFF"), Lsn(u64::MAX));
        assert_eq!(lsn("00000001/00000000"), Lsn(1 << 32));
    }

    #[test]
    fn lsn_parse_ignores_case() {
        assert_eq!(lsn("16/b374d848"), lsn("16/B374D848"));
        assert_eq!(lsn("aB/cD"), Lsn(0xAB_0000_00CD));
    }

    #[test]
    fn lsn_formats_uppercase_without_padding() {
        assert_eq!(Lsn(0x300_0028).to_string(), "0/3000028");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(format!("{:?}", Lsn(0x28)), "Lsn(0/28)");
    }

    #[test]
    fn lsn_rejects_malformed_text_naming_it() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "3000028",
            "0/3000028/1",
            "123456789/0",
            "0/123456789",
            "0x1/0",
            "+1/0",
            "0/-1",
            " 0/1",
            "0/1 ",
            "G/0",
            "0 /1",
            "0/1\n",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert!(
                matches!(&err, WalError::InvalidLsn { input, .. } if input == bad),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn lsn_orders_by_position() {
        assert!(lsn("0/FFFFFFFF") < lsn("1/0"));
        assert!(lsn("0/3000028") < lsn("0/3000029"));
        let mut lsns = vec![lsn("1/0"), lsn("0/10"), lsn("0/F")];
        lsns.sort();
        assert_eq!(lsns, vec![lsn("0/F"), lsn("0/10"), lsn("1/0")]);
    }

    #[test]
    fn lsn_serde_uses_text() {
        let json = serde_json::to_string(&Lsn(0x16_B374_D848)).unwrap();
        assert_eq!(json, r#""16/B374D848""#);
        let back: Lsn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Lsn(0x16_B374_D848));
        let lower: Lsn = serde_json::from_str(r#""16/b374d848""#).unwrap();
        assert_eq!(lower, back);
        let err = serde_json::from_str::<Lsn>(r#""16-B374D848""#).unwrap_err();
        assert!(err.to_string().contains("16-B374D848"), "{err}");
        assert!(serde_json::from_str::<Lsn>("12345").is_err());
    }

    // ---- WalSegmentSize ----

    #[test]
    fn segment_size_accepts_powers_of_two_from_1_mib_to_1_gib() {
        for shift in 20..=30 {
            let size = WalSegmentSize::new(1 << shift).unwrap();
            assert_eq!(size.bytes(), 1 << shift);
        }
        assert_eq!(WalSegmentSize::MIN.bytes(), MIB);
        assert_eq!(WalSegmentSize::MAX.bytes(), GIB);
        assert_eq!(WalSegmentSize::default().bytes(), 16 * MIB);
    }

    #[test]
    fn segment_size_rejects_others() {
        for bad in [
            0,
            1,
            MIB / 2,
            MIB - 1,
            MIB + 1,
            3 * MIB,
            16 * MIB + 1,
            2 * GIB,
            u64::MAX,
        ] {
            assert_eq!(
                WalSegmentSize::new(bad),
                Err(WalError::InvalidSegmentSize { bytes: bad })
            );
        }
    }

    #[test]
    fn segments_per_xlogid_follows_size() {
        assert_eq!(WalSegmentSize::DEFAULT.segments_per_xlogid(), 256);
        assert_eq!(WalSegmentSize::MIN.segments_per_xlogid(), 4096);
        assert_eq!(WalSegmentSize::MAX.segments_per_xlogid(), 4);
    }

    #[test]
    fn last_segno_holds_the_last_lsn() {
        for shift in 20..=30 {
            let size = size(1 << shift);
            let last = SegmentName::from_lsn(1, Lsn(u64::MAX), size);
            assert_eq!(last.segno, size.last_segno());
            assert_eq!(last.last_lsn(size), Lsn(u64::MAX));
        }
    }

    #[test]
    fn segment_size_serde_uses_bytes_and_validates() {
        assert_eq!(
            serde_json::to_string(&WalSegmentSize::DEFAULT).unwrap(),
            "16777216"
        );
        let size: WalSegmentSize = serde_json::from_str("1048576").unwrap();
        assert_eq!(size, WalSegmentSize::MIN);
        let err = serde_json::from_str::<WalSegmentSize>("1000000").unwrap_err();
        assert!(err.to_string().contains("1000000"), "{err}");
    }

    // ---- SegmentName ----

    #[test]
    fn segment_name_parses_timeline_log_and_seg() {
        assert_eq!(name("000000010000000000000003"), seg(1, 3));
        assert_eq!(name("0000000A00000002000000FF"), seg(10, 2 * 256 + 255));
        assert_eq!(
            name("FFFFFFFFFFFFFFFF000000FF"),
            seg(u32::MAX, WalSegmentSize::DEFAULT.last_segno())
        );
    }

    #[test]
    fn segment_name_formats_like_postgres() {
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(seg(1, 3).file_name(size), "000000010000000000000003");
        assert_eq!(seg(1, 255).file_name(size), "0000000100000000000000FF");
        assert_eq!(seg(1, 256).file_name(size), "000000010000000100000000");
        assert_eq!(seg(0x1A, 0x2F3).file_name(size), "0000001A00000002000000F3");
    }

    #[test]
    fn log_rolls_over_at_segments_per_xlogid() {
        for (bytes, per_xlogid) in [(MIB, 4096), (16 * MIB, 256), (GIB, 4)] {
            let size = size(bytes);
            let last_of_log_0 = seg(1, per_xlogid - 1);
            let first_of_log_1 = last_of_log_0.next();
            assert_eq!(first_of_log_1, seg(1, per_xlogid));
            assert_eq!(
                last_of_log_0.file_name(size),
                format!("0000000100000000{:08X}", per_xlogid - 1)
            );
            assert_eq!(first_of_log_1.file_name(size), "000000010000000100000000");
            assert_eq!(first_of_log_1.start_lsn(size), lsn("1/0"));
            assert_eq!(
                SegmentName::parse("000000010000000100000000", size).unwrap(),
                first_of_log_1
            );
        }
    }

    #[test]
    fn segment_name_seg_part_must_fit_the_size() {
        // 0x100 is one past the last seg of a log with 16 MiB segments, but a
        // normal segment with 1 MiB ones.
        let err = SegmentName::parse("000000010000000000000100", WalSegmentSize::DEFAULT);
        assert!(
            matches!(&err, Err(WalError::InvalidFileName { name, .. }) if name == "000000010000000000000100"),
            "{err:?}"
        );
        assert_eq!(
            SegmentName::parse("000000010000000000000100", WalSegmentSize::MIN).unwrap(),
            seg(1, 256)
        );
        assert_eq!(
            SegmentName::parse("000000010000000000000FFF", WalSegmentSize::MIN).unwrap(),
            seg(1, 4095)
        );
        assert!(SegmentName::parse("000000010000000000001000", WalSegmentSize::MIN).is_err());
        assert_eq!(
            SegmentName::parse("000000010000000000000003", WalSegmentSize::MAX).unwrap(),
            seg(1, 3)
        );
        assert!(SegmentName::parse("000000010000000000000004", WalSegmentSize::MAX).is_err());
    }

    #[test]
    fn segment_name_rejects_non_canonical_names() {
        for bad in [
            "",
            "00000001000000000000003",
            "0000000100000000000000003",
            "00000001000000000000000a",
            "0000000100000000000000G3",
            "000000000000000000000003",
            "+00000010000000000000003",
            " 00000010000000000000003",
            "0000000100000000/0000003",
            "00000001000000000000000é",
        ] {
            let err = SegmentName::parse(bad, WalSegmentSize::DEFAULT).unwrap_err();
            assert!(
                matches!(&err, WalError::InvalidFileName { name, .. } if name == bad),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn from_lsn_is_the_segment_holding_the_byte() {
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(SegmentName::from_lsn(1, lsn("0/3000028"), size), seg(1, 3));
        assert_eq!(SegmentName::from_lsn(1, lsn("0/3000000"), size), seg(1, 3));
        assert_eq!(SegmentName::from_lsn(1, lsn("0/2FFFFFF"), size), seg(1, 2));
        assert_eq!(SegmentName::from_lsn(1, lsn("0/0"), size), seg(1, 0));
        assert_eq!(
            SegmentName::from_lsn(1, lsn("0/FFFFFFFF"), size).file_name(size),
            "0000000100000000000000FF"
        );
        assert_eq!(
            SegmentName::from_lsn(2, lsn("1/0"), size).file_name(size),
            "000000020000000100000000"
        );
        assert_eq!(
            SegmentName::from_lsn(1, lsn("16/B374D848"), size).file_name(size),
            "0000000100000016000000B3"
        );
        assert_eq!(
            SegmentName::from_lsn(1, Lsn(u64::MAX), size).file_name(size),
            "00000001FFFFFFFF000000FF"
        );
    }

    #[test]
    fn from_lsn_with_smallest_and_largest_segments() {
        let small = WalSegmentSize::MIN;
        assert_eq!(SegmentName::from_lsn(1, lsn("0/FFFFF"), small), seg(1, 0));
        assert_eq!(SegmentName::from_lsn(1, lsn("0/100000"), small), seg(1, 1));
        assert_eq!(
            SegmentName::from_lsn(1, lsn("0/FFFFFFFF"), small).file_name(small),
            "000000010000000000000FFF"
        );
        assert_eq!(
            SegmentName::from_lsn(1, lsn("1/300000"), small).file_name(small),
            "000000010000000100000003"
        );

        let large = WalSegmentSize::MAX;
        assert_eq!(
            SegmentName::from_lsn(1, lsn("0/3FFFFFFF"), large),
            seg(1, 0)
        );
        assert_eq!(
            SegmentName::from_lsn(1, lsn("0/40000000"), large),
            seg(1, 1)
        );
        assert_eq!(
            SegmentName::from_lsn(1, lsn("0/C0000000"), large).file_name(large),
            "000000010000000000000003"
        );
        assert_eq!(
            SegmentName::from_lsn(1, lsn("1/0"), large).file_name(large),
            "000000010000000100000000"
        );
        assert_eq!(
            SegmentName::from_lsn(1, Lsn(u64::MAX), large).file_name(large),
            "00000001FFFFFFFF00000003"
        );
    }

    #[test]
    fn ending_at_names_the_preceding_segment_on_a_boundary() {
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(
            SegmentName::ending_at(1, lsn("0/3000000"), size),
            Some(seg(1, 2))
        );
        assert_eq!(
            SegmentName::ending_at(1, lsn("0/3000001"), size),
            Some(seg(1, 3))
        );
        assert_eq!(
            SegmentName::ending_at(1, lsn("0/30000A0"), size),
            Some(seg(1, 3))
        );
        assert_eq!(
            SegmentName::ending_at(1, lsn("1/0"), size).map(|s| s.file_name(size)),
            Some("0000000100000000000000FF".to_owned())
        );
        assert_eq!(SegmentName::ending_at(1, Lsn::ZERO, size), None);
        assert_eq!(SegmentName::ending_at(1, Lsn(1), size), Some(seg(1, 0)));
    }

    #[test]
    fn start_lsn_is_the_first_byte() {
        assert_eq!(
            seg(1, 3).start_lsn(WalSegmentSize::DEFAULT),
            lsn("0/3000000")
        );
        assert_eq!(seg(1, 256).start_lsn(WalSegmentSize::DEFAULT), lsn("1/0"));
        assert_eq!(seg(1, 5).start_lsn(WalSegmentSize::MAX), lsn("1/40000000"));
        assert_eq!(seg(1, 4097).start_lsn(WalSegmentSize::MIN), lsn("1/100000"));
        assert_eq!(seg(7, 0).start_lsn(WalSegmentSize::DEFAULT), Lsn::ZERO);
        let last = WalSegmentSize::DEFAULT.last_segno();
        assert_eq!(
            seg(1, last).start_lsn(WalSegmentSize::DEFAULT),
            lsn("FFFFFFFF/FF000000")
        );
    }

    #[test]
    fn next_keeps_the_timeline() {
        assert_eq!(seg(3, 41).next(), seg(3, 42));
        assert_eq!(
            name("0000000200000000000000FF")
                .next()
                .file_name(WalSegmentSize::DEFAULT),
            "000000020000000100000000"
        );
    }

    #[test]
    #[should_panic(expected = "beyond the LSN space")]
    fn file_name_panics_past_the_last_segment() {
        let size = WalSegmentSize::DEFAULT;
        seg(1, size.last_segno()).next().file_name(size);
    }

    #[test]
    fn segment_order_is_file_name_order() {
        let size = WalSegmentSize::DEFAULT;
        let mut segments = [seg(2, 3), seg(1, 300), seg(1, 4), seg(2, 0)];
        segments.sort();
        let names: Vec<String> = segments.iter().map(|s| s.file_name(size)).collect();
        let mut sorted_names = names.clone();
        sorted_names.sort();
        assert_eq!(names, sorted_names);
    }

    // ---- WalFileName ----

    #[test]
    fn wal_file_name_classifies_every_kind() {
        let size = WalSegmentSize::DEFAULT;
        let cases = [
            ("000000010000000000000003", WalFileName::Segment(seg(1, 3))),
            (
                "000000010000000000000003.partial",
                WalFileName::Partial(seg(1, 3)),
            ),
            ("00000002.history", WalFileName::History { timeline: 2 }),
            ("0000000A.history", WalFileName::History { timeline: 10 }),
            (
                "000000010000000000000002.00000028.backup",
                WalFileName::BackupHistory {
                    segment: seg(1, 2),
                    offset: 0x28,
                },
            ),
            (
                "000000030000000100000000.00FFFFFF.backup",
                WalFileName::BackupHistory {
                    segment: seg(3, 256),
                    offset: 0xFF_FFFF,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(WalFileName::parse(text, size).unwrap(), expected, "{text}");
            assert_eq!(expected.file_name(size), text);
        }
    }

    #[test]
    fn wal_file_name_rejects_anything_else_naming_it() {
        let size = WalSegmentSize::DEFAULT;
        for bad in [
            "",
            ".",
            "..",
            "archive_status",
            "RECOVERYHISTORY",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000100000000000000003",
            "00000001000000000000000a",
            "../000000010000000000000003",
            "000000010000000000000003/",
            "pg_wal/000000010000000000000003",
            "000000010000000000000003\0",
            "000000010000000000000003.gz",
            "000000010000000000000003.partial.tmp",
            "000000010000000000000003.PARTIAL",
            "00000001000000000000003.partial",
            "00000002.HISTORY",
            "0000002.history",
            "000000002.history",
            "00000000.history",
            "0000000a.history",
            "00000002.history.tmp",
            "../00000002.history",
            ".history",
            "000000010000000000000002.00000028.BACKUP",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.000000028.backup",
            "000000010000000000000002.0000002a.backup",
            "000000010000000000000002_00000028.backup",
            "000000010000000000000002.01000000.backup",
            "000000010000000000000002.backup",
            "00000001000000000000000/.00000028.backup",
            "000000000000000000000002.00000028.backup",
            "000000010000000000000100",
            "0000000100000000000000é",
        ] {
            let err = WalFileName::parse(bad, size).unwrap_err();
            assert!(
                matches!(&err, WalError::InvalidFileName { name, .. } if name == bad),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn backup_history_offset_must_be_inside_the_segment() {
        let name = "000000010000000000000002.000FFFFF.backup";
        assert!(WalFileName::parse(name, WalSegmentSize::DEFAULT).is_ok());
        assert!(WalFileName::parse(name, WalSegmentSize::MIN).is_ok());
        let outside_small = "000000010000000000000002.00100000.backup";
        assert!(WalFileName::parse(outside_small, WalSegmentSize::MIN).is_err());
        assert!(WalFileName::parse(outside_small, WalSegmentSize::DEFAULT).is_ok());
        let inside_large = "000000010000000000000002.3FFFFFFF.backup";
        assert!(WalFileName::parse(inside_large, WalSegmentSize::MAX).is_ok());
        assert!(WalFileName::parse(inside_large, WalSegmentSize::DEFAULT).is_err());
    }

    // ---- TimelineHistory ----

    /// What PostgreSQL writes for timeline 3 after two promotions: the first
    /// in the middle of segment 3, the second exactly at the start of
    /// segment 5. Each copied line is preceded by a blank line.
    const HISTORY_3: &str = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2024-05-01 12:00:00+00\n";

    fn history_3() -> TimelineHistory {
        TimelineHistory::parse(3, HISTORY_3).unwrap()
    }

    #[test]
    fn history_parses_postgres_output() {
        let history = history_3();
        assert_eq!(history.timeline(), 3);
        assert_eq!(
            history.switches(),
            &[
                TimelineSwitch {
                    timeline: 1,
                    switch_lsn: lsn("0/3000158"),
                    reason: "no recovery target specified".to_owned(),
                },
                TimelineSwitch {
                    timeline: 2,
                    switch_lsn: lsn("0/5000000"),
                    reason: "before 2024-05-01 12:00:00+00".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn history_ignores_comments_blank_lines_and_whitespace_style() {
        let content = "# written by hand\r\n\r\n   \t\n  1  0/3000158   no recovery target specified  \r\n\t# another\n3\t0/5000000\n";
        let history = TimelineHistory::parse(5, content).unwrap();
        let parents: Vec<(u32, Lsn, &str)> = history
            .switches()
            .iter()
            .map(|s| (s.timeline, s.switch_lsn, s.reason.as_str()))
            .collect();
        // Ancestors need not be consecutive: timeline 2 may be a branch
        // that timeline 5 does not descend from.
        assert_eq!(
            parents,
            vec![
                (1, lsn("0/3000158"), "no recovery target specified"),
                (3, lsn("0/5000000"), ""),
            ]
        );
    }

    #[test]
    fn history_of_a_timeline_without_ancestors_is_empty() {
        let history = TimelineHistory::parse(1, "").unwrap();
        assert!(history.switches().is_empty());
        assert_eq!(history.timeline_of(Lsn(u64::MAX)), 1);
        assert_eq!(
            history.ranges(),
            vec![TimelineRange {
                timeline: 1,
                start: Lsn::ZERO,
                end: None
            }]
        );
    }

    #[test]
    fn history_rejects_malformed_lines() {
        let cases = [
            (2, "x\t0/3000158\treason", "decimal parent timeline"),
            (2, "0x1\t0/3000158\treason", "decimal parent timeline"),
            (2, "-1\t0/3000158\treason", "decimal parent timeline"),
            (2, "99999999999\t0/3000158", "32-bit"),
            (2, "1", "switch point LSN"),
            (2, "1\t", "switch point LSN"),
            (2, "1\t3000158\treason", "invalid LSN"),
            (2, "1\t0/30G0158", "invalid LSN"),
            (2, "0\t0/3000158", "timeline 0"),
            (2, "2\t0/3000158", "not below timeline 2"),
            (3, "1\t0/3000158\n1\t0/4000000", "must increase"),
            (4, "2\t0/3000158\n1\t0/4000000", "must increase"),
            (3, "1\t0/5000000\n2\t0/3000158", "before the previous one"),
            (0, "", "timeline 0"),
        ];
        for (timeline, content, expected) in cases {
            let err = TimelineHistory::parse(timeline, content).unwrap_err();
            assert!(
                matches!(err, WalError::InvalidHistory { timeline: t, .. } if t == timeline),
                "{content:?}: {err:?}"
            );
            assert!(err.to_string().contains(expected), "{content:?}: {err}");
        }
    }

    #[test]
    fn history_error_names_the_line() {
        let err = TimelineHistory::parse(3, "1\t0/3000158\treason\n\nbogus line\n").unwrap_err();
        assert!(err.to_string().contains("line 3 \"bogus line\""), "{err}");
    }

    #[test]
    fn history_allows_switches_at_the_same_lsn() {
        let history = TimelineHistory::parse(3, "1\t0/3000158\n2\t0/3000158\n").unwrap();
        assert_eq!(history.timeline_of(lsn("0/3000157")), 1);
        assert_eq!(history.timeline_of(lsn("0/3000158")), 3);
        assert!(!history.contains(2, lsn("0/3000158")));
        assert_eq!(
            history.replay_segment(3, WalSegmentSize::DEFAULT),
            seg(3, 3)
        );
    }

    #[test]
    fn timeline_of_follows_switch_points() {
        let history = history_3();
        assert_eq!(history.timeline_of(Lsn::ZERO), 1);
        assert_eq!(history.timeline_of(lsn("0/3000157")), 1);
        assert_eq!(history.timeline_of(lsn("0/3000158")), 2);
        assert_eq!(history.timeline_of(lsn("0/4FFFFFF")), 2);
        assert_eq!(history.timeline_of(lsn("0/5000000")), 3);
        assert_eq!(history.timeline_of(Lsn(u64::MAX)), 3);
    }

    #[test]
    fn ranges_chain_the_timelines() {
        assert_eq!(
            history_3().ranges(),
            vec![
                TimelineRange {
                    timeline: 1,
                    start: Lsn::ZERO,
                    end: Some(lsn("0/3000158"))
                },
                TimelineRange {
                    timeline: 2,
                    start: lsn("0/3000158"),
                    end: Some(lsn("0/5000000"))
                },
                TimelineRange {
                    timeline: 3,
                    start: lsn("0/5000000"),
                    end: None
                },
            ]
        );
    }

    #[test]
    fn contains_checks_timeline_and_range() {
        let history = history_3();
        assert!(history.contains(1, Lsn::ZERO));
        assert!(history.contains(1, lsn("0/3000157")));
        assert!(!history.contains(1, lsn("0/3000158")));
        assert!(history.contains(2, lsn("0/3000158")));
        assert!(!history.contains(2, lsn("0/3000157")));
        assert!(history.contains(2, lsn("0/4FFFFFF")));
        assert!(!history.contains(2, lsn("0/5000000")));
        assert!(history.contains(3, lsn("0/5000000")));
        assert!(history.contains(3, Lsn(u64::MAX)));
        assert!(!history.contains(3, lsn("0/4FFFFFF")));
        assert!(!history.contains(4, lsn("0/6000000")));
    }

    #[test]
    fn replay_segment_takes_the_switch_segment_from_the_child() {
        let history = history_3();
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(history.replay_segment(0, size), seg(1, 0));
        assert_eq!(history.replay_segment(2, size), seg(1, 2));
        // Timeline 2 starts in the middle of segment 3.
        assert_eq!(history.replay_segment(3, size), seg(2, 3));
        assert_eq!(history.replay_segment(4, size), seg(2, 4));
        // Timeline 3 starts exactly at segment 5: segment 4 stays on 2.
        assert_eq!(history.replay_segment(5, size), seg(3, 5));
        assert_eq!(history.replay_segment(1000, size), seg(3, 1000));
    }

    #[test]
    fn replay_segment_with_1_mib_and_1_gib_segments() {
        let history = history_3();
        // 0/3000158 is in 1 MiB segment 0x30, 0/5000000 starts 1 MiB segment 0x50.
        let small = WalSegmentSize::MIN;
        assert_eq!(history.replay_segment(0x2F, small), seg(1, 0x2F));
        assert_eq!(history.replay_segment(0x30, small), seg(2, 0x30));
        assert_eq!(history.replay_segment(0x4F, small), seg(2, 0x4F));
        assert_eq!(history.replay_segment(0x50, small), seg(3, 0x50));
        // Both switches are in the first 1 GiB segment, so it is read from
        // timeline 3, the newest one started in it.
        let large = WalSegmentSize::MAX;
        assert_eq!(history.replay_segment(0, large), seg(3, 0));
        assert_eq!(history.replay_segment(1, large), seg(3, 1));
    }

    // ---- gap detection ----

    fn all_of(segments: &[(u32, u64)]) -> Vec<SegmentName> {
        segments.iter().map(|&(t, s)| seg(t, s)).collect()
    }

    #[test]
    fn no_gap_when_everything_is_archived() {
        let size = WalSegmentSize::DEFAULT;
        let archived = all_of(&[(1, 1), (1, 2), (1, 3), (1, 4)]);
        assert_eq!(
            first_gap(archived.clone(), seg(1, 1), seg(1, 4), None, size),
            Ok(None)
        );
        assert_eq!(
            first_gap(archived, seg(1, 2), seg(1, 2), None, size),
            Ok(None)
        );
    }

    #[test]
    fn first_gap_names_the_first_missing_segment() {
        let size = WalSegmentSize::DEFAULT;
        let archived = all_of(&[(1, 1), (1, 2), (1, 4), (1, 6)]);
        assert_eq!(
            first_gap(archived.clone(), seg(1, 1), seg(1, 6), None, size),
            Ok(Some(seg(1, 3)))
        );
        assert_eq!(
            missing_segments(archived.clone(), seg(1, 1), seg(1, 6), None, size, 10),
            Ok(vec![seg(1, 3), seg(1, 5)])
        );
        assert_eq!(
            missing_segments(archived.clone(), seg(1, 1), seg(1, 8), None, size, 2),
            Ok(vec![seg(1, 3), seg(1, 5)])
        );
        assert_eq!(
            missing_segments(archived.clone(), seg(1, 1), seg(1, 8), None, size, 0),
            Ok(vec![])
        );
        assert_eq!(
            first_gap(archived.clone(), seg(1, 0), seg(1, 6), None, size),
            Ok(Some(seg(1, 0)))
        );
        // The end segment itself is needed.
        assert_eq!(
            first_gap(archived, seg(1, 4), seg(1, 7), None, size),
            Ok(Some(seg(1, 5)))
        );
    }

    #[test]
    fn first_gap_ignores_other_timelines_without_history() {
        let size = WalSegmentSize::DEFAULT;
        let archived = all_of(&[(1, 1), (2, 2), (1, 3)]);
        assert_eq!(
            first_gap(archived, seg(1, 1), seg(1, 3), None, size),
            Ok(Some(seg(1, 2)))
        );
    }

    #[test]
    fn first_gap_across_log_rollover() {
        for size in [
            WalSegmentSize::MIN,
            WalSegmentSize::DEFAULT,
            WalSegmentSize::MAX,
        ] {
            let per_xlogid = size.segments_per_xlogid();
            let from = seg(1, per_xlogid - 2);
            let to = seg(1, per_xlogid + 1);
            let archived = all_of(&[
                (1, per_xlogid - 2),
                (1, per_xlogid - 1),
                (1, per_xlogid + 1),
            ]);
            let gap = first_gap(archived, from, to, None, size).unwrap().unwrap();
            assert_eq!(gap.file_name(size), "000000010000000100000000");
        }
    }

    #[test]
    fn first_gap_follows_a_switch_in_the_middle_of_a_segment() {
        let size = WalSegmentSize::DEFAULT;
        let history =
            TimelineHistory::parse(2, "1\t0/3000158\tno recovery target specified\n").unwrap();
        let complete = all_of(&[(1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]);
        assert_eq!(
            first_gap(complete.clone(), seg(1, 1), seg(2, 5), Some(&history), size),
            Ok(None)
        );
        // The parent's copy of segment 3 (even complete, e.g. from an old
        // primary that went on writing) does not replace the child's.
        let parent_only = all_of(&[(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)]);
        assert_eq!(
            first_gap(parent_only, seg(1, 1), seg(2, 5), Some(&history), size),
            Ok(Some(seg(2, 3)))
        );
        // Segments before the switch segment come from the parent only.
        let child_early = all_of(&[(1, 1), (2, 2), (2, 3), (2, 4), (2, 5)]);
        assert_eq!(
            first_gap(child_early, seg(1, 1), seg(2, 5), Some(&history), size),
            Ok(Some(seg(1, 2)))
        );
        // A base backup that started in the switch segment, before the
        // switch, still replays it from the child.
        assert_eq!(
            first_gap(complete, seg(1, 3), seg(2, 5), Some(&history), size),
            Ok(None)
        );
    }

    #[test]
    fn first_gap_follows_a_switch_on_a_segment_boundary() {
        let size = WalSegmentSize::DEFAULT;
        let history = history_3();
        let archived = all_of(&[(1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]);
        assert_eq!(
            first_gap(archived.clone(), seg(1, 2), seg(3, 6), Some(&history), size),
            Ok(None)
        );
        let without_2_4 = all_of(&[(1, 2), (2, 3), (3, 4), (3, 5), (3, 6)]);
        assert_eq!(
            missing_segments(without_2_4, seg(1, 2), seg(3, 6), Some(&history), size, 5),
            Ok(vec![seg(2, 4)])
        );
        // Starting on timeline 2 is fine too.
        assert_eq!(
            first_gap(archived, seg(2, 4), seg(3, 6), Some(&history), size),
            Ok(None)
        );
    }

    #[test]
    fn first_gap_with_1_mib_and_1_gib_segments() {
        let history = history_3();
        let small = WalSegmentSize::MIN;
        let mut archived: Vec<SegmentName> = (0x2E..=0x52)
            .map(|s| history.replay_segment(s, small))
            .collect();
        assert_eq!(
            first_gap(
                archived.clone(),
                seg(1, 0x2E),
                seg(3, 0x52),
                Some(&history),
                small
            ),
            Ok(None)
        );
        archived.retain(|s| *s != seg(2, 0x30));
        archived.push(seg(1, 0x30));
        assert_eq!(
            first_gap(archived, seg(1, 0x2E), seg(3, 0x52), Some(&history), small),
            Ok(Some(seg(2, 0x30)))
        );

        // With 1 GiB segments both switches fall in segment 0, so a base
        // backup started there on timeline 1 replays timeline 3's segment 0.
        let large = WalSegmentSize::MAX;
        assert_eq!(
            first_gap(
                all_of(&[(3, 0), (3, 1)]),
                seg(1, 0),
                seg(3, 1),
                Some(&history),
                large
            ),
            Ok(None)
        );
        assert_eq!(
            first_gap(
                all_of(&[(1, 0), (3, 1)]),
                seg(1, 0),
                seg(3, 1),
                Some(&history),
                large
            ),
            Ok(Some(seg(3, 0)))
        );
    }

    #[test]
    fn first_gap_rejects_ranges_that_cannot_be_replayed() {
        let size = WalSegmentSize::DEFAULT;
        let history = history_3();
        let none: Vec<SegmentName> = Vec::new();

        let reversed = first_gap(none.clone(), seg(1, 5), seg(1, 4), None, size).unwrap_err();
        assert!(
            matches!(reversed, WalError::ReplayRangeReversed { .. }),
            "{reversed:?}"
        );
        assert!(
            reversed.to_string().contains("000000010000000000000005"),
            "{reversed}"
        );

        let mismatch =
            first_gap(none.clone(), seg(1, 1), seg(2, 4), Some(&history), size).unwrap_err();
        assert!(
            matches!(
                mismatch,
                WalError::HistoryMismatch {
                    history_timeline: 3,
                    to_timeline: 2,
                    ..
                }
            ),
            "{mismatch:?}"
        );

        let missing = first_gap(none.clone(), seg(1, 1), seg(3, 6), None, size).unwrap_err();
        assert!(
            matches!(missing, WalError::MissingHistory { .. }),
            "{missing:?}"
        );
        assert!(
            missing.to_string().contains("00000003.history"),
            "{missing}"
        );

        // A base backup taken on timeline 1 after it ended (an old primary
        // that went on after the promotion) is on another branch.
        let branch =
            first_gap(none.clone(), seg(1, 4), seg(3, 6), Some(&history), size).unwrap_err();
        assert!(
            matches!(&branch, WalError::NotOnTimelinePath { segment, target_timeline: 3, .. } if segment == "000000010000000000000004"),
            "{branch:?}"
        );
        assert!(branch.to_string().contains("ends at 0/3000158"), "{branch}");

        // Timeline 2 ended exactly where segment 5 starts.
        assert!(first_gap(none.clone(), seg(2, 5), seg(3, 6), Some(&history), size).is_err());
        // Timeline 2 started in segment 3, so it has no segment 2.
        let early =
            first_gap(none.clone(), seg(2, 2), seg(3, 6), Some(&history), size).unwrap_err();
        assert!(early.to_string().contains("starts at 0/3000158"), "{early}");
        // The target must be on its timeline's range.
        assert!(first_gap(none.clone(), seg(1, 1), seg(3, 4), Some(&history), size).is_err());
        // Timeline 4 is not an ancestor of 3.
        let stranger =
            first_gap(none.clone(), seg(4, 6), seg(3, 7), Some(&history), size).unwrap_err();
        assert!(
            stranger.to_string().contains("not an ancestor"),
            "{stranger}"
        );
        // Segment numbers without a file name are refused, not a panic.
        let beyond = seg(1, size.last_segno() + 1);
        assert!(first_gap(none, seg(1, 0), beyond, None, size).is_err());
    }

    // ---- retention ----

    #[test]
    fn retention_keeps_segments_from_the_oldest_backup_on() {
        let keep = segments_needed_from(seg(2, 5));
        let needed = |file: WalFileName| keep.is_needed(&file);
        assert!(!needed(WalFileName::Segment(seg(1, 4))));
        assert!(!needed(WalFileName::Segment(seg(2, 4))));
        assert!(needed(WalFileName::Segment(seg(2, 5))));
        // Timelines are ignored, like pg_archivecleanup does.
        assert!(needed(WalFileName::Segment(seg(1, 5))));
        assert!(needed(WalFileName::Segment(seg(3, 5))));
        assert!(needed(WalFileName::Segment(seg(1, 6))));
        assert!(!needed(WalFileName::Segment(seg(9, 0))));
        assert!(!needed(WalFileName::Partial(seg(1, 4))));
        assert!(needed(WalFileName::Partial(seg(1, 5))));
        assert!(needed(WalFileName::History { timeline: 1 }));
        assert!(needed(WalFileName::History { timeline: 2 }));
        assert!(!needed(WalFileName::BackupHistory {
            segment: seg(2, 4),
            offset: 0x28
        }));
        assert!(needed(WalFileName::BackupHistory {
            segment: seg(2, 5),
            offset: 0x28
        }));
        assert!(needed(WalFileName::BackupHistory {
            segment: seg(2, 9),
            offset: 0
        }));
    }

    #[test]
    fn retention_from_segment_zero_keeps_everything() {
        let keep = segments_needed_from(seg(1, 0));
        assert!(keep.is_needed(&WalFileName::Segment(seg(1, 0))));
        assert!(keep.is_needed(&WalFileName::Partial(seg(1, 0))));
    }

    // ---- properties ----

    fn arb_size() -> impl Strategy<Value = WalSegmentSize> {
        (20u32..=30).prop_map(|shift| WalSegmentSize::new(1 << shift).unwrap())
    }

    fn arb_segment(size: WalSegmentSize) -> impl Strategy<Value = SegmentName> {
        (1u32..=u32::MAX, 0..=size.last_segno()).prop_map(|(timeline, segno)| seg(timeline, segno))
    }

    fn arb_file(size: WalSegmentSize) -> impl Strategy<Value = WalFileName> {
        prop_oneof![
            arb_segment(size).prop_map(WalFileName::Segment),
            arb_segment(size).prop_map(WalFileName::Partial),
            (1u32..=u32::MAX).prop_map(|timeline| WalFileName::History { timeline }),
            (arb_segment(size), 0..size.bytes()).prop_map(|(segment, offset)| {
                WalFileName::BackupHistory {
                    segment,
                    offset: offset as u32,
                }
            }),
        ]
    }

    /// A history for timeline `switches.len() + 1` with ancestors 1, 2, ...
    /// switching at the given LSNs (sorted), and the size to use with it.
    fn arb_history() -> impl Strategy<Value = (TimelineHistory, WalSegmentSize)> {
        (arb_size(), prop::collection::vec(0u64..(64 << 20), 0..4)).prop_map(|(size, mut lsns)| {
            lsns.sort_unstable();
            let content: String = lsns
                .iter()
                .enumerate()
                .map(|(i, &l)| format!("{}\t{}\treason\n", i + 1, Lsn(l)))
                .collect();
            let history = TimelineHistory::parse(lsns.len() as u32 + 1, &content).unwrap();
            (history, size)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn lsn_text_round_trips(value in any::<u64>()) {
            let text = Lsn(value).to_string();
            prop_assert_eq!(text.parse::<Lsn>().unwrap(), Lsn(value));
            prop_assert_eq!(text.to_lowercase().parse::<Lsn>().unwrap(), Lsn(value));
            let json = serde_json::to_string(&Lsn(value)).unwrap();
            prop_assert_eq!(serde_json::from_str::<Lsn>(&json).unwrap(), Lsn(value));
        }

        #[test]
        fn segment_names_round_trip(
            (size, segment) in arb_size().prop_flat_map(|size| (Just(size), arb_segment(size)))
        ) {
            let text = segment.file_name(size);
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(SegmentName::parse(&text, size).unwrap(), segment);
            prop_assert!(SegmentName::parse(&text.to_lowercase(), size).is_err() || text == text.to_lowercase());
        }

        #[test]
        fn segment_order_matches_file_name_order(
            (size, a, b) in arb_size().prop_flat_map(|size| (Just(size), arb_segment(size), arb_segment(size)))
        ) {
            prop_assert_eq!(a.cmp(&b), a.file_name(size).cmp(&b.file_name(size)));
        }

        #[test]
        fn wal_file_names_round_trip(
            (size, file) in arb_size().prop_flat_map(|size| (Just(size), arb_file(size)))
        ) {
            let text = file.file_name(size);
            prop_assert_eq!(WalFileName::parse(&text, size).unwrap(), file);
        }

        #[test]
        fn accepted_file_names_are_canonical(
            text in "[0-9A-Fa-f]{0,26}(\\.[0-9A-F]{0,9})?(\\.(partial|history|backup))?",
            size in arb_size(),
        ) {
            if let Ok(file) = WalFileName::parse(&text, size) {
                prop_assert_eq!(file.file_name(size), text);
            }
        }

        #[test]
        fn arbitrary_text_is_canonical_or_rejected(text in "\\PC{0,48}", size in arb_size()) {
            match WalFileName::parse(&text, size) {
                Ok(file) => prop_assert_eq!(file.file_name(size), text),
                Err(WalError::InvalidFileName { name, .. }) => prop_assert_eq!(name, text),
                Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            }
        }

        #[test]
        fn lsn_to_segment_is_monotonic(a in any::<u64>(), b in any::<u64>(), size in arb_size()) {
            let (low, high) = (a.min(b), a.max(b));
            let low_segment = SegmentName::from_lsn(1, Lsn(low), size);
            let high_segment = SegmentName::from_lsn(1, Lsn(high), size);
            prop_assert!(low_segment <= high_segment);
            prop_assert!(high_segment.segno - low_segment.segno <= (high - low) / size.bytes() + 1);
        }

        #[test]
        fn segment_from_lsn_holds_the_lsn(value in any::<u64>(), size in arb_size()) {
            let segment = SegmentName::from_lsn(1, Lsn(value), size);
            prop_assert!(segment.start_lsn(size) <= Lsn(value));
            prop_assert!(Lsn(value) <= segment.last_lsn(size));
            if value > 0 {
                prop_assert_eq!(
                    SegmentName::ending_at(1, Lsn(value), size),
                    Some(SegmentName::from_lsn(1, Lsn(value - 1), size))
                );
            }
        }

        #[test]
        fn timeline_of_agrees_with_ranges((history, _size) in arb_history(), value in 0u64..(80 << 20)) {
            let timeline = history.timeline_of(Lsn(value));
            prop_assert!(history.contains(timeline, Lsn(value)));
            let containing = history
                .ranges()
                .iter()
                .filter(|r| history.contains(r.timeline, Lsn(value)))
                .count();
            prop_assert_eq!(containing, 1);
        }

        #[test]
        fn gap_is_exactly_the_missing_replay_segment(
            (history, size) in arb_history(),
            a in 0u64..100,
            extra in 0u64..100,
            removed in any::<prop::sample::Index>(),
        ) {
            // Start on whatever timeline the WAL at the start segment's first
            // byte is on; end on the newest timeline, after its start.
            let newest_start = history.ranges().last().unwrap().start;
            let first_segno = a.min(size.last_segno());
            let from = seg(history.timeline_of(seg(1, first_segno).start_lsn(size)), first_segno);
            let to = seg(history.timeline(), first_segno.max(newest_start.0 / size.bytes()) + extra);
            let needed: Vec<SegmentName> = (from.segno..=to.segno)
                .map(|segno| history.replay_segment(segno, size))
                .collect();
            prop_assert_eq!(first_gap(needed.clone(), from, to, Some(&history), size), Ok(None));

            let gone = needed[removed.index(needed.len())];
            let mut archived = needed.clone();
            archived.retain(|s| *s != gone);
            // Other timelines' copies of the same segment number do not help.
            archived.push(seg(gone.timeline + 1, gone.segno));
            if gone.timeline > 1 {
                archived.push(seg(gone.timeline - 1, gone.segno));
            }
            prop_assert_eq!(first_gap(archived.clone(), from, to, Some(&history), size), Ok(Some(gone)));
            prop_assert_eq!(
                missing_segments(archived, from, to, Some(&history), size, usize::MAX),
                Ok(vec![gone])
            );
        }

        #[test]
        fn retention_never_drops_what_a_replay_needs(
            (history, size) in arb_history(),
            a in 0u64..100,
            extra in 0u64..100,
        ) {
            let from_segno = a;
            let from = seg(history.timeline_of(seg(1, from_segno).start_lsn(size)), from_segno);
            let keep = segments_needed_from(from);
            for segno in from_segno..=from_segno + extra {
                let needed = history.replay_segment(segno, size);
                prop_assert!(keep.is_needed(&WalFileName::Segment(needed)));
            }
        }
    }
}
