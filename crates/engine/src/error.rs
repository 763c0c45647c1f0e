//! The engine's error type: what loading a workspace, reading its caches or moving files can
//! fail with. Each variant keeps its own diagnostic; the CLI maps them to exit codes.

use miette::Diagnostic;
use thiserror::Error;

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
    Remote(#[from] crate::remote_cache::RemoteCacheError),

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
}

impl Error {
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
