//! The node's wall clock: the time a leader stamps into the commands it
//! proposes (`Command::time_ns`: mtimes, upload and snapshot-pin leases,
//! the time a GC task was queued) and the maintenance clock (which uploads
//! and pins have expired).
//!
//! Safety never rests on this clock: read-index, leases and the GC grace
//! period use monotonic `Instant`s (see `maintenance::GcMarks`). The
//! partition tests check that by skewing it.
//!
//! # Test builds: an injected offset (`--features clock-skew`)
//!
//! Containers share the host kernel's clock, so a test cannot skew one
//! replica's clock from outside. A build with the cargo feature
//! `clock-skew` (of this crate, forwarded by `nokv-cli`'s feature of the
//! same name; `scripts/test.sh` builds the Jepsen image that way) adds an
//! offset to every reading:
//!
//! - `NOKV_TEST_CLOCK_OFFSET_FILE` names a file holding the offset in
//!   signed milliseconds, one line ending in a newline (`-2500\n`). Unset:
//!   no offset, ever.
//! - The file is re-read at most every 100 ms, by whichever
//!   call finds the last reading stale, so a nemesis changes the offset of
//!   a running node by replacing the file (`docker cp`, which needs no shell
//!   in the image).
//! - A missing file means offset 0. A file without its final newline (a
//!   write in progress) or that does not parse keeps the previous offset,
//!   with a warning. Offsets beyond ±1 day are refused the
//!   same way.
//! - Each change of the offset is logged at info (`test clock offset`).
//!
//! Without the feature none of this is compiled: [`now_ns`] is the system
//! clock, and the variable is ignored.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time in nanoseconds since the Unix epoch (0 if the system
/// clock is before it), plus the test offset in `clock-skew` builds.
pub(crate) fn now_ns() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    #[cfg(feature = "clock-skew")]
    let real = skew::apply(real, skew::offset_ms());
    real
}

#[cfg(feature = "clock-skew")]
mod skew {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// The variable naming the offset file.
    pub(crate) const OFFSET_FILE_ENV: &str = "NOKV_TEST_CLOCK_OFFSET_FILE";
    /// How stale the offset may be.
    pub(crate) const REREAD: Duration = Duration::from_millis(100);
    /// Largest offset accepted either way: one day.
    pub(crate) const MAX_OFFSET_MS: i64 = 24 * 3600 * 1000;

    /// Why the offset file's text was refused.
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub(crate) enum OffsetError {
        #[error("no final newline (a write in progress?)")]
        Incomplete,
        #[error("not a signed number of milliseconds: {0:?}")]
        NotANumber(String),
        #[error("{0} ms is beyond ±{MAX_OFFSET_MS} ms")]
        OutOfRange(i64),
    }

    /// The offset in the file's text: one signed integer of milliseconds,
    /// surrounding blanks allowed, ending in a newline.
    pub(crate) fn parse_offset(text: &str) -> Result<i64, OffsetError> {
        let line = text.strip_suffix('\n').ok_or(OffsetError::Incomplete)?;
        let line = line.trim();
        let ms: i64 = line
            .parse()
            .map_err(|_| OffsetError::NotANumber(line.to_string()))?;
        if ms.unsigned_abs() > MAX_OFFSET_MS.unsigned_abs() {
            return Err(OffsetError::OutOfRange(ms));
        }
        Ok(ms)
    }

    /// `real_ns` moved by `offset_ms`, clamped to the `u64` range.
    pub(crate) fn apply(real_ns: u64, offset_ms: i64) -> u64 {
        let skewed = i128::from(real_ns) + i128::from(offset_ms) * 1_000_000;
        skewed.clamp(0, i128::from(u64::MAX)) as u64
    }

    struct Offset {
        /// `None`: the variable is unset, no offset.
        path: Option<PathBuf>,
        ms: i64,
        read_at: Option<Instant>,
    }

    static OFFSET: Mutex<Option<Offset>> = Mutex::new(None);

    /// The current offset, re-reading the file when the last reading is
    /// older than [`REREAD`].
    pub(crate) fn offset_ms() -> i64 {
        let mut guard = OFFSET.lock().unwrap_or_else(|p| p.into_inner());
        let state = guard.get_or_insert_with(|| Offset {
            path: std::env::var_os(OFFSET_FILE_ENV).map(PathBuf::from),
            ms: 0,
            read_at: None,
        });
        let Some(path) = &state.path else { return 0 };
        let now = Instant::now();
        if state
            .read_at
            .is_some_and(|t| now.duration_since(t) < REREAD)
        {
            return state.ms;
        }
        state.read_at = Some(now);
        let read = match std::fs::read_to_string(path) {
            Ok(text) => parse_offset(&text).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok(ms) if ms != state.ms => {
                tracing::info!(
                    offset_ms = ms,
                    previous_ms = state.ms,
                    file = %path.display(),
                    "test clock offset"
                );
                state.ms = ms;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                file = %path.display(),
                %error,
                kept_ms = state.ms,
                "test clock offset file refused; keeping the previous offset"
            ),
        }
        state.ms
    }
}

#[cfg(all(test, feature = "clock-skew"))]
mod tests {
    use super::skew::{apply, parse_offset, OffsetError, MAX_OFFSET_MS};

    #[test]
    fn offsets_parse_only_from_a_whole_line() {
        assert_eq!(parse_offset("1500\n"), Ok(1500));
        assert_eq!(parse_offset("-250\n"), Ok(-250));
        assert_eq!(parse_offset(" +42 \n"), Ok(42));
        assert_eq!(parse_offset("0\n"), Ok(0));
        // A write in progress: "-1500\n" caught after "-15".
        assert_eq!(parse_offset("-15"), Err(OffsetError::Incomplete));
        assert_eq!(parse_offset(""), Err(OffsetError::Incomplete));
        assert!(matches!(
            parse_offset("\n"),
            Err(OffsetError::NotANumber(_))
        ));
        assert!(matches!(
            parse_offset("1.5\n"),
            Err(OffsetError::NotANumber(_))
        ));
        assert!(matches!(
            parse_offset("12 34\n"),
            Err(OffsetError::NotANumber(_))
        ));
        assert_eq!(
            parse_offset(&format!("{}\n", MAX_OFFSET_MS)),
            Ok(MAX_OFFSET_MS)
        );
        assert_eq!(
            parse_offset(&format!("-{}\n", MAX_OFFSET_MS + 1)),
            Err(OffsetError::OutOfRange(-(MAX_OFFSET_MS + 1)))
        );
        assert!(matches!(
            parse_offset("-9223372036854775808\n"),
            Err(OffsetError::OutOfRange(_))
        ));
    }

    #[test]
    fn an_offset_moves_the_reading_and_never_wraps() {
        assert_eq!(apply(10_000_000_000, 1500), 11_500_000_000);
        assert_eq!(apply(10_000_000_000, -1500), 8_500_000_000);
        assert_eq!(apply(1_000_000, -5), 0);
        assert_eq!(apply(u64::MAX - 1, 1), u64::MAX);
    }
}
