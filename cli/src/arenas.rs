//! glibc's malloc arenas for the server processes (`serve`, `dev`).
//!
//! glibc gives threads that contend for the allocator arenas of their own,
//! up to eight per core, and memory freed in one arena is not reused by
//! allocations in another. A replica's state is millions of small
//! allocations made and freed on whichever runtime thread applies or
//! snapshots; with the default, about 60 of its ~400 bytes per inode were
//! arena overhead, with two arenas 355 and with one 340, at the same
//! create and stat throughput (docs/benchmarks.md, "Memory per inode:
//! compact bodies, entries in records, packed maps"). glibc reads
//! `MALLOC_ARENA_MAX` only when the process starts, so a server started
//! without it re-executes itself once with it set. Set the variable
//! yourself to choose another value (it is then left alone); other C
//! libraries ignore it.

use std::os::unix::process::CommandExt;

/// Arenas a server runs with unless `MALLOC_ARENA_MAX` says otherwise.
const SERVER_ARENAS: &str = "2";

/// Re-executes this process with `MALLOC_ARENA_MAX` set, if it is unset.
/// Returns only if it was set already or the re-exec failed (the server
/// then runs with glibc's default, and says so).
pub fn limit() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return warn(&e),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let e = command
        .args(args)
        .env("MALLOC_ARENA_MAX", SERVER_ARENAS)
        .exec();
    warn(&e);
}

fn warn(e: &std::io::Error) {
    eprintln!(
        "nokv: could not re-execute with MALLOC_ARENA_MAX={SERVER_ARENAS} ({e}); \
         running with the C library's default malloc arenas"
    );
}
