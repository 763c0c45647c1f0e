//! `edgebuild init`: a workspace for your own model (SPEC.md, "`edgebuild init`"). The
//! scaffolding itself is [`crate::init`].

use super::Session;
use crate::error::{Error, ExitCode, Result};

pub use crate::init::InitOptions as Args;

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let start = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let root = match &session.dir {
        Some(dir) => start.join(dir),
        None => start.clone(),
    };
    std::fs::create_dir_all(root.join(edgebuild_engine::layout::PIPELINES_DIR))
        .map_err(|e| Error::io(&root, e))?;
    let written = crate::init::init(&root, &start, args)?;
    for file in &written.files {
        eprintln!("wrote {file}");
    }
    for file in &written.kept {
        eprintln!("kept  {file} (it exists)");
    }
    eprintln!("next: `edgebuild plan`, then `edgebuild build`; commit the pipeline and its lock");
    Ok(ExitCode::Ok)
}
