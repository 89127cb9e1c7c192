//! Client RPC decoding: the first byte picks a message (the requests a
//! node decodes, and the responses a client decodes), the rest is its
//! protobuf encoding. A request is converted to its domain form exactly as
//! the server does (`Mutation::try_from`, `Read::try_from`), statically
//! validated, and then applied to (or asked of) a copy of the sample state,
//! whose invariants must hold afterwards. Conversions back to the wire must
//! be stable: wire -> domain -> wire -> domain is a fixed point after the
//! first step. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_holt::{Command, Holt, LogIndex};
use nokv_proto::pb;
use nokv_proto::{Mutation, Read};
use prost::Message;

use nokv_fuzz::sample::{client_rpc_seeds, sample_holt};
use nokv_fuzz::{assert_invariants, write_seeds_and_exit_if_asked};

fn mutate(bytes: &[u8]) {
    let Ok(req) = pb::MutateRequest::decode(bytes) else {
        return;
    };
    let Ok(mutation) = Mutation::try_from(req) else {
        return;
    };
    // The client's direction: domain -> wire -> domain must be stable.
    if let Ok(wire) = pb::MutateRequest::try_from(mutation.clone()) {
        let again = pb::MutateRequest::decode(wire.encode_to_vec().as_slice())
            .expect("a message we encoded decodes");
        assert_eq!(again, wire, "prost round trip of a MutateRequest");
        let m2 = Mutation::try_from(wire).expect("our own wire form converts back");
        let w3 = pb::MutateRequest::try_from(m2.clone()).expect("converts to the wire again");
        let m3 = Mutation::try_from(w3).expect("and back once more");
        assert_eq!(m2, m3, "wire -> domain is not stable");
    }
    let command = Command {
        request_id: mutation.request_id,
        epoch: mutation.epoch,
        time_ns: 2_000_000_000,
        op: mutation.op,
    };
    if Holt::validate_command(&command).is_err() {
        return;
    }
    let mut holt = sample_holt().clone();
    let index = LogIndex(holt.last_applied().0 + 1);
    let _ = holt.apply(index, &command);
    assert_invariants(&holt, "the sample state after a client mutation");
}

fn query(bytes: &[u8]) {
    let Ok(req) = pb::QueryRequest::decode(bytes) else {
        return;
    };
    let Ok(read) = Read::try_from(req) else {
        return;
    };
    let wire = pb::QueryRequest::from(read.clone());
    let r2 = Read::try_from(wire).expect("our own wire form converts back");
    let r3 = Read::try_from(pb::QueryRequest::from(r2.clone())).expect("and back once more");
    assert_eq!(r2, r3, "wire -> domain is not stable");
    let holt = sample_holt();
    let _ = holt.query(&read.query);
    let _ = holt.query_at(&read.query, 2_000_000_000);
}

fn watch(bytes: &[u8]) {
    let Ok(req) = pb::WatchRequest::decode(bytes) else {
        return;
    };
    // What `meta-node/src/watch.rs` reads for a watch.
    let _ = sample_holt().events(req.after_cursor, &req.path, req.recursive, 0);
}

fn responses(selector: u8, bytes: &[u8]) {
    match selector {
        3 => {
            if let Ok(r) = pb::MutateResponse::decode(bytes) {
                let _ = nokv_holt::Applied::try_from(r);
            }
        }
        4 => {
            if let Ok(r) = pb::QueryResponse::decode(bytes) {
                let _ = nokv_holt::QueryResult::try_from(r);
            }
        }
        _ => {
            if let Ok(e) = pb::WatchEvent::decode(bytes) {
                let _ = nokv_holt::Event::try_from(e);
            }
        }
    }
}

fuzz_target!(
    init: write_seeds_and_exit_if_asked(client_rpc_seeds),
    |data: &[u8]| {
        let Some((selector, bytes)) = data.split_first() else {
            return;
        };
        match selector % 6 {
            0 => mutate(bytes),
            1 => query(bytes),
            2 => watch(bytes),
            other => responses(other, bytes),
        }
    }
);
