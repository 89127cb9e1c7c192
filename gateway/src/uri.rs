//! Evidence URIs: a citation of exactly which bytes an answer came from.
//!
//! `nokv://runs/7/train.log@g3#L120` names the path, the body generation
//! and a position: lines (`#L120`, `#L120-L130`), a structured record
//! (`#item:4`) or a byte range (`#bytes:0-4095`, end exclusive). A result
//! read at a snapshot carries it (`@g3?snapshot=5`). Characters of the
//! path that would be ambiguous (`%`, `@`, `#`, `?`, spaces, controls,
//! non-ASCII) are percent-encoded as UTF-8.

use std::fmt;

use crate::error::GatewayError;

/// The scheme every evidence URI starts with.
pub const SCHEME: &str = "nokv://";

/// The longest URI the gateway parses.
pub const MAX_URI_BYTES: usize = 4096;

/// A parsed evidence URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceUri {
    /// Absolute path (`/runs/7/train.log`).
    pub path: String,
    /// The body generation cited (`None` for a directory or a path alone).
    pub generation: Option<u64>,
    /// The snapshot the citation was read at.
    pub snapshot: Option<u64>,
    pub anchor: Option<Anchor>,
}

/// A position inside a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// Lines `first..=last`, 1-based.
    Lines { first: u64, last: u64 },
    /// The structured record with this index (0-based).
    Item(u64),
    /// Bytes `start..end`.
    Bytes { start: u64, end: u64 },
}

impl EvidenceUri {
    /// A URI for `path` at `generation` (0 = none), read at `snapshot`.
    pub fn new(path: &str, generation: u64, snapshot: Option<u64>) -> EvidenceUri {
        EvidenceUri {
            path: path.to_string(),
            generation: (generation != 0).then_some(generation),
            snapshot,
            anchor: None,
        }
    }

    /// The same citation narrowed to `anchor`.
    pub fn at(&self, anchor: Anchor) -> EvidenceUri {
        EvidenceUri {
            anchor: Some(anchor),
            ..self.clone()
        }
    }

    /// Parses a URI, refusing anything that is not exactly this shape.
    pub fn parse(text: &str) -> Result<EvidenceUri, GatewayError> {
        let bad = |why: &str| {
            GatewayError::BadUri(format!(
                "{why} in evidence URI {:?}; expected nokv://PATH[@gGEN][?snapshot=ID][#L12|#L12-L20|#item:3|#bytes:0-99]",
                truncate(text, 200)
            ))
        };
        if text.len() > MAX_URI_BYTES {
            return Err(bad("too long"));
        }
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("no nokv:// scheme"))?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (raw_path, generation) = match rest.split_once('@') {
            Some((p, g)) => {
                let g = g
                    .strip_prefix('g')
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("generation is not @g<number>"))?;
                (p, Some(g))
            }
            None => (rest, None),
        };
        let path = format!(
            "/{}",
            decode(raw_path).ok_or_else(|| bad("bad percent-encoding"))?
        );
        let path = path.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        let snapshot = match query {
            None => None,
            Some(q) => Some(
                q.strip_prefix("snapshot=")
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| bad("query is not ?snapshot=<id>"))?,
            ),
        };
        let anchor = match fragment {
            None => None,
            Some(f) => Some(parse_anchor(f).ok_or_else(|| bad("unknown position"))?),
        };
        Ok(EvidenceUri {
            path: path.to_string(),
            generation,
            snapshot,
            anchor,
        })
    }
}

fn parse_anchor(fragment: &str) -> Option<Anchor> {
    let num = |s: &str| s.parse::<u64>().ok();
    if let Some(item) = fragment.strip_prefix("item:") {
        return num(item).map(Anchor::Item);
    }
    if let Some(range) = fragment.strip_prefix("bytes:") {
        let (a, b) = range.split_once('-')?;
        let (start, end) = (num(a)?, num(b)?);
        return (start < end).then_some(Anchor::Bytes { start, end });
    }
    let lines = fragment.strip_prefix('L')?;
    let (first, last) = match lines.split_once('-') {
        Some((a, b)) => (num(a)?, num(b.strip_prefix('L').unwrap_or(b))?),
        None => (num(lines)?, num(lines)?),
    };
    (first >= 1 && first <= last).then_some(Anchor::Lines { first, last })
}

impl fmt::Display for EvidenceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        f.write_str(&encode(self.path.trim_start_matches('/')))?;
        if let Some(g) = self.generation {
            write!(f, "@g{g}")?;
        }
        if let Some(s) = self.snapshot {
            write!(f, "?snapshot={s}")?;
        }
        match self.anchor {
            None => Ok(()),
            Some(Anchor::Lines { first, last }) if first == last => write!(f, "#L{first}"),
            Some(Anchor::Lines { first, last }) => write!(f, "#L{first}-L{last}"),
            Some(Anchor::Item(i)) => write!(f, "#item:{i}"),
            Some(Anchor::Bytes { start, end }) => write!(f, "#bytes:{start}-{end}"),
        }
    }
}

/// Percent-encodes everything but unreserved ASCII and `/`.
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'/' | b'-' | b'_' | b'.' | b'~' | b'+' | b'=' | b',' | b':'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`encode`]; `None` on a malformed escape or non-UTF-8 result.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_anchor() {
        let base = EvidenceUri::new("/runs/7/train.log", 3, None);
        for (anchor, text) in [
            (None, "nokv://runs/7/train.log@g3"),
            (
                Some(Anchor::Lines {
                    first: 120,
                    last: 120,
                }),
                "nokv://runs/7/train.log@g3#L120",
            ),
            (
                Some(Anchor::Lines { first: 2, last: 9 }),
                "nokv://runs/7/train.log@g3#L2-L9",
            ),
            (Some(Anchor::Item(4)), "nokv://runs/7/train.log@g3#item:4"),
            (
                Some(Anchor::Bytes { start: 0, end: 10 }),
                "nokv://runs/7/train.log@g3#bytes:0-10",
            ),
        ] {
            let uri = EvidenceUri {
                anchor,
                ..base.clone()
            };
            assert_eq!(uri.to_string(), text);
            assert_eq!(EvidenceUri::parse(text).expect("parses"), uri);
        }
    }

    #[test]
    fn awkward_paths_and_snapshots_round_trip() {
        let uri = EvidenceUri::new("/a b/x@y#z?%/é", 12, Some(5)).at(Anchor::Item(0));
        let text = uri.to_string();
        assert!(
            text.starts_with("nokv://a%20b/x%40y%23z%3F%25/%C3%A9@g12?snapshot=5#item:0"),
            "{text}"
        );
        assert_eq!(EvidenceUri::parse(&text).expect("parses"), uri);
        let root = EvidenceUri::new("/", 0, None);
        assert_eq!(root.to_string(), "nokv://");
        assert_eq!(EvidenceUri::parse("nokv://").expect("parses").path, "/");
    }

    #[test]
    fn malformed_uris_are_refused() {
        for bad in [
            "http://runs/7",
            "nokv://runs@3",
            "nokv://runs@g0",
            "nokv://runs@g3#L0",
            "nokv://runs@g3#L9-L2",
            "nokv://runs@g3#bytes:5-5",
            "nokv://runs@g3#line:4",
            "nokv://runs%2",
            "nokv://runs%ff",
            "nokv://runs?snap=1",
        ] {
            let e = EvidenceUri::parse(bad).expect_err(bad);
            assert_eq!(e.code(), "bad_uri", "{bad}");
        }
        assert!(EvidenceUri::parse(&format!("nokv://{}", "a".repeat(5000))).is_err());
    }
}
