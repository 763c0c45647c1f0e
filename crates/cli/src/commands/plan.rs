//! `edgebuild plan`: what a build would do and why, without running anything (SPEC.md,
//! "`edgebuild plan`").

use super::Session;
use crate::error::{ExitCode, Result};
use edgebuild_engine::context::Access;
use edgebuild_engine::plan::Status;
use std::collections::BTreeSet;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipelines (file stems), stage ids (PIPELINE:STAGE) or stage names; default all.
    pub targets: Vec<String>,
    /// Print the plan as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit with code 1 when anything would run or be restored (for CI).
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args {
        targets,
        json,
        check,
    } = args;
    let mut ctx = session.open(Access::Read)?;
    // `plan` runs nothing, so each path's hash can be looked up once.
    ctx.stat.memoize();
    let selected = ctx.select(&targets)?;
    let plans = edgebuild_engine::plan::plan(&ctx, &selected);
    let pipelines: BTreeSet<usize> = selected
        .iter()
        .map(|&s| ctx.ws.stages[s].pipeline)
        .collect();
    let stale_runbooks = crate::runbook::stale(&ctx, &pipelines);
    ctx.save_stat_cache();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stages": plans,
                "stale_runbooks": stale_runbooks,
            }))
            .expect("plans serialize")
        );
    } else {
        print!("{}", edgebuild_engine::plan::render(&ctx, &plans));
    }
    for file in &stale_runbooks {
        let name = file
            .trim_start_matches("pipelines/")
            .trim_end_matches(".runbook.md");
        eprintln!(
            "note: {file} no longer matches its pipeline: run `edgebuild runbook {name} --write`"
        );
    }
    let stale = plans.iter().any(|p| p.status != Status::UpToDate) || !stale_runbooks.is_empty();
    // Freeing a large workspace takes measurable time and the process ends here.
    std::mem::forget(ctx);
    Ok(if check && stale {
        ExitCode::WouldRun
    } else {
        ExitCode::Ok
    })
}
