//! The snapshot image codec: the whole engine state as one byte string.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field                                   |
//! |-------|-----------------------------------------|
//! | 8     | magic `NOKVHOLT`                        |
//! | 4     | format version ([`IMAGE_VERSION`])      |
//! | 8     | body length                             |
//! | 4     | CRC-32 (crc32fast) of the body          |
//! | n     | body: bincode 1.3 of the private state  |
//!
//! Bincode runs with fixed-width integers and a size limit equal to the
//! body length, so a corrupt length prefix inside the body fails cleanly
//! instead of attempting a huge allocation. Maps are written in key order
//! and the dedupe table in eviction order, so equal states encode to equal
//! bytes: replicas can compare snapshots byte for byte.
//!
//! Version history: 1 had no bodies; 2 adds per-file bodies, staged
//! uploads, the generation/upload counters and the GC queue; 3 adds
//! snapshot pins and the body each GC task belongs to; 4 appends the graft
//! registries (the current namespace's, then each pin's, in pin order)
//! after the version-3 body, and its dentries may point to other shards'
//! roots (graft points), which a version-3 reader would wrongly call
//! corrupt. 5 appends the field sets of indexed bodies (the current
//! namespace's, then each pin's as a difference, like the pins' inodes);
//! the field index and the reverse links are derived and rebuilt when an
//! image is read. 6 appends the access tokens (shard 0's; see
//! [`crate::auth`]): id, role, hash of the secret, label, creation time,
//! in id order. Versions 1 and 2 were never deployed, so they are
//! rejected as unsupported rather than migrated; versions 3 (no grafts)
//! and 4 (no field sets: every body reads as unindexed) and 5 (no
//! tokens) are still read.
//!
//! A pin is written as its difference from the current namespace (the
//! keys whose value differs, with the pinned value or "absent"), found by
//! a diff of the persistent maps that skips shared subtrees; decoding
//! rebuilds it from a clone of the current namespace. An image therefore
//! grows with what changed since each pin, not with the number of pins
//! times the namespace.
//!
//! Decoding never panics: every malformed input maps to an [`ImageError`],
//! and a well-formed body must also pass the engine's structural checks.

use std::collections::BTreeMap;

use bincode::Options;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::auth::TokenRecord;
use crate::body::{GcTask, UploadId};
use crate::engine::{
    reverse_links, DentryMap, Holt, InodeMap, InodeRecord, LabelPool, Name, Namespace, Outcome,
    Pin, Staged,
};
use crate::error::ImageError;
use crate::fields::FieldSet;
use crate::graft::GraftPoint;
use crate::snapshot::SnapshotInfo;
use crate::types::{Epoch, InodeId, LogIndex, RequestId, ShardId};
use crate::watch::{Event, WatchRetention};

/// First bytes of every image.
pub const IMAGE_MAGIC: [u8; 8] = *b"NOKVHOLT";
/// The image format this build writes.
pub const IMAGE_VERSION: u32 = 6;
/// Older formats this build still reads: version 3, without grafts, and
/// version 4, without field sets.
pub const IMAGE_VERSION_V3: u32 = 3;
pub const IMAGE_VERSION_V4: u32 = 4;
/// Version 5, without tokens.
pub const IMAGE_VERSION_V5: u32 = 5;
/// Magic, version, body length, checksum.
const HEADER_LEN: usize = 8 + 4 + 8 + 4;

/// Largest value a decoded allocation counter (GC tasks, snapshots, events,
/// uploads, generations) may have. No history allocates 2^62 of anything,
/// so an image claiming more is corrupt; refusing it keeps the engine's
/// saturating counters from ever reaching `u64::MAX`, where they would
/// hand out one id twice. Found by the `state_image` fuzz target.
pub const MAX_IMAGE_COUNTER: u64 = 1 << 62;

/// The image format version this build writes.
pub fn image_version() -> u32 {
    IMAGE_VERSION
}

/// The body as written: borrows the state, so encoding copies nothing but
/// the output. Field order and types must match [`ImageBody`] exactly.
#[derive(Serialize)]
struct ImageBodyRef<'a> {
    shard: ShardId,
    dedupe_capacity: u64,
    epoch: Epoch,
    last_applied: LogIndex,
    next_local: u64,
    inodes: Vec<(InodeId, &'a InodeRecord)>,
    dentries: Vec<(&'a (InodeId, Name), &'a InodeId)>,
    /// Oldest first, so decoding restores the eviction order.
    dedupe: Vec<(&'a RequestId, &'a Outcome)>,
    next_upload: u64,
    next_generation: u64,
    next_gc_seq: u64,
    staged: Vec<(&'a UploadId, &'a Staged)>,
    gc: Vec<(&'a u64, &'a GcTask)>,
    next_snapshot: u64,
    pins: Vec<PinImage>,
    next_event: u64,
    retention: WatchRetention,
    events: Vec<&'a Event>,
}

/// The version-4 tail: graft registries in key order, the current
/// namespace's and then one per pin, in the order of `pins`.
#[derive(Serialize)]
struct GraftsImageRef<'a> {
    current: Vec<(&'a ShardId, &'a GraftPoint)>,
    pins: Vec<Vec<(&'a ShardId, &'a GraftPoint)>>,
}

/// [`GraftsImageRef`] as read; empty registries for a version-3 image.
#[derive(Deserialize)]
struct GraftsImage {
    current: Vec<(ShardId, GraftPoint)>,
    pins: Vec<Vec<(ShardId, GraftPoint)>>,
}

/// The version-5 tail: field sets in inode order, the current
/// namespace's and then each pin's difference from it, in pin order.
#[derive(Serialize)]
struct FieldsImageRef<'a> {
    current: Vec<(&'a InodeId, &'a FieldSet)>,
    pins: Vec<Vec<(InodeId, Option<FieldSet>)>>,
}

/// [`FieldsImageRef`] as read; empty for older images.
#[derive(Deserialize)]
struct FieldsImage {
    current: Vec<(InodeId, FieldSet)>,
    pins: Vec<Vec<(InodeId, Option<FieldSet>)>>,
}

/// The version-6 tail: the access tokens in id order.
type TokensImageRef<'a> = Vec<(&'a u64, &'a TokenRecord)>;

/// [`TokensImageRef`] as read; empty for older images.
type TokensImage = Vec<(u64, TokenRecord)>;

/// One pin: its description and how its namespace differs from the
/// current one (for each differing key, in key order, the pinned value or
/// `None` when the key did not exist at the pin).
#[derive(Serialize, Deserialize)]
struct PinImage {
    info: SnapshotInfo,
    inodes: Vec<(InodeId, Option<InodeRecord>)>,
    dentries: Vec<((InodeId, Name), Option<InodeId>)>,
}

/// `pinned` described as changes to `current`.
fn diff_to<K: Ord + Clone, V: Clone + PartialEq>(
    current: &OrdMap<K, V>,
    pinned: &OrdMap<K, V>,
) -> Vec<(K, Option<V>)> {
    crate::engine::diff_sorted(current.iter(), pinned.iter(), |a, b| a == b)
        .into_iter()
        .map(|(k, _, v)| (k.clone(), v.cloned()))
        .collect()
}

/// A persistent map a pin's changes are applied to.
trait Patch<K, V>: Clone {
    fn put(&mut self, key: K, value: V);
    fn take(&mut self, key: &K);
}

impl<K: Ord + Clone, V: Clone> Patch<K, V> for OrdMap<K, V> {
    fn put(&mut self, key: K, value: V) {
        self.insert(key, value);
    }

    fn take(&mut self, key: &K) {
        self.remove(key);
    }
}

impl<V: Clone> Patch<InodeId, V> for InodeMap<V> {
    fn put(&mut self, key: InodeId, value: V) {
        self.insert(key, value);
    }

    fn take(&mut self, key: &InodeId) {
        self.remove(key);
    }
}

impl Patch<(InodeId, Name), InodeId> for DentryMap {
    fn put(&mut self, key: (InodeId, Name), value: InodeId) {
        self.insert(key, value);
    }

    fn take(&mut self, key: &(InodeId, Name)) {
        self.remove(key);
    }
}

/// `current` with `changes` (strictly increasing keys) applied.
fn apply_diff<K: Ord, V, M: Patch<K, V>>(
    current: &M,
    changes: Vec<(K, Option<V>)>,
    what: &str,
) -> Result<M, String> {
    if changes
        .windows(2)
        .any(|pair| matches!(pair, [a, b] if a.0 >= b.0))
    {
        return Err(format!("{what} are not in strictly increasing key order"));
    }
    let mut map = current.clone();
    for (k, v) in changes {
        match v {
            Some(v) => map.put(k, v),
            None => map.take(&k),
        }
    }
    Ok(map)
}

/// The body as read. Sequences rather than maps so that duplicate or
/// unsorted keys are detected instead of silently merged.
#[derive(Deserialize)]
struct ImageBody {
    shard: ShardId,
    dedupe_capacity: u64,
    epoch: Epoch,
    last_applied: LogIndex,
    next_local: u64,
    inodes: Vec<(InodeId, InodeRecord)>,
    dentries: Vec<((InodeId, Name), InodeId)>,
    dedupe: Vec<(RequestId, Outcome)>,
    next_upload: u64,
    next_generation: u64,
    next_gc_seq: u64,
    staged: Vec<(UploadId, Staged)>,
    gc: Vec<(u64, GcTask)>,
    next_snapshot: u64,
    pins: Vec<PinImage>,
    next_event: u64,
    retention: WatchRetention,
    events: Vec<Event>,
}

fn body_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

impl Holt {
    /// The image format version this build writes.
    pub fn image_version() -> u32 {
        IMAGE_VERSION
    }

    /// Encodes the complete state. Deterministic: equal states give equal bytes.
    ///
    /// Written in place after its header (whose length and checksum are
    /// filled in last), so that encoding needs one image's worth of memory,
    /// not two: a snapshot of a large state is hundreds of megabytes.
    pub fn encode_image(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail: there is no size
        // limit, no I/O, and every sequence has a known length. A tuple is
        // its fields in order, so the version-3 body is a prefix.
        let parts = (
            self.image_body(),
            self.image_grafts(),
            self.image_fields(),
            self.tokens.iter().collect::<TokensImageRef<'_>>(),
        );
        let len = body_options()
            .serialized_size(&parts)
            .expect("sizing the state in memory is infallible");
        let mut image = Vec::with_capacity(HEADER_LEN + usize::try_from(len).unwrap_or(0));
        image.extend_from_slice(&IMAGE_MAGIC);
        image.extend_from_slice(&IMAGE_VERSION.to_le_bytes());
        image.extend_from_slice(&len.to_le_bytes());
        image.extend_from_slice(&[0; 4]); // the checksum, once the body is there
        body_options()
            .serialize_into(&mut image, &parts)
            .expect("serializing the state into memory is infallible");
        let crc = crc32fast::hash(&image[HEADER_LEN..]);
        image[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        image
    }

    /// Decodes an image written by [`Holt::encode_image`]. Never panics.
    pub fn decode_image(bytes: &[u8]) -> Result<Holt, ImageError> {
        let (version, body) = split_header(bytes)?;
        let options = body_options().with_limit(body.len() as u64);
        let corrupt = |e: bincode::Error| ImageError::Corrupt(e.to_string());
        let no_fields = |pins: usize| FieldsImage {
            current: Vec::new(),
            pins: (0..pins).map(|_| Vec::new()).collect(),
        };
        let (decoded, grafts, fields, tokens): (ImageBody, GraftsImage, FieldsImage, TokensImage) =
            match version {
                IMAGE_VERSION_V3 => {
                    let decoded: ImageBody = options.deserialize(body).map_err(corrupt)?;
                    let grafts = GraftsImage {
                        current: Vec::new(),
                        pins: decoded.pins.iter().map(|_| Vec::new()).collect(),
                    };
                    let fields = no_fields(decoded.pins.len());
                    (decoded, grafts, fields, Vec::new())
                }
                IMAGE_VERSION_V4 => {
                    let (decoded, grafts): (ImageBody, GraftsImage) =
                        options.deserialize(body).map_err(corrupt)?;
                    let fields = no_fields(decoded.pins.len());
                    (decoded, grafts, fields, Vec::new())
                }
                IMAGE_VERSION_V5 => {
                    let (decoded, grafts, fields): (ImageBody, GraftsImage, FieldsImage) =
                        options.deserialize(body).map_err(corrupt)?;
                    (decoded, grafts, fields, Vec::new())
                }
                _ => options.deserialize(body).map_err(corrupt)?,
            };
        let holt = decoded
            .into_holt(grafts, fields, tokens)
            .map_err(ImageError::Corrupt)?;
        holt.check_invariants().map_err(ImageError::Corrupt)?;
        Ok(holt)
    }
}

impl Holt {
    /// The version-3 part of the body.
    fn image_body(&self) -> ImageBodyRef<'_> {
        ImageBodyRef {
            shard: self.shard,
            dedupe_capacity: self.dedupe_capacity as u64,
            epoch: self.epoch,
            last_applied: self.last_applied,
            next_local: self.next_local,
            inodes: self.inodes.iter().collect(),
            dentries: self.dentries.iter().collect(),
            dedupe: self
                .dedupe_order
                .iter()
                .filter_map(|id| self.dedupe.get_key_value(id))
                .map(|(id, outcome)| (id, &**outcome))
                .collect(),
            next_upload: self.next_upload,
            next_generation: self.next_generation,
            next_gc_seq: self.next_gc_seq,
            staged: self.staged.iter().collect(),
            gc: self.gc.iter().collect(),
            next_snapshot: self.next_snapshot,
            pins: self
                .snapshots
                .values()
                .map(|pin| PinImage {
                    info: pin.info.clone(),
                    inodes: self.inodes.diff_to(&pin.ns.inodes),
                    dentries: self.dentries.diff_to(&pin.ns.dentries),
                })
                .collect(),
            next_event: self.next_event,
            retention: self.retention,
            events: self.events.iter().collect(),
        }
    }

    /// The version-5 tail: the field sets.
    fn image_fields(&self) -> FieldsImageRef<'_> {
        FieldsImageRef {
            current: self.fields.iter().collect(),
            pins: self
                .snapshots
                .values()
                .map(|pin| diff_to(&self.fields, &pin.ns.fields))
                .collect(),
        }
    }

    /// The version-4 tail: the graft registries.
    fn image_grafts(&self) -> GraftsImageRef<'_> {
        GraftsImageRef {
            current: self.grafts.iter().collect(),
            pins: self
                .snapshots
                .values()
                .map(|pin| pin.ns.grafts.iter().collect())
                .collect(),
        }
    }
}

/// Checks the header and returns the format version and the checksummed body.
fn split_header(bytes: &[u8]) -> Result<(u32, &[u8]), ImageError> {
    let magic = bytes.get(..IMAGE_MAGIC.len()).unwrap_or(bytes);
    if !IMAGE_MAGIC.starts_with(magic) {
        return Err(ImageError::BadMagic);
    }
    let version = read_u32(bytes, 8).ok_or(ImageError::Truncated)?;
    if ![
        IMAGE_VERSION,
        IMAGE_VERSION_V5,
        IMAGE_VERSION_V4,
        IMAGE_VERSION_V3,
    ]
    .contains(&version)
    {
        return Err(ImageError::UnsupportedVersion(version));
    }
    let body_len = read_u64(bytes, 12).ok_or(ImageError::Truncated)?;
    let stored = read_u32(bytes, 20).ok_or(ImageError::Truncated)?;
    let body = bytes.get(HEADER_LEN..).ok_or(ImageError::Truncated)?;
    match (body.len() as u64).cmp(&body_len) {
        std::cmp::Ordering::Less => return Err(ImageError::Truncated),
        std::cmp::Ordering::Greater => {
            return Err(ImageError::Corrupt(format!(
                "{} trailing bytes after the body",
                body.len() as u64 - body_len
            )))
        }
        std::cmp::Ordering::Equal => {}
    }
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(ImageError::Checksum { stored, computed });
    }
    Ok((version, body))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(field.try_into().ok()?))
}

impl ImageBody {
    fn into_holt(
        self,
        grafts: GraftsImage,
        fields: FieldsImage,
        tokens: TokensImage,
    ) -> Result<Holt, String> {
        for (what, counter) in [
            ("GC task", self.next_gc_seq),
            ("snapshot", self.next_snapshot),
            ("event", self.next_event),
            ("upload", self.next_upload),
            ("generation", self.next_generation),
        ] {
            if counter > MAX_IMAGE_COUNTER {
                return Err(format!(
                    "the {what} counter {counter} is beyond any history (limit {MAX_IMAGE_COUNTER})"
                ));
            }
        }
        let dedupe_capacity = usize::try_from(self.dedupe_capacity)
            .map_err(|_| "dedupe capacity does not fit this platform".to_string())?;
        let dedupe_order: imbl::Vector<RequestId> = self.dedupe.iter().map(|(id, _)| *id).collect();
        let mut labels = LabelPool::default();
        let inodes = sorted_map(self.inodes, "inodes")?;
        let dentries = sorted_map(self.dentries, "dentries")?;
        // The reverse links, derived once: each record gets its own as it
        // is built (both in inode order), the rest go to `links`.
        let (singles, links) = reverse_links(self.shard, &dentries, |id| inodes.contains_key(id));
        let mut singles = singles.into_iter().peekable();
        let mut ns = Namespace {
            shard: self.shard,
            inodes: inodes
                .into_iter()
                .map(|(id, mut record)| {
                    record.link = singles
                        .next_if(|(child, _)| *child == id)
                        .map(|(_, link)| link);
                    (id, shared(record, &mut labels))
                })
                .collect(),
            dentries: dentries.into_iter().collect(),
            grafts: sorted_map(grafts.current, "grafts")?.into_iter().collect(),
            fields: sorted_map(fields.current, "field sets")?
                .into_iter()
                .collect(),
            index: OrdSet::new(),
            unindexed: Default::default(),
            links,
        };
        ns.rebuild_field_index();
        let mut pin_grafts = grafts.pins.into_iter();
        let mut pin_fields = fields.pins.into_iter();
        if self.pins.len() != pin_grafts.len() || self.pins.len() != pin_fields.len() {
            return Err("the pins and their graft registries or field sets do not match".into());
        }
        let mut snapshots = BTreeMap::new();
        for pin in self.pins {
            let changed_fields = pin_fields.next().unwrap_or_default();
            let changed_inodes: Vec<InodeId> = pin
                .inodes
                .iter()
                .map(|(id, _)| *id)
                .chain(changed_fields.iter().map(|(id, _)| *id))
                .collect();
            let changed_entries: Vec<(InodeId, Name)> =
                pin.dentries.iter().map(|(key, _)| key.clone()).collect();
            let mut pinned = Namespace {
                shard: ns.shard,
                inodes: apply_diff(
                    &ns.inodes,
                    pin.inodes
                        .into_iter()
                        .map(|(id, record)| (id, record.map(|r| shared(r, &mut labels))))
                        .collect(),
                    "pinned inodes",
                )?,
                dentries: apply_diff(&ns.dentries, pin.dentries, "pinned dentries")?,
                grafts: sorted_map(pin_grafts.next().unwrap_or_default(), "pinned grafts")?
                    .into_iter()
                    .collect(),
                fields: apply_diff(&ns.fields, changed_fields, "pinned field sets")?,
                index: ns.index.clone(),
                unindexed: ns.unindexed.clone(),
                links: ns.links.clone(),
            };
            // The derived maps differ from the current ones only where
            // the pin's entries, inodes and field sets do.
            pinned.patch_derived(&ns, &changed_entries, changed_inodes);
            let id = pin.info.id;
            let pin = Pin {
                info: pin.info,
                ns: pinned,
            };
            if snapshots.insert(id, pin).is_some() {
                return Err(format!("{id} appears twice"));
            }
        }
        if self
            .events
            .windows(2)
            .any(|pair| matches!(pair, [a, b] if a.seq.checked_add(1) != Some(b.seq)))
            || self
                .events
                .last()
                .is_some_and(|e| e.seq.checked_add(1) != Some(self.next_event))
            || self.next_event == 0
            || self.events.first().is_some_and(|e| e.seq == 0)
        {
            return Err(
                "the event history is not gapless up to the event counter (cursors start at 1)"
                    .into(),
            );
        }
        Ok(Holt {
            ns,
            snapshots,
            next_snapshot: self.next_snapshot,
            events: self.events.into_iter().collect(),
            next_event: self.next_event,
            retention: self.retention,
            dedupe_capacity,
            next_local: self.next_local,
            epoch: self.epoch,
            last_applied: self.last_applied,
            // Insertion order, not key order: checked for duplicates by
            // length, since the map would silently merge them.
            dedupe: collect_unique(self.dedupe)?.into_iter().collect(),
            dedupe_order,
            staged: sorted_map(self.staged, "staged uploads")?,
            next_upload: self.next_upload,
            next_generation: self.next_generation,
            gc: sorted_map(self.gc, "GC tasks")?,
            next_gc_seq: self.next_gc_seq,
            tokens: sorted_map(tokens, "tokens")?,
            labels,
        })
    }
}

/// A decoded record, its body's labels shared through `labels`.
fn shared(mut record: InodeRecord, labels: &mut LabelPool) -> InodeRecord {
    if let Some(body) = &mut record.body {
        body.share_labels(labels);
    }
    record
}

/// Builds a map from entries that must be in strictly increasing key order,
/// as the encoder writes them; anything else means a corrupt image.
fn sorted_map<K: Ord, V>(entries: Vec<(K, V)>, what: &str) -> Result<BTreeMap<K, V>, String> {
    if entries
        .windows(2)
        .any(|pair| matches!(pair, [a, b] if a.0 >= b.0))
    {
        return Err(format!("{what} are not in strictly increasing key order"));
    }
    Ok(entries.into_iter().collect())
}

fn collect_unique<K: Ord, V>(entries: Vec<(K, V)>) -> Result<BTreeMap<K, V>, String> {
    let count = entries.len();
    let map: BTreeMap<K, V> = entries.into_iter().collect();
    if map.len() != count {
        return Err("duplicate request ids in the dedupe table".into());
    }
    Ok(map)
}

#[cfg(test)]
mod tests;
