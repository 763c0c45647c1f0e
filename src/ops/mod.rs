//! Built-in ops: stages that edgebuild runs itself rather than through a shell.
//!
//! An op is one implementation of [`Op`]: a name, a version (bumped whenever its output bytes
//! change, DECISIONS 5), a check of its stage's declaration, an optional fingerprint of what else
//! changes its results, and a run function over resolved input and output paths. The engine sees
//! nothing else: it hashes, caches and schedules an op stage exactly like a `cmd` stage.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::spec::Stage;

/// What a finished op reports besides its output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpOutcome {
    Success,
    /// A gate ran and at least one check failed. Its outputs are still written and cached.
    GateFailed,
}

/// Everything an op may read: its declared inputs and params. It writes only its outputs.
#[derive(Debug)]
pub struct OpContext<'a> {
    pub stage_id: &'a str,
    pub inputs: BTreeMap<String, PathBuf>,
    pub outputs: BTreeMap<String, PathBuf>,
    pub params: &'a serde_json::Value,
    /// Human-readable lines for the build log (a gate's checks, for example).
    pub log: std::sync::Mutex<Vec<String>>,
}

impl OpContext<'_> {
    pub fn log(&self, line: impl Into<String>) {
        self.log
            .lock()
            .expect("op log lock poisoned")
            .push(line.into());
    }

    pub fn input(&self, name: &str) -> Result<&PathBuf, String> {
        self.inputs
            .get(name)
            .ok_or_else(|| format!("{}: missing input `{name}`", self.stage_id))
    }

    pub fn output(&self, name: &str) -> Result<&PathBuf, String> {
        self.outputs
            .get(name)
            .ok_or_else(|| format!("{}: missing output `{name}`", self.stage_id))
    }
}

pub trait Op: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    /// Checks a stage's declaration (input and output names, params) before anything runs.
    fn check(&self, _stage: &Stage) -> Result<(), String> {
        Ok(())
    }
    /// Anything besides the declared ingredients that changes this op's output.
    fn fingerprint(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// Whether the op is a gate: its verdict is recorded in the lock and blocks dependents.
    fn is_gate(&self) -> bool {
        false
    }
    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, String>;
}

/// Every built-in op, sorted by name.
pub fn all() -> &'static [&'static dyn Op] {
    &[]
}

pub fn find(name: &str) -> Option<&'static dyn Op> {
    all().iter().copied().find(|op| op.name() == name)
}
