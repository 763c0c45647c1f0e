//! Manual steps (SPEC.md, "Manual steps"): a `manual` stage holds a checklist that a person signs off with
//! `edgebuild approve STAGE`. The sign-off is recorded, for exactly the stage's current key
//! (its checklist and the hashes of its inputs), in `pipelines/PIPELINE.approvals.json`, a file
//! meant to be committed with the lock. Until a sign-off matches, the stage awaits it and blocks
//! everything that depends on it; a changed input or checklist needs a new sign-off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::hash::Digest;
use crate::spec::{Action, PIPELINES_DIR};

/// One sign-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignOff {
    /// The stage key it was given for.
    pub key: Digest,
    pub by: String,
    pub checklist: Vec<String>,
}

/// Where a pipeline's sign-offs are kept.
pub fn approvals_file(root: &Path, pipeline: &str) -> PathBuf {
    root.join(PIPELINES_DIR)
        .join(format!("{pipeline}.approvals.json"))
}

/// The sign-offs of a pipeline, by stage name (none when the file is missing or unreadable).
pub fn read(root: &Path, pipeline: &str) -> BTreeMap<String, SignOff> {
    std::fs::read(approvals_file(root, pipeline))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Who signed off the stage for this key, if anyone did.
pub fn signed_off(ctx: &Context, stage: usize, key: Digest) -> Option<String> {
    let spec = &ctx.ws.stages[stage];
    let pipeline = &ctx.ws.pipelines[spec.pipeline].name;
    read(ctx.root(), pipeline)
        .remove(&spec.name)
        .filter(|s| s.key == key)
        .map(|s| s.by)
}

/// Who is signing: `--by`, else git's `user.name`, else `$USER`.
pub fn signer(root: &Path, by: Option<String>) -> String {
    if let Some(by) = by.filter(|b| !b.trim().is_empty()) {
        return by.trim().to_string();
    }
    let git = std::process::Command::new("git")
        .args(["config", "user.name"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|n| !n.is_empty());
    git.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Records a sign-off of a manual stage for its current inputs. Refuses a stage that is not
/// manual, or whose inputs are not built yet.
pub fn approve(ctx: &Context, stage: usize, by: &str) -> crate::Result<SignOff> {
    let spec = &ctx.ws.stages[stage];
    let Action::Manual(checklist) = &spec.action else {
        return Err(crate::Error::usage(
            format!("{} is not a manual stage", spec.id),
            Some("only a stage with `manual:` (a checklist) is signed off".into()),
        ));
    };
    // Planned with what it depends on, so that the producers of its inputs are known.
    let with_upstream = ctx.select(std::slice::from_ref(&spec.id))?;
    let plans = crate::plan::plan(ctx, &with_upstream);
    let mine = plans.iter().find(|p| p.stage == spec.id);
    let current = plans
        .iter()
        .filter(|p| p.stage != spec.id)
        .all(|p| p.status == crate::plan::Status::UpToDate);
    let Some(key) = mine.and_then(|p| p.key).filter(|_| current) else {
        return Err(crate::Error::usage(
            format!("the inputs of {} are not built yet", spec.id),
            Some(
                "build first (`edgebuild build`): a sign-off is for exactly the inputs that exist"
                    .into(),
            ),
        ));
    };
    let pipeline = &ctx.ws.pipelines[spec.pipeline].name;
    let mut all = read(ctx.root(), pipeline);
    let signed = SignOff {
        key,
        by: by.to_string(),
        checklist: checklist.clone(),
    };
    all.insert(spec.name.clone(), signed.clone());
    let path = approvals_file(ctx.root(), pipeline);
    let mut bytes = serde_json::to_vec_pretty(&all).expect("sign-offs serialize");
    bytes.push(b'\n');
    crate::files::write_atomic(&path, &bytes).map_err(|e| crate::Error::io(&path, e))?;
    Ok(signed)
}
