//! The local executor: `cmd` stages through `sh -c` in the workspace root with only `PATH` and
//! their declared environment, ops in-process through [`crate::op::run`].

use std::ffi::OsString;
use std::process::Command;
use std::sync::Arc;

use super::{ExecFailure, ExecSuccess, Executor, Job};
use crate::op::{OpError, OpOutcome, OpRegistry};
use crate::stage::Action;

/// Runs `cmd` stages with `sh -c` in the workspace root, with only `PATH` and the declared
/// environment variables set, and ops in-process.
///
/// Each command inherits a descriptor of the workspace lock (see [`crate::context::Context::open`]),
/// so that if edgebuild itself is killed, a stage still running keeps the workspace locked until
/// it exits: the next build waits for it instead of racing it for the same outputs.
pub struct LocalExecutor {
    /// The ops stages may name.
    pub ops: Arc<OpRegistry>,
    /// Variables set for every `cmd` stage besides `PATH` and its declared ones, and not part of
    /// any key. Only variation builds (`verify-reproducible --vary`) set them, with a private
    /// cache, to show that a stage's outputs do not depend on them.
    pub variation_env: Vec<(String, OsString)>,
}

/// Lines of a failing command's output shown in the error.
const LOG_TAIL_LINES: usize = 20;

/// The last lines of a command's output, for its error message.
pub fn tail(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Runs a `cmd` stage's command with `sh -c` through `process` (sh itself, or a wrapper such as
/// bubblewrap whose last arguments are `sh`), with only `PATH`, the variation variables the stage
/// does not declare, and its declared environment.
pub fn run_shell(
    mut process: Command,
    job: &Job,
    variation_env: &[(String, OsString)],
) -> Result<ExecSuccess, ExecFailure> {
    let command = job.command.as_deref().unwrap_or_default();
    let output = process
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(
            // A variable the stage declares keeps its real value.
            variation_env
                .iter()
                .filter(|(k, _)| !job.stage.env.contains(k))
                .map(|(k, v)| (k, v)),
        )
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ExecFailure {
            message: format!("cannot start {:?}: {e}", process.get_program()),
            log_tail: Vec::new(),
            bad_input: false,
        })?;
    if output.status.success() {
        Ok(ExecSuccess {
            outcome: OpOutcome::Success,
            log: Vec::new(),
            remote: None,
        })
    } else {
        let mut log_tail = tail(&output.stderr);
        if log_tail.is_empty() {
            log_tail = tail(&output.stdout);
        }
        Err(ExecFailure {
            message: format!("command failed ({})", output.status),
            log_tail,
            bad_input: false,
        })
    }
}

/// Runs an op stage in-process on this machine: the one op runner of the executors (the
/// sandbox runs ops through it too).
pub fn run_op(ops: &OpRegistry, job: &Job) -> Result<ExecSuccess, ExecFailure> {
    let Action::Op { name, .. } = &job.stage.action else {
        return Err(ExecFailure {
            message: "not an op stage".into(),
            log_tail: Vec::new(),
            bad_input: true,
        });
    };
    let op = ops.find(name).ok_or_else(|| ExecFailure {
        message: format!("unknown op `{name}`"),
        log_tail: Vec::new(),
        bad_input: true,
    })?;
    let stage = job.stage;
    match crate::op::run(
        op,
        &stage.id,
        crate::op::ports_under(job.root, &stage.inputs),
        crate::op::ports_under(job.root, &stage.outputs),
        &stage.params,
    ) {
        Ok(run) => Ok(ExecSuccess {
            outcome: run.outcome,
            log: run.log,
            remote: None,
        }),
        Err(failure) => Err(ExecFailure {
            bad_input: matches!(failure.error, OpError::BadInput(_)),
            message: failure.error.message().to_string(),
            log_tail: failure.log,
        }),
    }
}

impl Executor for LocalExecutor {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure> {
        match &job.stage.action {
            Action::Cmd(_) => {
                let mut process = Command::new("sh");
                process.current_dir(job.root);
                run_shell(process, job, &self.variation_env)
            }
            Action::Manual(_) => Err(ExecFailure {
                message: "a manual stage is signed off with `edgebuild approve`, never run".into(),
                log_tail: Vec::new(),
                bad_input: true,
            }),
            Action::Op { .. } => run_op(&self.ops, job),
        }
    }
}
