//! Generates the tonic/prost code for `proto/nokv.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate unless `PROTOC` is
//! set, so a fresh machine needs no system package to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .compile_protos(&["proto/nokv.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/nokv.proto");
    Ok(())
}
