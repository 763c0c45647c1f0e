//! `edgebuild approve STAGE`: sign off a manual stage for exactly its current inputs (SPEC.md,
//! "Manual steps").

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manual stage (PIPELINE:STAGE, or its name).
    pub stage: String,
    /// Who signs (default: git's user.name, else $USER).
    #[arg(long)]
    pub by: Option<String>,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { stage, by } = args;
    let ctx = session.open(Access::Write)?;
    // PIPELINE:STAGE, or a stage name only one pipeline has.
    let named: Vec<usize> = match ctx.ws.stage_index(&stage) {
        Some(index) => vec![index],
        None => (0..ctx.ws.stages.len())
            .filter(|&i| ctx.ws.stages[i].name == stage)
            .collect(),
    };
    let [index] = named[..] else {
        return Err(Error::usage(
            format!(
                "`{stage}` names {} stages; name one manual stage",
                named.len()
            ),
            Some("say PIPELINE:STAGE".into()),
        ));
    };
    let by = edgebuild_engine::manual::signer(ctx.root(), by);
    let signed = edgebuild_engine::manual::approve(&ctx, index, &by)?;
    let spec = &ctx.ws.stages[index];
    eprintln!(
        "signed off {} as {by} for its current inputs (key {}): {}; commit it with the lock",
        spec.id,
        signed.key.short(),
        edgebuild_engine::manual::approvals_file(
            std::path::Path::new(""),
            &ctx.ws.pipelines[spec.pipeline].name
        )
        .display()
    );
    Ok(ExitCode::Ok)
}
