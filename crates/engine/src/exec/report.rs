//! What a build returns: each stage's [`Outcome`] with its key, reasons, errors and log, in
//! topological order. It is what `--json`, the JUnit and summary reports and the exit code are
//! made from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::RemoteRun;
use crate::hash::{Digest, PathHash};
use crate::key::StaleReason;
use crate::lock::LockedStage;
use crate::stage::Stage;

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
    /// The outputs as they are on disk after the stage, for its dependents' keys.
    #[serde(skip)]
    pub(crate) outputs: Option<Arc<BTreeMap<String, PathHash>>>,
    /// The lock entry the stage earned, if any.
    #[serde(skip)]
    pub(crate) locked: Option<LockedStage>,
}

impl StageResult {
    pub(crate) fn new(stage: &Stage, outcome: Outcome) -> StageResult {
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
