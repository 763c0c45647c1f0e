//! What is stale and why: the decision, shared by `plan` and `build`, of whether a stage is up to
//! date, can be restored from the cache, or must run.
//!
//! A stage is up to date when its key equals the key in the lock and its outputs on disk match the
//! lock; restorable when the action cache holds its key; otherwise it runs. `plan` makes that
//! decision for every stage without running anything: a stage whose inputs come from a stage that
//! will run is `pending` (it may still be cut off early if that stage reproduces its outputs).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::context::Context;
use crate::graph::EdgeKind;
use crate::hash::{Digest, PathHash, TreeEntry, tree_hash};
use crate::key::{Ingredients, InputIngredient, StaleReason};
use crate::lock::GateVerdict;
use crate::store::ActionEntry;

/// What is known about a producing stage's outputs while planning or building.
#[derive(Debug, Clone, Copy)]
pub enum Produced<'a> {
    /// Output hashes are known; `on_disk` says whether the workspace already holds them.
    Known {
        outputs: &'a BTreeMap<String, PathHash>,
        on_disk: bool,
    },
    /// The stage will run: its outputs are not known yet.
    Unknown,
}

/// The part of a recorded output that `path` names, if `path` is the output or lies inside it.
fn recorded_part(outputs: &BTreeMap<String, PathHash>, path: &str) -> Option<PathHash> {
    if let Some(exact) = outputs.get(path) {
        return Some(exact.clone());
    }
    let (inner, tree) = outputs.iter().find_map(|(root, out)| {
        let inner = path.strip_prefix(root.as_str())?.strip_prefix('/')?;
        Some((inner, out.tree.as_ref()?))
    })?;
    if let Some(file) = tree.iter().find(|e| e.path == inner) {
        return Some(PathHash {
            hash: file.hash,
            size: file.size,
            executable: file.executable,
            tree: None,
        });
    }
    let prefix = format!("{inner}/");
    let sub: Vec<TreeEntry> = tree
        .iter()
        .filter_map(|e| {
            Some(TreeEntry {
                path: e.path.strip_prefix(&prefix)?.to_string(),
                ..e.clone()
            })
        })
        .collect();
    (!sub.is_empty()).then(|| PathHash {
        hash: tree_hash(&sub),
        size: sub.iter().map(|e| e.size).sum(),
        executable: false,
        tree: Some(sub),
    })
}

/// Hashes a stage's inputs. `Err` names an upstream stage whose outputs are not known yet.
pub fn resolve_inputs<'a>(
    ctx: &Context,
    stage: usize,
    produced: impl Fn(usize) -> Produced<'a>,
) -> Result<Vec<InputIngredient>, InputProblem> {
    let spec = &ctx.ws.stages[stage];
    let producers: Vec<usize> = ctx
        .graph
        .deps(stage)
        .filter(|(_, kind)| *kind == EdgeKind::Data)
        .map(|(d, _)| d)
        .collect();
    let mut inputs = Vec::with_capacity(spec.inputs.len());
    for port in &spec.inputs {
        let mut all_on_disk = true;
        let mut recorded = None;
        for &p in &producers {
            let overlaps = ctx.ws.stages[p]
                .outputs
                .iter()
                .any(|o| crate::spec::paths_overlap(&o.path, &port.path));
            if !overlaps {
                continue;
            }
            match produced(p) {
                Produced::Unknown => {
                    return Err(InputProblem::Upstream(ctx.ws.stages[p].id.clone()));
                }
                Produced::Known { outputs, on_disk } => {
                    all_on_disk &= on_disk;
                    recorded = recorded.or_else(|| recorded_part(outputs, &port.path));
                }
            }
        }
        let hash = match recorded {
            Some(found) => found.hash,
            None if all_on_disk => {
                ctx.stat
                    .path(ctx.root(), &port.path)
                    .map_err(|e| InputProblem::Unreadable(port.path.clone(), e.to_string()))?
                    .hash
            }
            None => {
                let first = producers
                    .first()
                    .map(|&p| ctx.ws.stages[p].id.clone())
                    .unwrap_or_default();
                return Err(InputProblem::Upstream(first));
            }
        };
        inputs.push(InputIngredient {
            name: port.name.clone(),
            path: port.path.clone(),
            hash,
        });
    }
    Ok(inputs)
}

#[derive(Debug)]
pub enum InputProblem {
    /// An upstream stage has not produced its outputs yet.
    Upstream(String),
    /// An input cannot be read.
    Unreadable(String, String),
}

/// What to do with a stage whose key is known.
#[derive(Debug, Clone)]
pub enum Decision {
    UpToDate {
        outputs: BTreeMap<String, PathHash>,
        gate_failed: bool,
    },
    Restore {
        entry: ActionEntry,
        reasons: Vec<StaleReason>,
    },
    Run {
        reasons: Vec<StaleReason>,
    },
}

/// Hashes a stage's outputs on disk; `Err` lists the reasons they do not match `expected`.
pub fn outputs_on_disk(
    ctx: &Context,
    stage: usize,
    expected: &BTreeMap<String, Option<Digest>>,
) -> Result<BTreeMap<String, PathHash>, Vec<StaleReason>> {
    let mut found = BTreeMap::new();
    let mut reasons = Vec::new();
    for port in &ctx.ws.stages[stage].outputs {
        match ctx.stat.path(ctx.root(), &port.path) {
            Err(_) => reasons.push(StaleReason::OutputMissing {
                path: port.path.clone(),
            }),
            Ok(actual) => {
                match expected.get(&port.path) {
                    // A volatile output: the lock records no hash, being there is enough.
                    Some(None) => {}
                    Some(Some(want)) if *want == actual.hash => {}
                    Some(Some(want)) => reasons.push(StaleReason::OutputModified {
                        path: port.path.clone(),
                        expected: want.short(),
                        actual: actual.hash.short(),
                    }),
                    None => reasons.push(StaleReason::OutputsChanged),
                }
                found.insert(port.path.clone(), actual);
            }
        }
    }
    if reasons.is_empty() {
        Ok(found)
    } else {
        Err(reasons)
    }
}

/// Decides what to do with a stage whose ingredients are known.
pub fn decide(ctx: &Context, stage: usize, ingredients: &Ingredients, key: Digest) -> Decision {
    let locked = ctx.locked(stage);
    let mut reasons = match locked {
        Some(locked) if locked.key == key => {
            let expected = locked
                .outputs
                .iter()
                .map(|(p, o)| (p.clone(), o.hash))
                .collect();
            match outputs_on_disk(ctx, stage, &expected) {
                Ok(outputs) => {
                    return Decision::UpToDate {
                        outputs,
                        gate_failed: locked.gate == Some(GateVerdict::Failed),
                    };
                }
                Err(reasons) => reasons,
            }
        }
        Some(locked) => Ingredients::diff(&locked.ingredients, ingredients),
        None => vec![StaleReason::NeverBuilt],
    };
    if reasons.is_empty() {
        reasons.push(match locked {
            // The ingredients are today's, but the key recorded beside them is not theirs.
            Some(locked) if locked.ingredients.key() != locked.key => StaleReason::LockEdited,
            // The key differs in a field the diff does not show (an older lock format, say).
            _ => StaleReason::NeverBuilt,
        });
    }
    match ctx.store.get_action(&key) {
        Some(entry) => Decision::Restore { entry, reasons },
        None => Decision::Run { reasons },
    }
}

/// A stage's status in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    UpToDate,
    Restore,
    Run,
    /// Depends on a stage that will run; runs unless that stage reproduces its outputs.
    Pending,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::UpToDate => "up to date",
            Status::Restore => "restore",
            Status::Run => "run",
            Status::Pending => "pending",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    pub reasons: Vec<StaleReason>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gate_failed: bool,
    /// Restorable from the remote cache rather than the local one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_remote: bool,
    /// The outputs on disk of an up-to-date stage.
    #[serde(skip)]
    pub outputs: Option<BTreeMap<String, PathHash>>,
}

/// Plans the selected stages (in topological order) without running anything.
pub fn plan(ctx: &Context, selected: &[usize]) -> Vec<StagePlan> {
    if ctx.stat.is_memoized() {
        // Nothing changes the workspace meanwhile: look at every path once, in parallel.
        let mut paths: Vec<&str> = selected
            .iter()
            .flat_map(|&s| {
                let stage = &ctx.ws.stages[s];
                stage
                    .inputs
                    .iter()
                    .chain(&stage.outputs)
                    .map(|p| p.path.as_str())
            })
            .collect();
        paths.sort_unstable();
        paths.dedup();
        use rayon::prelude::*;
        paths.par_iter().for_each(|path| {
            let _ = ctx.stat.path(ctx.root(), path);
        });
    }
    let mut known: Vec<Option<(BTreeMap<String, PathHash>, bool)>> =
        vec![None; ctx.ws.stages.len()];
    let mut plans = Vec::with_capacity(selected.len());
    for &stage in selected {
        let inputs = resolve_inputs(ctx, stage, |p| match &known[p] {
            Some((outputs, on_disk)) => Produced::Known {
                outputs,
                on_disk: *on_disk,
            },
            None => Produced::Unknown,
        });
        let id = ctx.ws.stages[stage].id.clone();
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(InputProblem::Upstream(upstream)) => {
                plans.push(StagePlan {
                    stage: id,
                    status: Status::Pending,
                    key: None,
                    reasons: vec![StaleReason::UpstreamWillRun { stage: upstream }],
                    gate_failed: false,
                    from_remote: false,
                    outputs: None,
                });
                continue;
            }
            Err(InputProblem::Unreadable(path, _)) => {
                plans.push(StagePlan {
                    stage: id,
                    status: Status::Run,
                    key: None,
                    reasons: vec![StaleReason::InputRemoved { path }],
                    gate_failed: false,
                    from_remote: false,
                    outputs: None,
                });
                continue;
            }
        };
        let ingredients =
            crate::key::ingredients(&ctx.ws.stages[stage], inputs, &ctx.ops, &ctx.tools);
        let key = ingredients.key();
        let mut up_to_date = None;
        let mut from_remote = false;
        let (status, reasons, gate_failed) = match decide(ctx, stage, &ingredients, key) {
            Decision::UpToDate {
                outputs,
                gate_failed,
            } => {
                up_to_date = Some(outputs.clone());
                known[stage] = Some((outputs, true));
                (Status::UpToDate, Vec::new(), gate_failed)
            }
            Decision::Restore { entry, reasons } => {
                let failed = entry.gate_passed == Some(false);
                known[stage] = Some((entry.outputs, false));
                (Status::Restore, reasons, failed)
            }
            Decision::Run { reasons } => {
                // The remote is asked only whether it has the entry; `build` fetches it.
                let spec = &ctx.ws.stages[stage];
                let remote = ctx.remote.as_deref().filter(|_| !spec.volatile);
                if remote.is_some_and(|r| r.has_action(&key).unwrap_or(false)) {
                    from_remote = true;
                    (Status::Restore, reasons, false)
                } else {
                    (Status::Run, reasons, false)
                }
            }
        };
        plans.push(StagePlan {
            stage: id,
            status,
            key: Some(key),
            reasons,
            gate_failed,
            from_remote,
            outputs: up_to_date,
        });
    }
    plans
}

/// The plan as a human reads it: one line per stage, grouped by pipeline, then a summary.
pub fn render(ctx: &Context, plans: &[StagePlan]) -> String {
    let width = plans
        .iter()
        .map(|p| p.stage.split_once(':').map_or(0, |(_, s)| s.len()))
        .max()
        .unwrap_or(0);
    let mut by_pipeline: BTreeMap<&str, Vec<&StagePlan>> = BTreeMap::new();
    for plan in plans {
        let pipeline = plan.stage.split_once(':').map_or("", |(p, _)| p);
        by_pipeline.entry(pipeline).or_default().push(plan);
    }
    let mut out = String::new();
    for (pipeline, stages) in by_pipeline {
        let file = ctx
            .ws
            .pipelines
            .iter()
            .find(|p| p.name == pipeline)
            .map_or("", |p| p.file.as_str());
        out.push_str(&format!("{pipeline} ({file})\n"));
        for plan in stages {
            let name = plan.stage.split_once(':').map_or("", |(_, s)| s);
            let mark = match plan.status {
                Status::UpToDate => "=",
                Status::Restore => "~",
                Status::Run => "+",
                Status::Pending => "?",
            };
            let mut status = plan.status.label().to_string();
            if plan.gate_failed {
                status.push_str(" (gate failed)");
            }
            if plan.from_remote {
                status.push_str(" (remote)");
            }
            let why: Vec<String> = plan.reasons.iter().map(ToString::to_string).collect();
            let line = format!("  {mark} {name:width$}  {status:12}  {}", why.join("; "));
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    let count = |s: Status| plans.iter().filter(|p| p.status == s).count();
    out.push_str(&format!(
        "Plan: {} to run, {} to restore, {} pending, {} up to date.\n",
        count(Status::Run),
        count(Status::Restore),
        count(Status::Pending),
        count(Status::UpToDate)
    ));
    out
}
