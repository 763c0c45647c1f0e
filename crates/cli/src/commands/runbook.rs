//! `edgebuild runbook`: the runbook of pipelines, generated from the pipelines (SPEC.md,
//! "`edgebuild runbook`").

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::Access;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Markdown,
    Html,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipelines (file stems); default all.
    pub pipelines: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    pub format: Format,
    /// Write pipelines/NAME.runbook.md (or .html) instead of printing.
    #[arg(long)]
    pub write: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args {
        pipelines,
        format,
        write,
    } = args;
    let ctx = session.open(Access::Read)?;
    let chosen = ctx.pipelines_named(&pipelines)?;
    for i in chosen {
        let name = &ctx.ws.pipelines[i].name;
        let markdown = crate::runbook::markdown(&ctx, i);
        let (text, file) = match format {
            Format::Markdown => (markdown, crate::runbook::path(name)),
            Format::Html => (
                crate::runbook::html(&markdown, &format!("Runbook: {name}")),
                crate::runbook::path(name).replace(".md", ".html"),
            ),
        };
        if write {
            let full = ctx.root().join(&file);
            edgebuild_engine::files::write_atomic(&full, text.as_bytes())
                .map_err(|e| Error::io(&full, e))?;
            eprintln!("wrote {file}");
        } else {
            print!("{text}");
        }
    }
    Ok(ExitCode::Ok)
}
