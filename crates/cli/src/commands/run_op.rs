//! `edgebuild run-op DESCRIPTION` (internal): one op from its description, in the current
//! directory; what a remote worker runs for a built-in op stage (SPEC.md, "Remote execution").

use std::path::PathBuf;

use super::Session;
use crate::error::{ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub description: PathBuf,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    Ok(edgebuild_remote::exec::run_op(
        &args.description,
        &session.ops,
    ))
}
