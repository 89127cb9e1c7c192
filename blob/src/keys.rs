//! The key rules every store enforces, and byte-range clamping.
//!
//! A key is a relative, `/`-separated name such as `blocks/0/12/7/0`. The same rules hold
//! for every backend, so a key that works on a local directory also works on S3:
//!
//! - not empty, at most [`MAX_KEY_LEN`] bytes;
//! - no leading `/`, no empty segment (so no trailing `/` and no `//`);
//! - no `.` or `..` segment;
//! - no ASCII control character (in particular no NUL);
//! - no segment starting with [`RESERVED_SEGMENT_PREFIX`] (stores keep their own files there).

use std::ops::Range;

use crate::BlobError;

/// The longest key, in bytes (S3's own limit for a whole object name).
pub const MAX_KEY_LEN: usize = 1024;

/// Segments starting with this are reserved for the stores' own bookkeeping
/// ([`LocalBlobStore`](crate::LocalBlobStore) keeps its temporary files under `.nokv-tmp/`).
pub const RESERVED_SEGMENT_PREFIX: &str = ".nokv-";

/// Checks `key` against the key rules.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    if key.is_empty() {
        return Err(BlobError::invalid_key(key, "empty key"));
    }
    check_common(key)?;
    for segment in key.split('/') {
        check_segment(key, segment)?;
    }
    Ok(())
}

/// Checks a `list` prefix: it may be empty or end in the middle of a segment, but otherwise
/// follows the key rules (every complete segment must be valid).
pub fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_common(prefix)?;
    // Every segment before the last `/` is complete; the tail may be a partial segment.
    if let Some((complete, _tail)) = prefix.rsplit_once('/') {
        for segment in complete.split('/') {
            check_segment(prefix, segment)?;
        }
    }
    Ok(())
}

fn check_common(key: &str) -> Result<(), BlobError> {
    if key.len() > MAX_KEY_LEN {
        return Err(BlobError::invalid_key(
            key,
            format!("longer than {MAX_KEY_LEN} bytes ({})", key.len()),
        ));
    }
    if key.starts_with('/') {
        return Err(BlobError::invalid_key(key, "starts with '/'"));
    }
    if key.contains('\0') {
        return Err(BlobError::invalid_key(key, "contains NUL"));
    }
    if key.chars().any(|c| c.is_ascii_control()) {
        return Err(BlobError::invalid_key(key, "contains a control character"));
    }
    Ok(())
}

fn check_segment(key: &str, segment: &str) -> Result<(), BlobError> {
    match segment {
        "" => Err(BlobError::invalid_key(
            key,
            "empty segment (trailing '/' or '//')",
        )),
        "." => Err(BlobError::invalid_key(key, "'.' segment")),
        ".." => Err(BlobError::invalid_key(key, "'..' segment")),
        s if s.starts_with(RESERVED_SEGMENT_PREFIX) => Err(BlobError::invalid_key(
            key,
            format!("segment starts with the reserved {RESERVED_SEGMENT_PREFIX:?}"),
        )),
        _ => Ok(()),
    }
}

/// Clamps a requested byte range `[start, end)` to an object of `size` bytes. An empty or
/// inverted request, or one starting at or past the end, gives an empty range.
pub(crate) fn clamp_range(range: Range<u64>, size: u64) -> Range<u64> {
    let start = range.start.min(size);
    let end = range.end.min(size).max(start);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_keys_pass() {
        for key in ["a", "blocks/0/12/7/0", "a.b/c..d/.e", "x y/z", "ünï/cödé"] {
            assert_eq!(validate_key(key), Ok(()), "{key}");
        }
        assert_eq!(validate_key(&"k".repeat(MAX_KEY_LEN)), Ok(()));
    }

    #[test]
    fn bad_keys_fail() {
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for key in [
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "./a",
            "a\0b",
            "a\nb",
            ".nokv-tmp/x",
            "a/.nokv-x",
            long.as_str(),
        ] {
            let err = validate_key(key).expect_err(key);
            assert_eq!(err.code(), "BLOB_INVALID_KEY", "{key}");
        }
    }

    #[test]
    fn prefixes() {
        for prefix in ["", "a", "a/", "blocks/0/1", "a/..", "a/."] {
            assert_eq!(validate_prefix(prefix), Ok(()), "{prefix}");
        }
        for prefix in ["/", "/a", "../a", "a//", "a\0", ".nokv-tmp/"] {
            assert!(validate_prefix(prefix).is_err(), "{prefix}");
        }
    }

    #[test]
    fn clamping() {
        assert_eq!(clamp_range(0..10, 5), 0..5);
        assert_eq!(clamp_range(2..4, 5), 2..4);
        assert_eq!(clamp_range(7..9, 5), 5..5);
        assert_eq!(clamp_range(Range { start: 4, end: 2 }, 5), 4..4);
        assert_eq!(clamp_range(0..0, 0), 0..0);
    }
}
