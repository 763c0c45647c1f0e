//! `edgebuild device simulate`: a fleet of simulated devices that speak the device API and run
//! the released model (SPEC.md, "Devices").

use clap::Subcommand;

use super::Session;
use super::fleet::admin_token;
use crate::error::{ExitCode, Result};

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Simulate N devices: poll, verify signature and hashes, install, run the released GGUF on
    /// held-out inputs for the health check and the confidence telemetry, report.
    Simulate {
        #[command(flatten)]
        args: edgebuild_fleet::simulate::SimulateArgs,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: Args, _session: &Session) -> Result<ExitCode> {
    match action {
        Args::Simulate { args, json } => {
            let key = edgebuild_fleet::release::read_verifying_key(&args.key)?;
            let summary = edgebuild_fleet::simulate::simulate(&args, key, admin_token())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("summaries serialize")
                );
            } else {
                print!("{}", edgebuild_fleet::simulate::render(&summary));
            }
            Ok(ExitCode::Ok)
        }
    }
}
