//! What the host can see of a replica's process when a run cannot finish
//! (the replicas did not settle): its threads from the host's `/proc`
//! and, if the host has `gdb`, their backtraces. A container's processes
//! are ordinary host processes, so this needs no tool in the image.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How long `gdb` may take to attach and print every backtrace.
const GDB_TIMEOUT: Duration = Duration::from_secs(60);

/// One thread of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    /// `comm`: the thread's name (tokio workers are `tokio-runtime-w`).
    pub name: String,
    /// The scheduler state letter (`R` running, `S` sleeping, `D` in
    /// uninterruptible I/O, `T` stopped, ...).
    pub state: String,
    /// The kernel function the thread waits in (`futex_wait_queue`,
    /// `ep_poll`, ...), or `0` if it is running.
    pub wchan: String,
}

/// The threads of host process `pid`, by thread id; empty if it is gone or
/// unreadable.
pub fn threads_of(pid: u32) -> Vec<Thread> {
    threads_in(&Path::new("/proc").join(pid.to_string()).join("task"))
}

fn threads_in(task_dir: &Path) -> Vec<Thread> {
    let Ok(entries) = std::fs::read_dir(task_dir) else {
        return Vec::new();
    };
    let mut threads: Vec<Thread> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse().ok()?;
            let read = |file: &str| std::fs::read_to_string(entry.path().join(file)).ok();
            let stat = read("stat")?;
            Some(Thread {
                tid,
                name: read("comm").unwrap_or_default().trim().to_string(),
                state: state_of(&stat).unwrap_or("?").to_string(),
                wchan: read("wchan").unwrap_or_default().trim().to_string(),
            })
        })
        .collect();
    threads.sort_by_key(|t| t.tid);
    threads
}

/// The state letter of a `/proc/.../stat` line: the field after the
/// parenthesised name (which may itself hold spaces and parentheses).
fn state_of(stat: &str) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().next()
}

/// Every thread's backtrace of host process `pid` from `gdb`, or a line
/// saying why there is none.
pub async fn backtraces(pid: u32) -> String {
    let pid = pid.to_string();
    let run = Command::new("gdb")
        .args(["-p", &pid, "-batch", "-nx", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(GDB_TIMEOUT, run).await {
        Ok(Ok(out)) => format!(
            "gdb -p {pid} -batch -ex 'thread apply all bt':\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(Err(e)) => format!("no backtraces: cannot run gdb ({e})\n"),
        Err(_) => format!("no backtraces: gdb did not finish within {GDB_TIMEOUT:?}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_name_even_with_parentheses_in_it() {
        assert_eq!(state_of("12 (tokio (w) x) S 1 2 3"), Some("S"));
        assert_eq!(state_of("no name here"), None);
    }

    #[test]
    fn this_process_has_threads_with_states() {
        let threads = threads_of(std::process::id());
        assert!(!threads.is_empty());
        assert!(threads
            .iter()
            .all(|t| !t.state.is_empty() && t.state != "?"));
        assert!(threads_of(u32::MAX).is_empty());
    }
}
