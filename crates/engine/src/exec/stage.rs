//! One stage of a build, on a worker thread: hash its inputs, compute its key, decide, then skip
//! it, restore it from the local or remote cache, or run it through the executor and store its
//! outputs. A manual stage is done when a sign-off matches its key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::report::{Outcome, StageResult};
use super::{Executor, Job};
use crate::context::Context;
use crate::files::remove_path;
use crate::hash::{Digest, PathHash};
use crate::lock::{GateVerdict, LockedOutput, LockedStage};
use crate::op::OpOutcome;
use crate::plan::{self, Decision, InputProblem, Produced};
use crate::stage::Action;
use crate::store::{ActionEntry, StoreError};

/// Decides, and restores or runs, one stage whose dependencies have all succeeded.
pub fn process(
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
    let ingredients = crate::key::ingredients(spec, inputs, &ctx.ops, &ctx.tools);
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
                (Some(remote), false) => {
                    let mut declared: Vec<&str> =
                        spec.outputs.iter().map(|p| p.path.as_str()).collect();
                    declared.sort_unstable();
                    remote.fetch_action(&ctx.store, &key, &spec.id, &declared)
                }
                _ => Ok(None),
            };
            let done = match fetched {
                Ok(Some(entry)) => {
                    result.from_remote = true;
                    restore_or_run(ctx, stage, key, entry, executor, &mut result)
                }
                Err(e) if ctx.remote.as_deref().is_some_and(|r| e.fails(r)) => {
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
    let gate = ctx.ops.is_gate(spec).then_some(if gate_passed {
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
                    LockedOutput::new(out.hash, out.size, spec.volatile),
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
    match crate::manual::signed_off(ctx, stage, key) {
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
        if !ctx.ops.is_gate(spec) {
            return Ok(());
        }
        match ctx.ops.verdict(spec, ctx.root()) {
            Some(passed) if passed == (entry.gate_passed != Some(false)) => Ok(()),
            _ => Err(StoreError::Corrupt {
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
    let Some(remote) = ctx.remote.as_deref().filter(|r| r.uploads()) else {
        return Some(());
    };
    if ctx.ws.stages[stage].volatile {
        return Some(()); // never shared (SPEC.md, "Volatile outputs")
    }
    match remote.upload_action(&ctx.store, entry) {
        Err(e) if e.fails(remote) => {
            result.outcome = Outcome::Failed;
            result.error = Some(e.to_string());
            result.remote_unavailable = true;
            None
        }
        _ => Some(()),
    }
}

fn restore(ctx: &Context, stage: usize, entry: &ActionEntry) -> Result<(), StoreError> {
    if entry.outputs.len() != ctx.ws.stages[stage].outputs.len() {
        return Err(StoreError::Corrupt {
            hash: format!(
                "{} (the entry names other outputs than the stage)",
                entry.key
            ),
        });
    }
    for port in &ctx.ws.stages[stage].outputs {
        let Some(output) = entry.outputs.get(&port.path) else {
            return Err(StoreError::Corrupt {
                hash: format!("{} (entry lacks output {})", entry.key, port.path),
            });
        };
        let spec = &ctx.ws.stages[stage];
        let checked = crate::spec::normalize_path(ctx.root(), &port.path)
            .map_err(str::to_string)
            .and_then(|_| ctx.guard().output(&port.path, &spec.id));
        if let Err(why) = checked {
            return Err(StoreError::Corrupt {
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
        // A stage may have created a symlink since the pipeline was checked: every output
        // passes the path guard before anything is moved (SPEC.md, "Path guard").
        let checked = crate::spec::normalize_path(ctx.root(), &port.path)
            .map_err(str::to_string)
            .and_then(|_| ctx.guard().output(&port.path, &spec.id));
        if let Err(why) = checked {
            result.error = Some(format!(
                "refusing to replace output {}: it {why}",
                port.path
            ));
            result.bad_input = true;
            return None;
        }
    }
    let aside = match Aside::take(ctx, spec) {
        Ok(aside) => aside,
        Err(e) => {
            result.error = Some(format!("cannot prepare the outputs: {e}"));
            return None;
        }
    };
    let (outputs, gate_passed) = match run_prepared(ctx, stage, key, executor, result) {
        Some(done) => done,
        None => {
            if let Err(kept) = aside.put_back() {
                let error = result.error.get_or_insert_with(String::new);
                error.push_str(&format!("; {kept}"));
            }
            return None;
        }
    };
    drop(aside);
    Some((outputs, gate_passed))
}

/// A stage's outputs that existed before it ran, moved aside (SPEC.md, "`edgebuild build`",
/// step 4): put back when the stage fails, deleted once it succeeded. A declared output may be
/// a committed file that the stage regenerates; nothing is deleted before the stage made its
/// replacement.
struct Aside {
    /// `.edgebuild/aside/run-<random suffix>/`, made when the first output is moved.
    dir: Option<tempfile::TempDir>,
    /// (where the output was, where it is now), in the order they were moved.
    moved: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Aside {
    fn take(ctx: &Context, spec: &crate::stage::Stage) -> std::io::Result<Aside> {
        let mut aside = Aside {
            dir: None,
            moved: Vec::new(),
        };
        for port in &spec.outputs {
            let path = ctx.root().join(&port.path);
            if std::fs::symlink_metadata(&path).is_ok()
                && let Err(e) = aside.move_one(ctx, &port.path, &path)
            {
                let _ = aside.put_back();
                return Err(e);
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        Ok(aside)
    }

    fn move_one(
        &mut self,
        ctx: &Context,
        rel: &str,
        path: &std::path::Path,
    ) -> std::io::Result<()> {
        if self.dir.is_none() {
            let base = ctx.root().join(crate::layout::STATE_DIR).join("aside");
            std::fs::create_dir_all(&base)?;
            self.dir = Some(tempfile::Builder::new().prefix("run-").tempdir_in(&base)?);
        }
        let to = self.dir.as_ref().expect("made above").path().join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::files::move_path(path, &to)?;
        self.moved.push((path.to_path_buf(), to));
        Ok(())
    }

    /// Puts every moved output back, replacing what the failed stage left there. `Err` says
    /// where the outputs that could not be put back are kept.
    fn put_back(mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (original, moved) in self.moved.drain(..).rev() {
            let restored =
                remove_path(&original).and_then(|()| crate::files::move_path(&moved, &original));
            if let Err(e) = restored {
                failed.push(format!("{} ({e})", moved.display()));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        // Keep the directory: it holds the only copy.
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        Err(format!(
            "the previous outputs could not be put back and are kept at {}",
            failed.join(", ")
        ))
    }
}

/// Runs a stage whose outputs were moved aside, and stores its outputs. `None` when it failed
/// (details in `result`).
fn run_prepared(
    ctx: &Context,
    stage: usize,
    key: Digest,
    executor: &dyn Executor,
    result: &mut StageResult,
) -> Option<(BTreeMap<String, PathHash>, bool)> {
    let spec = &ctx.ws.stages[stage];
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
        guard: ctx.guard(),
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
