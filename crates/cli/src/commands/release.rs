//! `edgebuild release PIPELINE`: a signed release from a gated build (SPEC.md, "Signed
//! releases").

use std::path::PathBuf;

use super::Session;
use crate::error::{ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub pipeline: String,
    #[arg(long)]
    pub version: String,
    /// The private key (from `edgebuild keygen`).
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// The release the pre-signed rollback returns to (default: the newest release; name
    /// an earlier one when the newest was itself rolled back).
    #[arg(long, value_name = "N")]
    pub rollback_to: Option<u64>,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args {
        pipeline,
        version,
        key,
        rollback_to,
    } = args;
    let signing = edgebuild_fleet::release::read_signing_key(&key)?;
    // Exclusive: two releases at once must not take the same number.
    let ctx = session.open(Access::Write)?;
    let made = edgebuild_fleet::release::release(&ctx, &pipeline, &version, &signing, rollback_to)?;
    eprintln!(
        "release {} of {pipeline} ({version}): {}",
        made.release, made.manifest
    );
    if let Some((number, path)) = &made.rollback {
        eprintln!("rollback {number} (to the previous release): {path}");
    }
    Ok(ExitCode::Ok)
}
