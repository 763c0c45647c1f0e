//! The seam between the engine and what stages compute: the [`Op`] trait, the [`OpRegistry`]
//! the caller passes in, and the one function that runs an op ([`run`]).
//!
//! An op is a name, a version (bumped whenever its output bytes change; SPEC.md, "Keys"), a check
//! of its stage's declaration, an optional fingerprint of what else changes its results, and a
//! run function over resolved input and output paths. The engine sees nothing else: it hashes,
//! caches and schedules an op stage exactly like a `cmd` stage. It holds no ops of its own and
//! never looks one up in a global: every lookup goes through the registry value that the loaded
//! workspace carries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::stage::{Action, Port, Stage};

/// Why an op failed: its inputs or params are wrong (exit 2), or something else went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    BadInput(String),
    Failed(String),
}

impl OpError {
    pub fn message(&self) -> &str {
        match self {
            OpError::BadInput(m) | OpError::Failed(m) => m,
        }
    }
}

impl From<String> for OpError {
    fn from(message: String) -> Self {
        OpError::Failed(message)
    }
}

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

    pub fn input(&self, name: &str) -> Result<&PathBuf, OpError> {
        self.inputs
            .get(name)
            .ok_or_else(|| OpError::BadInput(format!("{}: missing input `{name}`", self.stage_id)))
    }

    pub fn output(&self, name: &str) -> Result<&PathBuf, OpError> {
        self.outputs
            .get(name)
            .ok_or_else(|| OpError::BadInput(format!("{}: missing output `{name}`", self.stage_id)))
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
    /// For a gate: its verdict, read back from its outputs (by output name), so that a verdict
    /// restored from a cache comes from hashed bytes, not from an entry's unverified metadata.
    fn verdict_of(&self, _outputs: &BTreeMap<String, PathBuf>) -> Option<bool> {
        None
    }
    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError>;
}

/// The ops a workspace may name, passed in by the caller (the CLI registers the built-in ML
/// ops). Sorted by name.
#[derive(Default)]
pub struct OpRegistry {
    ops: Vec<Box<dyn Op>>,
}

impl std::fmt::Debug for OpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl OpRegistry {
    pub fn new(mut ops: Vec<Box<dyn Op>>) -> OpRegistry {
        ops.sort_by_key(|op| op.name());
        OpRegistry { ops }
    }

    pub fn find(&self, name: &str) -> Option<&dyn Op> {
        self.ops
            .iter()
            .find(|op| op.name() == name)
            .map(|op| op.as_ref())
    }

    pub fn all(&self) -> impl Iterator<Item = &dyn Op> {
        self.ops.iter().map(|op| op.as_ref())
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.ops.iter().map(|op| op.name()).collect()
    }

    /// The op a stage runs, if it is an op stage of a known op.
    pub fn of(&self, stage: &Stage) -> Option<&dyn Op> {
        match &stage.action {
            Action::Op { name, .. } => self.find(name),
            Action::Cmd(_) | Action::Manual(_) => None,
        }
    }

    /// Whether a stage is a gate: its verdict is recorded in the lock and blocks dependents. The
    /// one place that decides it.
    pub fn is_gate(&self, stage: &Stage) -> bool {
        self.of(stage).is_some_and(|op| op.is_gate())
    }

    /// A gate stage's verdict, read back from its outputs under `root`; `None` for a stage that
    /// is not a gate or whose verdict file is unreadable.
    pub fn verdict(&self, stage: &Stage, root: &Path) -> Option<bool> {
        let op = self.of(stage).filter(|op| op.is_gate())?;
        let outputs = stage
            .outputs
            .iter()
            .map(|p| (p.name.clone(), root.join(&p.path)))
            .collect();
        op.verdict_of(&outputs)
    }

    /// `name@version` of every op, for caches that must not outlive an op's change.
    pub fn identity(&self) -> String {
        self.ops
            .iter()
            .map(|o| format!("{}@{}", o.name(), o.version()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What running an op produced: its outcome and the lines it logged.
pub struct OpRun {
    pub outcome: OpOutcome,
    pub log: Vec<String>,
}

/// A failed op run: the error and the lines it logged before failing.
pub struct OpFailure {
    pub error: OpError,
    pub log: Vec<String>,
}

/// A stage's ports by name, resolved under `root`.
pub fn ports_under(root: &Path, ports: &[Port]) -> BTreeMap<String, PathBuf> {
    ports
        .iter()
        .map(|p| (p.name.clone(), root.join(&p.path)))
        .collect()
}

/// Runs an op on resolved input and output paths. The one place an op runs: the local
/// executor, the sandbox and the remote worker all call it.
pub fn run(
    op: &dyn Op,
    stage_id: &str,
    inputs: BTreeMap<String, PathBuf>,
    outputs: BTreeMap<String, PathBuf>,
    params: &serde_json::Value,
) -> Result<OpRun, OpFailure> {
    let ctx = OpContext {
        stage_id,
        inputs,
        outputs,
        params,
        log: Default::default(),
    };
    let result = op.run(&ctx);
    let log = ctx.log.into_inner().unwrap_or_default();
    match result {
        Ok(outcome) => Ok(OpRun { outcome, log }),
        Err(error) => Err(OpFailure { error, log }),
    }
}

/// Reads a JSON input.
pub fn read_json(path: &Path) -> Result<serde_json::Value, OpError> {
    let bytes =
        std::fs::read(path).map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| OpError::BadInput(format!("{}: {e}", path.display())))
}

/// Writes a JSON output (pretty, sorted keys, trailing newline), atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), OpError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| OpError::Failed(e.to_string()))?;
    bytes.push(b'\n');
    write_output(path, &bytes)
}

/// Writes an output file atomically.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), OpError> {
    crate::files::write_atomic(path, bytes)
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))
}

/// Deserializes an op's params, as a bad-input error naming the stage.
pub fn params<T: serde::de::DeserializeOwned>(ctx: &OpContext) -> Result<T, OpError> {
    let value = if ctx.params.is_null() {
        serde_json::json!({})
    } else {
        ctx.params.clone()
    };
    serde_json::from_value(value)
        .map_err(|e| OpError::BadInput(format!("{}: params: {e}", ctx.stage_id)))
}

/// A stage's params read as an op's params type, for its load-time [`Op::check`]: a wrong param is
/// a diagnostic when the pipeline loads, not a failure when the stage runs.
pub fn stage_params<T: serde::de::DeserializeOwned>(stage: &Stage) -> Result<T, String> {
    let value = if stage.params.is_null() {
        serde_json::json!({})
    } else {
        stage.params.clone()
    };
    serde_json::from_value(value).map_err(|e| format!("params: {e}"))
}

/// Checks that a stage declares exactly the named inputs and outputs an op expects.
pub fn check_ports(
    stage: &Stage,
    inputs: &[&str],
    optional_inputs: &[&str],
    outputs: &[&str],
) -> Result<(), String> {
    let names = |ports: &[Port]| ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let have_in = names(&stage.inputs);
    let have_out = names(&stage.outputs);
    for name in inputs {
        if !have_in.iter().any(|n| n == name) {
            return Err(format!(
                "needs an input named `{name}` (inputs: {{{name}: PATH, ...}})"
            ));
        }
    }
    for name in &have_in {
        if !inputs.contains(&name.as_str()) && !optional_inputs.contains(&name.as_str()) {
            let known: Vec<&str> = inputs.iter().chain(optional_inputs).copied().collect();
            return Err(format!(
                "has no input named `{name}`; it takes {}",
                known.join(", ")
            ));
        }
    }
    for name in outputs {
        if !have_out.iter().any(|n| n == name) {
            return Err(format!(
                "needs an output named `{name}` (outputs: {{{name}: PATH, ...}})"
            ));
        }
    }
    for name in &have_out {
        if !outputs.contains(&name.as_str()) {
            return Err(format!(
                "has no output named `{name}`; it writes {}",
                outputs.join(", ")
            ));
        }
    }
    Ok(())
}
