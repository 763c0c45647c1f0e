//! Built-in ops: stages that edgebuild runs itself rather than through a shell.
//!
//! An op is one implementation of [`Op`]: a name, a version (bumped whenever its output bytes
//! change, DECISIONS 5), a check of its stage's declaration, an optional fingerprint of what else
//! changes its results, and a run function over resolved input and output paths. The engine sees
//! nothing else: it hashes, caches and schedules an op stage exactly like a `cmd` stage.

pub mod evaluate;
pub mod gate;
pub mod imatrix;
pub mod measure;
pub mod package;
pub mod prune;
pub mod quantize;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::Stage;

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

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> Self {
        OpError::Failed(e.to_string())
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

pub fn write_output(path: &Path, bytes: &[u8]) -> Result<(), OpError> {
    crate::store::write_atomic(path, bytes)
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

/// Checks that a stage declares exactly the named inputs and outputs an op expects.
pub fn check_ports(
    stage: &Stage,
    inputs: &[&str],
    optional_inputs: &[&str],
    outputs: &[&str],
) -> Result<(), String> {
    let names =
        |ports: &[crate::spec::Port]| ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
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
    fn verdict_of(&self, _outputs: &BTreeMap<String, std::path::PathBuf>) -> Option<bool> {
        None
    }
    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError>;
}

/// Every built-in op, sorted by name.
pub fn all() -> &'static [&'static dyn Op] {
    &[
        &evaluate::Evaluate,
        &gate::Gate,
        &imatrix::Imatrix,
        &measure::Measure,
        &package::Package,
        &prune::Prune,
        &quantize::Quantize,
        &report::Report,
    ]
}

/// What changes the numbers of ops that run candle kernels (DECISIONS 5): the CPU kernel level
/// detected at run time and the environment variables candle reads.
pub fn candle_fingerprint() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let level = if candle_core::utils::with_avx() {
        "avx"
    } else if candle_core::utils::with_neon() {
        "neon"
    } else if candle_core::utils::with_simd128() {
        "simd128"
    } else {
        "scalar"
    };
    out.insert(
        "candle.kernels".into(),
        format!(
            "{level}{}",
            if candle_core::utils::with_f16c() {
                "+f16c"
            } else {
                ""
            }
        ),
    );
    for var in ["CANDLE_DEQUANTIZE_ALL", "CANDLE_DEQUANTIZE_ALL_F16"] {
        out.insert(format!("env.{var}"), std::env::var(var).unwrap_or_default());
    }
    out.insert("candle.version".into(), "0.11.1".into());
    out
}

pub fn find(name: &str) -> Option<&'static dyn Op> {
    all().iter().copied().find(|op| op.name() == name)
}
