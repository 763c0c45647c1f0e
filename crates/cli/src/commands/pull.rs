//! `edgebuild pull`: bring back the files that pointer files name, verified by hash (SPEC.md,
//! "Versioned inputs outside git").

use super::Session;
use crate::error::{ExitCode, Result};
use edgebuild_engine::remote_cache::RemoteCache;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Replace a pointed file that was changed locally.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { force } = args;
    let (root, store, remote, _lock) = session.open_caches()?;
    let mut counts = std::collections::BTreeMap::new();
    for pointer in edgebuild_engine::pointer::find(&root) {
        let source = edgebuild_engine::pointer::pull_one(
            &pointer,
            Some(&store),
            remote.as_deref().map(|r| r as &dyn RemoteCache),
            force,
        )?;
        *counts.entry(format!("{source:?}")).or_insert(0) += 1;
    }
    eprintln!(
        "pull: {} already in place, {} from the local cache, {} from the remote",
        counts.get("InPlace").unwrap_or(&0),
        counts.get("LocalCache").unwrap_or(&0),
        counts.get("Remote").unwrap_or(&0)
    );
    Ok(ExitCode::Ok)
}
