//! `edgebuild doctor`: checks of this machine and workspace (SPEC.md, "`edgebuild doctor`").

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::{Access, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args { json } = args;
    // The doctor runs when things are wrong: the workspace may not load and the remote
    // may be down, even if it is required; each is a finding, not an early exit.
    let root = edgebuild_engine::spec::Workspace::find_root(&session.start_dir()?)?;
    let opened =
        Context::open(&session.options(), Access::Read, session.ops.clone()).map_err(Error::from);
    let remote = edgebuild_remote::config::remote_settings(&root, &session.remote)
        .and_then(|mut s| {
            s.required = false;
            edgebuild_remote::Remote::open(&s)
        })
        .map_err(Error::from);
    let findings = crate::doctor::check(
        &root,
        opened.as_ref(),
        remote.as_ref().map(|r| r.as_ref()),
        &session.ops,
    );
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": findings }))
                .expect("findings serialize")
        );
    } else {
        for f in &findings {
            let level = match f.level {
                crate::doctor::Level::Ok => "ok  ",
                crate::doctor::Level::Warn => "WARN",
                crate::doctor::Level::Fail => "FAIL",
            };
            println!("{level} {:9} {}", f.check, f.message);
            if let Some(fix) = &f.fix {
                println!("     {:9} fix: {fix}", "");
            }
        }
    }
    let failed = findings
        .iter()
        .filter(|f| f.level == crate::doctor::Level::Fail)
        .count();
    if failed > 0 {
        return Err(Error::usage(
            format!("doctor found {failed} problem(s) to fix"),
            Some("each is listed above with its fix".into()),
        ));
    }
    Ok(ExitCode::Ok)
}
