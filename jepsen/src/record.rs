//! The run directory: what a run leaves behind for a person to read,
//! written as soon as each part exists so that a run that cannot finish
//! (the cluster never settles, Ctrl-C, a panic) still tells why.
//!
//! Order of writing, in [`crate::run::run`]: the histories and the nemesis
//! log as soon as the workloads stop; the replicas' answers to status
//! requests (`status.json`) when the cluster has not settled within the
//! bound; the checks; then, on every path once the cluster was up, each
//! replica's whole log and `summary.json` (with `aborted` saying why a run
//! stopped short).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::{DockerCluster, ReplicaStatus};
use crate::run::RunError;

/// Every replica's answer to a status request at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// Run clock (nanoseconds since the workloads started).
    pub at_ns: u64,
    /// Since the end of the final heal.
    pub since_heal_ms: f64,
    /// Why it was taken.
    pub why: String,
    pub replicas: Vec<ReplicaStatus>,
}

/// A run's output directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates the directory (and its parents) if needed.
    pub fn create(path: &Path) -> Result<RunDir, RunError> {
        std::fs::create_dir_all(path).map_err(|source| RunError::Output {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, name: &str) -> impl Fn(std::io::Error) -> RunError + '_ {
        let path = self.path.join(name);
        move |source| RunError::Output {
            path: path.clone(),
            source,
        }
    }

    /// `name` holds one JSON object per line, one per item of `lines`.
    pub fn write_jsonl<T: Serialize>(&self, name: &str, lines: &[T]) -> Result<(), RunError> {
        let io = self.io(name);
        let file = std::fs::File::create(self.path.join(name)).map_err(&io)?;
        let mut out = std::io::BufWriter::new(file);
        for line in lines {
            let text = serde_json::to_string(line)
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            writeln!(out, "{text}").map_err(&io)?;
        }
        out.flush().map_err(&io)
    }

    /// `name` holds `value` as pretty-printed JSON.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), RunError> {
        let io = self.io(name);
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        std::fs::write(self.path.join(name), text + "\n").map_err(io)
    }

    /// `node-N.log`: each replica's whole log. Best effort (this runs on
    /// failure paths too): returns what could not be written.
    pub async fn write_logs(&self, cluster: &DockerCluster) -> Vec<String> {
        let mut errors = Vec::new();
        for id in cluster.node_ids() {
            let path = self.path.join(format!("node-{id}.log"));
            if let Err(e) = cluster.logs_to_file(id, &path).await {
                errors.push(format!("log of node {id}: {e}"));
            }
        }
        errors
    }

    /// `node-N.process.txt`: what the host sees of each replica's process
    /// ([`DockerCluster::process_report`]), for a run that could not
    /// finish. Best effort: returns each node's one-line summary, or why
    /// there is none.
    pub async fn write_processes(&self, cluster: &DockerCluster) -> Vec<String> {
        let mut summaries = Vec::new();
        for id in cluster.node_ids() {
            match cluster.process_report(id).await {
                Ok((summary, full)) => {
                    let path = self.path.join(format!("node-{id}.process.txt"));
                    if let Err(e) = std::fs::write(&path, full) {
                        tracing::warn!(error = %e, path = %path.display(), "process report");
                    }
                    summaries.push(summary);
                }
                Err(e) => summaries.push(format!("node {id}: no process report ({e})")),
            }
        }
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_jsonl_and_json_that_read_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = RunDir::create(&tmp.path().join("a/b")).expect("create");
        dir.write_jsonl("lines.jsonl", &[1, 2, 3]).expect("jsonl");
        let text = std::fs::read_to_string(dir.path().join("lines.jsonl")).expect("read");
        assert_eq!(text, "1\n2\n3\n");
        let snapshot = StatusSnapshot {
            at_ns: 5,
            since_heal_ms: 10_500.0,
            why: "not settled".into(),
            replicas: vec![ReplicaStatus::unanswered(2, "timed out".into())],
        };
        dir.write_json("status.json", &vec![snapshot.clone()])
            .expect("json");
        let text = std::fs::read_to_string(dir.path().join("status.json")).expect("read");
        let back: Vec<StatusSnapshot> = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, vec![snapshot]);
    }

    #[test]
    fn a_write_that_cannot_happen_names_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = RunDir::create(tmp.path()).expect("create");
        // A directory where the file should go.
        std::fs::create_dir(tmp.path().join("summary.json")).expect("mkdir");
        let e = dir.write_json("summary.json", &1).expect_err("must fail");
        assert!(e.to_string().contains("summary.json"), "{e}");
    }
}
