//! Encoding of openraft messages inside `RaftMessage.data`: one format
//! version byte, then bincode. Nodes of different formats refuse each other
//! loudly instead of misreading.

use serde::de::DeserializeOwned;
use serde::Serialize;

const RAFT_WIRE_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RaftWireError {
    #[error("empty raft message")]
    Empty,
    #[error("raft message format version {0} is not supported (want {RAFT_WIRE_VERSION})")]
    Version(u8),
    #[error("raft message codec: {0}")]
    Codec(#[from] bincode::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RaftWireError> {
    let mut out = vec![RAFT_WIRE_VERSION];
    bincode::serialize_into(&mut out, value)?;
    Ok(out)
}

/// Bytes `value` takes in the wire format (without the version byte).
pub fn encoded_len<T: Serialize>(value: &T) -> Result<u64, RaftWireError> {
    Ok(bincode::serialized_size(value)?)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RaftWireError> {
    let (version, body) = bytes.split_first().ok_or(RaftWireError::Empty)?;
    if *version != RAFT_WIRE_VERSION {
        return Err(RaftWireError::Version(*version));
    }
    // Bound allocations by the message size so a hostile length prefix
    // cannot ask for gigabytes.
    use bincode::Options;
    Ok(bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(body.len() as u64 * 4 + 1024)
        .deserialize(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let v: Vec<u64> = vec![1, 2, 3];
        let bytes = encode(&v).expect("encode");
        assert_eq!(decode::<Vec<u64>>(&bytes).expect("decode"), v);
        assert!(decode::<Vec<u64>>(&[]).is_err());
        assert!(decode::<Vec<u64>>(&[9, 1, 2]).is_err());
        assert!(decode::<Vec<u64>>(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
