//! `edgebuild dag`: the stage graph as Graphviz dot or Mermaid (SPEC.md, "`edgebuild dag`").

use super::Session;
use crate::error::{ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Dot,
    Mermaid,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Format::Dot)]
    pub format: Format,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { format } = args;
    let ctx = session.open(Access::Read)?;
    print!(
        "{}",
        edgebuild_engine::graph::render(&ctx.ws, &ctx.graph, matches!(format, Format::Mermaid))
    );
    Ok(ExitCode::Ok)
}
