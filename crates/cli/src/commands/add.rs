//! `edgebuild add PATH...`: large versioned inputs outside git, as committed pointer files
//! (SPEC.md, "Versioned inputs outside git").

use std::path::PathBuf;

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::remote_cache::RemoteCache;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { paths } = args;
    let (root, store, remote, _lock) = session.open_caches()?;
    let start = session.start_dir()?;
    for path in paths {
        let full = start.join(&path);
        let rel = full
            .strip_prefix(&root)
            .ok()
            .and_then(|r| edgebuild_engine::spec::normalize_path(&root, &r.to_string_lossy()).ok())
            .ok_or_else(|| {
                Error::usage(
                    format!("{} is not a file inside the workspace", path.display()),
                    None,
                )
            })?;
        let pointer = edgebuild_engine::pointer::add(
            &root,
            &rel,
            &store,
            remote.as_deref().map(|r| r as &dyn RemoteCache),
        )?;
        eprintln!(
            "added {rel}: {} bytes, sha256 {}; commit {rel}{} (the file itself is now in .gitignore){}",
            pointer.size,
            pointer.sha256.short(),
            edgebuild_engine::pointer::SUFFIX,
            match &remote {
                Some(r) if r.upload => format!(", uploaded to {}", r.url()),
                _ => String::new(),
            }
        );
    }
    Ok(ExitCode::Ok)
}
