//! `edgebuild verify-reproducible`: rebuild a commit from scratch and compare its artifacts
//! with its lock, or build the working tree twice under varied conditions (SPEC.md,
//! "`edgebuild verify-reproducible`").

use super::Session;
use crate::error::{ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The commit to verify (a hash, branch, tag, HEAD~1...).
    #[arg(required_unless_present = "vary")]
    pub commit: Option<String>,
    /// Pipelines to verify (file stems); default all.
    pub pipelines: Vec<String>,
    /// Build the working tree twice, varying the working directory, time zone, locale,
    /// umask, SOURCE_DATE_EPOCH, jobs and threads, and compare the two builds.
    #[arg(long)]
    pub vary: bool,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary workspace copies and caches (their path is printed).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args {
        commit,
        mut pipelines,
        vary,
        json,
        keep,
    } = args;
    let start = session.start_dir()?;
    let verification = if vary {
        // With --vary there is no commit: a positional argument names a pipeline.
        pipelines.splice(0..0, commit);
        crate::repro::verify_variations(&start, &pipelines, keep, &session.ops)?
    } else {
        let commit = commit.expect("clap requires a commit without --vary");
        crate::repro::verify_commit(&start, &commit, &pipelines, keep, &session.ops)?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verification).expect("verifications serialize")
        );
    } else {
        print!("{}", crate::repro::render(&verification));
    }
    crate::repro::verdict(&verification)?;
    Ok(ExitCode::Ok)
}
