//! The set checker: after a run of concurrent adds, the final (linearizable)
//! read of the set must hold every acknowledged add, may hold adds whose
//! outcome is unknown, and must hold nothing else.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{History, Outcome};

/// What the set checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSummary {
    /// Adds attempted (every outcome).
    pub attempted: usize,
    /// Adds acknowledged ok.
    pub acknowledged: usize,
    /// Adds that definitely failed.
    pub failed: usize,
    /// Adds with an unknown outcome.
    pub unknown: usize,
    /// Unknown adds present in the final read (they happened after all).
    pub unknown_present: usize,
    /// Elements in the final read.
    pub final_size: usize,
    /// Acknowledged but missing from the final read: lost writes.
    pub lost: Vec<String>,
    /// In the final read but never attempted.
    pub unexpected: Vec<String>,
    /// Reported as definitely failed, yet present.
    pub failed_but_present: Vec<String>,
    /// No lost, unexpected or failed-but-present element.
    pub valid: bool,
}

/// Checks a history of adds (input: the element; output: nothing) against
/// the final read of the set.
pub fn check_set(adds: &History<String, ()>, final_read: &BTreeSet<String>) -> SetSummary {
    // The strongest outcome seen per element: an element may be added more
    // than once (a retry after an unknown outcome).
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Seen {
        Failed,
        Unknown,
        Acknowledged,
    }
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    let mut summary = SetSummary {
        attempted: adds.len(),
        final_size: final_read.len(),
        ..SetSummary::default()
    };
    for op in adds.ops() {
        let outcome = match op.outcome {
            Outcome::Ok(()) => {
                summary.acknowledged += 1;
                Seen::Acknowledged
            }
            Outcome::Fail => {
                summary.failed += 1;
                Seen::Failed
            }
            Outcome::Unknown => {
                summary.unknown += 1;
                Seen::Unknown
            }
        };
        let entry = seen.entry(op.input.as_str()).or_insert(outcome);
        *entry = (*entry).max(outcome);
    }
    for (element, outcome) in &seen {
        let present = final_read.contains(*element);
        match (outcome, present) {
            (Seen::Acknowledged, false) => summary.lost.push(element.to_string()),
            (Seen::Failed, true) => summary.failed_but_present.push(element.to_string()),
            (Seen::Unknown, true) => summary.unknown_present += 1,
            _ => {}
        }
    }
    summary.unexpected = final_read
        .iter()
        .filter(|e| !seen.contains_key(e.as_str()))
        .cloned()
        .collect();
    summary.valid = summary.lost.is_empty()
        && summary.unexpected.is_empty()
        && summary.failed_but_present.is_empty();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryBuilder;

    fn history(adds: &[(&str, Outcome<()>)]) -> History<String, ()> {
        let mut b = HistoryBuilder::new();
        for (i, (element, outcome)) in adds.iter().enumerate() {
            let t = i as u64 * 10;
            b.invoke(i as u64, t, element.to_string()).unwrap();
            b.complete(i as u64, t + 5, outcome.clone()).unwrap();
        }
        b.finish().unwrap()
    }

    fn set(elements: &[&str]) -> BTreeSet<String> {
        elements.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_acknowledged_add_present_is_valid() {
        let h = history(&[
            ("a", Outcome::Ok(())),
            ("b", Outcome::Unknown),
            ("c", Outcome::Fail),
        ]);
        let s = check_set(&h, &set(&["a", "b"]));
        assert!(s.valid, "{s:?}");
        assert_eq!(
            (s.acknowledged, s.unknown, s.failed, s.unknown_present),
            (1, 1, 1, 1)
        );
        // An unknown add may also be absent.
        assert!(check_set(&h, &set(&["a"])).valid);
    }

    #[test]
    fn lost_unexpected_and_failed_present_are_reported() {
        let h = history(&[("a", Outcome::Ok(())), ("c", Outcome::Fail)]);
        let s = check_set(&h, &set(&["c", "z"]));
        assert!(!s.valid);
        assert_eq!(s.lost, vec!["a".to_string()]);
        assert_eq!(s.unexpected, vec!["z".to_string()]);
        assert_eq!(s.failed_but_present, vec!["c".to_string()]);
    }

    #[test]
    fn a_retried_add_counts_its_strongest_outcome() {
        // Unknown first, then acknowledged on retry: it must be present.
        let h = history(&[("a", Outcome::Unknown), ("a", Outcome::Ok(()))]);
        assert!(!check_set(&h, &set(&[])).valid);
        assert!(check_set(&h, &set(&["a"])).valid);
    }
}
