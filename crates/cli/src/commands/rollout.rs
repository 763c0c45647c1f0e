//! `edgebuild rollout start|status|pause|resume|abort|rollback`: staged rollouts of a signed
//! release, as an operator drives them (SPEC.md, "Operators").

use std::path::PathBuf;

use clap::Subcommand;

use super::Session;
use super::fleet::{ServerArgs, block_on, fleet_client};
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Upload release N of a pipeline (its manifest, its pre-signed rollback and their
    /// artifacts) and start rolling it out under a policy file.
    Start {
        pipeline: String,
        #[arg(long, value_name = "N")]
        release: u64,
        #[arg(long, value_name = "PATH")]
        policy: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Per stage: devices targeted, confirmed, failed, timed out, and the confidence
    /// comparison; then the audit log. Without an id: every rollout.
    Status {
        id: Option<i64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop targeting more devices and advancing (abort conditions are still watched).
    Pause(RolloutChange),
    /// Continue a paused rollout; the stage's soak time starts again.
    Resume(RolloutChange),
    /// Stop the rollout and send the devices it reached the pre-signed rollback.
    Abort(RolloutChange),
    /// Send the pre-signed rollback to every device of a completed rollout.
    Rollback(RolloutChange),
}

#[derive(Debug, clap::Args)]
pub struct RolloutChange {
    pub id: i64,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn print_status(status: &edgebuild_fleet::RolloutStatus, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(status).expect("statuses serialize")
        );
    } else {
        print!("{}", edgebuild_fleet::render_status(status));
    }
}

pub fn run(action: Args, session: &Session) -> Result<ExitCode> {
    use edgebuild_fleet::RolloutStatus;
    match action {
        Args::Start {
            pipeline,
            release,
            policy,
            server,
        } => {
            let policy_text =
                std::fs::read_to_string(&policy).map_err(|e| Error::io(&policy, e))?;
            // Checked here for a diagnostic on the file; the server checks again.
            edgebuild_fleet::policy::parse(&policy.display().to_string(), &policy_text)?;
            let client = fleet_client(&server)?;
            let ctx = session.open(Access::Read)?;
            let made = edgebuild_fleet::release::existing(ctx.root(), &pipeline)?;
            let Some(manifest) = made.get(&release).cloned() else {
                return Err(Error::usage(
                    format!("no release {release} of {pipeline} in releases/{pipeline}/"),
                    Some(format!(
                        "make one with `edgebuild release {pipeline} --version V --key PATH`"
                    )),
                ));
            };
            let rollback = made
                .get(&(release + 1))
                .filter(|m| m.manifest.kind == "rollback")
                .cloned();
            let mut uploaded = 0;
            for artifact in manifest
                .manifest
                .artifacts
                .iter()
                .chain(rollback.iter().flat_map(|r| &r.manifest.artifacts))
            {
                let bytes = ctx.store.blob_bytes(&artifact.sha256).ok_or_else(|| {
                    Error::usage(
                        format!(
                            "artifact {} ({}) is not in the cache",
                            artifact.name,
                            artifact.sha256.short()
                        ),
                        Some("build the release's commit (or `edgebuild cache pull`) first".into()),
                    )
                })?;
                if block_on(client.upload_artifact(&artifact.sha256.hex(), bytes))?? {
                    uploaded += 1;
                }
            }
            let request = edgebuild_fleet::StartRollout {
                manifest,
                rollback,
                policy: policy_text,
            };
            #[derive(serde::Deserialize)]
            struct Started {
                id: i64,
            }
            let started: Started = block_on(client.post("/v1/admin/rollouts", &request))??;
            eprintln!("uploaded {uploaded} artifact(s)");
            println!(
                "rollout {} of {pipeline} release {release} started",
                started.id
            );
            Ok(ExitCode::Ok)
        }
        Args::Status { id, json, server } => {
            let client = fleet_client(&server)?;
            match id {
                Some(id) => {
                    let status: Option<RolloutStatus> =
                        block_on(client.get(&format!("/v1/admin/rollouts/{id}")))??;
                    print_status(&status.expect("a status has a body"), json);
                }
                None => {
                    let all: Option<Vec<RolloutStatus>> =
                        block_on(client.get("/v1/admin/rollouts"))??;
                    let all = all.unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&all).expect("statuses serialize")
                        );
                    } else if all.is_empty() {
                        println!("no rollouts");
                    } else {
                        for status in &all {
                            print!("{}", edgebuild_fleet::render_status(status));
                        }
                    }
                }
            }
            Ok(ExitCode::Ok)
        }
        Args::Pause(change) => rollout_change("pause", change),
        Args::Resume(change) => rollout_change("resume", change),
        Args::Abort(change) => rollout_change("abort", change),
        Args::Rollback(change) => rollout_change("rollback", change),
    }
}

fn rollout_change(action: &str, change: RolloutChange) -> Result<ExitCode> {
    let client = fleet_client(&change.server)?;
    let status: edgebuild_fleet::RolloutStatus = block_on(client.post(
        &format!("/v1/admin/rollouts/{}/{action}", change.id),
        &serde_json::json!({ "reason": change.reason }),
    ))??;
    print_status(&status, false);
    Ok(ExitCode::Ok)
}
