//! The worker side: an op stage runs remotely as `edgebuild run-op DESCRIPTION`, the edgebuild
//! binary itself shipped in the input root with the op's serialized description. This module
//! owns that description, the platform an op's worker must match, and the command that runs it
//! through the engine's one op runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use edgebuild_engine::ExitCode;
use edgebuild_engine::op::{OpError, OpOutcome, OpRegistry};

/// An op as the worker runs it: `edgebuild run-op .edgebuild/stage.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpDescription {
    pub stage: String,
    pub op: String,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub params: serde_json::Value,
}

/// Where the edgebuild binary and an op's description sit in the input root.
pub(crate) const TOOL_DIR: &str = ".edgebuild-remote";

/// The platform properties of the edgebuild binary, which an op's worker must match.
pub fn binary_platform() -> [(&'static str, &'static str); 2] {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm-a64",
        other => other,
    };
    [("OSFamily", std::env::consts::OS), ("ISA", isa)]
}

/// `edgebuild run-op DESCRIPTION`: an op on a worker, in the input root. Prints the op's log;
/// exits 0, 3 for a failed gate, 2 for bad input, 4 otherwise.
pub fn run_op(description: &Path, ops: &OpRegistry) -> ExitCode {
    let bytes = match std::fs::read(description) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", description.display());
            return ExitCode::BadInput;
        }
    };
    let description: OpDescription = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("not an op description: {e}");
            return ExitCode::BadInput;
        }
    };
    let Some(op) = ops.find(&description.op) else {
        eprintln!("unknown op `{}`", description.op);
        return ExitCode::BadInput;
    };
    let paths = |ports: &BTreeMap<String, String>| -> BTreeMap<String, PathBuf> {
        ports
            .iter()
            .map(|(n, p)| (n.clone(), PathBuf::from(p)))
            .collect()
    };
    for path in description.outputs.values() {
        if let Some(parent) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
    }
    let result = edgebuild_engine::op::run(
        op,
        &description.stage,
        paths(&description.inputs),
        paths(&description.outputs),
        &description.params,
    );
    let (log, code) = match result {
        Ok(run) => (
            run.log,
            match run.outcome {
                OpOutcome::Success => ExitCode::Ok,
                OpOutcome::GateFailed => ExitCode::GateFailed,
            },
        ),
        Err(failure) => {
            for line in &failure.log {
                println!("{line}");
            }
            eprintln!("{}", failure.error.message());
            let code = match failure.error {
                OpError::BadInput(_) => ExitCode::BadInput,
                OpError::Failed(_) => ExitCode::StageFailed,
            };
            return code;
        }
    };
    for line in log {
        println!("{line}");
    }
    code
}
