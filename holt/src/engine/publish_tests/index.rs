//! The field index: `FindIndexed` answers exactly what a walk of the
//! subtree would, after publish, replace, rename, hard links, unlink and
//! at snapshot pins, and survives an image round trip.

use proptest::prelude::*;

use super::*;
use crate::command::IndexedCommit;
use crate::fields::{FieldSet, FieldValue, IndexKey, IndexRange};
use crate::query::IndexedHit;

/// Answers queries against one state (current, or at a pin).
type View<'a> = dyn Fn(Query) -> Result<QueryResult, FsError> + 'a;

fn fields(pairs: &[(&str, FieldValue)]) -> FieldSet {
    let mut set = FieldSet::new();
    for (name, value) in pairs {
        set.entry(name.to_string()).or_default().push(value.clone());
    }
    set
}

fn indexed(upload: &StagedUpload, body: BodySpec, fields: FieldSet) -> Op {
    Op::CommitPublishIndexed {
        commits: vec![IndexedCommit {
            upload: upload.id,
            body,
            fields,
        }],
    }
}

impl Fixture {
    /// Publishes a one-block body with `fields` at `p` (upsert).
    fn publish_fields(&mut self, p: &str, set: FieldSet) -> Attr {
        let upload = self.begin(p, PublishMode::Upsert);
        match self.ok(indexed(&upload, spec(&upload, &[10]), set)) {
            Applied::Attrs(mut attrs) if attrs.len() == 1 => attrs.remove(0),
            other => panic!("expected one attribute, got {other:?}"),
        }
    }

    /// Every page of a `FindIndexed` under `dir` (pages of `page` hits):
    /// the paths found, sorted, and whether the first page said unindexed.
    fn find(&self, dir: &str, field: &str, range: IndexRange, page: u32) -> (Vec<String>, bool) {
        find_in(&|q| self.holt.query(&q), dir, field, range, page)
    }
}

fn find_in(
    query: &View<'_>,
    dir: &str,
    field: &str,
    range: IndexRange,
    page: u32,
) -> (Vec<String>, bool) {
    let mut paths = Vec::new();
    let mut after = None;
    let mut first_unindexed = None;
    loop {
        let q = Query::FindIndexed {
            dir: ipath(dir),
            field: field.into(),
            range: range.clone(),
            after: after.clone(),
            limit: page,
        };
        match query(q) {
            Ok(QueryResult::Indexed {
                hits,
                next,
                unindexed,
            }) => {
                first_unindexed.get_or_insert(unindexed);
                paths.extend(hits.into_iter().map(|h: IndexedHit| h.path));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("find {field} under {dir}: {other:?}"),
        }
    }
    paths.sort();
    paths.dedup();
    (paths, first_unindexed.unwrap_or(false))
}

fn eq(v: FieldValue) -> IndexRange {
    let k = v.key();
    IndexRange::Between {
        lo: Some(k.clone()),
        hi: Some(k),
    }
}

fn all() -> IndexRange {
    IndexRange::Between { lo: None, hi: None }
}

fn s(text: &str) -> FieldValue {
    FieldValue::Str(text.into())
}

#[test]
fn publish_replace_rename_link_and_unlink_keep_the_index_exact() {
    let mut f = Fixture::new();
    f.ok(mkdir("/runs"));
    f.ok(mkdir("/runs/a"));
    f.ok(mkdir("/other"));
    f.publish_fields(
        "/runs/a/m.json",
        fields(&[
            ("loss", FieldValue::float(0.5).expect("finite")),
            ("tag", s("x")),
        ]),
    );
    f.publish_fields("/runs/b.json", fields(&[("loss", FieldValue::Int(2))]));
    f.publish_fields("/other/c.json", fields(&[("loss", FieldValue::Int(1))]));

    let found = |f: &Fixture, dir: &str, range: IndexRange| f.find(dir, "loss", range, 0).0;
    assert_eq!(
        found(&f, "/", all()),
        ["other/c.json", "runs/a/m.json", "runs/b.json"]
    );
    assert_eq!(found(&f, "/runs", all()), ["a/m.json", "b.json"]);
    let below_one = IndexRange::Between {
        lo: Some(IndexKey::num_min()),
        hi: Some(IndexKey::num(1.0)),
    };
    assert_eq!(
        found(&f, "/", below_one.clone()),
        ["other/c.json", "runs/a/m.json"]
    );
    assert_eq!(
        found(&f, "/", eq(FieldValue::float(2.0).expect("finite"))),
        ["runs/b.json"]
    );
    assert_eq!(
        f.find("/", "tag", IndexRange::Prefix("x".into()), 0).0,
        ["runs/a/m.json"]
    );

    // Replace: the old values leave the index with the old body.
    f.publish_fields("/runs/b.json", fields(&[("loss", FieldValue::Int(7))]));
    assert!(found(&f, "/", eq(FieldValue::Int(2))).is_empty());
    assert_eq!(found(&f, "/", eq(FieldValue::Int(7))), ["runs/b.json"]);

    // Rename a file, then its directory: the hits follow.
    f.ok(Op::Rename {
        from: path("/runs/a/m.json"),
        to: path("/runs/a/n.json"),
        mode: RenameMode::Replace,
    });
    f.ok(Op::Rename {
        from: path("/runs/a"),
        to: path("/other/a"),
        mode: RenameMode::Replace,
    });
    assert_eq!(found(&f, "/runs", all()), ["b.json"]);
    assert_eq!(found(&f, "/other", all()), ["a/n.json", "c.json"]);

    // A hard link is a second path of the same file.
    f.ok(Op::Link {
        inode: ipath("/other/c.json"),
        at: path("/runs/c-link"),
    });
    assert_eq!(
        found(&f, "/", eq(FieldValue::Int(1))),
        ["other/c.json", "runs/c-link"]
    );
    f.ok(unlink("/other/c.json"));
    assert_eq!(found(&f, "/", eq(FieldValue::Int(1))), ["runs/c-link"]);
    f.ok(unlink("/runs/c-link"));
    assert!(found(&f, "/", eq(FieldValue::Int(1))).is_empty());

    // Rename over an indexed file drops the replaced file's values.
    f.ok(Op::Rename {
        from: path("/other/a/n.json"),
        to: path("/runs/b.json"),
        mode: RenameMode::Replace,
    });
    assert!(found(&f, "/", eq(FieldValue::Int(7))).is_empty());
    assert_eq!(found(&f, "/", all()), ["runs/b.json"]);
    f.holt.check_invariants().expect("invariants");
}

#[test]
fn a_body_without_fields_is_reported_unindexed_below_its_directories_only() {
    let mut f = Fixture::new();
    f.ok(mkdir("/a"));
    f.ok(mkdir("/b"));
    f.publish_fields("/a/x", fields(&[("n", FieldValue::Int(1))]));
    assert!(!f.find("/", "n", all(), 0).1);
    // A legacy commit: no field set. Its old values leave the index.
    let upload = f.begin("/a/x", PublishMode::Upsert);
    f.ok(commit(&upload, spec(&upload, &[3])));
    let (paths, unindexed) = f.find("/", "n", all(), 0);
    assert!(paths.is_empty());
    assert!(unindexed);
    assert!(f.find("/a", "n", all(), 0).1);
    assert!(!f.find("/b", "n", all(), 0).1, "nothing unindexed below /b");
    // Publishing with fields again makes it indexed.
    f.publish_fields("/a/x", fields(&[("n", FieldValue::Int(2))]));
    assert_eq!(f.find("/", "n", all(), 0), (vec!["a/x".to_string()], false));
    // An empty file created without a body is neither.
    f.ok(create("/b/empty"));
    assert!(!f.find("/", "n", all(), 0).1);
}

#[test]
fn indexed_fields_lists_each_name_once_while_a_file_holds_it() {
    let mut f = Fixture::new();
    let names = |f: &Fixture| match f.holt.query(&Query::IndexedFields { dir: ipath("/") }) {
        Ok(QueryResult::FieldNames { names, complete }) => {
            assert!(complete);
            names
        }
        other => panic!("indexed fields: {other:?}"),
    };
    assert!(names(&f).is_empty());
    f.publish_fields("/a", fields(&[("b", FieldValue::Int(1)), ("a.x", s("v"))]));
    f.publish_fields(
        "/b",
        fields(&[("b", FieldValue::Int(2)), ("c", FieldValue::Bool(true))]),
    );
    assert_eq!(names(&f), ["a.x", "b", "c"]);
    f.ok(unlink("/b"));
    assert_eq!(names(&f), ["a.x", "b"]);
    f.publish_fields("/a", fields(&[("z", FieldValue::Int(1))]));
    assert_eq!(names(&f), ["z"]);
}

#[test]
fn pages_cover_every_hit_once() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    for i in 0..25 {
        f.publish_fields(
            &format!("/d/f{i:02}"),
            fields(&[("n", FieldValue::Int(i % 4)), ("m", FieldValue::Int(i))]),
        );
    }
    let expected: Vec<String> = (0..25).map(|i| format!("d/f{i:02}")).collect();
    for page in [1, 3, 7, 1000] {
        assert_eq!(f.find("/", "n", all(), page).0, expected, "page {page}");
    }
    let two = f.find("/", "n", eq(FieldValue::Int(2)), 2).0;
    assert_eq!(two, ["d/f02", "d/f06", "d/f10", "d/f14", "d/f18", "d/f22"]);
}

/// A set of about 400 KB: 6 fields of 64 strings of 1,000 bytes.
fn heavy_set(n: i64) -> FieldSet {
    let mut set = FieldSet::new();
    for f in 0..6 {
        set.insert(
            format!("heavy{f}"),
            (0..64)
                .map(|v| s(&format!("{v:02}{}", "h".repeat(998))))
                .collect(),
        );
    }
    set.insert("n".into(), vec![FieldValue::Int(n)]);
    set
}

#[test]
fn pages_of_heavy_sets_are_cut_by_weight_and_resume() {
    let mut f = Fixture::new();
    f.ok(mkdir("/d"));
    for i in 0..10 {
        f.publish_fields(&format!("/d/f{i}"), heavy_set(i));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("d/f{i}")).collect();
    // A search: every page stays within the weight (three sets of 400 KB
    // reach 1 MiB), and the pages together find every file once.
    let q = Query::FindIndexed {
        dir: ipath("/"),
        field: "n".into(),
        range: all(),
        after: None,
        limit: 0,
    };
    match f.holt.query(&q) {
        Ok(QueryResult::Indexed { hits, next, .. }) => {
            assert_eq!(hits.len(), 3, "cut by weight, not by count");
            assert!(next.is_some());
        }
        other => panic!("find: {other:?}"),
    }
    assert_eq!(f.find("/", "n", all(), 0).0, expected);
    // A listing with bodies: the same.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        match f.holt.query(&Query::ReadDirBodies {
            dir: ipath("/d"),
            after: after.clone(),
            limit: 0,
        }) {
            Ok(QueryResult::DirBodies { entries, next }) => {
                assert!(
                    (1..=3).contains(&entries.len()),
                    "{} entries",
                    entries.len()
                );
                listed.extend(entries.into_iter().map(|(e, _)| format!("d/{}", e.name)));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("list: {other:?}"),
        }
    }
    assert_eq!(listed, expected);
}

#[test]
fn bad_field_sets_and_queries_change_nothing() {
    let mut f = Fixture::new();
    let upload = f.begin("/x", PublishMode::Upsert);
    let bad = fields(&[("n", FieldValue::Float(f64::INFINITY.to_bits()))]);
    f.err_unchanged(indexed(&upload, spec(&upload, &[1]), bad), "EINVAL");
    let long = fields(&[("n", FieldValue::Str("y".repeat(5000)))]);
    f.err_unchanged(indexed(&upload, spec(&upload, &[1]), long), "EINVAL");
    // Within every count limit, but over MAX_SET_BYTES.
    let mut heavy = heavy_set(0);
    heavy.extend(heavy_set(1).into_iter().map(|(k, v)| (format!("{k}b"), v)));
    let refused = f.err_unchanged(indexed(&upload, spec(&upload, &[1]), heavy), "EINVAL");
    assert!(refused.to_string().contains("bytes"), "{refused}");
    let q = Query::FindIndexed {
        dir: ipath("/"),
        field: String::new(),
        range: all(),
        after: None,
        limit: 0,
    };
    assert_eq!(f.holt.query(&q).map_err(|e| e.code()), Err("EINVAL"));
    let q = Query::FindIndexed {
        dir: ipath("/missing"),
        field: "n".into(),
        range: all(),
        after: None,
        limit: 0,
    };
    assert_eq!(f.holt.query(&q).map_err(|e| e.code()), Err("ENOENT"));
}

#[derive(Clone, Debug)]
enum Step {
    Mkdir(usize),
    Publish(usize, i64, bool),
    Unlink(usize),
    Rmdir(usize),
    Rename(usize, usize),
    Link(usize, usize),
    Snapshot,
}

const PATHS: [&str; 8] = ["/a", "/b", "/a/x", "/a/y", "/b/x", "/a/x/z", "/b/z", "/a/w"];

fn step() -> impl Strategy<Value = Step> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Step::Mkdir),
        5 => (p.clone(), 0i64..4, prop::bool::weighted(0.8)).prop_map(|(i, n, f)| Step::Publish(i, n, f)),
        2 => p.clone().prop_map(Step::Unlink),
        1 => p.clone().prop_map(Step::Rmdir),
        3 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Rename(a, b)),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Step::Link(a, b)),
        1 => Just(Step::Snapshot),
    ]
}

/// The oracle: walk the tree under `dir` with `ReadDirBodies` and keep
/// files whose field set has a value of `field` in `range`; and whether
/// some body under `dir` has no field set.
fn walk_find(query: &View<'_>, dir: &str, field: &str, range: &IndexRange) -> (Vec<String>, bool) {
    let mut found = Vec::new();
    let mut unindexed = false;
    let mut dirs = vec![String::new()];
    while let Some(rel) = dirs.pop() {
        let abs = match (dir, rel.as_str()) {
            (d, "") => d.to_string(),
            ("/", r) => format!("/{r}"),
            (d, r) => format!("{d}/{r}"),
        };
        let Ok(QueryResult::DirBodies { entries, .. }) = query(Query::ReadDirBodies {
            dir: ipath(&abs),
            after: None,
            limit: 0,
        }) else {
            panic!("list {abs}");
        };
        for (entry, body) in entries {
            let path = if rel.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel}/{}", entry.name)
            };
            if entry.attr.file_type == FileType::Directory {
                dirs.push(path.clone());
            }
            match body.map(|b| b.fields) {
                Some(None) => unindexed = true,
                Some(Some(set)) => {
                    let hit = set
                        .get(field)
                        .is_some_and(|vs| vs.iter().any(|v| range.contains(&v.key())));
                    if hit {
                        found.push(path);
                    }
                }
                None => {}
            }
        }
    }
    found.sort();
    (found, unindexed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// After any sequence of namespace writes and publishes (with and
    /// without fields), `FindIndexed` equals a walk, now and at every
    /// pin, before and after an image round trip.
    #[test]
    fn find_indexed_equals_a_walk(steps in prop::collection::vec(step(), 1..60)) {
        let mut f = Fixture::new();
        let mut pins = Vec::new();
        for st in steps {
            let _ = match st {
                Step::Mkdir(i) => f.run(mkdir(PATHS[i])),
                Step::Publish(i, n, with_fields) => match f.run(begin(PATHS[i], PublishMode::Upsert)) {
                    Ok(Applied::Staged(upload)) => {
                        let body = spec(&upload, &[1]);
                        if with_fields {
                            f.run(indexed(&upload, body, fields(&[("n", FieldValue::Int(n)), ("k", s("v"))])))
                        } else {
                            f.run(commit(&upload, body))
                        }
                    }
                    other => other,
                },
                Step::Unlink(i) => f.run(unlink(PATHS[i])),
                Step::Rmdir(i) => f.run(Op::Rmdir { at: path(PATHS[i]) }),
                Step::Rename(a, b) => f.run(Op::Rename {
                    from: path(PATHS[a]),
                    to: path(PATHS[b]),
                    mode: RenameMode::Replace,
                }),
                Step::Link(a, b) => f.run(Op::Link { inode: ipath(PATHS[a]), at: path(PATHS[b]) }),
                Step::Snapshot => {
                    let out = f.run(Op::CreateSnapshot { path: "/".into(), lease_ns: 1_000_000_000 });
                    if let Ok(Applied::Snapshot(info)) = &out {
                        pins.push(info.id);
                    }
                    out
                }
            };
            f.holt.check_invariants().map_err(TestCaseError::fail)?;
        }
        let restored = Holt::decode_image(&f.holt.encode_image()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&restored, &f.holt);
        let ranges = [all(), eq(FieldValue::Int(1)), IndexRange::Between { lo: Some(IndexKey::num(2.0)), hi: None }];
        for holt in [&f.holt, &restored] {
            let views: Vec<Box<View<'_>>> = std::iter::once(
                Box::new(move |q: Query| holt.query(&q)) as Box<View<'_>>,
            )
            .chain(pins.iter().map(|id| {
                let id = *id;
                Box::new(move |q: Query| holt.query(&Query::AtSnapshot { snapshot: id, query: Box::new(q) }))
                    as Box<View<'_>>
            }))
            .collect();
            for view in &views {
                for dir in ["/", "/a", "/b"] {
                    if !matches!(view(Query::GetAttr { inode: ipath(dir) }), Ok(QueryResult::Attr(a)) if a.file_type == FileType::Directory) {
                        continue;
                    }
                    for range in &ranges {
                        let walked = walk_find(view.as_ref(), dir, "n", range);
                        let indexed = find_in(view.as_ref(), dir, "n", range.clone(), 2);
                        prop_assert_eq!(&indexed.0, &walked.0, "{} {:?}", dir, range);
                        prop_assert_eq!(indexed.1, walked.1, "unindexed under {}", dir);
                    }
                }
            }
        }
    }
}
