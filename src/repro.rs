//! Proving reproducibility: rebuilding an old commit from scratch and comparing every artifact
//! with the lock committed there (`verify-reproducible COMMIT`), and building the current tree
//! twice under different conditions (`verify-reproducible --vary`).
//!
//! Each build is a child `edgebuild build` in a temporary copy of the workspace with a private,
//! empty cache and no remote, so nothing is restored and the user's checkout and cache are never
//! touched. The comparison walks the stages in dependency order and tells the first divergent
//! stage (its inputs matched, its outputs did not) from the cascade below it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use miette::Diagnostic;
use serde::Serialize;
use thiserror::Error;

use crate::context::{Access, Context, Options};
use crate::exec::Outcome;
use crate::git::{GitError, Repository};
use crate::hash::Digest;
use crate::lock::{LockFile, LockedStage, Toolchain};
use crate::spec::{PIPELINES_DIR, Workspace};

#[derive(Debug, Error, Diagnostic)]
pub enum VerifyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Git(#[from] GitError),

    #[error("{what} has no lock file {lock}")]
    #[diagnostic(
        code(edgebuild::verify::no_lock),
        help(
            "a commit can only be verified against the lock its build wrote: build it and commit the lock with the pipeline"
        )
    )]
    NoLock { what: String, lock: String },

    #[error("{what}: {message}")]
    #[diagnostic(code(edgebuild::verify::bad_lock))]
    BadLock { what: String, message: String },

    #[error("unknown pipeline `{name}` at {what}")]
    #[diagnostic(code(edgebuild::verify::unknown_pipeline), help("{help}"))]
    UnknownPipeline {
        name: String,
        what: String,
        help: String,
    },

    #[error("the pipelines do not build at {what}: {message}")]
    #[diagnostic(
        code(edgebuild::verify::build_failed),
        help(
            "the failing build's output is above; the temporary copy is kept with --keep for a closer look"
        )
    )]
    BuildFailed { what: String, message: String },

    #[error("not reproducible: {summary}")]
    #[diagnostic(
        code(edgebuild::verify::not_reproducible),
        help(
            "the first divergent stage read the same inputs and wrote different outputs: it depends on something it does not declare (time, randomness, an untracked file, the toolchain). Mark measured outputs `volatile: true`."
        )
    )]
    NotReproducible { summary: String },

    #[error("I/O error on {path}: {source}")]
    #[diagnostic(code(edgebuild::verify::io))]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(Box<crate::error::Error>),
}

impl VerifyError {
    pub fn exit_code(&self) -> crate::error::ExitCode {
        use crate::error::ExitCode;
        match self {
            VerifyError::BuildFailed { .. } => ExitCode::StageFailed,
            VerifyError::NotReproducible { .. } => ExitCode::NotReproducible,
            VerifyError::Workspace(e) => e.exit_code(),
            _ => ExitCode::BadInput,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The conditions of one build: what reprotest calls a variation.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub jobs: usize,
    pub threads: usize,
    pub tz: &'static str,
    pub locale: &'static str,
    pub source_date_epoch: &'static str,
    pub umask: u32,
    /// Where the workspace copy lies, relative to the temporary directory.
    pub dir: &'static str,
}

impl Conditions {
    /// A plain build: this machine's parallelism, UTC, the C locale.
    pub fn reference() -> Conditions {
        Conditions {
            jobs: cpus(),
            threads: cpus(),
            tz: "UTC",
            locale: "C",
            source_date_epoch: "0",
            umask: 0o022,
            dir: "a/workspace",
        }
    }

    /// The variation of `--vary`: every condition differs from [`Conditions::reference`].
    pub fn varied() -> Conditions {
        Conditions {
            jobs: 1,
            threads: if cpus() > 1 { 1 } else { 2 },
            tz: "<+1345>-13:45",
            locale: "C.UTF-8",
            source_date_epoch: "1700000000",
            umask: 0o077,
            dir: "variation-b/a/much/longer/path/to/the/workspace",
        }
    }

    fn variables(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("TZ", self.tz),
            ("LC_ALL", self.locale),
            ("LANG", self.locale),
            ("SOURCE_DATE_EPOCH", self.source_date_epoch),
        ]
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Stage outcomes of a child build, and how it ended.
#[derive(Debug)]
pub(crate) struct ChildBuild {
    outcomes: BTreeMap<String, Outcome>,
    code: Option<i32>,
}

#[derive(serde::Deserialize)]
struct ChildReport {
    stages: Vec<ChildStage>,
}

#[derive(serde::Deserialize)]
struct ChildStage {
    stage: String,
    outcome: Outcome,
}

/// Runs `edgebuild build` on the workspace at `root` with the cache `cache`, under `conditions`,
/// with no remote and none of the caller's `EDGEBUILD_*` settings.
pub(crate) fn child_build(
    root: &Path,
    cache: &Path,
    targets: &[String],
    conditions: &Conditions,
    vary_stage_env: bool,
) -> Result<ChildBuild, VerifyError> {
    let exe = std::env::current_exe().map_err(io_err(Path::new("edgebuild executable")))?;
    let mut cmd = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("EDGEBUILD_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(root)
        .arg("-C")
        .arg(root)
        .arg("--cache-dir")
        .arg(cache)
        .args(["build", "--json", "--jobs"])
        .arg(conditions.jobs.to_string())
        .env("RAYON_NUM_THREADS", conditions.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in conditions.variables() {
        cmd.env(name, value);
        if vary_stage_env {
            cmd.arg("--variation-env").arg(name);
        }
    }
    cmd.arg("--").args(targets);
    let umask = conditions.umask as libc::mode_t;
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let output = cmd
        .output()
        .map_err(io_err(Path::new("edgebuild executable")))?;
    let outcomes = serde_json::from_slice::<ChildReport>(&output.stdout)
        .map(|r| r.stages.into_iter().map(|s| (s.stage, s.outcome)).collect())
        .unwrap_or_default();
    Ok(ChildBuild {
        outcomes,
        code: output.status.code(),
    })
}

impl ChildBuild {
    /// A build whose stages all ran or whose gates failed (a verdict to compare) is usable.
    pub(crate) fn check(&self, what: &str) -> Result<(), VerifyError> {
        match self.code {
            Some(0) | Some(3) => Ok(()),
            code => {
                let failed: Vec<&str> = self
                    .outcomes
                    .iter()
                    .filter(|(_, o)| **o == Outcome::Failed)
                    .map(|(s, _)| s.as_str())
                    .collect();
                let message = match (code, failed.is_empty()) {
                    (_, false) => format!("stage(s) failed: {}", failed.join(", ")),
                    (Some(2), true) => "the build refused its input (above); an input missing at a commit is usually a file that git does not track".to_string(),
                    (Some(code), true) => format!("the build exited with code {code}"),
                    (None, true) => "the build was killed by a signal".to_string(),
                };
                Err(VerifyError::BuildFailed {
                    what: what.to_string(),
                    message,
                })
            }
        }
    }
}

/// How one output compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Same hash.
    Match,
    /// Different hash, and the stage's inputs matched: this stage is a root cause.
    Differs,
    /// Different hash because an upstream stage diverged.
    Cascade,
    /// Not compared (DECISIONS 8).
    Volatile,
    /// Expected, but the rebuild did not produce it.
    Missing,
    /// Produced, but the reference does not record it.
    Unexpected,
}

impl Verdict {
    fn ok(self) -> bool {
        matches!(self, Verdict::Match | Verdict::Volatile)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputRow {
    pub stage: String,
    pub output: String,
    pub expected: Option<Digest>,
    pub rebuilt: Option<Digest>,
    pub verdict: Verdict,
}

/// Why a stage is a root cause or part of a cascade.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub stage: String,
    /// `root` or `cascade`.
    pub kind: &'static str,
    /// For a cascade: the root cause it descends from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub explanation: String,
}

/// A short diff of one differing text output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputDiff {
    pub output: String,
    pub diff: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub outputs: Vec<OutputRow>,
    pub findings: Vec<Finding>,
    pub first_divergent: Option<String>,
    pub diffs: Vec<OutputDiff>,
}

impl Comparison {
    pub fn reproducible(&self) -> bool {
        self.findings.is_empty() && self.outputs.iter().all(|r| r.verdict.ok())
    }

    fn summary(&self) -> String {
        let roots = self.findings.iter().filter(|f| f.kind == "root").count();
        let cascade = self.findings.len() - roots;
        let mut text = match &self.first_divergent {
            Some(stage) => format!("first divergent stage {stage}"),
            None => "outputs differ".to_string(),
        };
        if roots > 1 {
            write!(text, ", {} root causes in all", roots).unwrap();
        }
        if cascade > 0 {
            write!(
                text,
                ", {cascade} stage(s) downstream differ as a consequence"
            )
            .unwrap();
        }
        text
    }
}

/// The lock entries of a set of pipelines, by stage id.
pub type LockedStages = BTreeMap<String, LockedStage>;

fn stages_of(locks: &[(String, LockFile)]) -> LockedStages {
    locks
        .iter()
        .flat_map(|(pipeline, lock)| {
            lock.stages
                .iter()
                .map(move |(name, stage)| (format!("{pipeline}:{name}"), stage.clone()))
        })
        .collect()
}

/// Compares `expected` with `rebuilt` in the dependency order of `ctx` (the rebuilt workspace),
/// over the stages `selected`. `bytes_of` finds the expected bytes of a differing output for a
/// diff, when they are available.
pub fn compare(
    ctx: &Context,
    selected: &[usize],
    expected: &LockedStages,
    rebuilt: &LockedStages,
    expected_bytes: &dyn Fn(&str, &Digest) -> Option<Vec<u8>>,
) -> Comparison {
    let mut comparison = Comparison {
        outputs: Vec::new(),
        findings: Vec::new(),
        first_divergent: None,
        diffs: Vec::new(),
    };
    // Stage index → the root cause its outputs descend from.
    let mut tainted: BTreeMap<usize, String> = BTreeMap::new();
    for &index in selected {
        let stage = &ctx.ws.stages[index];
        let id = &stage.id;
        let upstream = ctx
            .graph
            .deps(index)
            .filter_map(|(dep, _)| tainted.get(&dep).map(|root| (dep, root.clone())))
            .min_by_key(|(dep, _)| ctx.graph.rank[*dep])
            .map(|(_, root)| root);
        let (exp, reb) = (expected.get(id), rebuilt.get(id));
        let mut rows = Vec::new();
        let mut explanation = None;
        match (exp, reb) {
            (None, None) => continue,
            (None, Some(r)) => {
                for (path, out) in &r.outputs {
                    rows.push(OutputRow {
                        stage: id.clone(),
                        output: path.clone(),
                        expected: None,
                        rebuilt: Some(out.hash),
                        verdict: Verdict::Unexpected,
                    });
                }
                explanation = Some(
                    "built, but the reference lock has no entry for it: the lock was not updated after the pipeline changed"
                        .to_string(),
                );
            }
            (Some(e), None) => {
                for (path, out) in &e.outputs {
                    rows.push(OutputRow {
                        stage: id.clone(),
                        output: path.clone(),
                        expected: Some(out.hash),
                        rebuilt: None,
                        verdict: if out.volatile {
                            Verdict::Volatile
                        } else {
                            Verdict::Missing
                        },
                    });
                }
                if rows.iter().any(|r| !r.verdict.ok()) {
                    explanation =
                        Some("recorded in the lock, but the rebuild did not produce it".into());
                }
            }
            (Some(e), Some(r)) => {
                let paths: BTreeSet<&String> = e.outputs.keys().chain(r.outputs.keys()).collect();
                for path in paths {
                    let (eo, ro) = (e.outputs.get(path), r.outputs.get(path));
                    let verdict = match (eo, ro) {
                        (Some(a), Some(b)) if a.volatile || b.volatile => Verdict::Volatile,
                        (Some(a), Some(b)) if a.hash == b.hash => Verdict::Match,
                        (Some(_), Some(_)) => Verdict::Differs,
                        (Some(a), None) if a.volatile => Verdict::Volatile,
                        (Some(_), None) => Verdict::Missing,
                        (None, _) => Verdict::Unexpected,
                    };
                    rows.push(OutputRow {
                        stage: id.clone(),
                        output: path.clone(),
                        expected: eo.map(|o| o.hash),
                        rebuilt: ro.map(|o| o.hash),
                        verdict,
                    });
                }
                if e.ingredients.key() != e.key {
                    explanation = Some(
                        "the reference lock entry's key does not match its own ingredients: the lock was edited by hand"
                            .into(),
                    );
                } else if e.gate != r.gate {
                    explanation = Some(format!(
                        "gate verdict {:?} → {:?}",
                        e.gate
                            .map_or("none".into(), |g| format!("{g:?}").to_lowercase()),
                        r.gate
                            .map_or("none".into(), |g| format!("{g:?}").to_lowercase()),
                    ));
                } else if rows.iter().any(|r| !r.verdict.ok()) {
                    explanation = Some(explain_divergence(e, r));
                }
            }
        }
        if let Some(explanation) = explanation {
            let root = match &upstream {
                Some(root) => {
                    for row in rows.iter_mut() {
                        if row.verdict == Verdict::Differs {
                            row.verdict = Verdict::Cascade;
                        }
                    }
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: "cascade",
                        from: Some(root.clone()),
                        explanation: format!("downstream of {root}"),
                    });
                    root.clone()
                }
                None => {
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: "root",
                        from: None,
                        explanation,
                    });
                    if comparison.first_divergent.is_none() {
                        comparison.first_divergent = Some(id.clone());
                        for row in rows.iter().filter(|r| r.verdict == Verdict::Differs) {
                            let (Some(exp), Some(reb)) = (row.expected, row.rebuilt) else {
                                continue;
                            };
                            let rebuilt_path = ctx.root().join(&row.output);
                            if rebuilt_path.is_dir() {
                                continue;
                            }
                            let rebuilt_bytes = std::fs::read(rebuilt_path).ok();
                            let diff = match (expected_bytes(&row.output, &exp), rebuilt_bytes) {
                                (Some(a), Some(b)) if Digest::of_bytes(&b) == reb => {
                                    text_diff(&a, &b)
                                }
                                (None, _) => Some(
                                    "(the expected bytes are not available: the lock holds only their hash)"
                                        .to_string(),
                                ),
                                _ => None,
                            };
                            if let Some(diff) = diff {
                                comparison.diffs.push(OutputDiff {
                                    output: row.output.clone(),
                                    diff,
                                });
                            }
                        }
                    }
                    id.clone()
                }
            };
            tainted.insert(index, root);
        }
        comparison.outputs.extend(rows);
    }
    comparison
}

/// Why a stage whose upstream matched wrote different outputs.
fn explain_divergence(expected: &LockedStage, rebuilt: &LockedStage) -> String {
    let inputs: Vec<String> = rebuilt
        .ingredients
        .inputs
        .iter()
        .filter(|input| {
            expected
                .ingredients
                .inputs
                .iter()
                .find(|i| i.name == input.name)
                .is_some_and(|i| i.hash != input.hash)
        })
        .map(|i| i.path.clone())
        .collect();
    if !inputs.is_empty() {
        return format!(
            "input {} differs from what the lock records: the file is not what was built then (untracked, or the lock is stale)",
            inputs.join(", ")
        );
    }
    let reasons = crate::key::Ingredients::diff(&expected.ingredients, &rebuilt.ingredients);
    if reasons.is_empty() {
        "its inputs, command and params matched, but its outputs did not: the stage is not deterministic (time, randomness, an undeclared input)".into()
    } else {
        let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        format!(
            "its inputs matched; its action changed: {} (toolchain drift, or the lock is stale)",
            reasons.join("; ")
        )
    }
}

/// A unified diff of two texts (JSON included), at most [`DIFF_LINES`] lines; `None` for binary.
fn text_diff(expected: &[u8], rebuilt: &[u8]) -> Option<String> {
    const DIFF_LINES: usize = 20;
    let (a, b) = (
        std::str::from_utf8(expected).ok()?,
        std::str::from_utf8(rebuilt).ok()?,
    );
    if a.contains('\0') || b.contains('\0') {
        return None;
    }
    let diff = similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(2)
        .header("expected", "rebuilt")
        .to_string();
    let lines: Vec<&str> = diff.lines().collect();
    let mut shown = lines[..lines.len().min(DIFF_LINES)].join("\n");
    if lines.len() > DIFF_LINES {
        write!(shown, "\n... ({} more lines)", lines.len() - DIFF_LINES).unwrap();
    }
    Some(shown)
}

/// A temporary directory for the copies and caches of a verification, removed unless kept.
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    keep: bool,
}

impl Scratch {
    pub(crate) fn new(keep: bool) -> Result<Scratch, VerifyError> {
        let dir = tempfile::Builder::new()
            .prefix("edgebuild-verify-")
            .tempdir()
            .map_err(io_err(Path::new("temporary directory")))?;
        Ok(Scratch { dir, keep })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn finish(self) {
        if self.keep {
            let path = self.dir.keep();
            eprintln!("kept the rebuilt workspace in {}", path.display());
        }
    }
}

/// The result of `verify-reproducible`, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// `commit` or `vary`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub pipelines: Vec<String>,
    /// Differences between the toolchain that wrote the reference and this one.
    pub drift: Vec<String>,
    /// The conditions of each build.
    pub builds: Vec<BuildSummary>,
    #[serde(flatten)]
    pub comparison: Comparison,
    pub reproducible: bool,
}

#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub conditions: Conditions,
    /// Always a fresh private cache: nothing restored, no remote.
    pub cache: &'static str,
    pub stages: BTreeMap<String, Outcome>,
}

/// Pipeline names present in `root/pipelines` (file stems of `*.yaml`/`*.yml`), sorted.
fn pipeline_names(root: &Path) -> Result<Vec<String>, VerifyError> {
    let dir = root.join(PIPELINES_DIR);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The pipelines to verify: the ones named (checked to exist), or all of them.
fn choose_pipelines(
    root: &Path,
    requested: &[String],
    what: &str,
) -> Result<Vec<String>, VerifyError> {
    let names = pipeline_names(root)?;
    if requested.is_empty() {
        return Ok(names);
    }
    requested
        .iter()
        .map(|r| {
            let name = r
                .trim_start_matches("pipelines/")
                .trim_end_matches(".yaml")
                .trim_end_matches(".yml");
            if names.iter().any(|n| n == name) {
                Ok(name.to_string())
            } else {
                Err(VerifyError::UnknownPipeline {
                    name: name.to_string(),
                    what: what.to_string(),
                    help: format!("pipelines there: {}", names.join(", ")),
                })
            }
        })
        .collect()
}

fn read_locks(
    root: &Path,
    pipelines: &[String],
    what: &str,
) -> Result<Vec<(String, LockFile)>, VerifyError> {
    pipelines
        .iter()
        .map(|name| {
            let rel = format!("{PIPELINES_DIR}/{name}.lock");
            match LockFile::read(&root.join(&rel)) {
                Ok(Some(lock)) => Ok((name.clone(), lock)),
                Ok(None) => Err(VerifyError::NoLock {
                    what: what.to_string(),
                    lock: rel,
                }),
                Err(message) => Err(VerifyError::BadLock {
                    what: format!("{rel} at {what}"),
                    message,
                }),
            }
        })
        .collect()
}

/// Deletes every lock file under `root/pipelines`, so that a build there starts from scratch.
fn remove_locks(root: &Path) -> Result<(), VerifyError> {
    let dir = root.join(PIPELINES_DIR);
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().is_some_and(|e| e == "lock") {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Opens a rebuilt workspace (read-only) and selects the stages of `pipelines`.
fn open_rebuilt(
    root: &Path,
    cache: &Path,
    pipelines: &[String],
) -> Result<(Context, Vec<usize>), VerifyError> {
    let ctx = Context::open(
        &Options {
            dir: Some(root.to_path_buf()),
            cache_dir: Some(cache.to_path_buf()),
        },
        Access::Read,
    )
    .map_err(|e| VerifyError::Workspace(Box::new(e)))?;
    let selected = ctx
        .select(pipelines)
        .map_err(|e| VerifyError::Workspace(Box::new(e)))?;
    Ok((ctx, selected))
}

fn rebuilt_locks(ctx: &Context) -> LockedStages {
    let locks: Vec<(String, LockFile)> = ctx
        .ws
        .pipelines
        .iter()
        .zip(&ctx.locks)
        .filter_map(|(p, l)| Some((p.name.clone(), l.clone()?)))
        .collect();
    stages_of(&locks)
}

/// `verify-reproducible COMMIT`: rebuild `commit` from scratch and compare with its locks.
pub fn verify_commit(
    start: &Path,
    rev: &str,
    requested: &[String],
    user_cache: Option<&Path>,
    keep: bool,
) -> Result<Verification, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let repo = Repository::find(&root)?;
    let commit = repo.resolve(rev)?;
    let what = format!("commit {}", repo.describe(&commit));
    let scratch = Scratch::new(keep)?;
    let tree = scratch.path().join("tree");
    std::fs::create_dir_all(&tree).map_err(io_err(&tree))?;
    repo.checkout_into(&commit, &tree)?;
    let ws_root = tree.join(&repo.prefix);
    if !ws_root.join(PIPELINES_DIR).is_dir() {
        return Err(VerifyError::NoLock {
            what,
            lock: format!("{}{PIPELINES_DIR}/ (no pipelines there)", repo.prefix),
        });
    }
    let pipelines = choose_pipelines(&ws_root, requested, &what)?;
    let locks = read_locks(&ws_root, &pipelines, &what)?;
    let expected = stages_of(&locks);
    let mut drift = BTreeSet::new();
    for (_, lock) in &locks {
        drift.extend(lock.toolchain.drift(&Toolchain::current()));
    }
    // The expected bytes of an output, for a diff: the commit's own copy if it is committed,
    // else the user's cache (read-only, after the rebuild, checked against the hash).
    let committed: BTreeMap<Digest, Vec<u8>> = expected
        .values()
        .flat_map(|s| s.outputs.iter())
        .filter_map(|(path, out)| {
            let bytes = std::fs::read(ws_root.join(path)).ok()?;
            (Digest::of_bytes(&bytes) == out.hash).then_some((out.hash, bytes))
        })
        .collect();
    remove_locks(&ws_root)?;
    let cache = scratch.path().join("cache");
    let conditions = Conditions::reference();
    let build = child_build(&ws_root, &cache, &pipelines, &conditions, false)?;
    let result = build.check(&what).and_then(|()| {
        let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines)?;
        let rebuilt = rebuilt_locks(&ctx);
        for (id, reb) in &rebuilt {
            if let Some(exp) = expected.get(id) {
                for reason in crate::key::Ingredients::diff(&exp.ingredients, &reb.ingredients) {
                    if matches!(
                        reason,
                        crate::key::StaleReason::ToolChanged { .. }
                            | crate::key::StaleReason::FingerprintChanged { .. }
                    ) {
                        drift.insert(format!("{id}: {reason}"));
                    }
                }
            }
        }
        let user_cache = user_cache.map(Path::to_path_buf);
        let lookup = |_: &str, hash: &Digest| -> Option<Vec<u8>> {
            committed
                .get(hash)
                .cloned()
                .or_else(|| crate::store::read_blob(user_cache.as_deref()?, hash))
        };
        let comparison = compare(&ctx, &selected, &expected, &rebuilt, &lookup);
        Ok(Verification {
            mode: "commit",
            commit: Some(commit.clone()),
            pipelines: pipelines.clone(),
            drift: drift.into_iter().collect(),
            builds: vec![BuildSummary {
                conditions,
                cache: "private",
                stages: build.outcomes.clone(),
            }],
            reproducible: comparison.reproducible(),
            comparison,
        })
    });
    scratch.finish();
    result
}

/// Copies the workspace's source files (what git tracks or would track; without git, every file
/// outside edgebuild's own directories and the declared outputs) to `dest`.
pub fn copy_workspace(root: &Path, dest: &Path) -> Result<(), VerifyError> {
    let files = match Repository::find(root) {
        Ok(repo) => repo.working_files(root)?,
        Err(GitError::NotARepository(_)) => untracked_sources(root)?,
        Err(e) => return Err(e.into()),
    };
    for rel in files {
        let from = root.join(&rel);
        let to = dest.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(io_err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to).map_err(io_err(&from))?;
        }
    }
    Ok(())
}

fn untracked_sources(root: &Path) -> Result<Vec<String>, VerifyError> {
    let ws = Workspace::load(root).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let outputs: BTreeSet<&str> = ws
        .stages
        .iter()
        .flat_map(|s| s.outputs.iter().map(|p| p.path.as_str()))
        .collect();
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            let rel = rel.to_string_lossy();
            let reserved = crate::spec::RESERVED
                .iter()
                .any(|r| *r != PIPELINES_DIR && rel == *r);
            !reserved && !outputs.contains(rel.as_ref())
        });
    for entry in walker {
        let entry = entry.map_err(|e| VerifyError::Io {
            path: root.display().to_string(),
            source: e.into(),
        })?;
        if !entry.file_type().is_dir() {
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(files)
}

/// `verify-reproducible --vary`: build the current tree twice from scratch under different
/// conditions and compare.
pub fn verify_variations(
    start: &Path,
    requested: &[String],
    keep: bool,
) -> Result<Verification, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let what = "the working tree".to_string();
    let pipelines = choose_pipelines(&root, requested, &what)?;
    let scratch = Scratch::new(keep)?;
    let mut builds = Vec::new();
    let mut opened = Vec::new();
    for (n, conditions) in [Conditions::reference(), Conditions::varied()]
        .into_iter()
        .enumerate()
    {
        let ws_root = scratch.path().join(conditions.dir);
        std::fs::create_dir_all(&ws_root).map_err(io_err(&ws_root))?;
        copy_workspace(&root, &ws_root)?;
        remove_locks(&ws_root)?;
        let cache = scratch.path().join(format!("cache-{n}"));
        let build = child_build(&ws_root, &cache, &pipelines, &conditions, true)?;
        if let Err(e) = build.check(&what) {
            scratch.finish();
            return Err(e);
        }
        let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines)?;
        builds.push(BuildSummary {
            conditions,
            cache: "private",
            stages: build.outcomes,
        });
        opened.push((ctx, selected));
    }
    let (reference, _) = &opened[0];
    let (varied, selected) = &opened[1];
    let expected = rebuilt_locks(reference);
    let rebuilt = rebuilt_locks(varied);
    let reference_root: PathBuf = reference.root().to_path_buf();
    let lookup = |path: &str, _: &Digest| std::fs::read(reference_root.join(path)).ok();
    let comparison = compare(varied, selected, &expected, &rebuilt, &lookup);
    drop(opened);
    scratch.finish();
    Ok(Verification {
        mode: "vary",
        commit: None,
        pipelines,
        drift: Vec::new(),
        builds,
        reproducible: comparison.reproducible(),
        comparison,
    })
}

/// The human rendering: drift, the table, the findings and diffs, the verdict.
pub fn render(v: &Verification) -> String {
    let mut out = String::new();
    match (&v.commit, v.mode) {
        (Some(commit), _) => writeln!(
            out,
            "Rebuilt {} of commit {} from scratch (private cache, no remote).",
            v.pipelines.join(", "),
            &commit[..12.min(commit.len())]
        )
        .unwrap(),
        _ => {
            let b = &v.builds[1].conditions;
            writeln!(
                out,
                "Built {} twice from scratch; the second build varied: working directory, TZ={}, LC_ALL={}, SOURCE_DATE_EPOCH={}, umask {:03o}, -j {}, {} thread(s).",
                v.pipelines.join(", "),
                b.tz,
                b.locale,
                b.source_date_epoch,
                b.umask,
                b.jobs,
                b.threads
            )
            .unwrap()
        }
    }
    if v.mode == "commit" {
        if v.drift.is_empty() {
            writeln!(out, "Toolchain: same as the lock.").unwrap();
        } else {
            writeln!(out, "Toolchain drift since the lock was written:").unwrap();
            for line in &v.drift {
                writeln!(out, "  {line}").unwrap();
            }
        }
    }
    out.push('\n');
    let (expected, rebuilt) = if v.mode == "commit" {
        ("expected", "rebuilt")
    } else {
        ("build 1", "build 2")
    };
    let short = |d: &Option<Digest>| d.map_or("-".to_string(), |d| d.short());
    let verdict = |r: &OutputRow| match r.verdict {
        Verdict::Match => "ok",
        Verdict::Differs => "DIFFERS",
        Verdict::Cascade => "cascade",
        Verdict::Volatile => "volatile (not compared)",
        Verdict::Missing => "MISSING",
        Verdict::Unexpected => "NOT IN LOCK",
    };
    let rows: Vec<[String; 5]> = v
        .comparison
        .outputs
        .iter()
        .map(|r| {
            [
                r.stage.clone(),
                r.output.clone(),
                short(&r.expected),
                short(&r.rebuilt),
                verdict(r).to_string(),
            ]
        })
        .collect();
    let header = [
        "stage".to_string(),
        "output".to_string(),
        expected.to_string(),
        rebuilt.to_string(),
        "verdict".to_string(),
    ];
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i == 4 {
                line.push_str(cell);
            } else {
                write!(line, "{cell:<w$}  ").unwrap();
            }
        }
        writeln!(out, "{}", line.trim_end()).unwrap();
    }
    out.push('\n');
    for finding in &v.comparison.findings {
        match finding.kind {
            "root" => {
                let first = v.comparison.first_divergent.as_deref() == Some(&finding.stage);
                writeln!(
                    out,
                    "{} {}: {}",
                    if first {
                        "First divergent stage:"
                    } else {
                        "Also divergent:"
                    },
                    finding.stage,
                    finding.explanation
                )
                .unwrap();
                if first {
                    for diff in &v.comparison.diffs {
                        writeln!(out, "  {}:", diff.output).unwrap();
                        for line in diff.diff.lines() {
                            writeln!(out, "    {line}").unwrap();
                        }
                    }
                }
            }
            _ => writeln!(
                out,
                "Cascade: {} differs because {} did",
                finding.stage,
                finding.from.as_deref().unwrap_or("?")
            )
            .unwrap(),
        }
    }
    let compared = v
        .comparison
        .outputs
        .iter()
        .filter(|r| r.verdict != Verdict::Volatile)
        .count();
    let volatile = v.comparison.outputs.len() - compared;
    if v.reproducible {
        writeln!(
            out,
            "Reproducible: {compared} output(s) identical{}.",
            if volatile > 0 {
                format!(", {volatile} volatile output(s) not compared")
            } else {
                String::new()
            }
        )
        .unwrap();
    }
    out
}

/// Turns a finished verification into the command's result.
pub fn verdict(v: &Verification) -> Result<(), VerifyError> {
    if v.reproducible {
        Ok(())
    } else {
        Err(VerifyError::NotReproducible {
            summary: v.comparison.summary(),
        })
    }
}

/// Variables that a variation build passes to `cmd` stages, by name.
pub fn variation_env(names: &[String]) -> Vec<(String, OsString)> {
    names
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var_os(name)?)))
        .collect()
}
