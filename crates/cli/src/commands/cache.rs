//! `edgebuild cache status|push|pull`: the shared remote cache, and moving entries by hand
//! (SPEC.md, "`edgebuild cache`").

use clap::Subcommand;

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// For each locked stage: whether its entry is in the local cache and the remote.
    Status {
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Upload the local entries of the locked stages to the remote.
    Push { targets: Vec<String> },
    /// Download the remote entries of the locked stages into the local cache (verified).
    Pull { targets: Vec<String> },
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: CacheAction,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { action } = args;
    let access = match action {
        CacheAction::Pull { .. } => Access::Write,
        _ => Access::Read,
    };
    let (ctx, remote) = session.open_with_remote(access)?;
    let Some(remote) = remote.as_deref() else {
        return Err(Error::usage(
            "no remote cache is configured",
            Some(format!(
                "give --remote URL, set {}, or add `remote: {{url: ...}}` to {}",
                edgebuild_remote::cache::REMOTE_ENV,
                edgebuild_remote::config::CONFIG_FILE
            )),
        ));
    };
    match action {
        CacheAction::Status { targets, json } => {
            let selected = ctx.select(&targets)?;
            let rows = edgebuild_remote::cache::status(&ctx, remote, &selected);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "remote": remote.url(),
                        "stages": rows,
                    }))
                    .expect("status serializes")
                );
            } else {
                println!("remote: {}", remote.url());
                let width = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5);
                println!("{:width$}  key           local   remote   bytes", "stage");
                for row in &rows {
                    let yes = |b: bool| if b { "yes" } else { "no" };
                    let remote = match (row.volatile, row.remote) {
                        (true, _) => "volatile",
                        (false, Some(b)) => yes(b),
                        (false, None) => "?",
                    };
                    println!(
                        "{:width$}  {}  {:6}  {:8} {:>6}",
                        row.stage,
                        row.key.short(),
                        yes(row.local),
                        remote,
                        row.bytes
                    );
                }
            }
            Ok(ExitCode::Ok)
        }
        CacheAction::Push { ref targets } | CacheAction::Pull { ref targets } => {
            let pushing = matches!(action, CacheAction::Push { .. });
            let selected = ctx.select(targets)?;
            let transfer = if pushing {
                edgebuild_remote::cache::push(&ctx, remote, &selected)?
            } else {
                edgebuild_remote::cache::pull(&ctx, remote, &selected)?
            };
            let (verb, there, missing) = if pushing {
                ("pushed", "already on the remote", "not in the local cache")
            } else {
                ("pulled", "already local", "not on the remote")
            };
            eprintln!(
                "{verb} {}, {} {there}, {} {missing}, {} volatile (never shared)",
                transfer.transferred.len(),
                transfer.already_there.len(),
                transfer.unavailable.len(),
                transfer.volatile.len()
            );
            for stage in &transfer.unavailable {
                eprintln!("  {missing}: {stage}");
            }
            Ok(ExitCode::Ok)
        }
    }
}
