//! A child build: `edgebuild build` run as a separate process in a workspace copy, with a
//! private cache, no remote, in the sandbox, under the [`Conditions`] of a verification.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::{VerifyError, io_err};
use edgebuild_engine::exec::Outcome;

/// The conditions of one build: what reprotest calls a variation. A plain build
/// ([`Conditions::plain`]) sets none of them: it runs as the user's own build would.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub jobs: usize,
    pub threads: usize,
    /// Variables given to `cmd` stages that do not declare them (outside their keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stage_env: Vec<(&'static str, &'static str)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Where the workspace copy lies, relative to the temporary directory.
    pub dir: &'static str,
}

impl Conditions {
    /// A build from scratch as the user would run it: this machine's parallelism, the user's
    /// environment (declared `env` values must match the ones the lock was built with).
    pub fn plain() -> Conditions {
        Conditions {
            jobs: cpus(),
            threads: cpus(),
            stage_env: Vec::new(),
            umask: None,
            dir: "tree",
        }
    }

    /// The first build of `--vary`: UTC, the C locale, umask 022, all CPUs.
    pub fn reference() -> Conditions {
        Conditions {
            jobs: cpus(),
            threads: cpus(),
            stage_env: vec![
                ("TZ", "UTC"),
                ("LC_ALL", "C"),
                ("LANG", "C"),
                ("SOURCE_DATE_EPOCH", "0"),
            ],
            umask: Some(0o022),
            dir: "a/workspace",
        }
    }

    /// The second build of `--vary`: every condition differs from [`Conditions::reference`].
    pub fn varied() -> Conditions {
        Conditions {
            jobs: 1,
            threads: if cpus() > 1 { 1 } else { 2 },
            stage_env: vec![
                ("TZ", "<+1345>-13:45"),
                ("LC_ALL", "C.UTF-8"),
                ("LANG", "C.UTF-8"),
                ("SOURCE_DATE_EPOCH", "1700000000"),
            ],
            umask: Some(0o077),
            dir: "variation-b/a/much/longer/path/to/the/workspace",
        }
    }

    pub fn stage_var(&self, name: &str) -> &str {
        self.stage_env
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v)
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Stage outcomes of a child build, and how it ended.
#[derive(Debug)]
pub struct ChildBuild {
    pub outcomes: BTreeMap<String, Outcome>,
    pub code: Option<i32>,
}

#[derive(serde::Deserialize)]
struct ChildReport {
    stages: Vec<ChildStage>,
}

#[derive(serde::Deserialize)]
struct ChildStage {
    stage: String,
    outcome: Outcome,
}

/// Runs `edgebuild build` on the workspace at `root` with the cache `cache`, under `conditions`,
/// with no remote and none of the caller's `EDGEBUILD_*` settings.
pub fn child_build(
    root: &Path,
    cache: &Path,
    targets: &[String],
    conditions: &Conditions,
) -> Result<ChildBuild, VerifyError> {
    let exe = std::env::current_exe().map_err(io_err(Path::new("edgebuild executable")))?;
    let mut cmd = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EDGEBUILD_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(root)
        .arg("-C")
        .arg(root)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--no-remote")
        .args(["build", "--json", "--sandbox", "--jobs"])
        .arg(conditions.jobs.to_string())
        .env("RAYON_NUM_THREADS", conditions.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in &conditions.stage_env {
        cmd.arg(format!("--variation-env={name}={value}"));
    }
    cmd.arg("--").args(targets);
    if let Some(umask) = conditions.umask {
        let umask = umask as libc::mode_t;
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::umask(umask);
                Ok(())
            });
        }
    }
    let output = cmd
        .output()
        .map_err(io_err(Path::new("edgebuild executable")))?;
    let outcomes = serde_json::from_slice::<ChildReport>(&output.stdout)
        .map(|r| r.stages.into_iter().map(|s| (s.stage, s.outcome)).collect())
        .unwrap_or_default();
    Ok(ChildBuild {
        outcomes,
        code: output.status.code(),
    })
}

impl ChildBuild {
    /// A build whose stages all ran or whose gates failed (a verdict to compare) is usable.
    pub fn check(&self, what: &str) -> Result<(), VerifyError> {
        match self.code {
            Some(0) | Some(3) => Ok(()),
            code => {
                let failed: Vec<&str> = self
                    .outcomes
                    .iter()
                    .filter(|(_, o)| **o == Outcome::Failed)
                    .map(|(s, _)| s.as_str())
                    .collect();
                let message = match (code, failed.is_empty()) {
                    (_, false) => format!("stage(s) failed: {}", failed.join(", ")),
                    (Some(2), true) => "the build refused its input (above); an input missing at a commit is usually a file that git does not track".to_string(),
                    (Some(code), true) => format!("the build exited with code {code}"),
                    (None, true) => "the build was killed by a signal".to_string(),
                };
                Err(VerifyError::BuildFailed {
                    what: what.to_string(),
                    message,
                })
            }
        }
    }
}
