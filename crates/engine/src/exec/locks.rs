//! The lock files around a build (SPEC.md, "Lock files" and "Concurrency and interruption"):
//! before anything runs, every stage the build may rewrite leaves its lock; at the end, each
//! pipeline's lock gets what is true on disk.

use crate::context::Context;
use crate::lock::LockFile;
use crate::plan;

use super::report::{Outcome, StageResult};

/// Before anything runs, drops from the lock files every stage that may rewrite its outputs, so
/// a build killed midway leaves no lock entry that claims outputs which are not there. The
/// entries come back at the end for stages that end up built.
pub fn invalidate_locks(
    ctx: &Context,
    selected: &[usize],
) -> std::io::Result<Vec<plan::StagePlan>> {
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
pub fn write_locks(ctx: &Context, stages: &[StageResult]) -> std::io::Result<()> {
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
