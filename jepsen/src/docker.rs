//! The few Docker engine operations testcontainers does not offer: networks
//! with aliases, connect/disconnect (our partitions), SIGKILL, pause, and
//! removal of everything a run created.
//!
//! Each is one `docker` CLI call, so every fault the nemesis injects is a
//! command a person can type to reproduce it (the run's `nemesis.jsonl`
//! logs them). Everything a run creates carries the label
//! `io.nokv.jepsen=<run id>`, which is how [`Docker::remove_run`] finds it.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Label on every container, network and volume a run creates.
pub const RUN_LABEL: &str = "io.nokv.jepsen";

/// A failed `docker` call.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot run `docker`: {0} (is Docker installed and on PATH?)")]
    Spawn(#[source] std::io::Error),
    #[error("`docker {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`docker {args}` did not finish within {timeout:?}")]
    TimedOut { args: String, timeout: Duration },
}

/// Runs `docker` commands with a time limit each.
#[derive(Clone, Debug)]
pub struct Docker {
    timeout: Duration,
}

impl Default for Docker {
    fn default() -> Self {
        Docker {
            timeout: Duration::from_secs(60),
        }
    }
}

impl Docker {
    /// Runs `docker ARGS…` and returns its trimmed stdout.
    pub async fn run(&self, args: &[&str]) -> Result<String, DockerError> {
        let joined = args.join(" ");
        let child = Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(self.timeout, child).await {
            Ok(result) => result.map_err(DockerError::Spawn)?,
            Err(_) => {
                return Err(DockerError::TimedOut {
                    args: joined,
                    timeout: self.timeout,
                })
            }
        };
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(DockerError::Failed {
                args: joined,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// Whether `image` exists locally (nothing is ever pulled).
    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self
            .run(&["image", "inspect", "--format", "{{.Id}}", image])
            .await
        {
            Ok(_) => Ok(true),
            Err(DockerError::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a labelled bridge network.
    pub async fn create_network(&self, name: &str, run: &str) -> Result<(), DockerError> {
        let label = format!("{RUN_LABEL}={run}");
        self.run(&[
            "network", "create", "--driver", "bridge", "--label", &label, name,
        ])
        .await
        .map(|_| ())
    }

    /// Creates a labelled named volume.
    pub async fn create_volume(&self, name: &str, run: &str) -> Result<(), DockerError> {
        let label = format!("{RUN_LABEL}={run}");
        self.run(&["volume", "create", "--label", &label, name])
            .await
            .map(|_| ())
    }

    /// Attaches `container` to `network`, reachable there as `alias`.
    pub async fn connect(
        &self,
        network: &str,
        container: &str,
        alias: &str,
    ) -> Result<(), DockerError> {
        self.run(&["network", "connect", "--alias", alias, network, container])
            .await
            .map(|_| ())
    }

    /// Detaches `container` from `network`: every packet between it and the
    /// network's other members is dropped from now on.
    pub async fn disconnect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        self.run(&["network", "disconnect", "--force", network, container])
            .await
            .map(|_| ())
    }

    /// Runs `argv` inside a running container (`docker exec`; the image
    /// needs no shell) and returns its stdout.
    pub async fn exec(&self, container: &str, argv: &[&str]) -> Result<String, DockerError> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        self.run(&args).await
    }

    /// Runs `argv` inside a running container whatever its exit status:
    /// whether it succeeded, its stdout and its stderr (for commands that
    /// report on stdout and also fail, as `nokv fsck --json` does when it
    /// finds problems).
    pub async fn exec_status(
        &self,
        container: &str,
        argv: &[&str],
    ) -> Result<(bool, String, String), DockerError> {
        let mut args = vec!["exec", container];
        args.extend_from_slice(argv);
        let child = Command::new("docker")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(self.timeout, child).await {
            Ok(Ok(out)) => Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )),
            Ok(Err(e)) => Err(DockerError::Spawn(e)),
            Err(_) => Err(DockerError::TimedOut {
                args: args.join(" "),
                timeout: self.timeout,
            }),
        }
    }

    /// Copies the host file `src` to `dest` inside `container` (`docker
    /// cp`: works on an image without a shell, running or stopped).
    pub async fn copy_into(
        &self,
        src: &std::path::Path,
        container: &str,
        dest: &str,
    ) -> Result<(), DockerError> {
        let src = src.to_string_lossy();
        let dest = format!("{container}:{dest}");
        self.run(&["cp", &src, &dest]).await.map(|_| ())
    }

    /// `kill -9` of the container's process (the container stays, stopped).
    pub async fn kill(&self, container: &str) -> Result<(), DockerError> {
        self.run(&["kill", "--signal", "KILL", container])
            .await
            .map(|_| ())
    }

    /// Starts a stopped container again (same volumes, networks, ports).
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        self.run(&["start", container]).await.map(|_| ())
    }

    /// Freezes every process of the container (cgroup freezer).
    pub async fn pause(&self, container: &str) -> Result<(), DockerError> {
        self.run(&["pause", container]).await.map(|_| ())
    }

    pub async fn unpause(&self, container: &str) -> Result<(), DockerError> {
        self.run(&["unpause", container]).await.map(|_| ())
    }

    /// The last `lines` lines of a container's log (stdout and stderr).
    pub async fn logs(&self, container: &str, lines: usize) -> Result<String, DockerError> {
        let output = Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), container])
            .stdin(Stdio::null())
            .output();
        match tokio::time::timeout(self.timeout, output).await {
            Ok(Ok(out)) => Ok(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Ok(Err(e)) => Err(DockerError::Spawn(e)),
            Err(_) => Err(DockerError::TimedOut {
                args: format!("logs {container}"),
                timeout: self.timeout,
            }),
        }
    }

    /// Writes a container's whole log (stdout and stderr, across restarts)
    /// to `path`, streaming: a long run's log need not fit in memory.
    pub async fn logs_to_file(
        &self,
        container: &str,
        path: &std::path::Path,
    ) -> Result<(), DockerError> {
        let io = |source| DockerError::Io {
            what: format!("create {}", path.display()),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let err = file.try_clone().map_err(io)?;
        let status = Command::new("docker")
            .args(["logs", container])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(self.timeout, status).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(DockerError::Failed {
                args: format!("logs {container}"),
                status: status.to_string(),
                stderr: format!("see {}", path.display()),
            }),
            Ok(Err(e)) => Err(DockerError::Spawn(e)),
            Err(_) => Err(DockerError::TimedOut {
                args: format!("logs {container}"),
                timeout: self.timeout,
            }),
        }
    }

    /// Removes every container, network and volume labelled with `run`
    /// (`None`: of every run). Best effort and blocking (it also runs from
    /// `Drop`, where no async runtime may be left): returns what it could
    /// not remove.
    pub fn remove_run(run: Option<&str>) -> Vec<String> {
        let filter = match run {
            Some(run) => format!("label={RUN_LABEL}={run}"),
            None => format!("label={RUN_LABEL}"),
        };
        // Containers first: a network or volume in use cannot be removed.
        let listings: [(&[&str], &[&str]); 3] = [
            (&["ps", "-aq", "--filter"], &["rm", "-f", "-v"]),
            (&["network", "ls", "-q", "--filter"], &["network", "rm"]),
            (&["volume", "ls", "-q", "--filter"], &["volume", "rm", "-f"]),
        ];
        let mut errors = Vec::new();
        for (list, remove) in listings {
            let out = match std::process::Command::new("docker")
                .args(list)
                .arg(&filter)
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) => out,
                Err(e) => {
                    errors.push(format!("docker {}: {e}", list.join(" ")));
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let ids: Vec<&str> = text.split_whitespace().collect();
            if ids.is_empty() {
                continue;
            }
            match std::process::Command::new("docker")
                .args(remove)
                .args(&ids)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => errors.push(format!(
                    "docker {} {}: {}",
                    remove.join(" "),
                    ids.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => errors.push(format!("docker {}: {e}", remove.join(" "))),
            }
        }
        errors
    }
}
