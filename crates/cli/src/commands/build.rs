//! `edgebuild build`: run stale stages in dependency order, in parallel, restore the rest from
//! the caches, write the lock files, and report (SPEC.md, "`edgebuild build`").

use std::path::PathBuf;

use serde::Serialize;

use super::Session;
use crate::error::{Error, ExitCode, Result};
use edgebuild_engine::context::{Access, Context};
use edgebuild_engine::exec::{self, BuildOptions, BuildReport, Executor, LocalExecutor, Outcome};
use edgebuild_engine::sandbox::SandboxExecutor;
use edgebuild_remote::exec::{RemoteExecSettings, RemoteExecutor, RemoteStats};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pipelines (file stems), stage ids (PIPELINE:STAGE) or stage names; default all.
    pub targets: Vec<String>,
    /// Stages to run at once, 1 to 1024 (default: the number of CPUs).
    #[arg(short, long, value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Keep building independent stages after a failure.
    #[arg(short = 'k', long)]
    pub keep_going: bool,
    /// Print the result of every stage as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run `cmd` stages in a sandbox that holds only their declared inputs (bubblewrap where
    /// installed: the system read-only, no workspace, no network): an undeclared input fails.
    #[arg(long)]
    pub sandbox: bool,
    /// Write a JUnit XML report (every gate check and every stage a test case) to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a Markdown summary (verdict, gate checks, failures) to FILE, e.g.
    /// "$GITHUB_STEP_SUMMARY".
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Set NAME=VALUE for `cmd` stages that do not declare NAME, outside their keys.
    /// Internal: used by `verify-reproducible --vary` with a private cache.
    #[arg(long, hide = true, value_name = "NAME=VALUE")]
    pub variation_env: Vec<String>,
    /// Run stages on a Remote Execution API v2 server (grpc://HOST:PORT or grpcs://);
    /// overrides EDGEBUILD_REMOTE_EXEC and edgebuild.yaml's `remote_exec`.
    #[arg(long, value_name = "URL")]
    pub remote_exec: Option<String>,
    /// The executor's instance name.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub remote_instance: String,
    /// Remote actions in flight at once, 1 to 1024 (default 8; `-j` defaults to it with an
    /// executor).
    #[arg(long, value_name = "N", value_parser = parse_jobs)]
    pub remote_jobs: Option<usize>,
    /// Run a stage locally, with a warning, when the executor fails it for reasons of its own.
    #[arg(long)]
    pub remote_exec_fallback: bool,
}

/// The most stages (or remote actions) a build runs at once (SPEC.md, "Limits"): each is a
/// thread of its own, so `-j 100000` would be a hundred thousand threads.
pub const MAX_JOBS: usize = 1024;

/// `-j N`: a whole number from 1 to [`MAX_JOBS`].
fn parse_jobs(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a job count: give a whole number from 1 to {MAX_JOBS}"
        )),
    }
}

/// How the reports edgebuild writes begin: a file that holds anything else is not edgebuild's
/// to overwrite.
const REPORT_MARKERS: &[&str] = &[
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"edgebuild\"",
    "### edgebuild build: ",
];

/// A report file may be written where the path guard allows (never in `pipelines/`, `.git/`,
/// the cache or a stage's output), outside the workspace only into a directory that exists, and
/// over an existing file only when it is empty or a report edgebuild wrote.
fn check_report_path(ctx: &Context, flag: &str, file: &std::path::Path) -> Result<()> {
    let refuse = |why: String, help: &str| {
        Err(Error::usage(
            format!("{flag} {}: {why}", file.display()),
            Some(help.to_string()),
        ))
    };
    if let Err(why) = ctx.guard().file(file) {
        return refuse(
            format!("refusing to write the report there: it {why}"),
            "write reports outside edgebuild's and git's directories and the stages' outputs, e.g. `reports/junit.xml`",
        );
    }
    let absolute = std::env::current_dir()
        .map(|d| d.join(file))
        .unwrap_or_else(|_| file.to_path_buf());
    let parent = absolute.parent().unwrap_or(std::path::Path::new("/"));
    let in_workspace = edgebuild_engine::guard::resolve(parent)
        .starts_with(edgebuild_engine::guard::resolve(ctx.root()));
    if !in_workspace && !parent.is_dir() {
        return refuse(
            format!("directory {} does not exist", parent.display()),
            "create it first (edgebuild makes missing directories only inside the workspace)",
        );
    }
    match std::fs::symlink_metadata(file) {
        Ok(meta) if meta.is_dir() => refuse("is a directory".into(), "name a file"),
        Ok(meta) if meta.len() > 0 => {
            let mut head = vec![0u8; 128];
            let n = std::fs::File::open(file)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .unwrap_or(0);
            let head = String::from_utf8_lossy(&head[..n]);
            if REPORT_MARKERS.iter().any(|m| head.starts_with(m)) {
                Ok(())
            } else {
                refuse(
                    "the file exists and is not a report edgebuild wrote: refusing to overwrite it"
                        .into(),
                    "remove it, or name a new file (an empty file, such as $GITHUB_STEP_SUMMARY, is fine)",
                )
            }
        }
        _ => Ok(()),
    }
}

/// `build --json`: the engine's report, with what the remote executor did.
#[derive(Serialize)]
struct BuildJson<'a> {
    #[serde(flatten)]
    report: &'a BuildReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_exec: Option<RemoteStats>,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let (ctx, cache_remote) = session.open_with_remote(Access::Write)?;
    let selected = ctx.select(&args.targets)?;
    // Where the reports go is checked before anything runs (SPEC.md, "CI reports").
    for (flag, file) in [("--junit", &args.junit), ("--summary", &args.summary)] {
        if let Some(file) = file {
            check_report_path(&ctx, flag, file)?;
        }
    }
    let variation_env = crate::repro::variation_env(&args.variation_env);
    let local: Box<dyn Executor + Send> = if args.sandbox {
        Box::new(SandboxExecutor::new(session.ops.clone(), variation_env))
    } else {
        Box::new(LocalExecutor {
            ops: session.ops.clone(),
            variation_env,
        })
    };
    // `--no-remote` (verification builds among them) runs everything here.
    let exec_settings = match session.remote.disabled {
        true => None,
        false => edgebuild_remote::config::remote_exec_settings(
            ctx.root(),
            &RemoteExecSettings {
                url: args.remote_exec,
                instance: args.remote_instance,
                jobs: args.remote_jobs,
                fallback: args.remote_exec_fallback,
            },
        )?,
    };
    let (remote, local) = match &exec_settings {
        Some(s) => (
            Some(
                RemoteExecutor::new(s, session.ops.clone(), local)
                    .map_err(|e| Error::usage(e, None))?,
            ),
            None,
        ),
        None => (None, Some(local)),
    };
    let default_jobs = match &exec_settings {
        Some(s) => s.jobs.unwrap_or(8),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let jobs = args.jobs.unwrap_or(default_jobs).clamp(1, MAX_JOBS);
    let started = std::time::Instant::now();
    let executor: &dyn Executor = match (&remote, &local) {
        (Some(remote), _) => remote,
        (None, Some(local)) => local.as_ref(),
        (None, None) => unreachable!("one executor is made"),
    };
    let keep_going = args.keep_going;
    let report = exec::build(&ctx, &selected, BuildOptions { jobs, keep_going }, executor)
        .map_err(|e| Error::io("lock files", e))?;
    if args.json {
        let json = BuildJson {
            report: &report,
            remote_exec: remote.as_ref().map(|r| r.stats()),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("reports serialize")
        );
    }
    for (file, text) in [
        (
            args.junit,
            crate::ci::junit as fn(&Context, &BuildReport) -> String,
        ),
        (args.summary, crate::ci::markdown),
    ] {
        if let Some(file) = file {
            edgebuild_engine::files::write_atomic(&file, text(&ctx, &report).as_bytes())
                .map_err(|e| Error::io(&file, e))?;
            eprintln!("wrote {}", file.display());
        }
    }
    eprintln!(
        "Build: {} ran, {} restored, {} up to date, {} failed, {} gate(s) failed, {} blocked{} in {:.2}s",
        report.count(Outcome::Ran),
        report.count(Outcome::Restored),
        report.count(Outcome::UpToDate),
        report.count(Outcome::Failed),
        report.count(Outcome::GateFailed),
        report.count(Outcome::Blocked),
        match report.count(Outcome::NotStarted) {
            0 => String::new(),
            n => format!(", {n} not started after the failure"),
        },
        started.elapsed().as_secs_f64()
    );
    if let Some(remote) = &cache_remote {
        let stats = remote.stats();
        eprintln!(
            "Remote {}: {} restored, {} missed, {} rejected, {} entr{} uploaded",
            remote.url(),
            stats.hits,
            stats.misses,
            stats.rejected,
            stats.uploaded_entries,
            if stats.uploaded_entries == 1 {
                "y"
            } else {
                "ies"
            },
        );
    }
    if let Some(stage) = report.stages.iter().find(|s| s.remote_unavailable) {
        return Err(Error::Remote(edgebuild_remote::RemoteError::Unavailable {
            url: cache_remote
                .as_ref()
                .map_or(String::new(), |r| r.url().to_string()),
            message: format!(
                "{} could not use it: {}",
                stage.stage,
                stage.error.as_deref().unwrap_or("?")
            ),
        }));
    }
    let failed = report.with_outcome(Outcome::Failed);
    let bad: Vec<&str> = report
        .stages
        .iter()
        .filter(|s| s.bad_input)
        .map(|s| s.stage.as_str())
        .collect();
    if !bad.is_empty() && bad.len() == failed.len() {
        return Err(Error::StageInput {
            stages: bad.join(", "),
        });
    }
    if !failed.is_empty() {
        return Err(Error::StagesFailed {
            failed: failed.len(),
            stages: failed.join(", "),
        });
    }
    // Freeing a large workspace takes measurable time and the process ends here.
    std::mem::forget(ctx);
    let gates = report.with_outcome(Outcome::GateFailed);
    if !gates.is_empty() {
        return Err(Error::GatesFailed {
            stages: gates.join(", "),
        });
    }
    let waiting = report.with_outcome(Outcome::AwaitingSignOff);
    if !waiting.is_empty() {
        return Err(Error::AwaitingSignOff {
            stages: waiting.join(", "),
        });
    }
    Ok(ExitCode::Ok)
}
