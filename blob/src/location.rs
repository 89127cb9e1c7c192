//! [`BlobLocation`]: where a store lives, as a URL clients can be handed.
//!
//! Accepted forms:
//!
//! - `s3://BUCKET` or `s3://BUCKET/PREFIX`, optionally followed by query parameters
//!   `endpoint=URL`, `region=NAME` and `path_style=true|false`, e.g.
//!   `s3://nokv/cluster-a?endpoint=http://127.0.0.1:9000&region=us-east-1`;
//! - `file:///ABS/DIR` (also `file://localhost/ABS/DIR`);
//! - a plain absolute path, `/ABS/DIR`.
//!
//! [`Display`](std::fmt::Display) writes the canonical URL, and parsing it gives back an
//! equal location.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::keys::validate_key;
use crate::BlobError;

/// Where a [`BlobStore`](crate::BlobStore) keeps its objects.
///
/// Written as a URL: `s3://BUCKET/PREFIX` (with optional `endpoint`, `region` and
/// `path_style` query parameters) or `file:///DIR`. [`Display`](std::fmt::Display) writes
/// the canonical URL; [`parse`](BlobLocation::parse) reads it back to an equal location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlobLocation {
    /// An S3-compatible bucket; every object name starts with `prefix/` (none if empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
        prefix: String,
        /// Endpoint URL overriding `AWS_ENDPOINT_URL` (e.g. `http://127.0.0.1:9000`).
        endpoint: Option<String>,
        /// Region overriding `AWS_REGION`.
        region: Option<String>,
        /// Force path-style addressing (`endpoint/bucket/key`). Always on when an endpoint
        /// is set, here or in the environment.
        path_style: bool,
    },
    /// A directory on a local file system; object `a/b` is the file `dir/a/b`.
    Local {
        /// Absolute directory path.
        dir: PathBuf,
    },
}

impl BlobLocation {
    /// Parses a location URL: `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&path_style=true]`,
    /// `file:///DIR` (or `file://localhost/DIR`), or a plain absolute path. Anything else,
    /// and bad bucket names or prefixes, give [`BlobError::Config`] saying what is wrong.
    pub fn parse(url: &str) -> Result<Self, BlobError> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            parse_s3(url, rest)
        } else if let Some(rest) = url.strip_prefix("file://") {
            parse_file(url, rest)
        } else if url.starts_with('/') {
            Ok(BlobLocation::Local {
                dir: normalize_dir(url),
            })
        } else if let Some((scheme, _)) = url.split_once("://") {
            Err(config(format!(
                "unsupported blob location scheme {scheme:?} in {url:?}: use s3://BUCKET/PREFIX, \
                 file:///DIR or an absolute path"
            )))
        } else if url.is_empty() {
            Err(config(
                "empty blob location: use s3://BUCKET/PREFIX, file:///DIR or an absolute path",
            ))
        } else {
            Err(config(format!(
                "blob location {url:?} is a relative path: use s3://BUCKET/PREFIX, file:///DIR \
                 or an absolute path"
            )))
        }
    }
}

impl FromStr for BlobLocation {
    type Err = BlobError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlobLocation::parse(s)
    }
}

impl fmt::Display for BlobLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobLocation::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
            } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{}", encode(prefix, false))?;
                }
                let mut sep = '?';
                if let Some(endpoint) = endpoint {
                    write!(f, "{sep}endpoint={}", encode(endpoint, true))?;
                    sep = '&';
                }
                if let Some(region) = region {
                    write!(f, "{sep}region={}", encode(region, true))?;
                    sep = '&';
                }
                if *path_style {
                    write!(f, "{sep}path_style=true")?;
                }
                Ok(())
            }
            BlobLocation::Local { dir } => {
                write!(f, "file://{}", encode(&dir.to_string_lossy(), false))
            }
        }
    }
}

fn config(message: impl Into<String>) -> BlobError {
    BlobError::Config(message.into())
}

fn parse_s3(url: &str, rest: &str) -> Result<BlobLocation, BlobError> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.contains('#') {
        return Err(config(format!(
            "blob location {url:?} has a fragment ('#')"
        )));
    }
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    validate_bucket(url, bucket)?;
    let prefix = decode(url, prefix.trim_matches('/'))?;
    if !prefix.is_empty() {
        validate_key(&prefix)
            .map_err(|e| config(format!("bad prefix in blob location {url:?}: {e}")))?;
    }

    let mut endpoint = None;
    let mut region = None;
    let mut path_style = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            config(format!(
                "query parameter {pair:?} in {url:?} is not NAME=VALUE"
            ))
        })?;
        let value = decode(url, value)?;
        match name {
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(config(format!(
                        "endpoint {value:?} in {url:?} must start with http:// or https://"
                    )));
                }
                endpoint = Some(value);
            }
            "region" if !value.is_empty() => region = Some(value),
            "region" => return Err(config(format!("empty region in {url:?}"))),
            "path_style" => {
                path_style = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(config(format!(
                            "path_style in {url:?} must be true or false, not {value:?}"
                        )))
                    }
                }
            }
            _ => {
                return Err(config(format!(
                    "unknown query parameter {name:?} in {url:?} (known: endpoint, region, \
                     path_style)"
                )))
            }
        }
    }
    Ok(BlobLocation::S3 {
        bucket: bucket.to_owned(),
        prefix,
        endpoint,
        region,
        path_style,
    })
}

/// S3 bucket naming rules: 3 to 63 lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit.
pub(crate) fn validate_bucket(url: &str, bucket: &str) -> Result<(), BlobError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if bucket.is_empty() {
        return Err(config(format!(
            "blob location {url:?} has no bucket: use s3://BUCKET/PREFIX"
        )));
    }
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(ok_char)
        || !ok_edge(bucket.chars().next())
        || !ok_edge(bucket.chars().last())
    {
        return Err(config(format!(
            "bad bucket name {bucket:?} in {url:?}: 3 to 63 lowercase letters, digits, '.' and \
             '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn parse_file(url: &str, rest: &str) -> Result<BlobLocation, BlobError> {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(config(format!(
            "file URL {url:?} must name an absolute directory: file:///DIR (three slashes)"
        )));
    }
    if path.contains('?') || path.contains('#') {
        return Err(config(format!(
            "file URL {url:?} must not have a query or fragment"
        )));
    }
    Ok(BlobLocation::Local {
        dir: normalize_dir(&decode(url, path)?),
    })
}

fn normalize_dir(path: &str) -> PathBuf {
    let trimmed = path.trim_end_matches('/');
    PathBuf::from(if trimmed.is_empty() { "/" } else { trimmed })
}

/// Percent-encodes the few characters that would change how a location parses.
fn encode(s: &str, in_query: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '?' | '#' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            '&' | '=' if in_query => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_ascii_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn decode(url: &str, s: &str) -> Result<String, BlobError> {
    let bad = || config(format!("bad percent-encoding in blob location {url:?}"));
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> BlobLocation {
        BlobLocation::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            region: None,
            path_style: false,
        }
    }

    #[test]
    fn parses_s3() {
        assert_eq!(BlobLocation::parse("s3://nokv").unwrap(), s3("nokv", ""));
        assert_eq!(BlobLocation::parse("s3://nokv/").unwrap(), s3("nokv", ""));
        assert_eq!(
            BlobLocation::parse("s3://nokv/a/b/").unwrap(),
            s3("nokv", "a/b")
        );
        assert_eq!(
            BlobLocation::parse(
                "s3://nokv/p?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true"
            )
            .unwrap(),
            BlobLocation::S3 {
                bucket: "nokv".into(),
                prefix: "p".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                path_style: true,
            }
        );
    }

    #[test]
    fn parses_local() {
        let local = |d: &str| BlobLocation::Local { dir: d.into() };
        assert_eq!(
            BlobLocation::parse("file:///var/x").unwrap(),
            local("/var/x")
        );
        assert_eq!(
            BlobLocation::parse("file:///var/x/").unwrap(),
            local("/var/x")
        );
        assert_eq!(
            BlobLocation::parse("file://localhost/var/x").unwrap(),
            local("/var/x")
        );
        assert_eq!(BlobLocation::parse("/var/x").unwrap(), local("/var/x"));
        assert_eq!(BlobLocation::parse("file:///a%20b").unwrap(), local("/a b"));
    }

    #[test]
    fn rejects_bad_urls_with_config_errors() {
        for url in [
            "",
            "relative/dir",
            "http://x/y",
            "s3://",
            "s3:///prefix",
            "s3://Upper/x",
            "s3://ab",
            "s3://-bucket",
            "s3://b_c/x",
            "s3://nokv/a/../b",
            "s3://nokv/a//b",
            "s3://nokv?endpoint=ftp://x",
            "s3://nokv?bogus=1",
            "s3://nokv?path_style=maybe",
            "s3://nokv?region=",
            "s3://nokv?endpoint",
            "s3://nokv/%zz",
            "file://relative/dir",
            "file:///a?b",
        ] {
            let err = BlobLocation::parse(url).expect_err(url);
            assert_eq!(err.code(), "BLOB_CONFIG", "{url}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        let locations = [
            s3("nokv", ""),
            s3("nokv", "cluster-a/blobs"),
            BlobLocation::S3 {
                bucket: "nokv".into(),
                prefix: "a b%".into(),
                endpoint: Some("http://127.0.0.1:9000/x?y=1&z".into()),
                region: Some("eu-west-1".into()),
                path_style: true,
            },
            BlobLocation::Local {
                dir: "/var/lib/nokv blobs/#1".into(),
            },
            BlobLocation::Local { dir: "/".into() },
        ];
        for location in locations {
            let url = location.to_string();
            assert_eq!(BlobLocation::parse(&url).unwrap(), location, "{url}");
        }
        assert_eq!(s3("nokv", "p").to_string(), "s3://nokv/p");
        assert_eq!(
            BlobLocation::Local {
                dir: "/srv/b".into()
            }
            .to_string(),
            "file:///srv/b"
        );
    }
}
