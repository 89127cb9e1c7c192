//! The namespace checker: after concurrent renames and moves, a walk of the
//! tree from its root must find every item exactly once, nothing else, and
//! no directory twice (a directory reached twice is a duplicate link or the
//! way into a cycle; a subtree cut off by a cycle shows up as lost items).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One entry found by the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Full path, e.g. `/ns/d1/f3`.
    pub path: String,
    /// Inode number.
    pub inode: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
}

impl TreeEntry {
    /// The last component of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// What the namespace checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSummary {
    /// Items created before the run (every name is unique).
    pub expected: usize,
    /// Entries the walk found.
    pub found: usize,
    /// Items the walk did not find.
    pub lost: Vec<String>,
    /// Items found at more than one path: each path where found.
    pub duplicated: BTreeMap<String, Vec<String>>,
    /// Names the walk found that were never created.
    pub unexpected: Vec<String>,
    /// An inode found at more than one path.
    pub inode_reused: BTreeMap<u64, Vec<String>>,
    /// The walk stopped at its depth limit: a cycle reachable from the root.
    pub cycle: bool,
    /// None of the above.
    pub valid: bool,
}

/// Checks a walk of the tree against the items that should be in it.
/// `walk_truncated` says the walker hit its depth limit.
pub fn check_tree(
    expected: &BTreeSet<String>,
    walk: &[TreeEntry],
    walk_truncated: bool,
) -> TreeSummary {
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut by_inode: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for entry in walk {
        by_name
            .entry(entry.name())
            .or_default()
            .push(entry.path.clone());
        by_inode
            .entry(entry.inode)
            .or_default()
            .push(entry.path.clone());
    }
    let lost: Vec<String> = expected
        .iter()
        .filter(|name| !by_name.contains_key(name.as_str()))
        .cloned()
        .collect();
    let unexpected: Vec<String> = by_name
        .keys()
        .filter(|name| !expected.contains(**name))
        .map(|name| name.to_string())
        .collect();
    let duplicated: BTreeMap<String, Vec<String>> = by_name
        .iter()
        .filter(|(_, paths)| paths.len() > 1)
        .map(|(name, paths)| (name.to_string(), paths.clone()))
        .collect();
    let inode_reused: BTreeMap<u64, Vec<String>> = by_inode
        .into_iter()
        .filter(|(_, paths)| paths.len() > 1)
        .collect();
    let valid = lost.is_empty()
        && unexpected.is_empty()
        && duplicated.is_empty()
        && inode_reused.is_empty()
        && !walk_truncated;
    TreeSummary {
        expected: expected.len(),
        found: walk.len(),
        lost,
        duplicated,
        unexpected,
        inode_reused,
        cycle: walk_truncated,
        valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, inode: u64, is_dir: bool) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            inode,
            is_dir,
        }
    }

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_tree_with_every_item_once_is_valid() {
        let walk = [
            entry("/ns/d1", 2, true),
            entry("/ns/d1/f1", 3, false),
            entry("/ns/f2", 4, false),
        ];
        let s = check_tree(&names(&["d1", "f1", "f2"]), &walk, false);
        assert!(s.valid, "{s:?}");
        assert_eq!(s.found, 3);
    }

    #[test]
    fn lost_duplicated_unexpected_and_cycles_are_reported() {
        let walk = [
            entry("/ns/d1", 2, true),
            entry("/ns/d1/f1", 3, false),
            entry("/ns/d2/f1", 3, false),
            entry("/ns/zz", 9, false),
        ];
        let s = check_tree(&names(&["d1", "f1", "f2"]), &walk, false);
        assert!(!s.valid);
        assert_eq!(s.lost, vec!["f2".to_string()]);
        assert_eq!(s.unexpected, vec!["zz".to_string()]);
        assert_eq!(s.duplicated.len(), 1);
        assert_eq!(s.inode_reused.len(), 1);
        let truncated = check_tree(&names(&["d1"]), &[entry("/ns/d1", 2, true)], true);
        assert!(!truncated.valid && truncated.cycle);
    }
}
