//! A small, varied engine state and the seed inputs built from it.
//!
//! The state has every kind of inode (directories, files, a symlink, a
//! hard link), an xattr, a published body and an appended one (so a GC
//! task of retired keys), an indexed body with fields, a staged upload,
//! an aborted one (a GC prefix task), a snapshot pin that differs from
//! the current tree, a graft point and a watch history. Seeds are real
//! encodings of it, so the fuzzer starts from inputs that get past every
//! header and checksum and deep into each decoder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use nokv_holt::{
    Applied, BlockRef, BodySpec, Command, EntryRef, Epoch, FieldValue, Holt, HoltConfig,
    IndexRange, IndexedCommit, InodeId, InodeRef, LogIndex, LogPayload, Op, Outcome, PublishMode,
    Query, RenameMode, RequestId, SetAttr, ShardId, SnapshotId, UploadId, XattrFlag,
};
use nokv_meta_node::typ::{NodeId, TypeConfig};
use nokv_proto::pb;
use nokv_proto::{Mutation, Read, ReadConsistency};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};
use prost::Message;

/// A valid sha256 digest (64 lowercase hex digits).
pub const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// An engine plus the counters a log gives: each command gets the next
/// log index, a fresh request id and a later time.
pub struct Driver {
    pub holt: Holt,
    pub index: u64,
    pub request: u128,
    pub time: u64,
}

impl Driver {
    pub fn new(config: HoltConfig) -> Driver {
        Driver {
            holt: Holt::new(config),
            index: 0,
            request: 0,
            time: 1_000_000,
        }
    }

    /// The next command for `op` (not applied).
    pub fn command(&mut self, op: Op) -> Command {
        self.request += 1;
        self.time += 1_000;
        Command {
            request_id: RequestId(self.request),
            epoch: None,
            time_ns: self.time,
            op,
        }
    }

    /// Applies `cmd` at the next log index.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        self.index += 1;
        self.holt.apply(LogIndex(self.index), cmd)
    }

    pub fn run(&mut self, op: Op) -> Outcome {
        let cmd = self.command(op);
        self.apply(&cmd)
    }

    /// Begins an upsert at `path` and commits a body of `sizes`, keeping
    /// the first `keep` blocks of the file's current body (an append).
    pub fn publish(&mut self, path: &str, sizes: &[u64], keep: usize, fields: bool) -> Outcome {
        let upload = match self.run(begin(path, PublishMode::Upsert))? {
            Applied::Staged(upload) => upload,
            other => return Ok(other),
        };
        let mut blocks: Vec<BlockRef> = match self.holt.query(&Query::ReadBody {
            inode: InodeRef::Id(upload.inode),
        }) {
            Ok(nokv_holt::QueryResult::Body {
                body: Some(body), ..
            }) => body.blocks.into_iter().take(keep).collect(),
            _ => Vec::new(),
        };
        let prefix = upload.key_prefix();
        blocks.extend(sizes.iter().enumerate().map(|(i, size)| BlockRef {
            key: format!("{prefix}b{i}"),
            size: *size,
        }));
        let body = body_spec(blocks);
        let op = if fields {
            Op::CommitPublishIndexed {
                commits: vec![IndexedCommit {
                    upload: upload.id,
                    body,
                    fields: sample_fields(),
                }],
            }
        } else {
            Op::CommitPublish {
                upload: upload.id,
                body,
            }
        };
        self.run(op)
    }
}

/// A valid body description of `blocks`.
pub fn body_spec(blocks: Vec<BlockRef>) -> BodySpec {
    BodySpec {
        size: blocks.iter().map(|b| b.size).sum(),
        blocks,
        sha256: SHA.into(),
        content_type: "text/plain".into(),
        producer: "fuzz".into(),
        attrs: BTreeMap::from([("k".to_string(), "v".to_string())]),
    }
}

pub fn sample_fields() -> nokv_holt::FieldSet {
    BTreeMap::from([
        ("kind".to_string(), vec![FieldValue::Str("doc".into())]),
        (
            "n".to_string(),
            vec![FieldValue::Int(3), FieldValue::Float(2.5f64.to_bits())],
        ),
        ("ok".to_string(), vec![FieldValue::Bool(true)]),
    ])
}

pub fn path(p: &str) -> EntryRef {
    EntryRef::Path(p.into())
}

pub fn ipath(p: &str) -> InodeRef {
    InodeRef::Path(p.into())
}

pub fn mkdir(p: &str) -> Op {
    Op::Mkdir {
        at: path(p),
        mode: 0o755,
        uid: 1,
        gid: 1,
        parents: false,
    }
}

pub fn create(p: &str) -> Op {
    Op::Create {
        at: path(p),
        mode: 0o644,
        uid: 1,
        gid: 1,
    }
}

pub fn begin(p: &str, mode: PublishMode) -> Op {
    Op::BeginPublish {
        at: path(p),
        mode,
        lease_ns: 60_000_000_000,
        file_mode: 0o640,
        uid: 1,
        gid: 1,
    }
}

/// The graft the sample state has, at `/g`.
pub const SAMPLE_GRAFT_SHARD: ShardId = ShardId(5);

/// The sample state (shard 0), built once.
pub fn sample_holt() -> &'static Holt {
    static SAMPLE: OnceLock<Holt> = OnceLock::new();
    SAMPLE.get_or_init(|| build_sample().holt)
}

/// The driver that built the sample state, for callers that go on
/// applying commands after it.
pub fn build_sample() -> Driver {
    let mut d = Driver::new(HoltConfig {
        shard: ShardId(0),
        dedupe_capacity: 64,
    });
    // Results are not checked: the state is whatever these commands make,
    // and every target checks invariants on its own.
    let _ = d.run(mkdir("/a"));
    let _ = d.run(mkdir("/a/c"));
    let _ = d.run(mkdir("/b"));
    let _ = d.run(create("/a/f"));
    let _ = d.run(Op::Symlink {
        at: path("/s"),
        target: "/a".into(),
        uid: 1,
        gid: 1,
    });
    let _ = d.run(Op::Link {
        inode: ipath("/a/f"),
        at: path("/b/h"),
    });
    let _ = d.run(Op::SetXattr {
        inode: ipath("/a/f"),
        name: "user.k".into(),
        value: b"v".to_vec(),
        flag: XattrFlag::Upsert,
    });
    let _ = d.publish("/a/p", &[3, 5], 0, false);
    let _ = d.publish("/b/q", &[7], 0, true);
    let _ = d.run(Op::CreateSnapshot {
        path: "/a".into(),
        lease_ns: 3_600_000_000_000,
    });
    // After the pin, so that the pin differs from the current tree.
    let _ = d.publish("/a/p", &[4], 1, false);
    let _ = d.run(Op::Unlink { at: path("/a/f") });
    let _ = d.run(mkdir("/a/d"));
    let _ = d.run(Op::Rename {
        from: path("/a/d"),
        to: path("/b/d"),
        mode: RenameMode::NoReplace,
    });
    let _ = d.run(Op::CreateGraft {
        at: path("/g"),
        shard: SAMPLE_GRAFT_SHARD,
    });
    let _ = d.run(Op::SetAttr {
        inode: ipath("/b"),
        set: SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
    });
    let _ = d.run(begin("/b/r", PublishMode::CreateOnly));
    if let Ok(Applied::Staged(upload)) = d.run(begin("/b/t", PublishMode::Upsert)) {
        let _ = d.run(Op::AbortPublish { upload: upload.id });
    }
    let _ = d.run(Op::SetWatchRetention {
        max_events: 1000,
        max_age_ns: 3_600_000_000_000,
    });
    d
}

/// One op of every kind a client may send, against the sample state.
pub fn sample_ops() -> Vec<Op> {
    vec![
        mkdir("/x"),
        Op::Mkdir {
            at: path("/x/y/z"),
            mode: 0o700,
            uid: 2,
            gid: 2,
            parents: true,
        },
        Op::Create {
            at: EntryRef::Child {
                parent: InodeId::root(ShardId(0)),
                name: "n".into(),
            },
            mode: 0o600,
            uid: 3,
            gid: 3,
        },
        Op::Symlink {
            at: path("/a/l"),
            target: "../b".into(),
            uid: 1,
            gid: 1,
        },
        Op::Link {
            inode: InodeRef::Id(InodeId::compose(ShardId(0), 5)),
            at: path("/a/f2"),
        },
        Op::Unlink { at: path("/b/h") },
        Op::Rmdir { at: path("/a/c") },
        Op::Rename {
            from: path("/a/p"),
            to: path("/b/p"),
            mode: RenameMode::Replace,
        },
        Op::SetAttr {
            inode: ipath("/a/p"),
            set: SetAttr {
                mode: Some(0o600),
                uid: Some(4),
                gid: None,
                size: Some(2),
                mtime_ns: Some(7),
            },
        },
        Op::SetXattr {
            inode: ipath("/b/h"),
            name: "user.x".into(),
            value: vec![0, 1, 2],
            flag: XattrFlag::Create,
        },
        Op::RemoveXattr {
            inode: ipath("/b/h"),
            name: "user.k".into(),
        },
        begin(
            "/b/q",
            PublishMode::Replace {
                expected: nokv_holt::Generation(2),
            },
        ),
        begin(
            "/a/p",
            PublishMode::Inode {
                inode: InodeId::compose(ShardId(0), 7),
                expected: nokv_holt::Generation(3),
            },
        ),
        Op::CommitPublish {
            upload: UploadId(4),
            body: body_spec(vec![BlockRef {
                key: "blocks/0/9/4/b0".into(),
                size: 9,
            }]),
        },
        Op::CommitPublishBatch {
            commits: vec![(UploadId(4), body_spec(Vec::new()))],
        },
        Op::CommitPublishIndexed {
            commits: vec![IndexedCommit {
                upload: UploadId(4),
                body: body_spec(Vec::new()),
                fields: sample_fields(),
            }],
        },
        Op::AbortPublish {
            upload: UploadId(4),
        },
        Op::RenewUpload {
            upload: UploadId(4),
            lease_ns: 5_000_000,
        },
        Op::CreateSnapshot {
            path: "/b".into(),
            lease_ns: 9_000_000,
        },
        Op::RenewSnapshot {
            id: SnapshotId(1),
            lease_ns: 9_000_000,
        },
        Op::RemoveSnapshot { id: SnapshotId(1) },
        Op::SetWatchRetention {
            max_events: 10,
            max_age_ns: 60_000_000_000,
        },
        Op::CreateGraft {
            at: path("/b/g2"),
            shard: ShardId(6),
        },
        Op::RemoveGraft {
            at: path("/g"),
            shard: SAMPLE_GRAFT_SHARD,
        },
    ]
}

/// The leader-only ops (no wire form), for log entries.
pub fn housekeeping_ops() -> Vec<Op> {
    vec![
        Op::ExpireUploads { now_ns: u64::MAX },
        Op::GcDone {
            seqs: vec![1, 2, 3],
        },
        Op::ExpireSnapshots { now_ns: u64::MAX },
    ]
}

/// Queries of every kind, against the sample state.
pub fn sample_queries() -> Vec<Query> {
    let leaves = vec![
        Query::Lookup {
            parent: InodeId::root(ShardId(0)),
            name: "a".into(),
        },
        Query::GetAttr { inode: ipath("/s") },
        Query::ReadDir {
            dir: ipath("/a"),
            after: Some("c".into()),
            limit: 2,
        },
        Query::ReadDirBodies {
            dir: ipath("/b"),
            after: None,
            limit: 0,
        },
        Query::ReadLink { inode: ipath("/s") },
        Query::GetXattr {
            inode: ipath("/b/h"),
            name: "user.k".into(),
        },
        Query::ListXattr {
            inode: ipath("/b/h"),
        },
        Query::ReadBody {
            inode: ipath("/a/p"),
        },
        Query::ListUploads,
        Query::ListSnapshots,
        Query::Grafts,
        Query::RetiredBody {
            inode: ipath("/a/p"),
            generation: nokv_holt::Generation(1),
        },
        Query::FindIndexed {
            dir: ipath("/"),
            field: "n".into(),
            range: IndexRange::Between {
                lo: Some(nokv_holt::IndexKey::num(1.0)),
                hi: None,
            },
            after: None,
            limit: 10,
        },
        Query::FindIndexed {
            dir: ipath("/b"),
            field: "kind".into(),
            range: IndexRange::Prefix("d".into()),
            after: Some((
                nokv_holt::IndexKey::Str("a".into()),
                InodeId::root(ShardId(0)),
            )),
            limit: 0,
        },
        Query::IndexedFields { dir: ipath("/") },
    ];
    let mut all = leaves.clone();
    // A few of them at the pin, too.
    all.extend(leaves.into_iter().step_by(4).map(|q| Query::AtSnapshot {
        snapshot: SnapshotId(1),
        query: Box::new(q),
    }));
    all
}

// ----- seeds ----------------------------------------------------------------

fn named(prefix: &str, items: impl IntoIterator<Item = Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| (format!("{prefix}-{i:02}"), bytes))
        .collect()
}

fn with_selector(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(selector);
    out.extend_from_slice(bytes);
    out
}

/// `client_rpc` seeds: a selector byte (which message), then the message.
pub fn client_rpc_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut mutations = Vec::new();
    for (i, op) in sample_ops().into_iter().enumerate() {
        let mutation = Mutation {
            request_id: RequestId(i as u128 + 1),
            epoch: (i % 2 == 0).then_some(Epoch(1)),
            op,
        };
        if let Ok(req) = pb::MutateRequest::try_from(mutation) {
            mutations.push(with_selector(0, &req.encode_to_vec()));
        }
    }
    seeds.extend(named("mutate", mutations));
    let queries = sample_queries().into_iter().map(|query| {
        let req = pb::QueryRequest::from(Read {
            consistency: ReadConsistency::Linearizable,
            query,
        });
        with_selector(1, &req.encode_to_vec())
    });
    seeds.extend(named("query", queries));
    let watch = pb::WatchRequest {
        path: "/a".into(),
        recursive: true,
        after_cursor: 3,
        shard: 0,
        map_revision: 0,
    };
    seeds.push(("watch".into(), with_selector(2, &watch.encode_to_vec())));

    // Responses, as a client decodes them: what the sample state answers.
    let mut d = build_sample();
    let mut responses = Vec::new();
    for op in sample_ops() {
        if let Ok(applied) = d.run(op) {
            let response = nokv_proto::convert::mutate_response(applied, LogIndex(d.index));
            responses.push(with_selector(3, &response.encode_to_vec()));
        }
    }
    responses.truncate(6);
    seeds.extend(named("mutate-response", responses));
    let holt = sample_holt();
    let answers = sample_queries().into_iter().filter_map(|q| {
        let result = holt.query(&q).ok()?;
        if matches!(q, Query::AtSnapshot { .. }) {
            return None;
        }
        let response = nokv_proto::convert::query_response(result, LogIndex(9));
        Some(with_selector(4, &response.encode_to_vec()))
    });
    seeds.extend(named("query-response", answers));
    if let Ok((events, _)) = holt.events(0, "/", true, 0) {
        let events = events.into_iter().step_by(4).map(|e| {
            let event = pb::WatchEvent::from(e);
            with_selector(5, &event.encode_to_vec())
        });
        seeds.extend(named("watch-event", events));
    }
    seeds
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn membership() -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> = [1u64, 2, 3, 4]
        .into_iter()
        .map(|id| (id, BasicNode::new(format!("10.0.0.{id}:7000"))))
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

/// Log entries `first..`: a blank one, two command batches (client ops
/// and housekeeping) and a membership change.
pub fn sample_entries(first: u64) -> Vec<Entry<TypeConfig>> {
    let mut d = Driver::new(HoltConfig::default());
    let batch = |ops: Vec<Op>, d: &mut Driver| {
        LogPayload::V1(ops.into_iter().map(|op| d.command(op)).collect())
    };
    vec![
        Entry {
            log_id: log_id(2, first),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, first + 1),
            payload: EntryPayload::Normal(batch(sample_ops(), &mut d)),
        },
        Entry {
            log_id: log_id(2, first + 2),
            payload: EntryPayload::Normal(batch(housekeeping_ops(), &mut d)),
        },
        Entry {
            log_id: log_id(3, first + 3),
            payload: EntryPayload::Membership(membership()),
        },
    ]
}

/// `log_segment` seeds: a selector byte (odd: add the header), then the
/// segment or its body.
pub fn log_segment_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let runs = [
        (Some(log_id(1, 9)), sample_entries(10)),
        (None, sample_entries(0)),
    ];
    for (i, (prev, entries)) in runs.into_iter().enumerate() {
        let Ok(segment) = nokv_meta_node::archive::encode_segment(prev, &entries) else {
            continue;
        };
        let body = segment
            .get(crate::frame::SEGMENT_HEADER_LEN..)
            .unwrap_or_default();
        seeds.push((format!("body-{i}"), with_selector(1, body)));
        seeds.push((format!("whole-{i}"), with_selector(0, &segment)));
    }
    seeds
}

/// `state_image` seeds: a selector byte (1: add a version-5 header), then
/// the image or its body.
pub fn state_image_seeds() -> Vec<(String, Vec<u8>)> {
    let fresh = Holt::new(HoltConfig::default()).encode_image();
    let sample = sample_holt().encode_image();
    let body = |image: &[u8]| {
        image
            .get(crate::frame::IMAGE_HEADER_LEN..)
            .unwrap_or_default()
            .to_vec()
    };
    vec![
        ("fresh-body".into(), with_selector(1, &body(&fresh))),
        ("fresh-whole".into(), with_selector(0, &fresh)),
        ("sample-body".into(), with_selector(1, &body(&sample))),
        ("sample-whole".into(), with_selector(0, &sample)),
    ]
}

/// `raft_message` seeds: `RaftMessage.data` of each request and response.
pub fn raft_message_seeds() -> Vec<(String, Vec<u8>)> {
    type RaftResult<T, E = openraft::error::Infallible> =
        Result<T, openraft::error::RaftError<NodeId, E>>;
    let vote = Vote::new_committed(3, 1);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(1, 9)),
        entries: sample_entries(10),
        leader_commit: Some(log_id(1, 9)),
    };
    let image = sample_holt().encode_image();
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(log_id(2, 40)),
            last_membership: StoredMembership::new(Some(log_id(1, 2)), membership()),
            snapshot_id: "2-40-1".into(),
        },
        offset: 0,
        data: image.get(..256).unwrap_or(&image).to_vec(),
        done: false,
    };
    let append_response: RaftResult<AppendEntriesResponse<NodeId>> =
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(2, 11))));
    let vote_response: RaftResult<VoteResponse<NodeId>> = Ok(VoteResponse {
        vote,
        vote_granted: true,
        last_log_id: Some(log_id(2, 11)),
    });
    let install_response: RaftResult<
        InstallSnapshotResponse<NodeId>,
        openraft::error::InstallSnapshotError,
    > = Ok(InstallSnapshotResponse { vote });
    let encode = |value: &dyn erased::Encode| value.wire();
    let values: Vec<(&str, Box<dyn erased::Encode>)> = vec![
        ("append", Box::new(append)),
        (
            "heartbeat",
            Box::new(AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            }),
        ),
        (
            "vote",
            Box::new(VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 12)))),
        ),
        ("install", Box::new(install)),
        ("append-response", Box::new(append_response)),
        ("vote-response", Box::new(vote_response)),
        ("install-response", Box::new(install_response)),
    ];
    values
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), encode(value.as_ref())?)))
        .collect()
}

/// Object-safe encoding, so the seeds of different types fit in one list.
mod erased {
    pub trait Encode {
        fn wire(&self) -> Option<Vec<u8>>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn wire(&self) -> Option<Vec<u8>> {
            nokv_meta_node::raft_wire::encode(self).ok()
        }
    }
}
