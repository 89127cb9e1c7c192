//! Model-based property test of object-backed bodies.
//!
//! Random interleavings of begin / commit / batch commit / abort / renew /
//! expire / GC-done with unlink, hard link, rename and plain create run
//! against Holt and against a small model that knows, for every path, which
//! file it names and that file's visible generation and body digest. After
//! every step:
//! - the outcome (Ok or the error code) agrees with the model;
//! - every path shows the model's generation, digest and link count;
//! - **the GC invariant**: every block key ever committed is, at every
//!   step, in exactly one of {referenced by a live body, queued for GC or
//!   already reported done}; never both (live data deleted) and never
//!   neither (a leak). Likewise every upload prefix is either staged or
//!   queued/done, and no queued prefix covers a live key.
//!
//! At the end, the image round-trips and a replica replaying the log ends
//! byte-identical.

use std::collections::{BTreeMap, BTreeSet};

use nokv_holt::{
    Applied, BlockRef, BodySpec, Command, EntryRef, FileType, FsError, GcTarget, Generation, Holt,
    HoltConfig, InodeId, InodeRef, LogIndex, Op, Outcome, PublishMode, Query, QueryResult,
    RenameMode, RequestId, StagedUpload, UploadId,
};
use proptest::prelude::*;

/// The file paths operations pick from; `/d` is a directory made at setup.
const PATHS: [&str; 4] = ["/a", "/b", "/d/a", "/d/b"];
const DIR: &str = "/d";
const LEASE: u64 = 300;

// ---- generated operations ----------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum TMode {
    CreateOnly,
    /// Replace expecting the generation the path shows right now.
    ReplaceCurrent,
    /// Replace expecting a generation the path does not show.
    ReplaceStale,
    Upsert,
}

#[derive(Clone, Copy, Debug)]
enum TBody {
    Good { blocks: usize },
    BadSum,
    BadSha,
    OutsidePrefix,
}

#[derive(Clone, Debug)]
enum TOp {
    /// `path` indexes `PATHS`, or `PATHS.len()` for the directory.
    Begin {
        path: usize,
        mode: TMode,
    },
    /// `pick` chooses among every upload id ever handed out, plus one
    /// unknown id.
    Commit {
        pick: usize,
        body: TBody,
    },
    /// Distinct uploads unless `repeat` (which the engine refuses).
    Batch {
        picks: Vec<usize>,
        bad: Option<usize>,
        repeat: bool,
    },
    Abort {
        pick: usize,
    },
    Renew {
        pick: usize,
    },
    /// Expire with `now` this far behind or ahead of the current time.
    Expire {
        offset: i64,
    },
    GcDone {
        count: usize,
    },
    Unlink {
        path: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Create {
        path: usize,
    },
    /// Let time pass.
    Wait {
        ns: u64,
    },
    /// Re-apply an earlier command with its request id.
    Retry {
        back: usize,
    },
}

fn op() -> BoxedStrategy<TOp> {
    let path = 0..PATHS.len();
    let mode = prop_oneof![
        Just(TMode::CreateOnly),
        Just(TMode::ReplaceCurrent),
        Just(TMode::ReplaceStale),
        Just(TMode::Upsert),
    ];
    let body = prop_oneof![
        12 => (0usize..4).prop_map(|blocks| TBody::Good { blocks }),
        1 => Just(TBody::BadSum),
        1 => Just(TBody::BadSha),
        1 => Just(TBody::OutsidePrefix),
    ];
    prop_oneof![
        9 => (0..=PATHS.len(), mode).prop_map(|(path, mode)| TOp::Begin { path, mode }),
        6 => (any::<usize>(), body).prop_map(|(pick, body)| TOp::Commit { pick, body }),
        3 => (
            prop::collection::vec(any::<usize>(), 0..4),
            prop::option::weighted(0.2, 0usize..4),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(picks, bad, repeat)| TOp::Batch { picks, bad, repeat }),
        1 => any::<usize>().prop_map(|pick| TOp::Abort { pick }),
        1 => any::<usize>().prop_map(|pick| TOp::Renew { pick }),
        1 => (-150i64..50).prop_map(|offset| TOp::Expire { offset }),
        2 => (0usize..4).prop_map(|count| TOp::GcDone { count }),
        2 => path.clone().prop_map(|path| TOp::Unlink { path }),
        1 => (path.clone(), path.clone()).prop_map(|(from, to)| TOp::Link { from, to }),
        2 => (path.clone(), path.clone()).prop_map(|(from, to)| TOp::Rename { from, to }),
        1 => path.prop_map(|path| TOp::Create { path }),
        2 => (1u64..80).prop_map(|ns| TOp::Wait { ns }),
        1 => (0usize..8).prop_map(|back| TOp::Retry { back }),
    ]
    .boxed()
}

// ---- the model ---------------------------------------------------------------

type Code = &'static str;

/// A file's content as the model sees it.
#[derive(Clone, Debug, Default)]
struct MFile {
    generation: u64,
    sha: Option<String>,
    keys: Vec<String>,
}

#[derive(Clone, Debug)]
struct MUpload {
    path: String,
    mode: PublishMode,
    /// The file the upload was begun on; `None`: it reserved an inode.
    target: Option<u64>,
    lease_expires: u64,
    /// The engine's record, for the prefix and the reserved inode.
    staged: StagedUpload,
}

#[derive(Clone, Debug, Default)]
struct Model {
    names: BTreeMap<String, u64>,
    files: BTreeMap<u64, MFile>,
    next_file: u64,
    uploads: BTreeMap<u64, MUpload>,
    next_upload: u64,
    next_generation: u64,
    /// Every key a commit made live, ever.
    committed: BTreeSet<String>,
    /// Keys whose body left the namespace.
    retired: BTreeSet<String>,
    /// Prefixes of uploads that ended without a commit.
    dead_prefixes: BTreeSet<String>,
}

/// What a checked commit will do.
enum MTarget {
    Create,
    Existing(u64),
}

impl Model {
    fn new() -> Model {
        Model {
            next_upload: 1,
            next_generation: 1,
            ..Model::default()
        }
    }

    fn generation_at(&self, path: &str) -> Option<u64> {
        let file = self.names.get(path)?;
        self.files.get(file).map(|f| f.generation)
    }

    /// The file loses one name; with its last one its body leaves.
    fn drop_name(&mut self, path: &str) {
        let Some(file) = self.names.remove(path) else {
            return;
        };
        if !self.names.values().any(|other| *other == file) {
            if let Some(gone) = self.files.remove(&file) {
                self.retired.extend(gone.keys);
            }
        }
    }

    fn new_file(&mut self, content: MFile) -> u64 {
        self.next_file += 1;
        self.files.insert(self.next_file, content);
        self.next_file
    }

    fn begin_check(&self, path: &str, mode: PublishMode) -> Result<Option<u64>, Code> {
        if path == DIR {
            return Err(match mode {
                PublishMode::CreateOnly => "EEXIST",
                _ => "EISDIR",
            });
        }
        let existing = self.names.get(path).copied();
        match (mode, existing) {
            (PublishMode::CreateOnly, Some(_)) => Err("EEXIST"),
            (PublishMode::CreateOnly | PublishMode::Upsert, None) => Ok(None),
            (PublishMode::Replace { .. }, None) => Err("ENOENT"),
            (PublishMode::Replace { expected }, Some(file)) => {
                if self.files[&file].generation != expected.0 {
                    Err("STALE_GENERATION")
                } else {
                    Ok(Some(file))
                }
            }
            (PublishMode::Upsert, Some(file)) => Ok(Some(file)),
            // Not generated here: by-inode publishes have their own unit
            // test (engine/publish_tests.rs), as the model has no inode ids.
            (PublishMode::Inode { .. }, _) => Err("EINVAL"),
        }
    }

    /// The stateful checks of one commit, in the engine's order.
    fn plan(&self, id: u64, keys_ok: bool, time: u64) -> Result<MTarget, Code> {
        let upload = self.uploads.get(&id).ok_or("ENOENT")?;
        if time > upload.lease_expires {
            return Err("ENOENT");
        }
        if !keys_ok {
            return Err("EINVAL");
        }
        let current = self.names.get(&upload.path).copied();
        match (upload.mode, current) {
            (PublishMode::CreateOnly, Some(_)) => Err("EEXIST"),
            (PublishMode::Replace { .. }, None) => Err("ENOENT"),
            (PublishMode::Replace { expected }, Some(file)) => {
                if Some(file) != upload.target || self.files[&file].generation != expected.0 {
                    Err("STALE_GENERATION")
                } else {
                    Ok(MTarget::Existing(file))
                }
            }
            (PublishMode::Upsert, Some(file)) => Ok(MTarget::Existing(file)),
            (PublishMode::Inode { .. }, Some(_)) => Err("EINVAL"),
            (_, None) => Ok(MTarget::Create),
        }
    }

    fn write(&mut self, id: u64, target: MTarget, sha: String, keys: Vec<String>) -> u64 {
        let upload = self.uploads.remove(&id).expect("planned upload");
        let generation = upload.staged.generation.0;
        self.committed.extend(keys.iter().cloned());
        let content = MFile {
            generation,
            sha: Some(sha),
            keys,
        };
        match target {
            MTarget::Create => {
                let file = self.new_file(content);
                self.names.insert(upload.path, file);
                file
            }
            MTarget::Existing(file) => {
                if let Some(old) = self.files.insert(file, content) {
                    self.retired.extend(old.keys);
                }
                file
            }
        }
    }

    fn end_upload(&mut self, id: u64) {
        if let Some(upload) = self.uploads.remove(&id) {
            self.dead_prefixes.insert(upload.staged.key_prefix());
        }
    }
}

// ---- the harness ---------------------------------------------------------------

fn code(outcome: &Outcome) -> Result<(), Code> {
    outcome.as_ref().map(drop).map_err(FsError::code)
}

fn sha_of(seed: u64) -> String {
    format!(
        "{:032x}{:032x}",
        seed,
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    )
}

struct Harness {
    holt: Holt,
    model: Model,
    time: u64,
    log: Vec<(Command, Outcome)>,
    /// Targets of GC tasks the "worker" reported done.
    done_keys: BTreeSet<String>,
    done_prefixes: BTreeSet<String>,
}

impl Harness {
    fn new() -> Harness {
        let mut harness = Harness {
            holt: Holt::new(HoltConfig::default()),
            model: Model::new(),
            time: 1000,
            log: Vec::new(),
            done_keys: BTreeSet::new(),
            done_prefixes: BTreeSet::new(),
        };
        let mkdir = Op::Mkdir {
            at: EntryRef::Path(DIR.into()),
            mode: 0o755,
            uid: 0,
            gid: 0,
            parents: false,
        };
        assert!(harness.apply(mkdir).is_ok());
        harness
    }

    fn apply(&mut self, op: Op) -> Outcome {
        self.time += 1;
        let cmd = Command {
            request_id: RequestId(self.log.len() as u128 + 1),
            epoch: None,
            time_ns: self.time,
            op,
        };
        let outcome = self.holt.apply(LogIndex(self.log.len() as u64 + 1), &cmd);
        self.log.push((cmd, outcome.clone()));
        outcome
    }

    /// Upload id for a pick: mostly a staged upload (so commits get past
    /// the first check), otherwise any id handed out so far (committed,
    /// aborted, expired) or one never issued.
    fn upload_id(&self, pick: usize) -> u64 {
        let live: Vec<u64> = self.model.uploads.keys().copied().collect();
        let (choice, n) = (pick % 4, (pick / 4) as u64);
        if choice != 0 && !live.is_empty() {
            return live[(n % live.len() as u64) as usize];
        }
        let issued = self.model.next_upload; // ids 1..issued, plus `issued`
        1 + n % issued
    }

    /// A body for upload `id`: valid keys under its prefix, or one of the
    /// broken kinds. Returns the spec and whether its keys are in bounds.
    fn body(&self, id: u64, kind: TBody, seed: u64) -> (BodySpec, bool) {
        let prefix = self
            .model
            .uploads
            .get(&id)
            .map(|u| u.staged.key_prefix())
            .unwrap_or_else(|| format!("blocks/0/999/{id}/"));
        let blocks = match kind {
            TBody::Good { blocks } => blocks,
            _ => 2,
        };
        let mut spec = BodySpec {
            size: 0,
            blocks: (0..blocks)
                .map(|i| BlockRef {
                    key: format!("{prefix}{seed}-{i}"),
                    size: i as u64 + 1,
                })
                .collect(),
            sha256: sha_of(seed),
            content_type: String::new(),
            producer: "model".into(),
            attrs: BTreeMap::new(),
        };
        spec.size = spec.blocks.iter().map(|b| b.size).sum();
        let mut keys_ok = true;
        match kind {
            TBody::Good { .. } => {}
            TBody::BadSum => spec.size += 1,
            TBody::BadSha => spec.sha256 = "not-a-digest".into(),
            TBody::OutsidePrefix => {
                spec.blocks[0].key = format!("blocks/0/0/0/{seed}");
                keys_ok = false;
            }
        }
        (spec, keys_ok)
    }

    fn statically_valid(kind: TBody) -> bool {
        !matches!(kind, TBody::BadSum | TBody::BadSha)
    }

    fn step(&mut self, op: &TOp) -> Result<(), TestCaseError> {
        let seed = self.log.len() as u64;
        match op {
            TOp::Begin { path, mode } => {
                let path = PATHS.get(*path).copied().unwrap_or(DIR).to_string();
                let current = self.model.generation_at(&path).unwrap_or(0);
                let mode = match mode {
                    TMode::CreateOnly => PublishMode::CreateOnly,
                    TMode::ReplaceCurrent => PublishMode::Replace {
                        expected: Generation(current),
                    },
                    TMode::ReplaceStale => PublishMode::Replace {
                        expected: Generation(current + 1000),
                    },
                    TMode::Upsert => PublishMode::Upsert,
                };
                let expected = self.model.begin_check(&path, mode);
                let outcome = self.apply(Op::BeginPublish {
                    at: EntryRef::Path(path.clone()),
                    mode,
                    lease_ns: LEASE,
                    file_mode: 0o644,
                    uid: 1,
                    gid: 1,
                });
                prop_assert_eq!(
                    code(&outcome),
                    expected.map(drop),
                    "begin {} {:?}",
                    path,
                    mode
                );
                if let (Ok(target), Ok(Applied::Staged(staged))) = (expected, outcome) {
                    prop_assert_eq!(staged.id, UploadId(self.model.next_upload));
                    prop_assert_eq!(staged.generation, Generation(self.model.next_generation));
                    prop_assert_eq!(staged.lease_expires_ns, self.time + LEASE);
                    self.model.next_upload += 1;
                    self.model.next_generation += 1;
                    self.model.uploads.insert(
                        staged.id.0,
                        MUpload {
                            path,
                            mode,
                            target,
                            lease_expires: staged.lease_expires_ns,
                            staged,
                        },
                    );
                }
            }
            TOp::Commit { pick, body } => {
                let id = self.upload_id(*pick);
                let (spec, keys_ok) = self.body(id, *body, seed);
                let time = self.time + 1;
                let expected = if Self::statically_valid(*body) {
                    self.model.plan(id, keys_ok, time)
                } else {
                    Err("EINVAL")
                };
                let reserved = self
                    .model
                    .uploads
                    .get(&id)
                    .map(|u| (u.target, u.staged.inode));
                let sha = spec.sha256.clone();
                let keys: Vec<String> = spec.blocks.iter().map(|b| b.key.clone()).collect();
                let outcome = self.apply(Op::CommitPublish {
                    upload: UploadId(id),
                    body: spec,
                });
                prop_assert_eq!(
                    code(&outcome),
                    expected.as_ref().map(drop).map_err(|e| *e),
                    "commit upload-{} {:?}",
                    id,
                    body
                );
                if let (Ok(target), Ok(Applied::Attr(attr))) = (expected, &outcome) {
                    let created = matches!(target, MTarget::Create);
                    self.model.write(id, target, sha, keys);
                    prop_assert_eq!(attr.version, LogIndex(self.log.len() as u64));
                    // A create under a reservation uses the reserved inode.
                    if let (true, Some((None, inode))) = (created, reserved) {
                        prop_assert_eq!(attr.inode, inode);
                    }
                }
            }
            TOp::Batch { picks, bad, repeat } => self.batch(picks, *bad, *repeat, seed)?,
            TOp::Abort { pick } => {
                let id = self.upload_id(*pick);
                let expected = if self.model.uploads.contains_key(&id) {
                    Ok(())
                } else {
                    Err("ENOENT")
                };
                let outcome = self.apply(Op::AbortPublish {
                    upload: UploadId(id),
                });
                prop_assert_eq!(code(&outcome), expected);
                if expected.is_ok() {
                    self.model.end_upload(id);
                }
            }
            TOp::Renew { pick } => {
                let id = self.upload_id(*pick);
                let time = self.time + 1;
                let expected = match self.model.uploads.get(&id) {
                    None => Err("ENOENT"),
                    Some(upload) if time > upload.lease_expires => Err("ENOENT"),
                    Some(_) => Ok(()),
                };
                let outcome = self.apply(Op::RenewUpload {
                    upload: UploadId(id),
                    lease_ns: LEASE,
                });
                prop_assert_eq!(code(&outcome), expected);
                if let (Some(upload), Ok(_)) = (self.model.uploads.get_mut(&id), expected) {
                    upload.lease_expires = time + LEASE;
                    prop_assert!(
                        matches!(&outcome, Ok(Applied::Staged(s)) if s.lease_expires_ns == time + LEASE)
                    );
                }
            }
            TOp::Expire { offset } => {
                let now = self.time.saturating_add_signed(*offset);
                let ended: Vec<u64> = self
                    .model
                    .uploads
                    .iter()
                    .filter(|(_, u)| u.lease_expires <= now)
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(
                    self.holt.expired_uploads(now),
                    ended.iter().map(|id| UploadId(*id)).collect::<Vec<_>>()
                );
                let outcome = self.apply(Op::ExpireUploads { now_ns: now });
                prop_assert_eq!(code(&outcome), Ok(()));
                for id in ended {
                    self.model.end_upload(id);
                }
            }
            TOp::GcDone { count } => {
                // The worker deletes the oldest tasks and reports them, plus
                // a seq it already reported or never saw.
                let tasks = self.holt.gc_tasks(*count);
                let mut seqs: Vec<u64> = tasks.iter().map(|t| t.seq).collect();
                seqs.push(u64::MAX);
                for task in tasks {
                    match task.target {
                        GcTarget::Keys(keys) => self.done_keys.extend(keys),
                        GcTarget::Prefix(prefix) => {
                            self.done_prefixes.insert(prefix);
                        }
                    }
                }
                let outcome = self.apply(Op::GcDone { seqs });
                prop_assert_eq!(code(&outcome), Ok(()));
            }
            TOp::Unlink { path } => {
                let path = PATHS[*path];
                let expected = if self.model.names.contains_key(path) {
                    Ok(())
                } else {
                    Err("ENOENT")
                };
                let outcome = self.apply(Op::Unlink {
                    at: EntryRef::Path(path.into()),
                });
                prop_assert_eq!(code(&outcome), expected);
                if expected.is_ok() {
                    self.model.drop_name(path);
                }
            }
            TOp::Link { from, to } => {
                let (from, to) = (PATHS[*from], PATHS[*to]);
                let expected = match (self.model.names.get(from), self.model.names.get(to)) {
                    (None, _) => Err("ENOENT"),
                    (Some(_), Some(_)) => Err("EEXIST"),
                    (Some(file), None) => Ok(*file),
                };
                let outcome = self.apply(Op::Link {
                    inode: InodeRef::Path(from.into()),
                    at: EntryRef::Path(to.into()),
                });
                prop_assert_eq!(code(&outcome), expected.map(drop));
                if let Ok(file) = expected {
                    self.model.names.insert(to.into(), file);
                }
            }
            TOp::Rename { from, to } => {
                let (from, to) = (PATHS[*from], PATHS[*to]);
                let source = self.model.names.get(from).copied();
                let expected = if source.is_some() {
                    Ok(())
                } else {
                    Err("ENOENT")
                };
                let outcome = self.apply(Op::Rename {
                    from: EntryRef::Path(from.into()),
                    to: EntryRef::Path(to.into()),
                    mode: RenameMode::Replace,
                });
                prop_assert_eq!(code(&outcome), expected);
                // Same name, or two names of one file: POSIX does nothing.
                if let Some(file) = source {
                    if from != to && self.model.names.get(to) != Some(&file) {
                        self.model.drop_name(to);
                        self.model.names.remove(from);
                        self.model.names.insert(to.into(), file);
                    }
                }
            }
            TOp::Create { path } => {
                let path = PATHS[*path];
                let expected = if self.model.names.contains_key(path) {
                    Err("EEXIST")
                } else {
                    Ok(())
                };
                let outcome = self.apply(Op::Create {
                    at: EntryRef::Path(path.into()),
                    mode: 0o644,
                    uid: 1,
                    gid: 1,
                });
                prop_assert_eq!(code(&outcome), expected);
                if expected.is_ok() {
                    let file = self.model.new_file(MFile::default());
                    self.model.names.insert(path.into(), file);
                }
            }
            TOp::Wait { ns } => self.time += ns,
            TOp::Retry { back } => {
                let Some(position) = self.log.len().checked_sub(1 + back % 8) else {
                    return Ok(());
                };
                let (cmd, first) = self.log[position].clone();
                let before = snapshot(&self.holt);
                let outcome = self.holt.apply(LogIndex(self.log.len() as u64 + 1), &cmd);
                prop_assert_eq!(&outcome, &first, "retry of {:?}", cmd.op);
                prop_assert_eq!(snapshot(&self.holt), before);
                self.log.push((cmd, outcome));
            }
        }
        self.check()
    }

    /// A batch of the picked uploads; `bad` breaks one member's keys.
    fn batch(
        &mut self,
        picks: &[usize],
        bad: Option<usize>,
        repeat: bool,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let time = self.time + 1;
        let mut ids: Vec<u64> = picks.iter().map(|pick| self.upload_id(*pick)).collect();
        if !repeat {
            let mut seen = BTreeSet::new();
            ids.retain(|id| seen.insert(*id));
        }
        let mut commits = Vec::new();
        let mut members = Vec::new();
        for (position, id) in ids.into_iter().enumerate() {
            let kind = if bad == Some(position) {
                TBody::OutsidePrefix
            } else {
                TBody::Good { blocks: 2 }
            };
            let (spec, keys_ok) = self.body(id, kind, seed * 10 + position as u64);
            members.push((
                id,
                keys_ok,
                spec.sha256.clone(),
                spec.blocks
                    .iter()
                    .map(|b| b.key.clone())
                    .collect::<Vec<_>>(),
            ));
            commits.push((UploadId(id), spec));
        }
        // The engine's order: static checks, then member by member: its
        // own checks, then a repeated name, then a repeated file.
        let distinct: BTreeSet<u64> = members.iter().map(|m| m.0).collect();
        let mut expected: Result<Vec<MTarget>, Code> =
            if members.is_empty() || distinct.len() != members.len() {
                Err("EINVAL")
            } else {
                Ok(Vec::new())
            };
        if let Ok(targets) = &mut expected {
            let mut paths = BTreeSet::new();
            let mut files = BTreeSet::new();
            for (id, keys_ok, _, _) in &members {
                let target = match self.model.plan(*id, *keys_ok, time) {
                    Ok(target) => target,
                    Err(e) => {
                        expected = Err(e);
                        break;
                    }
                };
                let path = self.model.uploads[id].path.clone();
                let repeated_file =
                    matches!(target, MTarget::Existing(file) if !files.insert(file));
                if !paths.insert(path) || repeated_file {
                    expected = Err("EINVAL");
                    break;
                }
                targets.push(target);
            }
        }
        let outcome = self.apply(Op::CommitPublishBatch { commits });
        prop_assert_eq!(
            code(&outcome),
            expected.as_ref().map(drop).map_err(|e| *e),
            "batch {:?}",
            picks
        );
        if let Ok(targets) = expected {
            let Ok(Applied::Attrs(attrs)) = &outcome else {
                return Err(TestCaseError::fail("a batch returns Attrs"));
            };
            prop_assert_eq!(attrs.len(), members.len());
            for ((id, _, sha, keys), target) in members.into_iter().zip(targets) {
                self.model.write(id, target, sha, keys);
            }
        }
        Ok(())
    }

    /// Every path against the model, and the GC invariant.
    fn check(&self) -> Result<(), TestCaseError> {
        for path in PATHS {
            let read = self.holt.query(&Query::ReadBody {
                inode: InodeRef::Path(path.into()),
            });
            match (self.model.names.get(path), read) {
                (None, Err(e)) => prop_assert_eq!(e.code(), "ENOENT"),
                (Some(file), Ok(QueryResult::Body { attr, body })) => {
                    let model = &self.model.files[file];
                    let links = self.model.names.values().filter(|f| *f == file).count();
                    prop_assert_eq!(attr.file_type, FileType::File);
                    prop_assert_eq!(attr.generation, Generation(model.generation));
                    prop_assert_eq!(attr.nlink as usize, links);
                    prop_assert_eq!(body.as_ref().map(|b| b.sha256.clone()), model.sha.clone());
                    prop_assert_eq!(body.map(|b| b.generation.0).unwrap_or(0), model.generation);
                }
                (expected, got) => {
                    return Err(TestCaseError::fail(format!(
                        "{path}: model {expected:?}, engine {got:?}"
                    )))
                }
            }
        }

        // The GC invariant over every key ever committed.
        let live: BTreeSet<String> = self
            .holt
            .live_blocks()
            .into_iter()
            .map(|(_, _, block)| block.key)
            .collect();
        let mut queued_keys = BTreeSet::new();
        let mut queued_prefixes = BTreeSet::new();
        for task in self.holt.gc_tasks(usize::MAX) {
            match task.target {
                GcTarget::Keys(keys) => {
                    for key in keys {
                        prop_assert!(queued_keys.insert(key), "a key is queued twice");
                    }
                }
                GcTarget::Prefix(prefix) => {
                    prop_assert!(queued_prefixes.insert(prefix), "a prefix is queued twice");
                }
            }
        }
        for key in &self.model.committed {
            let places = [
                live.contains(key),
                queued_keys.contains(key),
                self.done_keys.contains(key),
            ];
            let count = places.iter().filter(|p| **p).count();
            prop_assert_eq!(
                count,
                1,
                "key {} is in {:?} (live, queued, done)",
                key,
                places
            );
        }
        prop_assert!(live
            .iter()
            .chain(&queued_keys)
            .all(|k| self.model.committed.contains(k)));
        let model_live: BTreeSet<String> = self
            .model
            .files
            .values()
            .flat_map(|f| f.keys.iter().cloned())
            .collect();
        prop_assert_eq!(&live, &model_live);
        let model_retired: BTreeSet<String> = queued_keys.union(&self.done_keys).cloned().collect();
        prop_assert_eq!(&model_retired, &self.model.retired);

        // Upload prefixes: staged, or queued/done, never both; no queued
        // prefix covers a live key.
        let staged: BTreeSet<String> = self.holt.referenced_prefixes().into_iter().collect();
        let model_staged: BTreeSet<String> = self
            .model
            .uploads
            .values()
            .map(|u| u.staged.key_prefix())
            .collect();
        prop_assert_eq!(&staged, &model_staged);
        let ended: BTreeSet<String> = queued_prefixes
            .union(&self.done_prefixes)
            .cloned()
            .collect();
        prop_assert_eq!(&ended, &self.model.dead_prefixes);
        prop_assert!(staged.is_disjoint(&ended));
        for prefix in &queued_prefixes {
            prop_assert!(!live.iter().any(|key| key.starts_with(prefix)));
        }
        let stats = self.holt.stats();
        prop_assert_eq!(stats.staged as usize, self.model.uploads.len());
        prop_assert_eq!(stats.gc_tasks as usize, self.holt.gc_len());
        Ok(())
    }
}

/// Everything a retry must leave alone (the image would also see
/// `last_applied`, which a retry does move).
fn snapshot(holt: &Holt) -> impl PartialEq + std::fmt::Debug {
    let stats = holt.stats();
    (
        (stats.inodes, stats.dentries, stats.next_inode, stats.staged),
        holt.staged_uploads(),
        holt.gc_tasks(usize::MAX),
        holt.live_blocks(),
        holt.expired_uploads(u64::MAX),
        InodeId::root(holt.shard()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn publish_matches_the_model_and_never_leaks_blocks(
        ops in prop::collection::vec(op(), 1..70),
    ) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.step(op)?;
        }

        let image = harness.holt.encode_image();
        let decoded = Holt::decode_image(&image).map_err(|e| e.to_string());
        prop_assert_eq!(decoded, Ok(harness.holt.clone()));

        let mut replica = Holt::new(HoltConfig::default());
        for (index, (cmd, outcome)) in harness.log.iter().enumerate() {
            let replayed = replica.apply(LogIndex(index as u64 + 1), cmd);
            prop_assert_eq!(&replayed, outcome);
        }
        prop_assert_eq!(replica.encode_image(), image);
    }
}
