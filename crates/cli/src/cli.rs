//! The command line: the global flags, the subcommands, and dispatch to [`crate::commands`].
//!
//! Human output goes to stderr (progress) and stdout (a plan, a graph); `--json` puts the
//! machine-readable result on stdout with stable field names. Every command returns an
//! [`ExitCode`] or an [`crate::Error`] that maps to one (SPEC.md, "Exit codes").

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::commands::{self, Session};
use crate::error::{ExitCode, Result};
use edgebuild_engine::layout::CACHE_ENV;
use edgebuild_remote::config::RemoteOverrides;

#[derive(Debug, Parser)]
#[command(
    name = "edgebuild",
    version,
    about = "Reproducible, gated pipelines that ship ML models to edge devices"
)]
pub struct Cli {
    /// Run as if started in DIR (any directory inside the workspace).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The cache directory (default: `cache/` in the workspace).
    #[arg(long, global = true, env = CACHE_ENV, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The shared remote cache (file://, http(s)://, s3://, gs://, az://); overrides
    /// EDGEBUILD_REMOTE and edgebuild.yaml.
    #[arg(long, global = true, value_name = "URL")]
    pub remote: Option<String>,
    /// Upload what this build produces to the remote (CI writers; off by default).
    #[arg(long, global = true)]
    pub remote_upload: bool,
    /// Fail with exit code 6 when the remote is unavailable instead of building locally.
    #[arg(long, global = true)]
    pub remote_required: bool,
    /// Use no remote cache and no remote executor, whatever the configuration says.
    #[arg(long, global = true, conflicts_with_all = ["remote", "remote_upload", "remote_required"])]
    pub no_remote: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a build would do and why, without running anything.
    Plan(commands::plan::Args),
    /// Build stale stages in dependency order and write the lock files.
    Build(commands::build::Args),
    /// Rebuild a commit from scratch and compare its artifacts with the lock committed there
    /// (or, with --vary, build the working tree twice under different conditions).
    VerifyReproducible(commands::verify_reproducible::Args),
    /// Compare the reports, metrics and gate verdicts of two commits (default: a commit
    /// against the working tree), with absolute and relative deltas.
    Compare(commands::compare::Args),
    /// Print the stage graph.
    Dag(commands::dag::Args),
    /// Run a quantized model (a GGUF written by the quantize op) on samples and print the top-k.
    Infer(commands::infer::Args),
    /// Measure this host's peak compute and memory bandwidth, as a device profile entry.
    ProfileHost(commands::profile_host::Args),
    /// The shared remote cache: what is where, and moving entries by hand.
    Cache(commands::cache::Args),
    /// Generate the runbook of pipelines from the pipelines themselves: inputs and their hashes,
    /// stages, gates and what to do when they fail, how to ship and reproduce.
    Runbook(commands::runbook::Args),
    /// Check this machine and workspace: toolchain against the locks, cache, remote, git state,
    /// device profiles, pointed inputs, runbooks. Exits 2 when something must be fixed.
    Doctor(commands::doctor::Args),
    /// Make an Ed25519 key pair for signing releases: PATH (private, mode 0600) and PATH.pub.
    /// Keep the private key out of the repository and the cache.
    Keygen(commands::keygen::Args),
    /// Make a signed release of a pipeline from its current lock: only when the lock matches the
    /// working tree and every gate passed. Writes releases/PIPELINE/NUMBER.json (and the
    /// pre-signed rollback to the previous release).
    Release(commands::release::Args),
    /// Check a release manifest as a device does before installing: signature, number above
    /// the running release, artifact hashes.
    VerifyRelease(commands::verify_release::Args),
    /// Scaffold a workspace for your own model: a pipeline (imatrix, quantize, evaluate, report,
    /// gates, package), device profiles, a .gitignore and a CI workflow. Asks for what is missing
    /// when run in a terminal.
    Init(commands::init::Args),
    /// Put large files (model weights, data sets) under version control without git holding
    /// them: store each in the cache (and the remote, with --remote-upload) and write a small
    /// committed pointer file PATH.pointer.
    Add(commands::add::Args),
    /// Bring back the files that pointer files name, verified by hash: from the local cache,
    /// else the remote.
    Pull(commands::pull::Args),
    /// The fleet server: `init` a database, `serve` the device and operator API with its
    /// rollout controller, `enroll` and `revoke` devices.
    #[command(subcommand)]
    Fleet(commands::fleet::Args),
    /// Staged rollouts of a signed release to the fleet: start, status, pause, resume, abort,
    /// rollback. The admin token comes from EDGEBUILD_FLEET_TOKEN.
    #[command(subcommand)]
    Rollout(commands::rollout::Args),
    /// The device side: `simulate` a fleet that speaks the device API and runs the released
    /// model.
    #[command(subcommand)]
    Device(commands::device::Args),
    /// Sign off a manual stage's checklist for exactly its current inputs (recorded in
    /// pipelines/PIPELINE.approvals.json, to commit with the lock); what depends on it can then
    /// build.
    Approve(commands::approve::Args),
    /// Run one op from its description, in the current directory: what a remote worker runs
    /// for a built-in op stage. Internal.
    #[command(hide = true)]
    RunOp(commands::run_op::Args),
    /// Remove cache entries that no lock file in `pipelines/` refers to.
    Gc(commands::gc::Args),
}

/// Parses arguments and runs the command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let session = Session {
        dir: cli.dir,
        cache_dir: cli.cache_dir,
        remote: RemoteOverrides {
            url: cli.remote,
            upload: cli.remote_upload,
            required: cli.remote_required,
            disabled: cli.no_remote,
        },
        ops: Arc::new(edgebuild_ml::ops::registry()),
    };
    match cli.command {
        Command::Plan(args) => commands::plan::run(args, &session),
        Command::Build(args) => commands::build::run(args, &session),
        Command::VerifyReproducible(args) => commands::verify_reproducible::run(args, &session),
        Command::Compare(args) => commands::compare::run(args, &session),
        Command::Dag(args) => commands::dag::run(args, &session),
        Command::Infer(args) => commands::infer::run(args, &session),
        Command::ProfileHost(args) => commands::profile_host::run(args, &session),
        Command::Cache(args) => commands::cache::run(args, &session),
        Command::Runbook(args) => commands::runbook::run(args, &session),
        Command::Doctor(args) => commands::doctor::run(args, &session),
        Command::Keygen(args) => commands::keygen::run(args, &session),
        Command::Release(args) => commands::release::run(args, &session),
        Command::VerifyRelease(args) => commands::verify_release::run(args, &session),
        Command::Add(args) => commands::add::run(args, &session),
        Command::Pull(args) => commands::pull::run(args, &session),
        Command::Approve(args) => commands::approve::run(args, &session),
        Command::RunOp(args) => commands::run_op::run(args, &session),
        Command::Gc(args) => commands::gc::run(args, &session),
        Command::Init(args) => commands::init::run(args, &session),
        Command::Fleet(args) => commands::fleet::run(args, &session),
        Command::Rollout(args) => commands::rollout::run(args, &session),
        Command::Device(args) => commands::device::run(args, &session),
    }
}
