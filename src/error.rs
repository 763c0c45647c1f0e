//! The error type every command returns, and the exit codes it maps to.
//!
//! Exit codes are part of edgebuild's interface (SPEC.md, "Exit codes"); this module is the one
//! place that maps an error to its code. Library modules keep their own typed errors; they meet
//! here.

use miette::Diagnostic;
use thiserror::Error;

/// Process exit codes, one per kind of outcome (DECISIONS 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    /// `plan --check`: something would run.
    WouldRun = 1,
    /// Bad input or usage: the pipeline files, a flag, an unknown target.
    BadInput = 2,
    /// A gate stage failed.
    GateFailed = 3,
    /// A stage failed (non-zero exit, missing output, op error).
    StageFailed = 4,
    /// `verify-reproducible`: an artifact does not match its lock.
    NotReproducible = 5,
    /// A remote was required but unavailable.
    RemoteUnavailable = 6,
}

/// Everything a command can fail with.
#[derive(Debug, Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] crate::spec::SpecError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] crate::store::StoreError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Verify(#[from] crate::repro::VerifyError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Remote(#[from] crate::remote::RemoteError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Release(#[from] crate::release::ReleaseError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Fleet(#[from] crate::fleet::FleetError),

    #[error("{message}")]
    #[diagnostic(code(edgebuild::usage))]
    Usage {
        message: String,
        #[help]
        help: Option<String>,
    },

    #[error("I/O error on {path}")]
    #[diagnostic(code(edgebuild::io))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{failed} stage(s) failed: {stages}")]
    #[diagnostic(code(edgebuild::stage_failed))]
    StagesFailed { failed: usize, stages: String },

    #[error("bad input to stage(s): {stages}")]
    #[diagnostic(
        code(edgebuild::stage_input),
        help("the stage's inputs or params are wrong; the problem is printed above")
    )]
    StageInput { stages: String },

    #[error("gate(s) failed: {stages}")]
    #[diagnostic(
        code(edgebuild::gate_failed),
        help(
            "every check with its measured value and threshold is listed above; stages that depend on a failed gate were not run"
        )
    )]
    GatesFailed { stages: String },

    #[error("awaiting sign-off: {stages}")]
    #[diagnostic(
        code(edgebuild::awaiting_sign_off),
        help(
            "a person checks each item listed above, then runs `edgebuild approve STAGE`; what depends on it waits until then"
        )
    )]
    AwaitingSignOff { stages: String },
}

impl Error {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Spec(_) | Error::Usage { .. } | Error::StageInput { .. } => ExitCode::BadInput,
            Error::Store(_) | Error::Io { .. } | Error::StagesFailed { .. } => {
                ExitCode::StageFailed
            }
            Error::GatesFailed { .. } | Error::AwaitingSignOff { .. } => ExitCode::GateFailed,
            Error::Verify(e) => e.exit_code(),
            Error::Remote(crate::remote::RemoteError::Unavailable { .. }) => {
                ExitCode::RemoteUnavailable
            }
            Error::Remote(_) => ExitCode::BadInput,
            Error::Release(crate::release::ReleaseError::Io { .. }) => ExitCode::StageFailed,
            Error::Release(_) => ExitCode::BadInput,
            Error::Fleet(e) => e.exit_code(),
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    pub fn usage(message: impl Into<String>, help: Option<String>) -> Self {
        Error::Usage {
            message: message.into(),
            help,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
