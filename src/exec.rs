//! The scheduler and the executors: running stale stages in dependency order, in parallel.
//!
//! The scheduler hands a ready stage to a worker on a rayon pool of `-j N` threads. The worker
//! hashes the stage's inputs, asks [`plan::decide`] what to do, and then skips it (up to date),
//! restores its outputs from the cache, or runs it through an [`Executor`] and stores its
//! outputs. Early cutoff falls out of the keys: a dependent whose inputs hash as before is up to
//! date. A failed stage blocks its dependents; without `--keep-going` nothing new starts after a
//! failure. Nothing is cached for a stage that did not finish, and lock files are rewritten at
//! the end with only what is true on disk.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::context::Context;
use crate::hash::{Digest, PathHash};
use crate::key::StaleReason;
use crate::lock::{GateVerdict, LockFile, LockedOutput, LockedStage};
use crate::ops::{OpContext, OpOutcome};
use crate::plan::{self, Decision, InputProblem, Produced};
use crate::spec::{Action, Stage};
use crate::store::{ActionEntry, remove_path};

/// A stage as an executor sees it: everything it may read and must write (DECISIONS 26).
pub struct Job<'a> {
    pub stage: &'a Stage,
    pub root: &'a Path,
    /// The expanded command of a `cmd` stage.
    pub command: Option<String>,
    /// Declared environment variables that are set.
    pub env: Vec<(String, OsString)>,
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

/// Runs a job. Local today; a sandbox and a remote executor implement the same interface.
pub trait Executor: Sync {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure>;
}

/// Runs `cmd` stages with `sh -c` in the workspace root, with only `PATH` and the declared
/// environment variables set, and ops in-process.
///
/// Each command inherits a descriptor of the workspace lock (see [`Context::open`]), so that if
/// edgebuild itself is killed, a stage still running keeps the workspace locked until it exits:
/// the next build waits for it instead of racing it for the same outputs.
#[derive(Debug, Default)]
pub struct LocalExecutor {
    /// Variables set for every `cmd` stage besides `PATH` and its declared ones, and not part of
    /// any key. Only variation builds (`verify-reproducible --vary`) set them, with a private
    /// cache, to show that a stage's outputs do not depend on them.
    pub variation_env: Vec<(String, OsString)>,
}

/// Lines of a failing command's output shown in the error.
const LOG_TAIL_LINES: usize = 20;

pub(crate) fn tail(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Runs a `cmd` stage's command with `sh -c` through `process` (sh itself, or a wrapper such as
/// bubblewrap whose last arguments are `sh`), with only `PATH`, the variation variables the stage
/// does not declare, and its declared environment.
pub(crate) fn run_shell(
    mut process: Command,
    job: &Job,
    variation_env: &[(String, OsString)],
) -> Result<ExecSuccess, ExecFailure> {
    let command = job.command.as_deref().unwrap_or_default();
    let output = process
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(
            // A variable the stage declares keeps its real value.
            variation_env
                .iter()
                .filter(|(k, _)| !job.stage.env.contains(k))
                .map(|(k, v)| (k, v)),
        )
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ExecFailure {
            message: format!("cannot start {:?}: {e}", process.get_program()),
            log_tail: Vec::new(),
            bad_input: false,
        })?;
    if output.status.success() {
        Ok(ExecSuccess {
            outcome: OpOutcome::Success,
            log: Vec::new(),
            remote: None,
        })
    } else {
        let mut log_tail = tail(&output.stderr);
        if log_tail.is_empty() {
            log_tail = tail(&output.stdout);
        }
        Err(ExecFailure {
            message: format!("command failed ({})", output.status),
            log_tail,
            bad_input: false,
        })
    }
}

impl Executor for LocalExecutor {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure> {
        match &job.stage.action {
            Action::Cmd(_) => {
                let mut process = Command::new("sh");
                process.current_dir(job.root);
                run_shell(process, job, &self.variation_env)
            }
            Action::Manual(_) => Err(ExecFailure {
                message: "a manual stage is signed off with `edgebuild approve`, never run".into(),
                log_tail: Vec::new(),
                bad_input: true,
            }),
            Action::Op { name, .. } => {
                let op = crate::ops::find(name).ok_or_else(|| ExecFailure {
                    message: format!("unknown op `{name}`"),
                    log_tail: Vec::new(),
                    bad_input: true,
                })?;
                let paths = |ports: &[crate::spec::Port]| -> BTreeMap<String, PathBuf> {
                    ports
                        .iter()
                        .map(|p| (p.name.clone(), job.root.join(&p.path)))
                        .collect()
                };
                let ctx = OpContext {
                    stage_id: &job.stage.id,
                    inputs: paths(&job.stage.inputs),
                    outputs: paths(&job.stage.outputs),
                    params: &job.stage.params,
                    log: Default::default(),
                };
                let result = op.run(&ctx);
                let log = ctx.log.into_inner().unwrap_or_default();
                match result {
                    Ok(outcome) => Ok(ExecSuccess {
                        outcome,
                        log,
                        remote: None,
                    }),
                    Err(error) => Err(ExecFailure {
                        bad_input: matches!(error, crate::ops::OpError::BadInput(_)),
                        message: error.message().to_string(),
                        log_tail: log,
                    }),
                }
            }
        }
    }
}

/// What happened to one stage in a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    UpToDate,
    Restored,
    Ran,
    Failed,
    GateFailed,
    /// A manual stage whose checklist is not signed off for its current inputs.
    AwaitingSignOff,
    /// A dependency failed.
    Blocked,
    /// Not started because the build stopped after a failure (no `--keep-going`).
    NotStarted,
}

impl Outcome {
    /// Whether dependents may proceed.
    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::UpToDate | Outcome::Restored | Outcome::Ran)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub stage: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<StaleReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bad_input: bool,
    /// Restored from the remote cache.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_remote: bool,
    /// Failed because the required remote was unavailable.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub remote_unavailable: bool,
    /// Run by the remote executor: executed, from its action cache, or locally after it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteRun>,
    pub duration_ms: u64,
    #[serde(skip)]
    outputs: Option<Arc<BTreeMap<String, PathHash>>>,
    #[serde(skip)]
    locked: Option<LockedStage>,
}

impl StageResult {
    fn new(stage: &Stage, outcome: Outcome) -> StageResult {
        StageResult {
            stage: stage.id.clone(),
            outcome,
            key: None,
            reasons: Vec::new(),
            error: None,
            log: Vec::new(),
            blocked_by: None,
            bad_input: false,
            from_remote: false,
            remote_unavailable: false,
            remote: None,
            duration_ms: 0,
            outputs: None,
            locked: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub jobs: usize,
    pub keep_going: bool,
}

/// The result of a build, in topological order.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub stages: Vec<StageResult>,
    /// What the remote executor did, when one ran the build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_exec: Option<crate::remote_exec::RemoteStats>,
}

impl BuildReport {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.stages.iter().filter(|s| s.outcome == outcome).count()
    }

    pub fn with_outcome(&self, outcome: Outcome) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|s| s.outcome == outcome)
            .map(|s| s.stage.as_str())
            .collect()
    }
}

/// Progress for humans on stderr: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn advance(&self, running: &[String]) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(running.join(", "));
        }
    }

    fn set_running(&self, running: &[String]) {
        if let Some(bar) = &self.bar {
            bar.set_message(running.join(", "));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn describe(result: &StageResult) -> Option<String> {
    let seconds = result.duration_ms as f64 / 1000.0;
    let why = || {
        let reasons: Vec<String> = result.reasons.iter().map(ToString::to_string).collect();
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join("; "))
        }
    };
    let mut text = match result.outcome {
        Outcome::UpToDate | Outcome::NotStarted => return None,
        Outcome::Ran => format!("ran      {} in {seconds:.2}s{}", result.stage, why()),
        Outcome::Restored if result.from_remote => {
            format!("restored {} from the remote{}", result.stage, why())
        }
        Outcome::Restored => format!("restored {}{}", result.stage, why()),
        Outcome::GateFailed => format!("GATE FAILED {}", result.stage),
        Outcome::AwaitingSignOff => format!("AWAITS SIGN-OFF {}", result.stage),
        Outcome::Failed => format!(
            "FAILED   {}: {}",
            result.stage,
            result.error.as_deref().unwrap_or("failed")
        ),
        Outcome::Blocked => format!(
            "blocked  {} (by {})",
            result.stage,
            result.blocked_by.as_deref().unwrap_or("?")
        ),
    };
    for line in &result.log {
        text.push_str("\n    ");
        text.push_str(line);
    }
    Some(text)
}

/// Builds the selected stages (in topological order) and rewrites the lock files.
pub fn build(
    ctx: &Context,
    selected: &[usize],
    options: BuildOptions,
    executor: &dyn Executor,
) -> std::io::Result<BuildReport> {
    let n = ctx.ws.stages.len();
    let mut in_build = vec![false; n];
    for &s in selected {
        in_build[s] = true;
    }
    let mut results: Vec<Option<StageResult>> = vec![None; n];
    // Stages the plan found up to date are done already: nothing to hash again or dispatch.
    let plans = invalidate_locks(ctx, selected)?;
    for (plan, &stage) in plans.into_iter().zip(selected) {
        // Only when everything upstream (including `after`) is done and succeeded too.
        let deps_done = ctx.graph.deps(stage).all(|(d, _)| {
            !in_build[d] || results[d].as_ref().is_some_and(|r| r.outcome.succeeded())
        });
        if let (plan::Status::UpToDate, Some(outputs), true) =
            (plan.status, plan.outputs, deps_done)
        {
            let mut result = StageResult::new(&ctx.ws.stages[stage], Outcome::UpToDate);
            if plan.gate_failed {
                result.outcome = Outcome::GateFailed;
            }
            result.key = plan.key;
            result.locked = ctx.locked(stage).cloned();
            result.outputs = Some(Arc::new(outputs));
            results[stage] = Some(result);
        }
    }
    let mut waiting: Vec<usize> = (0..n)
        .map(|s| {
            if in_build[s] && results[s].is_none() {
                ctx.graph
                    .deps(s)
                    .filter(|(d, _)| in_build[*d] && results[*d].is_none())
                    .count()
            } else {
                0
            }
        })
        .collect();
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> = selected
        .iter()
        .filter(|&&s| results[s].is_none() && waiting[s] == 0)
        .map(|&s| std::cmp::Reverse((ctx.graph.rank[s], s)))
        .collect();
    let pending = selected.iter().filter(|&&s| results[s].is_none()).count();
    let progress = Progress::new(pending);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs.max(1))
        .thread_name(|i| format!("edgebuild-worker-{i}"))
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::channel::<(usize, StageResult)>();
    let mut running: Vec<usize> = Vec::new();
    let mut stopped = false;

    pool.in_place_scope(|scope| {
        loop {
            while !stopped && running.len() < options.jobs.max(1) {
                let Some(std::cmp::Reverse((_, stage))) = ready.pop() else {
                    break;
                };
                // A dependency that did not succeed blocks the stage.
                let blocker = ctx
                    .graph
                    .deps(stage)
                    .filter(|(d, _)| in_build[*d])
                    .find(|(d, _)| !results[*d].as_ref().is_some_and(|r| r.outcome.succeeded()));
                if let Some((dep, _)) = blocker {
                    let mut result = StageResult::new(&ctx.ws.stages[stage], Outcome::Blocked);
                    result.blocked_by = Some(ctx.ws.stages[dep].id.clone());
                    tx.send((stage, result))
                        .expect("receiver outlives the scope");
                    running.push(stage);
                    continue;
                }
                let upstream: BTreeMap<usize, Arc<BTreeMap<String, PathHash>>> = ctx
                    .graph
                    .deps(stage)
                    .filter_map(|(d, _)| Some((d, results[d].as_ref()?.outputs.clone()?)))
                    .collect();
                let tx = tx.clone();
                running.push(stage);
                scope.spawn(move |_| {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        process(ctx, stage, &upstream, executor)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        let mut failed = StageResult::new(&ctx.ws.stages[stage], Outcome::Failed);
                        failed.error = Some(format!("internal error (panic): {what}"));
                        failed
                    });
                    let _ = tx.send((stage, result));
                });
            }
            progress.set_running(
                &running
                    .iter()
                    .map(|&s| ctx.ws.stages[s].id.clone())
                    .collect::<Vec<_>>(),
            );
            if running.is_empty() {
                break;
            }
            let (stage, result) = rx.recv().expect("a worker always reports");
            running.retain(|&s| s != stage);
            if matches!(result.outcome, Outcome::Failed | Outcome::GateFailed)
                && !options.keep_going
            {
                stopped = true;
            }
            if let Some(text) = describe(&result) {
                progress.line(&text);
            }
            results[stage] = Some(result);
            progress.advance(
                &running
                    .iter()
                    .map(|&s| ctx.ws.stages[s].id.clone())
                    .collect::<Vec<_>>(),
            );
            for next in ctx.graph.dependents(stage) {
                if in_build[next] && results[next].is_none() {
                    waiting[next] -= 1;
                    if waiting[next] == 0 {
                        ready.push(std::cmp::Reverse((ctx.graph.rank[next], next)));
                    }
                }
            }
        }
    });
    progress.finish();
    ctx.save_stat_cache();

    // Stages never reached: blocked when something upstream did not succeed.
    for &s in selected {
        if results[s].is_none() {
            let blocker = ctx.graph.deps(s).find(|(d, _)| {
                results[*d]
                    .as_ref()
                    .is_some_and(|r| !r.outcome.succeeded() && r.outcome != Outcome::NotStarted)
            });
            let mut result = StageResult::new(&ctx.ws.stages[s], Outcome::NotStarted);
            if let Some((d, _)) = blocker {
                result.outcome = Outcome::Blocked;
                result.blocked_by = Some(ctx.ws.stages[d].id.clone());
            }
            results[s] = Some(result);
        }
    }
    let stages: Vec<StageResult> = selected
        .iter()
        .map(|&s| {
            results[s]
                .take()
                .expect("every selected stage has a result")
        })
        .collect();
    write_locks(ctx, &stages)?;
    Ok(BuildReport {
        stages,
        remote_exec: None,
    })
}

/// Before anything runs, drops from the lock files every stage that may rewrite its outputs, so
/// a build killed midway leaves no lock entry that claims outputs which are not there. The
/// entries come back at the end for stages that end up built.
fn invalidate_locks(ctx: &Context, selected: &[usize]) -> std::io::Result<Vec<plan::StagePlan>> {
    let plans = plan::plan(ctx, selected);
    for (p, lock) in ctx.locks.iter().enumerate() {
        let Some(lock) = lock else { continue };
        let mut trimmed = lock.clone();
        for (plan, &stage) in plans.iter().zip(selected) {
            let spec = &ctx.ws.stages[stage];
            if spec.pipeline == p && plan.status != plan::Status::UpToDate {
                trimmed.stages.remove(&spec.name);
            }
        }
        if trimmed.stages.len() != lock.stages.len() {
            trimmed.write_if_changed(&ctx.root().join(ctx.ws.pipelines[p].lock_file()))?;
        }
    }
    Ok(plans)
}

/// Rewrites each pipeline's lock: built stages get fresh entries, failed ones lose theirs (their
/// outputs were removed), the rest keep what they had.
fn write_locks(ctx: &Context, stages: &[StageResult]) -> std::io::Result<()> {
    let mut locks: Vec<Option<LockFile>> = ctx.locks.clone();
    let mut touched = vec![false; locks.len()];
    for result in stages {
        let index = ctx
            .ws
            .stage_index(&result.stage)
            .expect("results name known stages");
        let stage = &ctx.ws.stages[index];
        let lock = locks[stage.pipeline]
            .get_or_insert_with(|| LockFile::new(&ctx.ws.pipelines[stage.pipeline].name));
        match (&result.locked, result.outcome) {
            (Some(entry), _) => {
                lock.stages.insert(stage.name.clone(), entry.clone());
            }
            (None, Outcome::Failed) => {
                lock.stages.remove(&stage.name);
            }
            _ => {}
        }
        touched[stage.pipeline] = true;
    }
    for (p, lock) in locks.iter_mut().enumerate() {
        let Some(lock) = lock else { continue };
        if !touched[p] {
            continue;
        }
        // Stages deleted from the pipeline file leave the lock too.
        lock.stages.retain(|name, _| {
            ctx.ws
                .stage_index(&format!("{}:{name}", ctx.ws.pipelines[p].name))
                .is_some()
        });
        lock.toolchain = crate::lock::Toolchain::current();
        lock.write_if_changed(&ctx.root().join(ctx.ws.pipelines[p].lock_file()))?;
    }
    Ok(())
}

/// Decides, and restores or runs, one stage whose dependencies have all succeeded.
fn process(
    ctx: &Context,
    stage: usize,
    upstream: &BTreeMap<usize, Arc<BTreeMap<String, PathHash>>>,
    executor: &dyn Executor,
) -> StageResult {
    let started = Instant::now();
    let spec = &ctx.ws.stages[stage];
    let mut result = StageResult::new(spec, Outcome::Failed);
    let inputs = plan::resolve_inputs(ctx, stage, |p| match upstream.get(&p) {
        Some(outputs) => Produced::Known {
            outputs,
            on_disk: true,
        },
        None => Produced::Unknown,
    });
    let inputs = match inputs {
        Ok(inputs) => inputs,
        Err(InputProblem::Unreadable(path, why)) => {
            result.error = Some(format!("cannot read input {path}: {why}"));
            return result;
        }
        Err(InputProblem::Upstream(up)) => {
            result.error = Some(format!("outputs of {up} are unknown (internal error)"));
            return result;
        }
    };
    let ingredients = ctx.ingredients(spec, inputs);
    let key = ingredients.key();
    result.key = Some(key);
    if let Action::Manual(checklist) = &spec.action {
        return finish(
            sign_off(ctx, stage, key, ingredients, checklist, result),
            started,
        );
    }

    let (outputs, gate_passed) = match plan::decide(ctx, stage, &ingredients, key) {
        Decision::UpToDate {
            outputs,
            gate_failed,
        } => {
            result.outcome = if gate_failed {
                Outcome::GateFailed
            } else {
                Outcome::UpToDate
            };
            (outputs, !gate_failed)
        }
        Decision::Restore { entry, reasons } => {
            result.reasons = reasons;
            match restore_or_run(ctx, stage, key, entry, executor, &mut result) {
                Some(done) => done,
                None => return finish(result, started),
            }
        }
        Decision::Run { reasons } => {
            result.reasons = reasons;
            let fetched = match (&ctx.remote, spec.volatile) {
                (Some(remote), false) => remote.fetch_action(
                    &ctx.store,
                    &key,
                    &spec.id,
                    &crate::remote::declared_outputs(ctx, &spec.id),
                ),
                _ => Ok(None),
            };
            let done = match fetched {
                Ok(Some(entry)) => {
                    result.from_remote = true;
                    restore_or_run(ctx, stage, key, entry, executor, &mut result)
                }
                Err(e) if e.required_failure(ctx) => {
                    result.error = Some(e.to_string());
                    result.remote_unavailable = true;
                    return finish(result, started);
                }
                Ok(None) | Err(_) => run(ctx, stage, key, executor, &mut result),
            };
            match done {
                Some(done) => done,
                None => return finish(result, started),
            }
        }
    };
    let is_gate = match &spec.action {
        Action::Op { name, .. } => crate::ops::find(name).is_some_and(|op| op.is_gate()),
        Action::Cmd(_) | Action::Manual(_) => false,
    };
    let gate = is_gate.then_some(if gate_passed {
        GateVerdict::Passed
    } else {
        GateVerdict::Failed
    });
    result.locked = Some(LockedStage {
        key,
        ingredients,
        outputs: outputs
            .iter()
            .map(|(path, out)| {
                (
                    path.clone(),
                    LockedOutput {
                        hash: out.hash,
                        size: out.size,
                        volatile: spec.volatile,
                    },
                )
            })
            .collect(),
        gate,
    });
    result.outputs = Some(Arc::new(outputs));
    finish(result, started)
}

/// A manual stage: done when a sign-off matches its key, awaiting one otherwise.
fn sign_off(
    ctx: &Context,
    stage: usize,
    key: Digest,
    ingredients: crate::key::Ingredients,
    checklist: &[String],
    mut result: StageResult,
) -> StageResult {
    let id = &ctx.ws.stages[stage].id;
    match crate::approve::signed_off(ctx, stage, key) {
        Some(by) => {
            let current = ctx.locked(stage).is_some_and(|l| l.key == key);
            result.outcome = if current {
                Outcome::UpToDate
            } else {
                Outcome::Ran
            };
            result.log = vec![format!("signed off by {by}")];
            result.locked = Some(LockedStage {
                key,
                ingredients,
                outputs: BTreeMap::new(),
                gate: None,
            });
            result.outputs = Some(Arc::new(BTreeMap::new()));
        }
        None => {
            result.outcome = Outcome::AwaitingSignOff;
            result.log = checklist.iter().map(|item| format!("[ ] {item}")).collect();
            result.log.push(format!(
                "check each item, then sign off for these inputs: edgebuild approve {id}"
            ));
        }
    }
    result
}

fn finish(mut result: StageResult, started: Instant) -> StageResult {
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

/// Materializes a cached entry's outputs, skipping those already on disk.
/// Restores a stage from a cache entry, or runs it when the entry turns out to be unusable.
fn restore_or_run(
    ctx: &Context,
    stage: usize,
    key: Digest,
    entry: ActionEntry,
    executor: &dyn Executor,
    result: &mut StageResult,
) -> Option<(BTreeMap<String, PathHash>, bool)> {
    let restored = restore(ctx, stage, &entry).and_then(|()| {
        // A gate's verdict comes from its restored verdict file (hashed bytes); an entry whose
        // recorded verdict disagrees with it is not used.
        let spec = &ctx.ws.stages[stage];
        let op = match &spec.action {
            Action::Op { name, .. } => crate::ops::find(name).filter(|op| op.is_gate()),
            Action::Cmd(_) | Action::Manual(_) => None,
        };
        let Some(op) = op else { return Ok(()) };
        let outputs = spec
            .outputs
            .iter()
            .map(|p| (p.name.clone(), ctx.root().join(&p.path)))
            .collect();
        match op.verdict_of(&outputs) {
            Some(passed) if passed == (entry.gate_passed != Some(false)) => Ok(()),
            _ => Err(crate::store::StoreError::Corrupt {
                hash: format!(
                    "{} (its gate verdict disagrees with its verdict file)",
                    entry.key
                ),
            }),
        }
    });
    match restored {
        Ok(()) => {
            let passed = entry.gate_passed != Some(false);
            result.outcome = if passed {
                Outcome::Restored
            } else {
                Outcome::GateFailed
            };
            if !result.from_remote {
                upload(ctx, stage, &entry, result)?;
            }
            Some((entry.outputs, passed))
        }
        Err(_) => {
            result.from_remote = false;
            run(ctx, stage, key, executor, result)
        }
    }
}

/// Uploads a built or locally restored stage when this build writes to the remote. `None` (the
/// stage fails) only when the remote is required and the upload failed.
fn upload(
    ctx: &Context,
    stage: usize,
    entry: &ActionEntry,
    result: &mut StageResult,
) -> Option<()> {
    let Some(remote) = ctx.remote.as_ref().filter(|r| r.upload) else {
        return Some(());
    };
    if ctx.ws.stages[stage].volatile {
        return Some(()); // never shared (DECISIONS 8)
    }
    match remote.upload_action(&ctx.store, entry) {
        Err(e) if e.required_failure(ctx) => {
            result.outcome = Outcome::Failed;
            result.error = Some(e.to_string());
            result.remote_unavailable = true;
            None
        }
        _ => Some(()),
    }
}

fn restore(
    ctx: &Context,
    stage: usize,
    entry: &ActionEntry,
) -> Result<(), crate::store::StoreError> {
    if entry.outputs.len() != ctx.ws.stages[stage].outputs.len() {
        return Err(crate::store::StoreError::Corrupt {
            hash: format!(
                "{} (the entry names other outputs than the stage)",
                entry.key
            ),
        });
    }
    for port in &ctx.ws.stages[stage].outputs {
        let Some(output) = entry.outputs.get(&port.path) else {
            return Err(crate::store::StoreError::Corrupt {
                hash: format!("{} (entry lacks output {})", entry.key, port.path),
            });
        };
        if let Err(why) = crate::spec::normalize_path(ctx.root(), &port.path) {
            return Err(crate::store::StoreError::Corrupt {
                hash: format!("{} (output {} {why})", entry.key, port.path),
            });
        }
        let on_disk = ctx.stat.path(ctx.root(), &port.path).ok();
        if on_disk.is_some_and(|d| d.hash == output.hash) {
            continue;
        }
        ctx.store
            .materialize(output, &ctx.root().join(&port.path))?;
    }
    Ok(())
}

/// Runs a stage and stores its outputs. `None` when it failed (details in `result`).
fn run(
    ctx: &Context,
    stage: usize,
    key: Digest,
    executor: &dyn Executor,
    result: &mut StageResult,
) -> Option<(BTreeMap<String, PathHash>, bool)> {
    let spec = &ctx.ws.stages[stage];
    for port in &spec.outputs {
        // A stage may have created a symlink since the pipeline was checked.
        if let Err(why) = crate::spec::normalize_path(ctx.root(), &port.path) {
            result.error = Some(format!("output {} {why}", port.path));
            return None;
        }
        let path = ctx.root().join(&port.path);
        let prepared = remove_path(&path).and_then(|_| match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent),
            None => Ok(()),
        });
        if let Err(e) = prepared {
            result.error = Some(format!("cannot prepare output {}: {e}", port.path));
            return None;
        }
    }
    let command = match &spec.action {
        Action::Cmd(template) => match crate::subst::expand(template, spec) {
            Ok(command) => Some(command),
            Err(problem) => {
                result.error = Some(problem.message);
                return None;
            }
        },
        Action::Op { .. } | Action::Manual(_) => None,
    };
    let job = Job {
        stage: spec,
        root: ctx.root(),
        command,
        env: spec
            .env
            .iter()
            .filter_map(|name| Some((name.clone(), std::env::var_os(name)?)))
            .collect(),
    };
    let success = match executor.execute(&job) {
        Ok(success) => success,
        Err(failure) => {
            result.error = Some(failure.message);
            result.log = failure.log_tail;
            result.bad_input = failure.bad_input;
            return None;
        }
    };
    result.log = success.log;
    result.remote = success.remote;
    let mut outputs = BTreeMap::new();
    for port in &spec.outputs {
        match ctx.stat.path(ctx.root(), &port.path) {
            Ok(hash) => {
                outputs.insert(port.path.clone(), hash);
            }
            Err(_) => {
                result.error = Some(format!("did not produce its output {}", port.path));
                return None;
            }
        }
    }
    let gate_passed = success.outcome != OpOutcome::GateFailed;
    let entry = ActionEntry {
        key,
        outputs,
        gate_passed: (success.outcome == OpOutcome::GateFailed).then_some(false),
    };
    let stored = entry
        .outputs
        .iter()
        .try_for_each(|(path, out)| ctx.store.put_output(out, &ctx.root().join(path)))
        .and_then(|_| ctx.store.put_action(&entry));
    if let Err(e) = stored {
        result.error = Some(format!("cannot store outputs in the cache: {e}"));
        return None;
    }
    result.outcome = if gate_passed {
        Outcome::Ran
    } else {
        Outcome::GateFailed
    };
    upload(ctx, stage, &entry, result)?;
    Some((entry.outputs, gate_passed))
}
