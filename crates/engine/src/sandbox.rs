//! The sandbox executor (`build --sandbox`): a `cmd` stage runs in a temporary directory that
//! holds only its declared inputs, with only `PATH` and its declared environment, and its
//! declared outputs are collected from there. A stage that reads a file it does not declare
//! fails, and says that an undeclared input is the likely cause: the seed's "an input is
//! escaping version control", caught before it bites.
//!
//! Where bubblewrap is installed, the stage also sees the system read-only, the workspace not at
//! all, a private `/tmp` and no network; its inputs are bound read-only rather than copied.
//! Without it the directory is a plain temporary one (an absolute path still reaches the
//! workspace). Built-in ops read exactly their declared inputs by construction and run in place.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::exec::{ExecFailure, ExecSuccess, Executor, Job, LocalExecutor, run_shell};
use crate::files::copy_tree;
use crate::op::OpRegistry;
use crate::spec::Action;
use std::sync::Arc;

/// bubblewrap, when it is installed and works here.
pub fn bubblewrap() -> Option<PathBuf> {
    let path = ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())?;
    // It can be installed yet refused by the kernel (no user namespaces): try it once.
    let works = Command::new(&path)
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(path)
}

pub struct SandboxExecutor {
    pub local: LocalExecutor,
    /// bubblewrap, if it is to be used.
    pub bwrap: Option<PathBuf>,
}

impl SandboxExecutor {
    pub fn new(ops: Arc<OpRegistry>, variation_env: Vec<(String, OsString)>) -> SandboxExecutor {
        SandboxExecutor {
            local: LocalExecutor { ops, variation_env },
            bwrap: bubblewrap(),
        }
    }

    fn describe(&self) -> &'static str {
        if self.bwrap.is_some() {
            "a bubblewrap sandbox that holds only its declared inputs"
        } else {
            "a temporary directory that holds only its declared inputs"
        }
    }
}

fn failure(message: String) -> ExecFailure {
    ExecFailure {
        message,
        log_tail: Vec::new(),
        bad_input: false,
    }
}

/// Whether `path` (inside `sandbox`) goes through a symlink the stage made: collecting it would
/// move a file from wherever the link points.
fn through_symlink(sandbox: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(sandbox) else {
        return true;
    };
    let mut at = sandbox.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Moves an output out of the sandbox into the workspace.
fn collect(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if to.exists() {
        crate::files::remove_path(to)?;
    }
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        // Another file system: copy.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_tree(from, to),
        Err(e) => Err(e),
    }
}

/// Why a stage that only sees its declared inputs most likely failed.
pub const UNDECLARED_HINT: &str = "if it reads a file it does not declare, an undeclared input is the likely cause (declare it in `inputs`)";

impl Executor for SandboxExecutor {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure> {
        if !matches!(job.stage.action, Action::Cmd(_)) {
            return self.local.execute(job);
        }
        let dir = tempfile::Builder::new()
            .prefix("edgebuild-sandbox-")
            .tempdir()
            .map_err(|e| failure(format!("cannot make the sandbox: {e}")))?;
        let sandbox = dir.path();
        let process = match &self.bwrap {
            Some(bwrap) => {
                let mut p = Command::new(bwrap);
                p.args(["--die-with-parent", "--unshare-all", "--ro-bind", "/", "/"])
                    .args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
                    // The workspace is not there at all: only what is declared is.
                    .arg("--tmpfs")
                    .arg(job.root)
                    .arg("--bind")
                    .arg(sandbox)
                    .arg(sandbox);
                for input in &job.stage.inputs {
                    let inside = sandbox.join(&input.path);
                    p.arg("--ro-bind")
                        .arg(job.root.join(&input.path))
                        .arg(&inside);
                }
                p.arg("--chdir").arg(sandbox).args(["--", "sh"]);
                p
            }
            None => {
                for input in &job.stage.inputs {
                    copy_tree(&job.root.join(&input.path), &sandbox.join(&input.path)).map_err(
                        |e| {
                            failure(format!(
                                "cannot copy input {} into the sandbox: {e}",
                                input.path
                            ))
                        },
                    )?;
                }
                let mut p = Command::new("sh");
                p.current_dir(sandbox);
                p
            }
        };
        for output in &job.stage.outputs {
            if let Some(parent) = sandbox.join(&output.path).parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| failure(format!("cannot prepare the sandbox: {e}")))?;
            }
        }
        if self.bwrap.is_some() {
            // bubblewrap creates the mount points of inputs itself; their parents must exist.
            for input in &job.stage.inputs {
                if let Some(parent) = sandbox.join(&input.path).parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
        }
        let result = run_shell(process, job, &self.local.variation_env);
        match result {
            Ok(success) => {
                for output in &job.stage.outputs {
                    let inside = sandbox.join(&output.path);
                    if through_symlink(sandbox, &inside) {
                        return Err(failure(format!(
                            "output {} goes through a symlink the stage made: not collected",
                            output.path
                        )));
                    }
                    if let Err(why) = job.guard.output(&output.path, &job.stage.id) {
                        return Err(failure(format!(
                            "refusing to collect output {}: it {why}",
                            output.path
                        )));
                    }
                    if std::fs::symlink_metadata(&inside).is_ok() {
                        collect(&inside, &job.root.join(&output.path)).map_err(|e| {
                            failure(format!(
                                "cannot collect output {} from the sandbox: {e}",
                                output.path
                            ))
                        })?;
                    }
                }
                Ok(success)
            }
            Err(mut failed) => {
                failed.message = format!(
                    "{} in {}: {UNDECLARED_HINT}",
                    failed.message,
                    self.describe()
                );
                Err(failed)
            }
        }
    }
}
