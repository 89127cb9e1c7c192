//! Model-based property tests.
//!
//! Random operation sequences run against Holt and against a deliberately
//! naive model: a `BTreeMap` from canonical path strings to nodes, where a
//! rename of a directory rewrites every key under it. After every step the
//! outcome (Ok, or which error code) and the whole tree (path → type and
//! link count) must agree. Further properties: snapshot images round-trip,
//! replaying the same commands gives byte-identical images, retried
//! requests return their first outcome, and arbitrary commands never panic.

use std::collections::BTreeMap;

use nokv_holt::{
    Applied, BlockRef, BodySpec, Command, EntryRef, FileType, FsError, Generation, Holt,
    HoltConfig, InodeId, InodeRef, LogIndex, Op, Outcome, PublishMode, Query, QueryResult,
    RenameMode, RequestId, SetAttr, ShardId, UploadId, XattrFlag,
};
use proptest::prelude::*;

// ---- generated operations ----------------------------------------------------

/// Where an operation points, before ids are known: `Child` names its
/// parent by path and is turned into an inode id just before applying.
#[derive(Clone, Debug)]
enum TEntry {
    Path(String),
    Child { parent: String, name: String },
}

/// An inode by path, or by the id that path has just before applying.
#[derive(Clone, Debug)]
enum TInode {
    Path(String),
    IdOf(String),
}

#[derive(Clone, Debug)]
enum TOp {
    Mkdir {
        at: TEntry,
        parents: bool,
    },
    Create {
        at: TEntry,
    },
    Symlink {
        at: TEntry,
        target: String,
    },
    Link {
        source: TInode,
        at: TEntry,
    },
    Unlink {
        at: TEntry,
    },
    Rmdir {
        at: TEntry,
    },
    Rename {
        from: TEntry,
        to: TEntry,
        noreplace: bool,
    },
    Truncate {
        inode: TInode,
    },
    /// Re-apply an earlier command with its request id.
    Retry {
        back: usize,
    },
}

/// Mostly the three good names, so operations collide often; sometimes an
/// invalid one.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        40 => prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
        1 => prop::sample::select(vec!["", ".", "..", "x/y", "n\0"]).prop_map(String::from),
        1 => Just("l".repeat(256)),
    ]
    .boxed()
}

/// A random absolute path of depth 0 to 3, biased towards short paths;
/// rarely relative.
fn random_path() -> BoxedStrategy<String> {
    let depth = prop_oneof![1 => Just(0usize), 4 => Just(1), 4 => Just(2), 2 => Just(3)];
    let names = depth.prop_flat_map(|depth| prop::collection::vec(name(), depth));
    (names, prop::bool::weighted(0.02))
        .prop_map(|(names, relative)| {
            let joined = names.join("/");
            if relative {
                joined
            } else {
                format!("/{joined}")
            }
        })
        .boxed()
}

/// `@k`: the k-th path that exists when the operation runs (see
/// [`Harness::concrete`]). Targeting existing entries keeps most
/// operations from failing with a dull `ENOENT`.
fn existing_path() -> BoxedStrategy<String> {
    any::<u16>().prop_map(|k| format!("@{k}")).boxed()
}

/// `@k/name`: a (probably) new name under the k-th existing path.
fn fresh_path() -> BoxedStrategy<String> {
    (any::<u16>(), name())
        .prop_map(|(k, name)| format!("@{k}/{name}"))
        .boxed()
}

fn path() -> BoxedStrategy<String> {
    prop_oneof![random_path(), existing_path(), fresh_path()].boxed()
}

fn entry() -> BoxedStrategy<TEntry> {
    prop_oneof![
        3 => path().prop_map(TEntry::Path),
        1 => (path(), name()).prop_map(|(parent, name)| TEntry::Child { parent, name }),
    ]
    .boxed()
}

/// An entry that probably exists.
fn existing_entry() -> BoxedStrategy<TEntry> {
    prop_oneof![
        3 => existing_path().prop_map(TEntry::Path),
        1 => entry(),
    ]
    .boxed()
}

/// An entry that probably does not exist yet, in a directory that does.
fn fresh_entry() -> BoxedStrategy<TEntry> {
    prop_oneof![
        3 => fresh_path().prop_map(TEntry::Path),
        1 => (existing_path(), name()).prop_map(|(parent, name)| TEntry::Child { parent, name }),
        1 => entry(),
    ]
    .boxed()
}

fn inode() -> BoxedStrategy<TInode> {
    prop_oneof![
        3 => path().prop_map(TInode::Path),
        1 => path().prop_map(TInode::IdOf),
    ]
    .boxed()
}

fn target() -> BoxedStrategy<String> {
    prop::sample::select(vec![
        "/a", "/b", "/a/b", "/c/a", "a", "b", "../a", "..", ".", "/", "b/../c", "",
    ])
    .prop_map(String::from)
    .boxed()
}

fn op() -> BoxedStrategy<TOp> {
    prop_oneof![
        3 => (fresh_entry(), prop::bool::weighted(0.3))
            .prop_map(|(at, parents)| TOp::Mkdir { at, parents }),
        3 => fresh_entry().prop_map(|at| TOp::Create { at }),
        1 => (fresh_entry(), target()).prop_map(|(at, target)| TOp::Symlink { at, target }),
        2 => (inode(), fresh_entry()).prop_map(|(source, at)| TOp::Link { source, at }),
        2 => existing_entry().prop_map(|at| TOp::Unlink { at }),
        2 => existing_entry().prop_map(|at| TOp::Rmdir { at }),
        4 => (existing_entry(), prop_oneof![fresh_entry(), existing_entry()], any::<bool>())
            .prop_map(|(from, to, noreplace)| TOp::Rename { from, to, noreplace }),
        1 => inode().prop_map(|inode| TOp::Truncate { inode }),
        1 => (0usize..8).prop_map(|back| TOp::Retry { back }),
    ]
    .boxed()
}

impl TEntry {
    fn map_paths(&self, f: &impl Fn(&str) -> String) -> TEntry {
        match self {
            TEntry::Path(path) => TEntry::Path(f(path)),
            TEntry::Child { parent, name } => TEntry::Child {
                parent: f(parent),
                name: name.clone(),
            },
        }
    }
}

impl TInode {
    fn map_paths(&self, f: &impl Fn(&str) -> String) -> TInode {
        match self {
            TInode::Path(path) => TInode::Path(f(path)),
            TInode::IdOf(path) => TInode::IdOf(f(path)),
        }
    }
}

impl TOp {
    /// The same operation with every path rewritten by `f`.
    fn map_paths(&self, f: &impl Fn(&str) -> String) -> TOp {
        match self {
            TOp::Mkdir { at, parents } => TOp::Mkdir {
                at: at.map_paths(f),
                parents: *parents,
            },
            TOp::Create { at } => TOp::Create {
                at: at.map_paths(f),
            },
            TOp::Symlink { at, target } => TOp::Symlink {
                at: at.map_paths(f),
                target: target.clone(),
            },
            TOp::Link { source, at } => TOp::Link {
                source: source.map_paths(f),
                at: at.map_paths(f),
            },
            TOp::Unlink { at } => TOp::Unlink {
                at: at.map_paths(f),
            },
            TOp::Rmdir { at } => TOp::Rmdir {
                at: at.map_paths(f),
            },
            TOp::Rename {
                from,
                to,
                noreplace,
            } => TOp::Rename {
                from: from.map_paths(f),
                to: to.map_paths(f),
                noreplace: *noreplace,
            },
            TOp::Truncate { inode } => TOp::Truncate {
                inode: inode.map_paths(f),
            },
            TOp::Retry { back } => TOp::Retry { back: *back },
        }
    }
}

// ---- the model ---------------------------------------------------------------

type Code = &'static str;

/// A non-directory has an identity so hard links can be counted.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File { id: u64 },
    Symlink { id: u64, target: String },
}

impl Node {
    fn id(&self) -> Option<u64> {
        match self {
            Node::Dir => None,
            Node::File { id } | Node::Symlink { id, .. } => Some(*id),
        }
    }
}

/// The namespace as canonical absolute paths (the root `/` is implicit).
#[derive(Clone, Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    next_id: u64,
}

enum Place {
    Root,
    Entry { parent: String, name: String },
}

impl Place {
    fn path(&self) -> String {
        match self {
            Place::Root => "/".into(),
            Place::Entry { parent, name } => join(parent, name),
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_path(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(at) => path[..at].into(),
    }
}

fn is_inside(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

fn check_name(name: &str) -> Result<(), Code> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err("EINVAL");
    }
    if name.len() > 255 {
        return Err("ENAMETOOLONG");
    }
    Ok(())
}

fn components(path: &str) -> Result<Vec<String>, Code> {
    if !path.starts_with('/') {
        return Err("EINVAL");
    }
    if path.len() > 4096 {
        return Err("ENAMETOOLONG");
    }
    if path.contains('\0') {
        return Err("EINVAL");
    }
    let mut out = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        check_name(part)?;
        out.push(part.to_string());
    }
    Ok(out)
}

fn check_entry(at: &TEntry) -> Result<(), Code> {
    match at {
        TEntry::Path(path) => components(path).map(drop),
        TEntry::Child { name, .. } => check_name(name),
    }
}

fn check_inode(inode: &TInode) -> Result<(), Code> {
    match inode {
        TInode::Path(path) => components(path).map(drop),
        TInode::IdOf(_) => Ok(()),
    }
}

fn check_target(target: &str) -> Result<(), Code> {
    match target {
        "" => Err("EINVAL"),
        t if t.len() > 4096 => Err("ENAMETOOLONG"),
        t if t.contains('\0') => Err("EINVAL"),
        _ => Ok(()),
    }
}

/// The static checks, in the order the engine runs them.
fn validate(op: &TOp) -> Result<(), Code> {
    match op {
        TOp::Mkdir { at, parents } => {
            if *parents && matches!(at, TEntry::Child { .. }) {
                return Err("EINVAL");
            }
            check_entry(at)
        }
        TOp::Create { at } | TOp::Unlink { at } | TOp::Rmdir { at } => check_entry(at),
        TOp::Symlink { at, target } => check_entry(at).and_then(|()| check_target(target)),
        TOp::Link { source, at } => check_inode(source).and_then(|()| check_entry(at)),
        TOp::Rename { from, to, .. } => check_entry(from).and_then(|()| check_entry(to)),
        TOp::Truncate { inode } => check_inode(inode),
        TOp::Retry { .. } => Ok(()),
    }
}

impl Model {
    fn node(&self, path: &str) -> Option<&Node> {
        if path == "/" {
            Some(&Node::Dir)
        } else {
            self.nodes.get(path)
        }
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        let prefix = join(dir, "");
        !self.nodes.keys().any(|key| key.starts_with(&prefix))
    }

    /// Walks `parts` from `dir`; every part must end up a directory.
    fn walk(&self, dir: &str, parts: &[String], hops: &mut u32) -> Result<String, Code> {
        let mut pending: Vec<String> = parts.iter().rev().cloned().collect();
        let mut current = dir.to_string();
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    current = parent_path(&current);
                    continue;
                }
                _ => {}
            }
            let next = join(&current, &part);
            match self.node(&next) {
                None => return Err("ENOENT"),
                Some(Node::Dir) => current = next,
                Some(Node::File { .. }) => return Err("ENOTDIR"),
                Some(Node::Symlink { target, .. }) => {
                    *hops += 1;
                    if *hops > 40 {
                        return Err("ELOOP");
                    }
                    if target.starts_with('/') {
                        current = "/".into();
                    }
                    pending.extend(target.split('/').rev().map(String::from));
                }
            }
        }
        Ok(current)
    }

    fn place_path(&self, path: &str) -> Result<Place, Code> {
        let parts = components(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Ok(Place::Root);
        };
        let parent = self.walk("/", dirs, &mut 0)?;
        Ok(Place::Entry {
            parent,
            name: name.clone(),
        })
    }

    /// The canonical path of an existing inode given by path (final symlink
    /// not followed).
    fn lookup(&self, path: &str) -> Result<String, Code> {
        let found = self.place_path(path)?.path();
        self.node(&found).map(|_| found).ok_or("ENOENT")
    }

    fn place(&self, at: &TEntry) -> Result<Place, Code> {
        match at {
            TEntry::Path(path) => self.place_path(path),
            TEntry::Child { parent, name } => {
                check_name(name)?;
                // The harness turned `parent` into an id; a path that did not
                // resolve became an unknown id.
                let dir = self.lookup(parent).map_err(|_| "ENOENT")?;
                match self.node(&dir) {
                    Some(Node::Dir) => Ok(Place::Entry {
                        parent: dir,
                        name: name.clone(),
                    }),
                    _ => Err("ENOTDIR"),
                }
            }
        }
    }

    fn inode(&self, inode: &TInode) -> Result<String, Code> {
        match inode {
            TInode::Path(path) => self.lookup(path),
            TInode::IdOf(path) => self.lookup(path).map_err(|_| "ENOENT"),
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Applies `op`; on error nothing changes.
    fn apply(&mut self, op: &TOp) -> Result<(), Code> {
        validate(op)?;
        match op {
            TOp::Mkdir { at, parents: false } => self.add(at, Node::Dir),
            TOp::Mkdir { at, parents: true } => match at {
                TEntry::Path(path) => self.mkdir_parents(path),
                TEntry::Child { .. } => Err("EINVAL"),
            },
            TOp::Create { at } => {
                let id = self.new_id();
                self.add(at, Node::File { id })
            }
            TOp::Symlink { at, target } => {
                let id = self.new_id();
                let target = target.clone();
                self.add(at, Node::Symlink { id, target })
            }
            TOp::Link { source, at } => self.link(source, at),
            TOp::Unlink { at } => self.unlink(at),
            TOp::Rmdir { at } => self.rmdir(at),
            TOp::Rename {
                from,
                to,
                noreplace,
            } => self.rename(from, to, *noreplace),
            TOp::Truncate { inode } => match self.node(&self.inode(inode)?) {
                Some(Node::Dir) => Err("EISDIR"),
                Some(Node::Symlink { .. }) => Err("EINVAL"),
                _ => Ok(()),
            },
            TOp::Retry { .. } => Ok(()),
        }
    }

    fn add(&mut self, at: &TEntry, node: Node) -> Result<(), Code> {
        let path = match self.place(at)? {
            Place::Root => return Err("EEXIST"),
            place => place.path(),
        };
        if self.node(&path).is_some() {
            return Err("EEXIST");
        }
        self.nodes.insert(path, node);
        Ok(())
    }

    fn mkdir_parents(&mut self, path: &str) -> Result<(), Code> {
        let parts = components(path)?;
        let mut dir = "/".to_string();
        let mut hops = 0;
        for (i, part) in parts.iter().enumerate() {
            let next = join(&dir, part);
            match self.node(&next) {
                None => {
                    for missing in &parts[i..] {
                        dir = join(&dir, missing);
                        self.nodes.insert(dir.clone(), Node::Dir);
                    }
                    return Ok(());
                }
                Some(node) if i + 1 == parts.len() => {
                    return if *node == Node::Dir {
                        Ok(())
                    } else {
                        Err("EEXIST")
                    };
                }
                Some(_) => dir = self.walk(&dir, std::slice::from_ref(part), &mut hops)?,
            }
        }
        Ok(())
    }

    fn link(&mut self, source: &TInode, at: &TEntry) -> Result<(), Code> {
        let source = self.inode(source)?;
        let node = self.node(&source).cloned().ok_or("ENOENT")?;
        if node == Node::Dir {
            return Err("EPERM");
        }
        self.add(at, node)
    }

    fn unlink(&mut self, at: &TEntry) -> Result<(), Code> {
        let path = match self.place(at)? {
            Place::Root => return Err("EISDIR"),
            place => place.path(),
        };
        match self.node(&path) {
            None => Err("ENOENT"),
            Some(Node::Dir) => Err("EISDIR"),
            Some(_) => {
                self.nodes.remove(&path);
                Ok(())
            }
        }
    }

    fn rmdir(&mut self, at: &TEntry) -> Result<(), Code> {
        let path = match self.place(at)? {
            Place::Root => return Err("EPERM"),
            place => place.path(),
        };
        match self.node(&path) {
            None => Err("ENOENT"),
            Some(Node::Dir) if !self.is_empty_dir(&path) => Err("ENOTEMPTY"),
            Some(Node::Dir) => {
                self.nodes.remove(&path);
                Ok(())
            }
            Some(_) => Err("ENOTDIR"),
        }
    }

    fn rename(&mut self, from: &TEntry, to: &TEntry, noreplace: bool) -> Result<(), Code> {
        let source = match self.place(from)? {
            Place::Root => return Err("EINVAL"),
            place => place.path(),
        };
        let node = self.node(&source).cloned().ok_or("ENOENT")?;
        let (dest_parent, dest) = match self.place(to)? {
            Place::Root => return Err("EINVAL"),
            Place::Entry { parent, name } => {
                let dest = join(&parent, &name);
                (parent, dest)
            }
        };
        if node == Node::Dir && is_inside(&dest_parent, &source) {
            return Err("EINVAL");
        }
        if source == dest {
            return Ok(());
        }
        if let Some(existing) = self.node(&dest) {
            if noreplace {
                return Err("EEXIST");
            }
            if existing.id().is_some() && existing.id() == node.id() {
                return Ok(());
            }
            match (&node, existing) {
                (Node::Dir, Node::Dir) if !self.is_empty_dir(&dest) => return Err("ENOTEMPTY"),
                (Node::Dir, Node::Dir) => {}
                (Node::Dir, _) => return Err("ENOTDIR"),
                (_, Node::Dir) => return Err("EISDIR"),
                _ => {}
            }
        }
        self.nodes.remove(&dest);
        let moved: Vec<String> = self
            .nodes
            .keys()
            .filter(|key| is_inside(key, &source))
            .cloned()
            .collect();
        for old in moved {
            if let Some(node) = self.nodes.remove(&old) {
                let new = format!("{dest}{}", &old[source.len()..]);
                self.nodes.insert(new, node);
            }
        }
        Ok(())
    }

    /// path → (type, nlink), root included.
    fn tree(&self) -> BTreeMap<String, (FileType, u32)> {
        let mut links: BTreeMap<u64, u32> = BTreeMap::new();
        for id in self.nodes.values().filter_map(Node::id) {
            *links.entry(id).or_default() += 1;
        }
        let subdirs = |dir: &str| {
            self.nodes
                .iter()
                .filter(|(path, node)| **node == Node::Dir && parent_path(path) == dir)
                .count() as u32
        };
        let mut tree = BTreeMap::from([("/".to_string(), (FileType::Directory, 2 + subdirs("/")))]);
        for (path, node) in &self.nodes {
            let entry = match node {
                Node::Dir => (FileType::Directory, 2 + subdirs(path)),
                Node::File { id } => (FileType::File, links[id]),
                Node::Symlink { id, .. } => (FileType::Symlink, links[id]),
            };
            tree.insert(path.clone(), entry);
        }
        tree
    }
}

// ---- the harness ---------------------------------------------------------------

fn unknown_inode() -> InodeId {
    InodeId::compose(ShardId(0), 0xDEAD_BEEF)
}

fn code(outcome: &Outcome) -> Result<(), Code> {
    outcome.as_ref().map(drop).map_err(FsError::code)
}

struct Harness {
    holt: Holt,
    model: Model,
    /// Every command applied, with its outcome, in order.
    log: Vec<(Command, Outcome)>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            holt: Holt::new(HoltConfig::default()),
            model: Model::default(),
            log: Vec::new(),
        }
    }

    fn id_of(&self, path: &str) -> InodeId {
        match self.holt.query(&Query::GetAttr {
            inode: InodeRef::Path(path.into()),
        }) {
            Ok(QueryResult::Attr(attr)) => attr.inode,
            _ => unknown_inode(),
        }
    }

    fn entry(&self, at: &TEntry) -> EntryRef {
        match at {
            TEntry::Path(path) => EntryRef::Path(path.clone()),
            TEntry::Child { parent, name } => EntryRef::Child {
                parent: self.id_of(parent),
                name: name.clone(),
            },
        }
    }

    fn inode(&self, inode: &TInode) -> InodeRef {
        match inode {
            TInode::Path(path) => InodeRef::Path(path.clone()),
            TInode::IdOf(path) => InodeRef::Id(self.id_of(path)),
        }
    }

    fn to_op(&self, op: &TOp) -> Option<Op> {
        let mode = 0o755;
        Some(match op {
            TOp::Mkdir { at, parents } => Op::Mkdir {
                at: self.entry(at),
                mode,
                uid: 1,
                gid: 1,
                parents: *parents,
            },
            TOp::Create { at } => Op::Create {
                at: self.entry(at),
                mode,
                uid: 1,
                gid: 1,
            },
            TOp::Symlink { at, target } => Op::Symlink {
                at: self.entry(at),
                target: target.clone(),
                uid: 1,
                gid: 1,
            },
            TOp::Link { source, at } => Op::Link {
                inode: self.inode(source),
                at: self.entry(at),
            },
            TOp::Unlink { at } => Op::Unlink { at: self.entry(at) },
            TOp::Rmdir { at } => Op::Rmdir { at: self.entry(at) },
            TOp::Rename {
                from,
                to,
                noreplace,
            } => Op::Rename {
                from: self.entry(from),
                to: self.entry(to),
                mode: if *noreplace {
                    RenameMode::NoReplace
                } else {
                    RenameMode::Replace
                },
            },
            TOp::Truncate { inode } => Op::SetAttr {
                inode: self.inode(inode),
                set: SetAttr {
                    size: Some(7),
                    ..SetAttr::default()
                },
            },
            TOp::Retry { .. } => return None,
        })
    }

    /// Replaces an `@k[/name]` path by the k-th existing path (in the
    /// model, which the engine is checked to agree with) plus `name`.
    fn concrete(&self, path: &str) -> String {
        let Some(spec) = path.strip_prefix('@') else {
            return path.to_string();
        };
        let (k, child) = match spec.split_once('/') {
            Some((k, child)) => (k, Some(child)),
            None => (spec, None),
        };
        let existing: Vec<&str> = std::iter::once("/")
            .chain(self.model.nodes.keys().map(String::as_str))
            .collect();
        let k: usize = k.parse().unwrap_or(0);
        let base = existing[k % existing.len()];
        match child {
            Some(child) => join(base, child),
            None => base.to_string(),
        }
    }

    fn next_index(&self) -> LogIndex {
        LogIndex(self.log.len() as u64 + 1)
    }

    fn step(&mut self, op: &TOp) -> Result<(), TestCaseError> {
        let op = &op.map_paths(&|path: &str| self.concrete(path));
        match self.to_op(op) {
            Some(engine_op) => {
                let cmd = Command {
                    request_id: RequestId(self.log.len() as u128 + 1),
                    epoch: None,
                    time_ns: self.log.len() as u64 * 10,
                    op: engine_op,
                };
                let outcome = self.holt.apply(self.next_index(), &cmd);
                let expected = self.model.apply(op);
                prop_assert_eq!(code(&outcome), expected, "op {:?} -> {:?}", cmd.op, outcome);
                // A returned inode was just written, except the existing
                // directory that `mkdir -p` accepts as it is.
                let accepts_existing = matches!(op, TOp::Mkdir { parents: true, .. });
                if let (Ok(Applied::Attr(attr)), false) = (&outcome, accepts_existing) {
                    prop_assert_eq!(attr.version, self.next_index());
                }
                self.log.push((cmd, outcome));
            }
            None => {
                let TOp::Retry { back } = op else {
                    return Ok(());
                };
                let Some(position) = self.log.len().checked_sub(1 + back % 8) else {
                    return Ok(());
                };
                let (cmd, first) = self.log[position].clone();
                let before = self.holt.stats();
                let outcome = self.holt.apply(self.next_index(), &cmd);
                prop_assert_eq!(&outcome, &first, "retry of {:?}", cmd.op);
                // Nothing but last_applied moves; the tree is compared below.
                let after = self.holt.stats();
                prop_assert_eq!(
                    (before.inodes, before.dentries, before.next_inode),
                    (after.inodes, after.dentries, after.next_inode)
                );
                self.log.push((cmd, outcome));
            }
        }
        prop_assert_eq!(list(&self.holt), self.model.tree());
        Ok(())
    }
}

/// The whole tree as the engine reports it, read with small pages so that
/// the readdir cursor is exercised.
fn list(holt: &Holt) -> BTreeMap<String, (FileType, u32)> {
    let mut tree = BTreeMap::new();
    let root = InodeId::root(holt.shard());
    let Ok(QueryResult::Attr(root_attr)) = holt.query(&Query::GetAttr {
        inode: InodeRef::Id(root),
    }) else {
        return tree;
    };
    tree.insert("/".to_string(), (FileType::Directory, root_attr.nlink));
    let mut pending = vec![(root, "/".to_string())];
    while let Some((dir, dir_path)) = pending.pop() {
        let mut after = None;
        loop {
            let page = holt.query(&Query::ReadDir {
                dir: InodeRef::Id(dir),
                after: after.clone(),
                limit: 2,
            });
            let Ok(QueryResult::Dir { entries, next }) = page else {
                break;
            };
            for entry in entries {
                let path = join(&dir_path, &entry.name);
                if entry.attr.file_type == FileType::Directory {
                    pending.push((entry.attr.inode, path.clone()));
                }
                tree.insert(path, (entry.attr.file_type, entry.attr.nlink));
            }
            match next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Holt agrees with the model step by step; the final state survives an
    /// image round trip; replaying the log elsewhere gives identical bytes.
    #[test]
    fn holt_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
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

// ---- arbitrary commands never panic ------------------------------------------------

fn wild_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[/a.\\x00]{0,10}",
        "/[ab/]{0,8}",
        ".{0,20}",
        Just("/".repeat(5000)),
        Just(format!("/{}", "x".repeat(300))),
    ]
}

fn wild_id() -> impl Strategy<Value = InodeId> {
    prop_oneof![
        (0u64..12).prop_map(|local| InodeId::compose(ShardId(0), local)),
        (0u16..4).prop_map(|shard| InodeId::root(ShardId(shard))),
        any::<u64>().prop_map(InodeId),
    ]
}

fn wild_entry() -> impl Strategy<Value = EntryRef> {
    prop_oneof![
        wild_string().prop_map(EntryRef::Path),
        (wild_id(), wild_string()).prop_map(|(parent, name)| EntryRef::Child { parent, name }),
    ]
}

fn wild_inode() -> impl Strategy<Value = InodeRef> {
    prop_oneof![
        wild_string().prop_map(InodeRef::Path),
        wild_id().prop_map(InodeRef::Id),
    ]
}

/// Boxed halves: one flat `prop_oneof!` over every op nests deep enough to
/// overflow a test thread's stack in debug builds.
fn wild_op() -> BoxedStrategy<Op> {
    prop_oneof![
        3 => wild_namespace_op().boxed(),
        1 => wild_publish_op().boxed(),
        1 => wild_graft_op().boxed(),
    ]
    .boxed()
}

/// Graft ops, mostly on a few shards (0 is the engine's own) so that they
/// collide with each other and with the namespace ops around them.
fn wild_graft_op() -> impl Strategy<Value = Op> {
    let shard = prop_oneof![
        4 => (0u16..4).prop_map(ShardId),
        1 => any::<u16>().prop_map(ShardId),
    ];
    (wild_entry(), shard, any::<bool>()).prop_map(|(at, shard, create)| {
        if create {
            Op::CreateGraft { at, shard }
        } else {
            Op::RemoveGraft { at, shard }
        }
    })
}

fn wild_upload() -> impl Strategy<Value = UploadId> {
    prop_oneof![
        (0u64..5).prop_map(UploadId),
        any::<u64>().prop_map(UploadId)
    ]
}

/// Bodies that are sometimes valid (keys under a plausible prefix, sizes
/// adding up) and sometimes anything at all.
fn wild_body() -> BoxedStrategy<BodySpec> {
    let key = prop_oneof![
        (0u64..6, 0u64..4, "[a-z]{1,3}")
            .prop_map(|(inode, generation, tail)| format!("blocks/0/{inode}/{generation}/{tail}")),
        wild_string(),
    ];
    let sha = prop_oneof![Just("ab".repeat(32)), wild_string()];
    (
        prop::collection::vec((key, 0u64..4), 0..4),
        prop::option::of(any::<u64>()),
        sha,
        prop::collection::btree_map(wild_string(), wild_string(), 0..3),
    )
        .prop_map(|(blocks, size, sha256, attrs)| {
            let blocks: Vec<BlockRef> = blocks
                .into_iter()
                .map(|(key, size)| BlockRef { key, size })
                .collect();
            BodySpec {
                size: size.unwrap_or_else(|| blocks.iter().map(|b| b.size).sum()),
                blocks,
                sha256,
                content_type: String::new(),
                producer: String::new(),
                attrs,
            }
        })
        .boxed()
}

fn wild_publish_op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(PublishMode::CreateOnly),
        Just(PublishMode::Upsert),
        (0u64..4).prop_map(|g| PublishMode::Replace {
            expected: Generation(g)
        }),
    ];
    let lease = prop_oneof![1u64..1000, any::<u64>()];
    prop_oneof![
        (wild_entry(), mode, lease.clone(), any::<u32>()).prop_map(
            |(at, mode, lease_ns, file_mode)| Op::BeginPublish {
                at,
                mode,
                lease_ns,
                file_mode,
                uid: 0,
                gid: 0
            }
        ),
        (wild_upload(), wild_body()).prop_map(|(upload, body)| Op::CommitPublish { upload, body }),
        prop::collection::vec((wild_upload(), wild_body()), 0..3)
            .prop_map(|commits| Op::CommitPublishBatch { commits }),
        wild_upload().prop_map(|upload| Op::AbortPublish { upload }),
        (wild_upload(), lease).prop_map(|(upload, lease_ns)| Op::RenewUpload { upload, lease_ns }),
        any::<u64>().prop_map(|now_ns| Op::ExpireUploads { now_ns }),
        prop::collection::vec(0u64..6, 0..3).prop_map(|seqs| Op::GcDone { seqs }),
    ]
}

fn wild_namespace_op() -> impl Strategy<Value = Op> {
    let flag = prop::sample::select(vec![
        XattrFlag::Upsert,
        XattrFlag::Create,
        XattrFlag::Replace,
    ]);
    let rename_mode = prop::sample::select(vec![RenameMode::Replace, RenameMode::NoReplace]);
    prop_oneof![
        (wild_entry(), any::<u32>(), any::<bool>()).prop_map(|(at, mode, parents)| Op::Mkdir {
            at,
            mode,
            uid: 0,
            gid: 0,
            parents
        }),
        (wild_entry(), any::<u32>()).prop_map(|(at, mode)| Op::Create {
            at,
            mode,
            uid: 0,
            gid: 0
        }),
        (wild_entry(), wild_string()).prop_map(|(at, target)| Op::Symlink {
            at,
            target,
            uid: 0,
            gid: 0
        }),
        (wild_inode(), wild_entry()).prop_map(|(inode, at)| Op::Link { inode, at }),
        wild_entry().prop_map(|at| Op::Unlink { at }),
        wild_entry().prop_map(|at| Op::Rmdir { at }),
        (wild_entry(), wild_entry(), rename_mode).prop_map(|(from, to, mode)| Op::Rename {
            from,
            to,
            mode
        }),
        (
            wild_inode(),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            any::<Option<u64>>()
        )
            .prop_map(|(inode, mode, size, mtime_ns)| Op::SetAttr {
                inode,
                set: SetAttr {
                    mode,
                    uid: None,
                    gid: None,
                    size,
                    mtime_ns
                },
            }),
        (
            wild_inode(),
            wild_string(),
            prop::collection::vec(any::<u8>(), 0..4),
            flag
        )
            .prop_map(|(inode, name, value, flag)| Op::SetXattr {
                inode,
                name,
                value,
                flag
            }),
        (wild_inode(), wild_string()).prop_map(|(inode, name)| Op::RemoveXattr { inode, name }),
    ]
}

fn wild_command() -> impl Strategy<Value = Command> {
    (0u128..6, prop::option::of(0u64..3), any::<u64>(), wild_op()).prop_map(
        |(request, epoch, time_ns, op)| Command {
            request_id: RequestId(request),
            epoch: epoch.map(nokv_holt::Epoch),
            time_ns,
            op,
        },
    )
}

fn wild_query() -> impl Strategy<Value = Query> {
    prop_oneof![
        (wild_id(), wild_string()).prop_map(|(parent, name)| Query::Lookup { parent, name }),
        wild_inode().prop_map(|inode| Query::GetAttr { inode }),
        (wild_inode(), prop::option::of(wild_string()), any::<u32>())
            .prop_map(|(dir, after, limit)| Query::ReadDir { dir, after, limit }),
        wild_inode().prop_map(|inode| Query::ReadLink { inode }),
        (wild_inode(), wild_string()).prop_map(|(inode, name)| Query::GetXattr { inode, name }),
        wild_inode().prop_map(|inode| Query::ListXattr { inode }),
        wild_inode().prop_map(|inode| Query::ReadBody { inode }),
        Just(Query::ListUploads),
        Just(Query::Grafts),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Arbitrary commands and queries never panic, and whatever state they
    /// produce is a valid image that round-trips.
    #[test]
    fn arbitrary_commands_never_panic(
        commands in prop::collection::vec(wild_command(), 1..40),
        queries in prop::collection::vec(wild_query(), 0..20),
    ) {
        let mut holt = Holt::new(HoltConfig { shard: ShardId(0), dedupe_capacity: 3 });
        for (index, cmd) in commands.iter().enumerate() {
            let _ = holt.apply(LogIndex(index as u64 + 1), cmd);
            let _ = Holt::validate_command(cmd);
        }
        for query in &queries {
            let _ = holt.query(query);
        }
        let decoded = Holt::decode_image(&holt.encode_image()).map_err(|e| e.to_string());
        prop_assert_eq!(decoded, Ok(holt));
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn arbitrary_images_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Holt::decode_image(&bytes);
        let mut framed = b"NOKVHOLT".to_vec();
        framed.extend_from_slice(&Holt::image_version().to_le_bytes());
        framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        framed.extend_from_slice(&crc32fast_free_crc(&bytes).to_le_bytes());
        framed.extend_from_slice(&bytes);
        let _ = Holt::decode_image(&framed);
    }
}

/// CRC-32 (IEEE), computed bitwise: the integration test has no crc32fast
/// dependency, and a framed body must pass the checksum to reach bincode.
fn crc32fast_free_crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}
