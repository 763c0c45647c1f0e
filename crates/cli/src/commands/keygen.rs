//! `edgebuild keygen PATH`: an Ed25519 key pair for signing releases (SPEC.md, "Signed
//! releases").

use std::path::PathBuf;

use super::Session;
use crate::error::{ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub path: PathBuf,
}

pub fn run(args: Args, _session: &Session) -> Result<ExitCode> {
    let Args { path } = args;
    let key = edgebuild_fleet::release::keygen(&path)?;
    eprintln!(
        "wrote {} (private: keep it out of the repository) and {} (public: give it to devices)",
        path.display(),
        edgebuild_fleet::release::public_path(&path).display()
    );
    let _ = key;
    Ok(ExitCode::Ok)
}
