//! Running stale stages in dependency order, in parallel, and the interface of an executor.
//!
//! The [`scheduler`] hands a ready stage to a worker of a pool of `-j N` threads; it knows only
//! the graph and outcomes, never what a stage does. The worker ([`stage`]) hashes the stage's
//! inputs, asks [`crate::plan::decide`] what to do, and then skips it (up to date), restores its
//! outputs from the cache, or runs it through an [`Executor`] and stores its outputs. Early
//! cutoff falls out of the keys: a dependent whose inputs hash as before is up to date. A failed
//! stage blocks its dependents; without `--keep-going` nothing new starts after a failure.
//! Nothing is cached for a stage that did not finish, and lock files are rewritten at the end
//! ([`locks`]) with only what is true on disk. [`report`] holds what a build returns,
//! [`progress`] what it prints, [`local`] the executor that runs stages on this machine.

pub mod local;
pub mod locks;
pub mod progress;
pub mod report;
pub mod scheduler;
pub mod stage;

use std::ffi::OsString;
use std::path::Path;

use serde::Serialize;

use crate::op::OpOutcome;
use crate::stage::Stage;

pub use local::{LocalExecutor, run_op, run_shell, tail};
pub use report::{BuildOptions, BuildReport, Outcome, StageResult};
pub use scheduler::build;

/// A stage as an executor sees it: everything it may read and must write (SPEC.md, "`edgebuild
/// build`": a stage is fully described by its command or op, declared inputs, env, params and
/// outputs).
pub struct Job<'a> {
    pub stage: &'a Stage,
    pub root: &'a Path,
    /// The expanded command of a `cmd` stage.
    pub command: Option<String>,
    /// Declared environment variables that are set.
    pub env: Vec<(String, OsString)>,
    /// What every write into the workspace passes first (SPEC.md, "Path guard").
    pub guard: &'a crate::guard::PathGuard,
}

/// A finished job.
pub struct ExecSuccess {
    pub outcome: OpOutcome,
    /// Lines to show the user (a gate's checks, for example).
    pub log: Vec<String>,
    /// How a remote executor ran it, when one did.
    pub remote: Option<RemoteRun>,
}

/// How a remote executor ran a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteRun {
    /// Executed on a worker.
    Executed,
    /// Served from the remote action cache: no execution.
    ActionCache,
    /// The executor failed it and it ran locally (`--remote-exec-fallback`).
    Fallback,
}

/// A job that failed, with the end of what it printed.
pub struct ExecFailure {
    pub message: String,
    pub log_tail: Vec<String>,
    /// The stage's inputs or params are wrong (exit 2) rather than its run failing.
    pub bad_input: bool,
}

/// Runs a job: on this machine ([`LocalExecutor`]), in a sandbox, or on a remote executor.
pub trait Executor: Sync {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure>;
}
