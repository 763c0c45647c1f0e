//! `edgebuild gc`: drop cache entries that no lock file refers to (SPEC.md, "Cache").

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::Access;
use std::collections::BTreeSet;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Collect a cache outside the workspace too (it may hold other workspaces' entries).
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { force } = args;
    let ctx = session.open(Access::Write)?;
    let private = ctx.store.dir().starts_with(ctx.root());
    if !private && !force {
        return Err(Error::usage(
            format!("the cache {} is outside this workspace", ctx.store.dir().display()),
            Some("it may hold entries of other workspaces that this workspace's lock files do not name; pass --force to collect it anyway".into()),
        ));
    }
    let keep: BTreeSet<_> = ctx
        .locks
        .iter()
        .flatten()
        .flat_map(|lock| lock.stages.values().map(|s| s.key))
        .collect();
    let report = ctx.store.gc(&keep)?;
    eprintln!(
        "gc: removed {} action entr{} and {} blob{}, freed {} bytes; kept {} entr{} referenced by lock files",
        report.actions,
        if report.actions == 1 { "y" } else { "ies" },
        report.blobs,
        if report.blobs == 1 { "" } else { "s" },
        report.bytes,
        keep.len(),
        if keep.len() == 1 { "y" } else { "ies" },
    );
    Ok(ExitCode::Ok)
}
