//! [`WatchCursor`]: where a watch over one or many shards resumes.
//!
//! Each shard numbers its own event history (an event's
//! [`seq`](nokv_holt::Event::seq) is its position in its shard's history), so a watch
//! that spans grafts needs one position per shard. The cursor is that map, shard id to
//! the `seq` of the last event delivered from that shard.
//!
//! # Text form
//!
//! Comma-separated items, each `SHARD:SEQ` (decimal shard id and sequence number), in
//! shard order: `0:123,5:77`. One item may instead be a bare `SEQ`, which means "the
//! shard that owns the watched path"; a plain number is therefore still a valid cursor,
//! and means what it always meant (a position in the history of the one shard a
//! single-shard watch reads). `0` alone is the cursor of a watch that has delivered
//! nothing. Whitespace around items is ignored.
//!
//! # Invariants
//!
//! - A position of 0 ("nothing delivered from this shard yet") is the same as leaving the
//!   shard out, and is never stored: two cursors that resume the same way compare equal,
//!   and `parse(display(c)) == c` for every cursor.
//! - A shard the cursor does not name is read from the start of its retained history.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use nokv_holt::ShardId;

/// How to write a cursor, for error messages.
const FORM: &str = "expected SEQ or SHARD:SEQ[,SHARD:SEQ...], e.g. 0:123,5:77";

/// Where a watch resumes: per shard, the `seq` of the last event delivered from it. See
/// the [module docs](self) for the text form (`0:123,5:77`; a plain number is the
/// position in the watched path's own shard).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchCursor {
    /// A bare number: the position in the history of the shard owning the watched path
    /// (resolved when the watch starts). Never `Some(0)`.
    owner: Option<u64>,
    /// Positions by shard. Never holds a 0.
    shards: BTreeMap<ShardId, u64>,
}

/// Why a text cursor was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CursorParseError {
    #[error("empty watch cursor ({FORM})")]
    Empty,
    #[error("watch cursor item {item:?}: {reason} ({FORM})")]
    BadItem { item: String, reason: &'static str },
    #[error("watch cursor names shard {shard} twice")]
    DuplicateShard { shard: u16 },
    #[error("watch cursor has more than one bare SEQ (a bare SEQ is the watched path's shard; name the others SHARD:SEQ)")]
    TwoBare,
}

impl WatchCursor {
    /// The cursor of a watch that has delivered nothing: every shard from the start of
    /// its retained history.
    pub fn new() -> WatchCursor {
        WatchCursor::default()
    }

    /// After `seq` in the history of the shard that owns the watched path; every other
    /// shard from the start. What a plain number (the pre-grafts cursor) means.
    pub fn owner_at(seq: u64) -> WatchCursor {
        WatchCursor {
            owner: (seq != 0).then_some(seq),
            shards: BTreeMap::new(),
        }
    }

    /// The position given for `shard`, if any (0 and absent mean the same).
    pub fn get(&self, shard: ShardId) -> Option<u64> {
        self.shards.get(&shard).copied()
    }

    /// The bare position (the watched path's own shard), if the cursor has one.
    pub fn owner(&self) -> Option<u64> {
        self.owner
    }

    /// Sets `shard`'s position (0 removes it).
    pub fn set(&mut self, shard: ShardId, seq: u64) {
        if seq == 0 {
            self.shards.remove(&shard);
        } else {
            self.shards.insert(shard, seq);
        }
    }

    /// Every named shard and its position, in shard order.
    pub fn shards(&self) -> impl Iterator<Item = (ShardId, u64)> + '_ {
        self.shards.iter().map(|(s, n)| (*s, *n))
    }

    /// Whether the cursor names nothing (resumes every shard from the start).
    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.shards.is_empty()
    }

    /// The cursor with the bare position given to `owner` (an explicit `owner:SEQ` item
    /// takes precedence over a bare one).
    pub(crate) fn resolve(mut self, owner: ShardId) -> WatchCursor {
        if let Some(seq) = self.owner.take() {
            self.shards.entry(owner).or_insert(seq);
        }
        self
    }
}

impl From<u64> for WatchCursor {
    /// A plain number: [`WatchCursor::owner_at`].
    fn from(seq: u64) -> WatchCursor {
        WatchCursor::owner_at(seq)
    }
}

impl fmt::Display for WatchCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("0");
        }
        let mut sep = "";
        if let Some(seq) = self.owner {
            write!(f, "{seq}")?;
            sep = ",";
        }
        for (shard, seq) in &self.shards {
            write!(f, "{sep}{}:{seq}", shard.0)?;
            sep = ",";
        }
        Ok(())
    }
}

fn number<T: FromStr>(item: &str, text: &str, what: &'static str) -> Result<T, CursorParseError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CursorParseError::BadItem {
            item: item.to_string(),
            reason: what,
        });
    }
    text.parse().map_err(|_| CursorParseError::BadItem {
        item: item.to_string(),
        reason: what,
    })
}

impl FromStr for WatchCursor {
    type Err = CursorParseError;

    fn from_str(text: &str) -> Result<WatchCursor, CursorParseError> {
        if text.trim().is_empty() {
            return Err(CursorParseError::Empty);
        }
        let mut cursor = WatchCursor::new();
        let mut bare = false;
        let mut named = std::collections::BTreeSet::new();
        for item in text.split(',').map(str::trim) {
            match item.split_once(':') {
                None => {
                    let seq: u64 = number(item, item, "SEQ is not a number below 2^64")?;
                    if std::mem::replace(&mut bare, true) {
                        return Err(CursorParseError::TwoBare);
                    }
                    cursor.owner = (seq != 0).then_some(seq);
                }
                Some((shard, seq)) => {
                    let shard: u16 = number(item, shard, "SHARD is not a number below 65536")?;
                    let seq: u64 = number(item, seq, "SEQ is not a number below 2^64")?;
                    if !named.insert(shard) {
                        return Err(CursorParseError::DuplicateShard { shard });
                    }
                    cursor.set(ShardId(shard), seq);
                }
            }
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WatchCursor, CursorParseError> {
        s.parse()
    }

    #[test]
    fn text_form_round_trips() {
        let mut c = WatchCursor::new();
        c.set(ShardId(5), 77);
        c.set(ShardId(0), 123);
        c.set(ShardId(65535), u64::MAX);
        assert_eq!(c.to_string(), format!("0:123,5:77,65535:{}", u64::MAX));
        assert_eq!(parse(&c.to_string()), Ok(c.clone()));
        let mut with_bare = WatchCursor::owner_at(9);
        with_bare.set(ShardId(2), 4);
        assert_eq!(with_bare.to_string(), "9,2:4");
        assert_eq!(parse("9,2:4"), Ok(with_bare.clone()));
        for c in [WatchCursor::new(), WatchCursor::owner_at(42), with_bare] {
            assert_eq!(parse(&c.to_string()), Ok(c.clone()), "{c}");
        }
        // Order and whitespace do not matter; the canonical form is sorted.
        assert_eq!(
            parse(" 5:77 , 0:123").map(|c| c.to_string()),
            Ok("0:123,5:77".into())
        );
    }

    #[test]
    fn a_plain_number_is_the_owning_shards_position() {
        let c = parse("17").expect("a plain number");
        assert_eq!(c, WatchCursor::from(17));
        assert_eq!((c.owner(), c.get(ShardId(0))), (Some(17), None));
        let resolved = c.resolve(ShardId(3));
        assert_eq!(resolved.to_string(), "3:17");
        // An explicit item for the owner wins over the bare number.
        let c = parse("17,3:20").expect("mixed").resolve(ShardId(3));
        assert_eq!(c.to_string(), "3:20");
    }

    #[test]
    fn zero_is_the_same_as_absent() {
        assert_eq!(parse("0"), Ok(WatchCursor::new()));
        assert_eq!(parse("0:0,4:0"), Ok(WatchCursor::new()));
        assert_eq!(WatchCursor::new().to_string(), "0");
        assert_eq!(WatchCursor::from(0), WatchCursor::new());
        let mut c = parse("1:5").expect("valid");
        c.set(ShardId(1), 0);
        assert!(c.is_empty());
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        assert_eq!(parse(""), Err(CursorParseError::Empty));
        assert_eq!(parse("  "), Err(CursorParseError::Empty));
        assert_eq!(
            parse("0:1,0:2"),
            Err(CursorParseError::DuplicateShard { shard: 0 })
        );
        assert_eq!(parse("1,2"), Err(CursorParseError::TwoBare));
        for bad in [
            "abc",
            "-1",
            "+1",
            "1:",
            ":1",
            "1:2:3",
            "x:1",
            "1:x",
            "0:1,",
            "65536:1",
            "1:1e3",
            "18446744073709551616",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(
                matches!(e, CursorParseError::BadItem { .. }),
                "{bad:?}: {e:?}"
            );
            assert!(e.to_string().contains("SHARD:SEQ"), "{bad:?}: {e}");
        }
        let e = parse("0:12,7:zz").expect_err("bad seq");
        assert_eq!(
            e.to_string(),
            "watch cursor item \"7:zz\": SEQ is not a number below 2^64 \
             (expected SEQ or SHARD:SEQ[,SHARD:SEQ...], e.g. 0:123,5:77)"
        );
    }
}
