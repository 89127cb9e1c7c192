//! [`StoredBody`]: a published body as an inode record holds it, in about
//! a third of the memory of the [`Body`] the API speaks.
//!
//! A body's parts are mostly predictable, and the compact form keeps only
//! what is not:
//! - the sha256 as its 32 bytes, not 64 hex characters;
//! - the content type and producer shared: every body with the same pair
//!   points at one allocation ([`LabelPool`]);
//! - a block key of the shape the SDK writes,
//!   `blocks/{shard}/{inode}/{generation}/{index:08}.{sha256 hex}`, as those
//!   four numbers and the digest ([`StoredKey::Sdk`]); any other key as its
//!   text. A key is compacted only if it prints back exactly as it came;
//! - a body that is one such block (most small files) as just the block's
//!   inode ([`Blocks::Whole`]): its index is 0, its generation, digest and
//!   size the body's;
//! - no size or generation: the record's attributes hold both, and
//!   [`BodyRef`] joins them to the body again;
//! - no attributes as a null pointer.
//!
//! A [`BodyRef`] encodes exactly as [`Body`] does, field for field, so the
//! image format does not depend on this layout (checked by a test).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::body::{validate_body_parts, BlockRef, Body, BodyParts, BodySummary};
use crate::error::FsError;
use crate::types::{Generation, InodeId, ShardId};

/// A published body, compacted. See the module docs. Its size and
/// generation are not here: the record's attributes hold both (they are
/// always equal, an invariant check holds it), and [`BodyRef`] pairs them
/// again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredBody {
    published_ns: u64,
    sha256: [u8; 32],
    labels: Arc<Labels>,
    // The box is the point: null when there are none (8 bytes, not 24).
    #[allow(clippy::box_collection)]
    attrs: Option<Box<BTreeMap<String, String>>>,
    blocks: Blocks,
}

/// A [`StoredBody`] with the size and generation its record holds for it:
/// everything a [`Body`] says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyRef<'a> {
    body: &'a StoredBody,
    pub(crate) size: u64,
    pub(crate) generation: Generation,
}

/// Content type and producer, shared between bodies through [`LabelPool`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Labels {
    content_type: Box<str>,
    producer: Box<str>,
}

/// A body's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Blocks {
    /// One block that is the whole body, named as the SDK names it:
    /// `blocks/{shard}/{inode local}/{body generation}/00000000.{body sha256}`.
    /// (The inode is the upload's, not always the file's: a publish that
    /// replaces a file keeps its inode.)
    Whole { inode: InodeId },
    /// Any other plan: none, several, or one named otherwise.
    Listed(Box<[StoredBlock]>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredBlock {
    size: u64,
    key: StoredKey,
}

/// A block key, compacted when it has the SDK's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StoredKey {
    /// `blocks/{shard}/{inode local}/{generation}/{index:08}.{digest hex}`.
    Sdk {
        inode: InodeId,
        generation: Generation,
        index: u32,
        digest: [u8; 32],
    },
    /// Any other key, as it came.
    Text(Box<str>),
}

impl StoredKey {
    fn new(key: &str) -> StoredKey {
        match StoredKey::parse_sdk(key) {
            Some(sdk) if sdk.prints_as(key) => sdk,
            _ => StoredKey::Text(key.into()),
        }
    }

    /// Whether this key prints exactly as `key` (compared as it prints,
    /// without building the string).
    fn prints_as(&self, key: &str) -> bool {
        /// Consumes `rest` as long as what is written matches it.
        struct Matcher<'a> {
            rest: &'a str,
        }
        impl std::fmt::Write for Matcher<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.rest = self.rest.strip_prefix(s).ok_or(std::fmt::Error)?;
                Ok(())
            }
        }
        let mut matcher = Matcher { rest: key };
        std::fmt::write(&mut matcher, format_args!("{self}")).is_ok() && matcher.rest.is_empty()
    }

    /// The SDK shape's parts, if `key` has them (not yet checked to print
    /// back identically: leading zeros, say, would not).
    fn parse_sdk(key: &str) -> Option<StoredKey> {
        let mut parts = key.strip_prefix("blocks/")?.split('/');
        let shard: u16 = parts.next()?.parse().ok()?;
        let local: u64 = parts.next()?.parse().ok()?;
        let generation: u64 = parts.next()?.parse().ok()?;
        let (index, digest) = parts.next()?.split_once('.')?;
        if parts.next().is_some() || local > InodeId::MAX_LOCAL {
            return None;
        }
        Some(StoredKey::Sdk {
            inode: InodeId::compose(ShardId(shard), local),
            generation: Generation(generation),
            index: index.parse().ok()?,
            digest: parse_sha256(digest)?,
        })
    }
}

impl std::fmt::Display for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredKey::Sdk {
                inode,
                generation,
                index,
                digest,
            } => {
                write!(
                    f,
                    "blocks/{}/{}/{}/{index:08}.",
                    inode.shard().0,
                    inode.local(),
                    generation.0
                )?;
                write_hex(f, digest)
            }
            StoredKey::Text(key) => f.write_str(key),
        }
    }
}

impl StoredBlock {
    fn new(block: &BlockRef) -> StoredBlock {
        StoredBlock {
            size: block.size,
            key: StoredKey::new(&block.key),
        }
    }

    fn to_ref(&self) -> BlockRef {
        BlockRef {
            key: self.key.to_string(),
            size: self.size,
        }
    }
}

/// The 32 bytes of a 64-digit lowercase hex sha256 (what validation
/// admits), or `None` for anything else.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The 64 lowercase hex digits of a sha256.
fn hex_digits(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

fn write_hex(out: &mut impl std::fmt::Write, bytes: &[u8; 32]) -> std::fmt::Result {
    let digits = hex_digits(bytes);
    // Hex digits are ASCII, so always UTF-8.
    out.write_str(std::str::from_utf8(&digits).unwrap_or_default())
}

fn hex_string(bytes: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    // Writing to a String cannot fail.
    let _ = write_hex(&mut s, bytes);
    s
}

impl StoredBody {
    /// Compacts `body`, sharing its labels through `pool`. The body has
    /// passed validation, so its sha256 is 64 lowercase hex digits; were
    /// it not, it is kept as zeros and the image check would refuse the
    /// state (`check_body` validates the expanded body). Its size and
    /// generation are the caller's to keep (in the record's attributes).
    pub(crate) fn new(body: Body, pool: &mut LabelPool) -> StoredBody {
        let labels = pool.share(&body.content_type, &body.producer);
        StoredBody::with_labels(body, labels)
    }

    /// Decodes what a [`Body`] encodes (labels of its own: the image
    /// decoder shares them after), refusing a sha256 that is not 64
    /// lowercase hex digits, which the compact form cannot hold.
    pub(crate) fn decode(mut body: Body) -> Result<StoredBody, String> {
        if parse_sha256(&body.sha256).is_none() {
            return Err(format!(
                "body sha256 {} is not 64 lowercase hex digits",
                crate::path::preview(&body.sha256)
            ));
        }
        let labels = Arc::new(Labels {
            content_type: std::mem::take(&mut body.content_type).into_boxed_str(),
            producer: std::mem::take(&mut body.producer).into_boxed_str(),
        });
        Ok(StoredBody::with_labels(body, labels))
    }

    fn with_labels(body: Body, labels: Arc<Labels>) -> StoredBody {
        let sha256 = parse_sha256(&body.sha256).unwrap_or_default();
        let whole = match &body.blocks[..] {
            [only] if only.size == body.size => match StoredKey::new(&only.key) {
                StoredKey::Sdk {
                    inode,
                    generation,
                    index: 0,
                    digest,
                } if digest == sha256 && generation == body.generation => {
                    Some(Blocks::Whole { inode })
                }
                _ => None,
            },
            _ => None,
        };
        let blocks = whole
            .unwrap_or_else(|| Blocks::Listed(body.blocks.iter().map(StoredBlock::new).collect()));
        StoredBody {
            published_ns: body.published_ns,
            sha256,
            labels,
            attrs: (!body.attrs.is_empty()).then(|| Box::new(body.attrs)),
            blocks,
        }
    }

    /// This body as the record with `size` and `generation` holds it.
    pub(crate) fn with(&self, size: u64, generation: Generation) -> BodyRef<'_> {
        BodyRef {
            body: self,
            size,
            generation,
        }
    }

    /// Shares this body's labels through `pool` (after decoding an image).
    pub(crate) fn share_labels(&mut self, pool: &mut LabelPool) {
        let shared = pool.share(&self.labels.content_type, &self.labels.producer);
        self.labels = shared;
    }

    pub(crate) fn block_count(&self) -> usize {
        match &self.blocks {
            Blocks::Whole { .. } => 1,
            Blocks::Listed(blocks) => blocks.len(),
        }
    }
}

impl<'a> BodyRef<'a> {
    /// The blocks, with their keys spelled out.
    pub(crate) fn blocks(self) -> impl Iterator<Item = BlockRef> + 'a {
        let (whole, listed) = match &self.body.blocks {
            Blocks::Whole { inode } => {
                let block = StoredBlock {
                    size: self.size,
                    key: StoredKey::Sdk {
                        inode: *inode,
                        generation: self.generation,
                        index: 0,
                        digest: self.body.sha256,
                    },
                };
                (Some(block.to_ref()), &[][..])
            }
            Blocks::Listed(blocks) => (None, &blocks[..]),
        };
        whole
            .into_iter()
            .chain(listed.iter().map(StoredBlock::to_ref))
    }

    /// Checks the body as a command's is checked
    /// ([`validate_body_parts`]); its blocks, spelled out.
    pub(crate) fn validate(self) -> Result<Vec<BlockRef>, FsError> {
        static NO_ATTRS: BTreeMap<String, String> = BTreeMap::new();
        let blocks: Vec<BlockRef> = self.blocks().collect();
        let sha256 = hex_digits(&self.body.sha256);
        validate_body_parts(BodyParts {
            size: self.size,
            blocks: &blocks,
            sha256: std::str::from_utf8(&sha256).unwrap_or_default(),
            content_type: &self.body.labels.content_type,
            producer: &self.body.labels.producer,
            attrs: self.body.attrs.as_deref().unwrap_or(&NO_ATTRS),
        })?;
        Ok(blocks)
    }

    pub(crate) fn sha256(self) -> String {
        hex_string(&self.body.sha256)
    }

    pub(crate) fn to_body(self) -> Body {
        Body {
            generation: self.generation,
            size: self.size,
            blocks: self.blocks().collect(),
            sha256: self.sha256(),
            content_type: self.body.labels.content_type.to_string(),
            producer: self.body.labels.producer.to_string(),
            attrs: self.body.attrs.as_deref().cloned().unwrap_or_default(),
            published_ns: self.body.published_ns,
        }
    }

    pub(crate) fn summary(self) -> BodySummary {
        BodySummary {
            generation: self.generation,
            size: self.size,
            blocks: u32::try_from(self.body.block_count()).unwrap_or(u32::MAX),
            sha256: self.sha256(),
            content_type: self.body.labels.content_type.to_string(),
            producer: self.body.labels.producer.to_string(),
            attrs: self.body.attrs.as_deref().cloned().unwrap_or_default(),
            published_ns: self.body.published_ns,
            fields: None,
        }
    }
}

/// Encodes as [`Body`]: the same fields in the same order, the key and
/// the sha256 spelled out.
impl Serialize for BodyRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct BlocksOut<'a>(&'a BodyRef<'a>);
        impl Serialize for BlocksOut<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.body.block_count()))?;
                for block in self.0.blocks() {
                    seq.serialize_element(&block)?;
                }
                seq.end()
            }
        }
        let no_attrs = BTreeMap::new();
        let body = self.body;
        let mut s = serializer.serialize_struct("Body", 8)?;
        s.serialize_field("generation", &self.generation)?;
        s.serialize_field("size", &self.size)?;
        s.serialize_field("blocks", &BlocksOut(self))?;
        let sha256 = hex_digits(&body.sha256);
        s.serialize_field("sha256", std::str::from_utf8(&sha256).unwrap_or_default())?;
        s.serialize_field("content_type", &*body.labels.content_type)?;
        s.serialize_field("producer", &*body.labels.producer)?;
        s.serialize_field("attrs", body.attrs.as_deref().unwrap_or(&no_attrs))?;
        s.serialize_field("published_ns", &body.published_ns)?;
        s.end()
    }
}

/// The distinct label pairs of the bodies in the namespace, so that bodies
/// with the same content type and producer share one allocation. Looked up
/// by content type, then producer, so a hit allocates nothing.
///
/// Only an allocation cache, not state: no query sees it, it is not
/// encoded, and two engines compare equal whatever their pools hold. Pairs
/// no body uses any more are dropped whenever the pool has doubled since
/// the last sweep, so it stays within twice the pairs in use.
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelPool {
    pairs: BTreeMap<Box<str>, BTreeMap<Box<str>, Arc<Labels>>>,
    len: usize,
    sweep_at: usize,
}

impl PartialEq for LabelPool {
    fn eq(&self, _: &LabelPool) -> bool {
        true
    }
}

impl Eq for LabelPool {}

impl LabelPool {
    /// Minimum pool size before a sweep.
    const MIN_SWEEP: usize = 64;

    /// The shared pair for `content_type` and `producer`, made if new.
    fn share(&mut self, content_type: &str, producer: &str) -> Arc<Labels> {
        if let Some(shared) = self
            .pairs
            .get(content_type)
            .and_then(|by_producer| by_producer.get(producer))
        {
            return shared.clone();
        }
        if self.len >= self.sweep_at.max(Self::MIN_SWEEP) {
            self.len = 0;
            for by_producer in self.pairs.values_mut() {
                by_producer.retain(|_, pair| Arc::strong_count(pair) > 1);
                self.len += by_producer.len();
            }
            self.pairs.retain(|_, by_producer| !by_producer.is_empty());
            self.sweep_at = 2 * self.len;
        }
        let labels = Arc::new(Labels {
            content_type: content_type.into(),
            producer: producer.into(),
        });
        self.pairs
            .entry(content_type.into())
            .or_default()
            .insert(producer.into(), labels.clone());
        self.len += 1;
        labels
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(keys: &[&str], content_type: &str) -> Body {
        Body {
            generation: Generation(7),
            size: keys.len() as u64 * 10,
            blocks: keys
                .iter()
                .map(|key| BlockRef {
                    key: (*key).into(),
                    size: 10,
                })
                .collect(),
            sha256: format!("{:064x}", 0xfeed_u64),
            content_type: content_type.into(),
            producer: "trainer".into(),
            attrs: BTreeMap::new(),
            published_ns: 42,
        }
    }

    const SHA: &str = "00000000000000000000000000000000000000000000000000000000000abcde";

    #[test]
    fn sdk_keys_are_compacted_and_every_key_prints_back_as_it_came() {
        let sdk = format!("blocks/3/17/9/00000002.{SHA}");
        assert!(matches!(StoredKey::new(&sdk), StoredKey::Sdk { .. }));
        for key in [
            sdk.as_str(),
            "blocks/3/17/9/b0",
            "blocks/3/017/9/00000002.00",
            &format!("blocks/3/017/9/00000002.{SHA}"),
            &format!("blocks/3/17/9/2.{SHA}"),
            &format!("blocks/3/17/9/00000002.{}", SHA.to_uppercase()),
            &format!("blocks/70000/17/9/00000002.{SHA}"),
            &format!("blocks/3/17/9/00000002.{SHA}/x"),
            &format!("blocks/3/17/9/4294967296.{SHA}"),
            "other/prefix",
        ] {
            assert_eq!(StoredKey::new(key).to_string(), key);
        }
        assert!(matches!(
            StoredKey::new(&format!("blocks/3/017/9/00000002.{SHA}")),
            StoredKey::Text(_)
        ));
    }

    #[test]
    fn a_stored_body_with_its_size_and_generation_encodes_and_decodes_as_the_body_it_holds() {
        let mut pool = LabelPool::default();
        let sdk = format!("blocks/0/5/7/00000000.{SHA}");
        let sdk2 = format!("blocks/0/5/6/00000001.{SHA}");
        let mut with_attrs = body(&[&sdk, "blocks/0/5/7/tail"], "text/plain");
        with_attrs.attrs.insert("k".into(), "v".into());
        // One SDK block that is the whole body: its digest is the body's.
        let mut whole = body(&[&sdk], "application/octet-stream");
        whole.sha256 = SHA.into();
        let stored = StoredBody::new(whole.clone(), &mut pool);
        assert!(matches!(stored.blocks, Blocks::Whole { .. }));
        let mut second_block = whole.clone();
        second_block.blocks[0].key = format!("blocks/0/5/7/00000001.{SHA}");
        let mut short_block = whole.clone();
        short_block.size += 1;
        // The block's generation is not the body's: the key must say it.
        let mut other_generation = whole.clone();
        other_generation.blocks[0].key = format!("blocks/0/5/6/00000000.{SHA}");
        for listed in [&second_block, &short_block, &other_generation] {
            let stored = StoredBody::new(listed.clone(), &mut pool);
            assert!(matches!(stored.blocks, Blocks::Listed(_)));
        }
        for original in [
            body(&[], "application/octet-stream"),
            body(&[&sdk], "application/octet-stream"),
            whole,
            second_block,
            short_block,
            other_generation,
            body(&[&sdk2, &sdk, "x/y"], ""),
            with_attrs,
        ] {
            let stored = StoredBody::new(original.clone(), &mut pool);
            let view = stored.with(original.size, original.generation);
            assert_eq!(view.to_body(), original);
            let bytes = bincode::serialize(&view).expect("encode");
            assert_eq!(bytes, bincode::serialize(&original).expect("encode"));
            let decoded: Body = bincode::deserialize(&bytes).expect("decode");
            assert_eq!(StoredBody::decode(decoded), Ok(stored.clone()));
            let mut summary = BodySummary::from(&original);
            summary.fields = None;
            assert_eq!(view.summary(), summary);
        }
    }

    #[test]
    fn a_body_whose_sha256_is_not_hex_is_refused() {
        let mut bad = body(&[], "t");
        for sha in ["XYZ", &"A".repeat(64), ""] {
            bad.sha256 = sha.into();
            assert!(StoredBody::decode(bad.clone()).is_err(), "{sha}");
        }
    }

    #[test]
    fn bodies_with_the_same_labels_share_them_and_unused_pairs_are_swept() {
        let mut pool = LabelPool::default();
        let a = StoredBody::new(body(&[], "a"), &mut pool);
        let b = StoredBody::new(body(&[], "a"), &mut pool);
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        for i in 0..1000 {
            drop(StoredBody::new(body(&[], &format!("t{i}")), &mut pool));
        }
        assert!(pool.len() <= 2 * LabelPool::MIN_SWEEP, "{}", pool.len());
        let c = StoredBody::new(body(&[], "a"), &mut pool);
        assert!(Arc::ptr_eq(&a.labels, &c.labels), "a pair in use stays");
    }
}
