//! [`Name`]: the name of a directory entry as the namespace stores it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A directory entry's name, held once and shared: `dentries` keys the
/// entry by it and `links` (the reverse map) points back with the same
/// allocation, so a name costs one heap copy however many maps hold it.
/// Orders, compares and encodes exactly as the `String` it replaces, so
/// listings, ranges and the image format are unchanged. Immutable: a
/// rename makes a new entry.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Name(Arc<str>);

impl Name {
    /// The empty name: sorts before every real one, so `(dir, Name::empty())`
    /// is where the entries of `dir` begin.
    pub(crate) fn empty() -> Name {
        Name(Arc::from(""))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Name {
        Name(Arc::from(name))
    }
}

impl From<String> for Name {
    fn from(name: String) -> Name {
        Name(Arc::from(name))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        String::deserialize(deserializer).map(Name::from)
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    #[test]
    fn a_name_orders_and_encodes_as_its_string() {
        let mut names: Vec<Name> = ["b", "", "a", "ab"].into_iter().map(Name::from).collect();
        names.sort();
        let strings: Vec<&str> = names.iter().map(Name::as_str).collect();
        assert_eq!(strings, ["", "a", "ab", "b"]);
        let encoded = bincode::serialize(&Name::from("käse")).expect("encode");
        assert_eq!(encoded, bincode::serialize("käse").expect("encode"));
        let decoded: Name = bincode::deserialize(&encoded).expect("decode");
        assert_eq!(decoded.as_str(), "käse");
        let shared = Name::from("x");
        assert!(std::sync::Arc::ptr_eq(&shared.clone().0, &shared.0));
    }
}
