//! `edgebuild profile-host`: this host's peak compute and memory bandwidth, measured, as a device
//! profile entry to commit (SPEC.md, "`report`").

use super::Session;
use crate::error::{ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the profile entry.
    #[arg(long, default_value = "host")]
    pub name: String,
}

pub fn run(args: Args, _session: &Session) -> Result<ExitCode> {
    print!("{}", edgebuild_ml::profile::host_profile_yaml(&args.name));
    Ok(ExitCode::Ok)
}
