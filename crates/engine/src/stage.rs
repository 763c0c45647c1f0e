//! A validated stage: what it runs, the ports it reads and writes, its params and environment.
//! This is the model every layer shares; it is built by [`crate::spec`] and read by everything
//! else. It holds data only.

use std::collections::BTreeMap;

use miette::SourceSpan;
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Validated model

/// One input or output of a stage. List entries are named `0`, `1`, ...
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub path: String,
    pub span: SourceSpan,
}

/// What a stage does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Action {
    /// A shell command (a template with `${...}` references).
    Cmd(String),
    /// A built-in op by name and version.
    Op { name: String, version: u32 },
    /// A manual step: a checklist a person signs off with `edgebuild approve` for exactly the
    /// stage's current inputs (SPEC.md, "Manual steps"). It has no outputs and blocks its dependents until
    /// then.
    Manual(Vec<String>),
}

fn yes() -> bool {
    true
}

/// A validated stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Stage {
    /// `PIPELINE:STAGE`.
    pub id: String,
    /// Index into [`Workspace::pipelines`].
    pub pipeline: usize,
    pub name: String,
    pub description: Option<String>,
    pub action: Action,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Whether inputs/outputs were given as a map (names) rather than a list.
    pub named_inputs: bool,
    pub named_outputs: bool,
    pub params: serde_json::Value,
    pub env: Vec<String>,
    pub tools: BTreeMap<String, String>,
    pub volatile: bool,
    /// Stage ids that must succeed first without their outputs entering this stage's key.
    pub after: Vec<String>,
    /// Whether a remote executor may run it (`remote: false` keeps it on this machine).
    #[serde(default = "yes")]
    pub remote: bool,
    /// Platform properties a remote worker must have (`OSFamily: linux`, `gpu_count: 1`).
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
    pub span: SourceSpan,
    pub action_span: SourceSpan,
}
