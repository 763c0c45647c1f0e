//! The command line: argument parsing and the output of each subcommand.
//!
//! Human output goes to stderr (progress) and stdout (a plan, a graph); `--json` puts the
//! machine-readable result on stdout with stable field names. Every command returns an
//! [`ExitCode`] or an [`Error`] that maps to one (SPEC.md, "Exit codes").

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::context::{Access, CACHE_ENV, Context, Options};
use crate::error::{Error, ExitCode, Result};
use crate::exec::{self, BuildOptions, LocalExecutor, Outcome};
use crate::plan::{self, Status};

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
    Plan {
        /// Pipelines (file stems), stage ids (PIPELINE:STAGE) or stage names; default all.
        targets: Vec<String>,
        /// Print the plan as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Exit with code 1 when anything would run or be restored (for CI).
        #[arg(long)]
        check: bool,
    },
    /// Build stale stages in dependency order and write the lock files.
    Build {
        /// Pipelines (file stems), stage ids (PIPELINE:STAGE) or stage names; default all.
        targets: Vec<String>,
        /// Stages to run at once (default: the number of CPUs).
        #[arg(short, long, value_name = "N")]
        jobs: Option<usize>,
        /// Keep building independent stages after a failure.
        #[arg(short = 'k', long)]
        keep_going: bool,
        /// Print the result of every stage as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Run `cmd` stages in a sandbox that holds only their declared inputs (bubblewrap where
        /// installed: the system read-only, no workspace, no network): an undeclared input fails.
        #[arg(long)]
        sandbox: bool,
        /// Write a JUnit XML report (every gate check and every stage a test case) to FILE.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write a Markdown summary (verdict, gate checks, failures) to FILE, e.g.
        /// "$GITHUB_STEP_SUMMARY".
        #[arg(long, value_name = "FILE")]
        summary: Option<PathBuf>,
        /// Set NAME=VALUE for `cmd` stages that do not declare NAME, outside their keys.
        /// Internal: used by `verify-reproducible --vary` with a private cache.
        #[arg(long, hide = true, value_name = "NAME=VALUE")]
        variation_env: Vec<String>,
        /// Run stages on a Remote Execution API v2 server (grpc://HOST:PORT or grpcs://);
        /// overrides EDGEBUILD_REMOTE_EXEC and edgebuild.yaml's `remote_exec`.
        #[arg(long, value_name = "URL")]
        remote_exec: Option<String>,
        /// The executor's instance name.
        #[arg(long, value_name = "NAME", default_value = "")]
        remote_instance: String,
        /// Remote actions in flight at once (default 8; `-j` defaults to it with an executor).
        #[arg(long, value_name = "N")]
        remote_jobs: Option<usize>,
        /// Run a stage locally, with a warning, when the executor fails it for reasons of its own.
        #[arg(long)]
        remote_exec_fallback: bool,
    },
    /// Rebuild a commit from scratch and compare its artifacts with the lock committed there
    /// (or, with --vary, build the working tree twice under different conditions).
    VerifyReproducible {
        /// The commit to verify (a hash, branch, tag, HEAD~1...).
        #[arg(required_unless_present = "vary")]
        commit: Option<String>,
        /// Pipelines to verify (file stems); default all.
        pipelines: Vec<String>,
        /// Build the working tree twice, varying the working directory, time zone, locale,
        /// umask, SOURCE_DATE_EPOCH, jobs and threads, and compare the two builds.
        #[arg(long)]
        vary: bool,
        /// Print the comparison as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Keep the temporary workspace copies and caches (their path is printed).
        #[arg(long)]
        keep: bool,
    },
    /// Compare the reports, metrics and gate verdicts of two commits (default: a commit
    /// against the working tree), with absolute and relative deltas.
    Compare {
        /// The base commit (a hash, branch, tag, HEAD~1...).
        a: String,
        /// The commit to compare with it; default: the working tree.
        b: Option<String>,
        #[arg(long, value_enum, default_value_t = CompareFormat::Text)]
        format: CompareFormat,
    },
    /// Print the stage graph.
    Dag {
        #[arg(long, value_enum, default_value_t = DagFormat::Dot)]
        format: DagFormat,
    },
    /// Run a quantized model (a GGUF written by the quantize op) on samples and print the top-k.
    Infer {
        /// The GGUF model.
        model: PathBuf,
        /// Samples: an .npz with an `x` array (and optionally `y`), or a CSV.
        #[arg(long)]
        input: PathBuf,
        /// Classes to show per sample.
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// Samples to run (from the start of the file).
        #[arg(long, default_value_t = 5)]
        limit: usize,
    },
    /// Measure this host's peak compute and memory bandwidth, as a device profile entry.
    ProfileHost {
        /// Name of the profile entry.
        #[arg(long, default_value = "host")]
        name: String,
    },
    /// The shared remote cache: what is where, and moving entries by hand.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Generate the runbook of pipelines from the pipelines themselves: inputs and their hashes,
    /// stages, gates and what to do when they fail, how to ship and reproduce.
    Runbook {
        /// Pipelines (file stems); default all.
        pipelines: Vec<String>,
        #[arg(long, value_enum, default_value_t = RunbookFormat::Markdown)]
        format: RunbookFormat,
        /// Write pipelines/NAME.runbook.md (or .html) instead of printing.
        #[arg(long)]
        write: bool,
    },
    /// Check this machine and workspace: toolchain against the locks, cache, remote, git state,
    /// device profiles, pointed inputs, runbooks. Exits 2 when something must be fixed.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 key pair for signing releases: PATH (private, mode 0600) and PATH.pub.
    /// Keep the private key out of the repository and the cache.
    Keygen { path: PathBuf },
    /// Make a signed release of a pipeline from its current lock: only when the lock matches the
    /// working tree and every gate passed. Writes releases/PIPELINE/NUMBER.json (and the
    /// pre-signed rollback to the previous release).
    Release {
        pipeline: String,
        #[arg(long)]
        version: String,
        /// The private key (from `edgebuild keygen`).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// The release the pre-signed rollback returns to (default: the newest release; name
        /// an earlier one when the newest was itself rolled back).
        #[arg(long, value_name = "N")]
        rollback_to: Option<u64>,
    },
    /// Check a release manifest as a device does before installing: signature, number above
    /// the running release, artifact hashes.
    VerifyRelease {
        manifest: PathBuf,
        /// The public key (PATH.pub from `edgebuild keygen`).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// The release the device runs now.
        #[arg(long, value_name = "N")]
        current: Option<u64>,
        /// A directory with the artifacts by name (default: the local cache, by hash).
        #[arg(long, value_name = "DIR")]
        artifacts: Option<PathBuf>,
    },
    /// Scaffold a workspace for your own model: a pipeline (imatrix, quantize, evaluate, report,
    /// gates, package), device profiles, a .gitignore and a CI workflow. Asks for what is missing
    /// when run in a terminal.
    Init(crate::init::InitOptions),
    /// Put large files (model weights, data sets) under version control without git holding
    /// them: store each in the cache (and the remote, with --remote-upload) and write a small
    /// committed pointer file PATH.pointer.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Bring back the files that pointer files name, verified by hash: from the local cache,
    /// else the remote.
    Pull {
        /// Replace a pointed file that was changed locally.
        #[arg(long)]
        force: bool,
    },
    /// The fleet server: `init` a database, `serve` the device and operator API with its
    /// rollout controller, `enroll` and `revoke` devices.
    #[command(subcommand)]
    Fleet(FleetAction),
    /// Staged rollouts of a signed release to the fleet: start, status, pause, resume, abort,
    /// rollback. The admin token comes from EDGEBUILD_FLEET_TOKEN.
    #[command(subcommand)]
    Rollout(RolloutAction),
    /// The device side: `simulate` a fleet that speaks the device API and runs the released
    /// model.
    #[command(subcommand)]
    Device(DeviceAction),
    /// Sign off a manual stage's checklist for exactly its current inputs (recorded in
    /// pipelines/PIPELINE.approvals.json, to commit with the lock); what depends on it can then
    /// build.
    Approve {
        /// The manual stage (PIPELINE:STAGE, or its name).
        stage: String,
        /// Who signs (default: git's user.name, else $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Run one op from its description, in the current directory: what a remote worker runs
    /// for a built-in op stage. Internal.
    #[command(hide = true)]
    RunOp { description: PathBuf },
    /// Remove cache entries that no lock file in `pipelines/` refers to.
    Gc {
        /// Collect a cache outside the workspace too (it may hold other workspaces' entries).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// For each locked stage: whether its entry is in the local cache and the remote.
    Status {
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upload the local entries of the locked stages to the remote.
    Push { targets: Vec<String> },
    /// Download the remote entries of the locked stages into the local cache (verified).
    Pull { targets: Vec<String> },
}

/// Where the fleet server is.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The fleet server's URL.
    #[arg(long, env = crate::fleet::SERVER_ENV, value_name = "URL")]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum FleetAction {
    /// Create a fleet database and print its admin token, once (it is stored hashed).
    Init {
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
    },
    /// Serve the device and operator API and run the rollout controller until stopped.
    Serve {
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// The release public key (PATH.pub from `edgebuild keygen`): manifests not signed
        /// with it are refused.
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// How often the controller looks at the rollouts.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::fleet::parse_duration)]
        tick: std::time::Duration,
    },
    /// Enroll devices; prints `ID TOKEN` per device (give each its token; it is stored hashed).
    Enroll {
        #[arg(required = true)]
        devices: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a device: its token opens nothing any more.
    Revoke {
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Upload release N of a pipeline (its manifest, its pre-signed rollback and their
    /// artifacts) and start rolling it out under a policy file.
    Start {
        pipeline: String,
        #[arg(long, value_name = "N")]
        release: u64,
        #[arg(long, value_name = "PATH")]
        policy: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Per stage: devices targeted, confirmed, failed, timed out, and the confidence
    /// comparison; then the audit log. Without an id: every rollout.
    Status {
        id: Option<i64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop targeting more devices and advancing (abort conditions are still watched).
    Pause(RolloutChange),
    /// Continue a paused rollout; the stage's soak time starts again.
    Resume(RolloutChange),
    /// Stop the rollout and send the devices it reached the pre-signed rollback.
    Abort(RolloutChange),
    /// Send the pre-signed rollback to every device of a completed rollout.
    Rollback(RolloutChange),
}

#[derive(Debug, clap::Args)]
pub struct RolloutChange {
    pub id: i64,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum DeviceAction {
    /// Simulate N devices: poll, verify signature and hashes, install, run the released GGUF on
    /// held-out inputs for the health check and the confidence telemetry, report.
    Simulate {
        #[command(flatten)]
        args: crate::fleet::simulate::SimulateArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunbookFormat {
    Markdown,
    Html,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompareFormat {
    Text,
    /// A table for a pull-request comment or a CI job summary.
    Markdown,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Dot,
    Mermaid,
}

/// The directory the command starts from: `-C DIR` or the current directory.
fn start_dir(dir: &Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir.clone()),
        None => std::env::current_dir().map_err(|e| Error::io(".", e)),
    }
}

/// Parses arguments and runs the command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let options = Options {
        dir: cli.dir.clone(),
        cache_dir: cli.cache_dir.clone(),
        remote: crate::context::RemoteOverrides {
            url: cli.remote.clone(),
            upload: cli.remote_upload,
            required: cli.remote_required,
            disabled: cli.no_remote,
        },
    };
    match cli.command {
        Command::Plan {
            targets,
            json,
            check,
        } => {
            let mut ctx = Context::open(&options, Access::Read)?;
            // `plan` runs nothing, so each path's hash can be looked up once.
            ctx.stat.memoize();
            let selected = ctx.select(&targets)?;
            let plans = plan::plan(&ctx, &selected);
            let pipelines: BTreeSet<usize> = selected
                .iter()
                .map(|&s| ctx.ws.stages[s].pipeline)
                .collect();
            let stale_runbooks = crate::runbook::stale(&ctx, &pipelines);
            ctx.save_stat_cache();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "stages": plans,
                        "stale_runbooks": stale_runbooks,
                    }))
                    .expect("plans serialize")
                );
            } else {
                print!("{}", plan::render(&ctx, &plans));
            }
            for file in &stale_runbooks {
                let name = file
                    .trim_start_matches("pipelines/")
                    .trim_end_matches(".runbook.md");
                eprintln!(
                    "note: {file} no longer matches its pipeline: run `edgebuild runbook {name} --write`"
                );
            }
            let stale =
                plans.iter().any(|p| p.status != Status::UpToDate) || !stale_runbooks.is_empty();
            // Freeing a large workspace takes measurable time and the process ends here.
            std::mem::forget(ctx);
            Ok(if check && stale {
                ExitCode::WouldRun
            } else {
                ExitCode::Ok
            })
        }
        Command::Build {
            targets,
            jobs,
            keep_going,
            json,
            junit,
            summary,
            variation_env,
            sandbox,
            remote_exec,
            remote_instance,
            remote_jobs,
            remote_exec_fallback,
        } => {
            let ctx = Context::open(&options, Access::Write)?;
            let selected = ctx.select(&targets)?;
            let local: Box<dyn exec::Executor + Send> = if sandbox {
                Box::new(crate::sandbox::SandboxExecutor::new(
                    crate::repro::variation_env(&variation_env),
                ))
            } else {
                Box::new(LocalExecutor {
                    variation_env: crate::repro::variation_env(&variation_env),
                })
            };
            // `--no-remote` (verification builds among them) runs everything here.
            let exec_settings = match options.remote.disabled {
                true => None,
                false => crate::context::remote_exec_settings(
                    ctx.root(),
                    &crate::remote_exec::RemoteExecSettings {
                        url: remote_exec,
                        instance: remote_instance,
                        jobs: remote_jobs,
                        fallback: remote_exec_fallback,
                    },
                )?,
            };
            let (remote, local) = match &exec_settings {
                Some(s) => (
                    Some(
                        crate::remote_exec::RemoteExecutor::new(s, local)
                            .map_err(|e| Error::usage(e, None))?,
                    ),
                    None,
                ),
                None => (None, Some(local)),
            };
            let default_jobs = match &exec_settings {
                Some(s) => s.jobs.unwrap_or(8),
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            };
            let jobs = jobs.unwrap_or(default_jobs).max(1);
            let started = std::time::Instant::now();
            let executor: &dyn exec::Executor = match (&remote, &local) {
                (Some(remote), _) => remote,
                (None, Some(local)) => local.as_ref(),
                (None, None) => unreachable!("one executor is made"),
            };
            let mut report =
                exec::build(&ctx, &selected, BuildOptions { jobs, keep_going }, executor)
                    .map_err(|e| Error::io("lock files", e))?;
            report.remote_exec = remote.as_ref().map(|r| r.stats());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialize")
                );
            }
            for (file, text) in [
                (
                    junit,
                    crate::ci::junit as fn(&Context, &exec::BuildReport) -> String,
                ),
                (summary, crate::ci::markdown),
            ] {
                if let Some(file) = file {
                    crate::store::write_atomic(&file, text(&ctx, &report).as_bytes())
                        .map_err(|e| Error::io(&file, e))?;
                }
            }
            eprintln!(
                "Build: {} ran, {} restored, {} up to date, {} failed, {} gate(s) failed, {} blocked{} in {:.2}s",
                report.count(Outcome::Ran),
                report.count(Outcome::Restored),
                report.count(Outcome::UpToDate),
                report.count(Outcome::Failed),
                report.count(Outcome::GateFailed),
                report.count(Outcome::Blocked),
                match report.count(Outcome::NotStarted) {
                    0 => String::new(),
                    n => format!(", {n} not started after the failure"),
                },
                started.elapsed().as_secs_f64()
            );
            if let Some(remote) = &ctx.remote {
                let stats = remote.stats();
                eprintln!(
                    "Remote {}: {} restored, {} missed, {} rejected, {} entr{} uploaded",
                    remote.url(),
                    stats.hits,
                    stats.misses,
                    stats.rejected,
                    stats.uploaded_entries,
                    if stats.uploaded_entries == 1 {
                        "y"
                    } else {
                        "ies"
                    },
                );
            }
            if let Some(stage) = report.stages.iter().find(|s| s.remote_unavailable) {
                return Err(Error::Remote(crate::remote::RemoteError::Unavailable {
                    url: ctx
                        .remote
                        .as_ref()
                        .map_or(String::new(), |r| r.url().to_string()),
                    message: format!(
                        "{} could not use it: {}",
                        stage.stage,
                        stage.error.as_deref().unwrap_or("?")
                    ),
                }));
            }
            let failed = report.with_outcome(Outcome::Failed);
            let bad: Vec<&str> = report
                .stages
                .iter()
                .filter(|s| s.bad_input)
                .map(|s| s.stage.as_str())
                .collect();
            if !bad.is_empty() && bad.len() == failed.len() {
                return Err(Error::StageInput {
                    stages: bad.join(", "),
                });
            }
            if !failed.is_empty() {
                return Err(Error::StagesFailed {
                    failed: failed.len(),
                    stages: failed.join(", "),
                });
            }
            std::mem::forget(ctx); // see `plan`
            let gates = report.with_outcome(Outcome::GateFailed);
            if !gates.is_empty() {
                return Err(Error::GatesFailed {
                    stages: gates.join(", "),
                });
            }
            let waiting = report.with_outcome(Outcome::AwaitingSignOff);
            if !waiting.is_empty() {
                return Err(Error::AwaitingSignOff {
                    stages: waiting.join(", "),
                });
            }
            Ok(ExitCode::Ok)
        }
        Command::VerifyReproducible {
            commit,
            mut pipelines,
            vary,
            json,
            keep,
        } => {
            let start = start_dir(&cli.dir)?;
            let verification = if vary {
                // With --vary there is no commit: a positional argument names a pipeline.
                pipelines.splice(0..0, commit);
                crate::repro::verify_variations(&start, &pipelines, keep)?
            } else {
                let commit = commit.expect("clap requires a commit without --vary");
                crate::repro::verify_commit(&start, &commit, &pipelines, keep)?
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verification).expect("verifications serialize")
                );
            } else {
                print!("{}", crate::repro::render(&verification));
            }
            crate::repro::verdict(&verification)?;
            Ok(ExitCode::Ok)
        }
        Command::Compare { a, b, format } => {
            let start = start_dir(&cli.dir)?;
            let root = crate::spec::Workspace::find_root(&start)?;
            let cache = cli
                .cache_dir
                .clone()
                .map_or_else(|| root.join("cache"), |d| start.join(d));
            let comparison = crate::compare::compare(&start, &a, b.as_deref(), &cache)?;
            match format {
                CompareFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&comparison).expect("comparisons serialize")
                ),
                CompareFormat::Text => print!("{}", crate::compare::render(&comparison, false)),
                CompareFormat::Markdown => {
                    print!("{}", crate::compare::render(&comparison, true))
                }
            }
            Ok(ExitCode::Ok)
        }
        Command::Dag { format } => {
            let ctx = Context::open(&options, Access::Read)?;
            print!(
                "{}",
                crate::graph::render(&ctx.ws, &ctx.graph, matches!(format, DagFormat::Mermaid))
            );
            Ok(ExitCode::Ok)
        }
        Command::Infer {
            model,
            input,
            top_k,
            limit,
        } => {
            let bad = |message: String| Error::usage(message, None);
            let quant = crate::model::QuantModel::load(&model).map_err(bad)?;
            quant.arch.classes().map_err(bad)?;
            let data = crate::data::Dataset::load(&input, &quant.arch.input_shape).map_err(bad)?;
            let n = limit.min(data.len());
            let x = data.x.narrow(0, 0, n).map_err(|e| bad(e.to_string()))?;
            let out = quant
                .forward(&x)
                .and_then(|y| crate::model::probabilities(&quant.arch, &y))
                .and_then(|p| p.to_vec2::<f32>())
                .map_err(|e| bad(e.to_string()))?;
            for (i, row) in out.iter().enumerate() {
                let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let shown: Vec<String> = ranked
                    .iter()
                    .take(top_k)
                    .map(|(c, p)| {
                        let label = quant
                            .arch
                            .labels
                            .get(*c)
                            .cloned()
                            .unwrap_or_else(|| c.to_string());
                        format!("{label} {p:.4}")
                    })
                    .collect();
                let truth = data
                    .y
                    .as_ref()
                    .map(|y| {
                        format!(
                            "  (label {})",
                            quant
                                .arch
                                .labels
                                .get(y[i] as usize)
                                .cloned()
                                .unwrap_or_else(|| y[i].to_string())
                        )
                    })
                    .unwrap_or_default();
                println!("sample {i}: {}{truth}", shown.join(", "));
            }
            Ok(ExitCode::Ok)
        }
        Command::ProfileHost { name } => {
            print!("{}", crate::profile::host_profile_yaml(&name));
            Ok(ExitCode::Ok)
        }
        Command::Cache { action } => {
            let access = match action {
                CacheAction::Pull { .. } => Access::Write,
                _ => Access::Read,
            };
            let ctx = Context::open(&options, access)?;
            let Some(remote) = &ctx.remote else {
                return Err(Error::usage(
                    "no remote cache is configured",
                    Some(format!(
                        "give --remote URL, set {}, or add `remote: {{url: ...}}` to {}",
                        crate::remote::REMOTE_ENV,
                        crate::context::CONFIG_FILE
                    )),
                ));
            };
            match action {
                CacheAction::Status { targets, json } => {
                    let selected = ctx.select(&targets)?;
                    let rows = crate::remote::status(&ctx, remote, &selected);
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({
                                "remote": remote.url(),
                                "stages": rows,
                            }))
                            .expect("status serializes")
                        );
                    } else {
                        println!("remote: {}", remote.url());
                        let width = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5);
                        println!("{:width$}  key           local   remote   bytes", "stage");
                        for row in &rows {
                            let yes = |b: bool| if b { "yes" } else { "no" };
                            let remote = match (row.volatile, row.remote) {
                                (true, _) => "volatile",
                                (false, Some(b)) => yes(b),
                                (false, None) => "?",
                            };
                            println!(
                                "{:width$}  {}  {:6}  {:8} {:>6}",
                                row.stage,
                                row.key.short(),
                                yes(row.local),
                                remote,
                                row.bytes
                            );
                        }
                    }
                    Ok(ExitCode::Ok)
                }
                CacheAction::Push { ref targets } | CacheAction::Pull { ref targets } => {
                    let pushing = matches!(action, CacheAction::Push { .. });
                    let selected = ctx.select(targets)?;
                    let transfer = if pushing {
                        crate::remote::push(&ctx, remote, &selected)?
                    } else {
                        crate::remote::pull(&ctx, remote, &selected)?
                    };
                    let (verb, there, missing) = if pushing {
                        ("pushed", "already on the remote", "not in the local cache")
                    } else {
                        ("pulled", "already local", "not on the remote")
                    };
                    eprintln!(
                        "{verb} {}, {} {there}, {} {missing}, {} volatile (never shared)",
                        transfer.transferred.len(),
                        transfer.already_there.len(),
                        transfer.unavailable.len(),
                        transfer.volatile.len()
                    );
                    for stage in &transfer.unavailable {
                        eprintln!("  {missing}: {stage}");
                    }
                    Ok(ExitCode::Ok)
                }
            }
        }
        Command::Runbook {
            pipelines,
            format,
            write,
        } => {
            let ctx = Context::open(&options, Access::Read)?;
            let chosen = ctx.pipelines_named(&pipelines)?;
            for i in chosen {
                let name = &ctx.ws.pipelines[i].name;
                let markdown = crate::runbook::markdown(&ctx, i);
                let (text, file) = match format {
                    RunbookFormat::Markdown => (markdown, crate::runbook::path(name)),
                    RunbookFormat::Html => (
                        crate::runbook::html(&markdown, &format!("Runbook: {name}")),
                        crate::runbook::path(name).replace(".md", ".html"),
                    ),
                };
                if write {
                    let full = ctx.root().join(&file);
                    crate::store::write_atomic(&full, text.as_bytes())
                        .map_err(|e| Error::io(&full, e))?;
                    eprintln!("wrote {file}");
                } else {
                    print!("{text}");
                }
            }
            Ok(ExitCode::Ok)
        }
        Command::Doctor { json } => {
            // The doctor runs when things are wrong: the workspace may not load and the remote
            // may be down, even if it is required; each is a finding, not an early exit.
            let root = crate::spec::Workspace::find_root(&start_dir(&cli.dir)?)?;
            let quiet = Options {
                remote: crate::context::RemoteOverrides {
                    disabled: true,
                    ..Default::default()
                },
                ..options.clone()
            };
            let opened = Context::open(&quiet, Access::Read);
            let remote =
                crate::context::remote_settings(&root, &options.remote).and_then(|mut s| {
                    s.required = false;
                    crate::remote::Remote::open(&s).map_err(Error::from)
                });
            let findings =
                crate::doctor::check(&root, opened.as_ref(), remote.as_ref().map(|r| r.as_ref()));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "checks": findings }))
                        .expect("findings serialize")
                );
            } else {
                for f in &findings {
                    let level = match f.level {
                        crate::doctor::Level::Ok => "ok  ",
                        crate::doctor::Level::Warn => "WARN",
                        crate::doctor::Level::Fail => "FAIL",
                    };
                    println!("{level} {:9} {}", f.check, f.message);
                    if let Some(fix) = &f.fix {
                        println!("     {:9} fix: {fix}", "");
                    }
                }
            }
            let failed = findings
                .iter()
                .filter(|f| f.level == crate::doctor::Level::Fail)
                .count();
            if failed > 0 {
                return Err(Error::usage(
                    format!("doctor found {failed} problem(s) to fix"),
                    Some("each is listed above with its fix".into()),
                ));
            }
            Ok(ExitCode::Ok)
        }
        Command::Keygen { path } => {
            let key = crate::release::keygen(&path)?;
            eprintln!(
                "wrote {} (private: keep it out of the repository) and {} (public: give it to devices)",
                path.display(),
                crate::release::public_path(&path).display()
            );
            let _ = key;
            Ok(ExitCode::Ok)
        }
        Command::Release {
            pipeline,
            version,
            key,
            rollback_to,
        } => {
            let signing = crate::release::read_signing_key(&key)?;
            // Exclusive: two releases at once must not take the same number.
            let ctx = Context::open(&options, Access::Write)?;
            let made = crate::release::release(&ctx, &pipeline, &version, &signing, rollback_to)?;
            eprintln!(
                "release {} of {pipeline} ({version}): {}",
                made.release, made.manifest
            );
            if let Some((number, path)) = &made.rollback {
                eprintln!("rollback {number} (to the previous release): {path}");
            }
            Ok(ExitCode::Ok)
        }
        Command::VerifyRelease {
            manifest,
            key,
            current,
            artifacts,
        } => {
            let verifying = crate::release::read_verifying_key(&key)?;
            let bytes = std::fs::read(&manifest).map_err(|e| {
                crate::release::ReleaseError::Rejected(format!("{}: {e}", manifest.display()))
            })?;
            let signed: crate::release::SignedManifest =
                serde_json::from_slice(&bytes).map_err(|e| {
                    crate::release::ReleaseError::Rejected(format!("not a manifest: {e}"))
                })?;
            let cache = match &artifacts {
                Some(_) => None,
                None => Some(
                    cli.cache_dir
                        .clone()
                        .map(|d| start_dir(&cli.dir).map(|s| s.join(d)))
                        .unwrap_or_else(|| {
                            crate::spec::Workspace::find_root(&start_dir(&cli.dir)?)
                                .map(|r| r.join("cache"))
                                .map_err(Error::from)
                        })?,
                ),
            };
            let lookup = |a: &crate::release::Artifact| match (&artifacts, &cache) {
                (Some(dir), _) => std::fs::read(dir.join(&a.name)).ok(),
                (None, Some(cache)) => std::fs::read(
                    cache
                        .join("cas")
                        .join(&a.sha256.hex()[..2])
                        .join(a.sha256.hex()),
                )
                .ok(),
                _ => None,
            };
            signed.verify(&verifying, current, &lookup)?;
            println!(
                "ok: release {} ({} {}) signed by {}, {} artifact(s) verified",
                signed.manifest.release,
                signed.manifest.pipeline,
                signed.manifest.version,
                signed.key_id,
                signed.manifest.artifacts.len()
            );
            Ok(ExitCode::Ok)
        }
        Command::Init(init) => {
            let start = start_dir(&None)?;
            let root = match &cli.dir {
                Some(dir) => start.join(dir),
                None => start.clone(),
            };
            std::fs::create_dir_all(root.join(crate::spec::PIPELINES_DIR))
                .map_err(|e| Error::io(&root, e))?;
            let written = crate::init::init(&root, &start, init)?;
            for file in &written.files {
                eprintln!("wrote {file}");
            }
            for file in &written.kept {
                eprintln!("kept  {file} (it exists)");
            }
            eprintln!(
                "next: `edgebuild plan`, then `edgebuild build`; commit the pipeline and its lock"
            );
            Ok(ExitCode::Ok)
        }
        Command::Add { paths } => {
            let (root, store, remote, _lock) = crate::context::open_caches(&options)?;
            let start = start_dir(&cli.dir)?;
            for path in paths {
                let full = start.join(&path);
                let rel = full
                    .strip_prefix(&root)
                    .ok()
                    .and_then(|r| crate::spec::normalize_path(&root, &r.to_string_lossy()).ok())
                    .ok_or_else(|| {
                        Error::usage(
                            format!("{} is not a file inside the workspace", path.display()),
                            None,
                        )
                    })?;
                let pointer = crate::pointer::add(&root, &rel, &store, remote.as_ref())?;
                eprintln!(
                    "added {rel}: {} bytes, sha256 {}; commit {rel}{} (the file itself is now in .gitignore){}",
                    pointer.size,
                    pointer.sha256.short(),
                    crate::pointer::SUFFIX,
                    match &remote {
                        Some(r) if r.upload => format!(", uploaded to {}", r.url()),
                        _ => String::new(),
                    }
                );
            }
            Ok(ExitCode::Ok)
        }
        Command::Pull { force } => {
            let (root, store, remote, _lock) = crate::context::open_caches(&options)?;
            let mut counts = std::collections::BTreeMap::new();
            for pointer in crate::pointer::find(&root) {
                let source =
                    crate::pointer::pull_one(&pointer, Some(&store), remote.as_ref(), force)?;
                *counts.entry(format!("{source:?}")).or_insert(0) += 1;
            }
            eprintln!(
                "pull: {} already in place, {} from the local cache, {} from the remote",
                counts.get("InPlace").unwrap_or(&0),
                counts.get("LocalCache").unwrap_or(&0),
                counts.get("Remote").unwrap_or(&0)
            );
            Ok(ExitCode::Ok)
        }
        Command::RunOp { description } => Ok(crate::remote_exec::run_op(&description)),
        Command::Approve { stage, by } => {
            let ctx = Context::open(&options, Access::Write)?;
            // PIPELINE:STAGE, or a stage name only one pipeline has.
            let named: Vec<usize> = match ctx.ws.stage_index(&stage) {
                Some(index) => vec![index],
                None => (0..ctx.ws.stages.len())
                    .filter(|&i| ctx.ws.stages[i].name == stage)
                    .collect(),
            };
            let [index] = named[..] else {
                return Err(Error::usage(
                    format!(
                        "`{stage}` names {} stages; name one manual stage",
                        named.len()
                    ),
                    Some("say PIPELINE:STAGE".into()),
                ));
            };
            let by = crate::approve::signer(ctx.root(), by);
            let signed = crate::approve::approve(&ctx, index, &by)?;
            let spec = &ctx.ws.stages[index];
            eprintln!(
                "signed off {} as {by} for its current inputs (key {}): {}; commit it with the lock",
                spec.id,
                signed.key.short(),
                crate::approve::approvals_file(
                    std::path::Path::new(""),
                    &ctx.ws.pipelines[spec.pipeline].name
                )
                .display()
            );
            Ok(ExitCode::Ok)
        }
        Command::Fleet(action) => run_fleet(action),
        Command::Rollout(action) => run_rollout(action, &options),
        Command::Device(action) => run_device(action),
        Command::Gc { force } => {
            let ctx = Context::open(&options, Access::Write)?;
            let private = ctx.store.dir().starts_with(ctx.root());
            if !private && !force {
                return Err(Error::usage(
                    format!("the cache {} is outside this workspace", ctx.store.dir().display()),
                    Some("it may hold entries of other workspaces that this workspace's lock files do not name; pass --force to collect it anyway".into()),
                ));
            }
            let keep: BTreeSet<_> = ctx
                .locks
                .iter()
                .flatten()
                .flat_map(|lock| lock.stages.values().map(|s| s.key))
                .collect();
            let report = ctx.store.gc(&keep)?;
            eprintln!(
                "gc: removed {} action entr{} and {} blob{}, freed {} bytes; kept {} entr{} referenced by lock files",
                report.actions,
                if report.actions == 1 { "y" } else { "ies" },
                report.blobs,
                if report.blobs == 1 { "" } else { "s" },
                report.bytes,
                keep.len(),
                if keep.len() == 1 { "y" } else { "ies" },
            );
            Ok(ExitCode::Ok)
        }
    }
}

fn admin_token() -> Option<String> {
    std::env::var(crate::fleet::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

fn fleet_client(server: &ServerArgs) -> Result<crate::fleet::client::Client> {
    let token = admin_token().ok_or_else(|| {
        Error::usage(
            format!("no admin token: set {}", crate::fleet::TOKEN_ENV),
            Some("`edgebuild fleet init` printed it when it made the database".into()),
        )
    })?;
    Ok(crate::fleet::client::Client::new(&server.server, &token)?)
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    Ok(runtime.block_on(future))
}

fn run_fleet(action: FleetAction) -> Result<ExitCode> {
    use crate::fleet::store::{FleetStore, SqliteStore};
    match action {
        FleetAction::Init { db } => {
            if db.exists() {
                return Err(Error::usage(
                    format!("{} exists", db.display()),
                    Some(
                        "a fleet database is made once; serve it with `edgebuild fleet serve`"
                            .into(),
                    ),
                ));
            }
            let store = SqliteStore::open(&db, true)?;
            let token = store.init_admin()?;
            eprintln!(
                "made {}; its admin token follows (shown once, stored hashed): give it to operators as {}",
                db.display(),
                crate::fleet::TOKEN_ENV
            );
            println!("{token}");
            Ok(ExitCode::Ok)
        }
        FleetAction::Serve {
            db,
            listen,
            key,
            tick,
        } => {
            let key = crate::release::read_verifying_key(&key)?;
            let store = std::sync::Arc::new(SqliteStore::open(&db, false)?);
            crate::fleet::server::serve(store, key, listen, tick)?;
            Ok(ExitCode::Ok)
        }
        FleetAction::Enroll { devices, server } => {
            let client = fleet_client(&server)?;
            #[derive(serde::Deserialize)]
            struct Tokens {
                tokens: std::collections::BTreeMap<String, String>,
            }
            let answer: Tokens = block_on(client.post(
                "/v1/admin/devices",
                &serde_json::json!({ "devices": devices }),
            ))??;
            for device in &devices {
                println!("{device} {}", answer.tokens[device]);
            }
            Ok(ExitCode::Ok)
        }
        FleetAction::Revoke { device, server } => {
            let client = fleet_client(&server)?;
            block_on(client.send(
                reqwest::Method::DELETE,
                &format!("/v1/admin/devices/{}", crate::fleet::encode(&device)),
                None,
            ))??;
            eprintln!("revoked {device}");
            Ok(ExitCode::Ok)
        }
    }
}

fn print_status(status: &crate::fleet::RolloutStatus, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(status).expect("statuses serialize")
        );
    } else {
        print!("{}", crate::fleet::render_status(status));
    }
}

fn run_rollout(action: RolloutAction, options: &Options) -> Result<ExitCode> {
    use crate::fleet::RolloutStatus;
    match action {
        RolloutAction::Start {
            pipeline,
            release,
            policy,
            server,
        } => {
            let policy_text =
                std::fs::read_to_string(&policy).map_err(|e| Error::io(&policy, e))?;
            // Checked here for a diagnostic on the file; the server checks again.
            crate::fleet::policy::parse(&policy.display().to_string(), &policy_text)?;
            let client = fleet_client(&server)?;
            let ctx = Context::open(options, Access::Read)?;
            let made = crate::release::existing(ctx.root(), &pipeline)?;
            let Some(manifest) = made.get(&release).cloned() else {
                return Err(Error::usage(
                    format!("no release {release} of {pipeline} in releases/{pipeline}/"),
                    Some(format!(
                        "make one with `edgebuild release {pipeline} --version V --key PATH`"
                    )),
                ));
            };
            let rollback = made
                .get(&(release + 1))
                .filter(|m| m.manifest.kind == "rollback")
                .cloned();
            let mut uploaded = 0;
            for artifact in manifest
                .manifest
                .artifacts
                .iter()
                .chain(rollback.iter().flat_map(|r| &r.manifest.artifacts))
            {
                let bytes = ctx.store.blob_bytes(&artifact.sha256).ok_or_else(|| {
                    Error::usage(
                        format!(
                            "artifact {} ({}) is not in the cache",
                            artifact.name,
                            artifact.sha256.short()
                        ),
                        Some("build the release's commit (or `edgebuild cache pull`) first".into()),
                    )
                })?;
                if block_on(client.upload_artifact(&artifact.sha256.hex(), bytes))?? {
                    uploaded += 1;
                }
            }
            let request = crate::fleet::StartRollout {
                manifest,
                rollback,
                policy: policy_text,
            };
            #[derive(serde::Deserialize)]
            struct Started {
                id: i64,
            }
            let started: Started = block_on(client.post("/v1/admin/rollouts", &request))??;
            eprintln!("uploaded {uploaded} artifact(s)");
            println!(
                "rollout {} of {pipeline} release {release} started",
                started.id
            );
            Ok(ExitCode::Ok)
        }
        RolloutAction::Status { id, json, server } => {
            let client = fleet_client(&server)?;
            match id {
                Some(id) => {
                    let status: Option<RolloutStatus> =
                        block_on(client.get(&format!("/v1/admin/rollouts/{id}")))??;
                    print_status(&status.expect("a status has a body"), json);
                }
                None => {
                    let all: Option<Vec<RolloutStatus>> =
                        block_on(client.get("/v1/admin/rollouts"))??;
                    let all = all.unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&all).expect("statuses serialize")
                        );
                    } else if all.is_empty() {
                        println!("no rollouts");
                    } else {
                        for status in &all {
                            print!("{}", crate::fleet::render_status(status));
                        }
                    }
                }
            }
            Ok(ExitCode::Ok)
        }
        RolloutAction::Pause(change) => rollout_change("pause", change),
        RolloutAction::Resume(change) => rollout_change("resume", change),
        RolloutAction::Abort(change) => rollout_change("abort", change),
        RolloutAction::Rollback(change) => rollout_change("rollback", change),
    }
}

fn rollout_change(action: &str, change: RolloutChange) -> Result<ExitCode> {
    let client = fleet_client(&change.server)?;
    let status: crate::fleet::RolloutStatus = block_on(client.post(
        &format!("/v1/admin/rollouts/{}/{action}", change.id),
        &serde_json::json!({ "reason": change.reason }),
    ))??;
    print_status(&status, false);
    Ok(ExitCode::Ok)
}

fn run_device(action: DeviceAction) -> Result<ExitCode> {
    match action {
        DeviceAction::Simulate { args, json } => {
            let key = crate::release::read_verifying_key(&args.key)?;
            let summary = crate::fleet::simulate::simulate(&args, key, admin_token())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("summaries serialize")
                );
            } else {
                print!("{}", crate::fleet::simulate::render(&summary));
            }
            Ok(ExitCode::Ok)
        }
    }
}
