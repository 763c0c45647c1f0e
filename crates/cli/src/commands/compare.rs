//! `edgebuild compare A [B]`: reports, metrics and gate verdicts of two commits side by side
//! (SPEC.md, "`edgebuild compare`").

use super::Session;
use crate::error::{ExitCode, Result};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    /// A table for a pull-request comment or a CI job summary.
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base commit (a hash, branch, tag, HEAD~1...).
    pub a: String,
    /// The commit to compare with it; default: the working tree.
    pub b: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { a, b, format } = args;
    let start = session.start_dir()?;
    let root = edgebuild_engine::spec::Workspace::find_root(&start)?;
    let cache = session
        .cache_dir
        .clone()
        .map_or_else(|| root.join("cache"), |d| start.join(d));
    let comparison = crate::compare::compare(&start, &a, b.as_deref(), &cache, &session.ops)?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&comparison).expect("comparisons serialize")
        ),
        Format::Text => print!("{}", crate::compare::render(&comparison, false)),
        Format::Markdown => {
            print!("{}", crate::compare::render(&comparison, true))
        }
    }
    Ok(ExitCode::Ok)
}
