//! The searchable fields of a published file, computed the same way at
//! publish time (the SDK, which sends them with the publish for the
//! engine's field index; the leader, for a commit that came without them)
//! and at query time (the agent gateway, for bodies published without
//! them).
//!
//! Owns: typed field values ([`Value`], [`Row`]), small structured bodies
//! (format detection, parsing, content fields, line addressing and grep:
//! [`structured`]), the built-in field names ([`BUILTIN_FIELDS`]), which
//! bodies contribute content fields ([`wants_content`]), the extraction of
//! a file's non-built-in fields within the engine's limits ([`extract`]),
//! and the conversion to and from the engine's [`nokv_holt::FieldSet`]
//! ([`to_field_set`], [`from_field_set`]).
//!
//! Pure functions of their arguments: no I/O, no clocks. Must not depend
//! on: tokio or any async runtime, the network, `nokv-client`,
//! `nokv-proto`, `nokv-gateway` or any server crate. Its only NoKV
//! dependency is `nokv-holt` (itself pure), for the field set types and
//! limits.
//!
//! # Invariants
//! - [`extract`] with a body is a superset of [`extract`] without one:
//!   attributes are admitted first, and win over content keys of the same
//!   name, so a field a file has from its listing alone never changes when
//!   its body is read.
//! - Whatever [`extract`] returns, [`to_field_set`] of it passes
//!   [`nokv_holt::validate_field_set`].

pub mod extract;
pub mod field_set;
pub mod structured;
pub mod value;

pub use extract::{extract, wants_content, BUILTIN_FIELDS, MAX_FIELD_BODY_BYTES};
pub use field_set::{from_field_set, to_field_set};
pub use structured::ParseError;
pub use value::{Row, Value};
