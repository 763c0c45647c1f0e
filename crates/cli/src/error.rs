//! The error type every command returns, and the one place that maps an error to its exit code
//! (SPEC.md, "Exit codes"). Each layer keeps its own typed errors; they meet here.

use miette::Diagnostic;
use thiserror::Error;

pub use edgebuild_engine::ExitCode;
use edgebuild_fleet::FleetError;
use edgebuild_fleet::release::ReleaseError;
use edgebuild_remote::RemoteError;

use crate::repro::VerifyError;

/// Everything a command can fail with.
#[derive(Debug, Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Engine(#[from] edgebuild_engine::Error),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Verify(#[from] VerifyError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Remote(#[from] RemoteError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Release(#[from] ReleaseError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Fleet(#[from] FleetError),

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

impl From<edgebuild_engine::spec::SpecError> for Error {
    fn from(e: edgebuild_engine::spec::SpecError) -> Self {
        Error::Engine(e.into())
    }
}

impl From<edgebuild_engine::store::StoreError> for Error {
    fn from(e: edgebuild_engine::store::StoreError) -> Self {
        Error::Engine(e.into())
    }
}

impl Error {
    /// The exit code of an error: the one mapping of every layer's errors.
    pub fn exit_code(&self) -> ExitCode {
        use edgebuild_engine::Error as Engine;
        match self {
            Error::Engine(e) => match e {
                Engine::Spec(_) | Engine::Usage { .. } => ExitCode::BadInput,
                Engine::Store(_) | Engine::Io { .. } => ExitCode::StageFailed,
                Engine::Remote(e) if e.unavailable => ExitCode::RemoteUnavailable,
                Engine::Remote(_) => ExitCode::BadInput,
            },
            Error::Usage { .. } | Error::StageInput { .. } => ExitCode::BadInput,
            Error::Io { .. } | Error::StagesFailed { .. } => ExitCode::StageFailed,
            Error::GatesFailed { .. } | Error::AwaitingSignOff { .. } => ExitCode::GateFailed,
            Error::Verify(e) => match e {
                VerifyError::BuildFailed { .. } => ExitCode::StageFailed,
                VerifyError::NotReproducible { .. } => ExitCode::NotReproducible,
                VerifyError::Workspace(e) => e.exit_code(),
                _ => ExitCode::BadInput,
            },
            Error::Remote(e) => match e {
                RemoteError::Unavailable { .. } => ExitCode::RemoteUnavailable,
                RemoteError::Io { .. } => ExitCode::StageFailed,
                RemoteError::BadUrl { .. } | RemoteError::Config { .. } => ExitCode::BadInput,
            },
            Error::Release(ReleaseError::Io { .. }) => ExitCode::StageFailed,
            Error::Release(_) => ExitCode::BadInput,
            Error::Fleet(e) => match e {
                FleetError::Unreachable { .. } => ExitCode::RemoteUnavailable,
                FleetError::Refused { .. }
                | FleetError::Usage(..)
                | FleetError::BadDatabase { .. } => ExitCode::BadInput,
                FleetError::Database { .. }
                | FleetError::Simulation(_)
                | FleetError::ControllerDied(_) => ExitCode::StageFailed,
            },
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
