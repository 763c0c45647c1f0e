//! edgebuild: reproducible, gated pipelines that ship ML models to edge devices.
//!
//! This crate is the command line over the layers below it: [`cli`] parses the arguments and
//! dispatches to one file per subcommand under [`commands`]; [`error`] maps every layer's
//! errors to exit codes in one place. Besides the commands it holds what only the command line
//! needs: [`doctor`], [`init`], [`runbook`], the CI reports ([`ci`]), [`compare`], the proof of
//! reproducibility ([`repro`]), the tables they print ([`table`]) and reading commits
//! ([`git`]). The engine (`edgebuild-engine`), the ML ops (`edgebuild-ml`), the remote cache and
//! executor (`edgebuild-remote`) and deployment (`edgebuild-fleet`) are crates of their own.

// Errors carry the pipeline source for their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod ci;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod doctor;
pub mod error;
pub mod git;
pub mod init;
pub mod repro;
pub mod runbook;
pub mod table;

pub use error::{Error, ExitCode, Result};
