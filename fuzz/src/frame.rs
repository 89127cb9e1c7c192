//! Valid headers around fuzzed bodies.
//!
//! Both the state image and a log segment carry a CRC-32 of their body:
//! random bytes almost never pass it, so a target that fed raw bytes only
//! would test the header parser and little else. The targets therefore
//! read a selector byte first: one value means "the rest is a whole file",
//! the others "the rest is a body: add a header with the right length and
//! checksum" (and, for an image, which format version to claim).

use nokv_holt::image::{IMAGE_MAGIC, IMAGE_VERSION, IMAGE_VERSION_V3, IMAGE_VERSION_V4};
use nokv_meta_node::archive::{SEGMENT_FORMAT_VERSION, SEGMENT_MAGIC};

/// Image header length: magic, version, body length, checksum.
pub const IMAGE_HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Segment header length: magic, version, checksum, body length.
pub const SEGMENT_HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// `body` as an image of format `version` (`holt/src/image.rs`).
pub fn image(version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IMAGE_HEADER_LEN + body.len());
    out.extend_from_slice(&IMAGE_MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The bytes a `state_image` input stands for: selector 0 (mod 4) means
/// the rest is the image itself, 1, 2, 3 that it is a body of format
/// version 5, 4 or 3.
pub fn image_input(data: &[u8]) -> Option<Vec<u8>> {
    let (selector, rest) = data.split_first()?;
    Some(match selector % 4 {
        0 => rest.to_vec(),
        1 => image(IMAGE_VERSION, rest),
        2 => image(IMAGE_VERSION_V4, rest),
        _ => image(IMAGE_VERSION_V3, rest),
    })
}

/// `body` as a log segment (`meta-node/src/archive.rs`).
pub fn segment(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN + body.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The bytes a `log_segment` input stands for: an even selector means the
/// rest is the segment itself, an odd one that it is a body.
pub fn segment_input(data: &[u8]) -> Option<Vec<u8>> {
    let (selector, rest) = data.split_first()?;
    Some(if selector % 2 == 0 {
        rest.to_vec()
    } else {
        segment(rest)
    })
}
