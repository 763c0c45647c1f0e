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
use crate::graph::EdgeKind;
use crate::hash::Digest;
use crate::lock::{GateVerdict, LockFile, LockedStage, Toolchain};
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

    #[error("{what} has no {dir} directory")]
    #[diagnostic(
        code(edgebuild::verify::no_pipelines),
        help("the workspace's pipelines were committed later: pick a later commit")
    )]
    NoPipelines { what: String, dir: String },

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
            "the failing build's output is above (`verify-reproducible --keep` keeps the temporary copy for a closer look)"
        )
    )]
    BuildFailed { what: String, message: String },

    #[error("not reproducible: {summary}")]
    #[diagnostic(
        code(edgebuild::verify::not_reproducible),
        help(
            "each root cause is explained above. A stage that read the same inputs and wrote different outputs depends on something it does not declare (time, randomness, an untracked file, the toolchain); mark measured outputs `volatile: true`"
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

/// The conditions of one build: what reprotest calls a variation. A plain build
/// ([`Conditions::plain`]) sets none of them: it runs as the user's own build would.
#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    pub jobs: usize,
    pub threads: usize,
    /// Variables given to `cmd` stages that do not declare them (outside their keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stage_env: Vec<(&'static str, &'static str)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Where the workspace copy lies, relative to the temporary directory.
    pub dir: &'static str,
}

impl Conditions {
    /// A build from scratch as the user would run it: this machine's parallelism, the user's
    /// environment (declared `env` values must match the ones the lock was built with).
    pub fn plain() -> Conditions {
        Conditions {
            jobs: cpus(),
            threads: cpus(),
            stage_env: Vec::new(),
            umask: None,
            dir: "tree",
        }
    }

    /// The first build of `--vary`: UTC, the C locale, umask 022, all CPUs.
    pub fn reference() -> Conditions {
        Conditions {
            jobs: cpus(),
            threads: cpus(),
            stage_env: vec![
                ("TZ", "UTC"),
                ("LC_ALL", "C"),
                ("LANG", "C"),
                ("SOURCE_DATE_EPOCH", "0"),
            ],
            umask: Some(0o022),
            dir: "a/workspace",
        }
    }

    /// The second build of `--vary`: every condition differs from [`Conditions::reference`].
    pub fn varied() -> Conditions {
        Conditions {
            jobs: 1,
            threads: if cpus() > 1 { 1 } else { 2 },
            stage_env: vec![
                ("TZ", "<+1345>-13:45"),
                ("LC_ALL", "C.UTF-8"),
                ("LANG", "C.UTF-8"),
                ("SOURCE_DATE_EPOCH", "1700000000"),
            ],
            umask: Some(0o077),
            dir: "variation-b/a/much/longer/path/to/the/workspace",
        }
    }

    fn stage_var(&self, name: &str) -> &str {
        self.stage_env
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v)
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
        .arg("--no-remote")
        .args(["build", "--json", "--sandbox", "--jobs"])
        .arg(conditions.jobs.to_string())
        .env("RAYON_NUM_THREADS", conditions.threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in &conditions.stage_env {
        cmd.arg(format!("--variation-env={name}={value}"));
    }
    cmd.arg("--").args(targets);
    if let Some(umask) = conditions.umask {
        let umask = umask as libc::mode_t;
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                libc::umask(umask);
                Ok(())
            });
        }
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
    /// Not built: a failed gate blocked it, as it did at the reference.
    Blocked,
}

impl Verdict {
    fn ok(self) -> bool {
        matches!(self, Verdict::Match | Verdict::Volatile | Verdict::Blocked)
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

/// Whether a stage diverged by itself or because a stage upstream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingKind {
    Root,
    Cascade,
}

/// Why a stage is a root cause or part of a cascade.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub stage: String,
    pub kind: FindingKind,
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
    /// Things worth knowing that do not make the build irreproducible (a gate that failed at
    /// the reference and again in the rebuild).
    pub notes: Vec<String>,
}

impl Comparison {
    pub fn reproducible(&self) -> bool {
        self.findings.is_empty() && self.outputs.iter().all(|r| r.verdict.ok())
    }

    fn summary(&self) -> String {
        let roots = self
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Root)
            .count();
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

/// What [`compare`] compares.
pub struct CompareInput<'a> {
    /// The rebuilt workspace: its graph gives the dependency order.
    pub ctx: &'a Context,
    /// The stages to compare, in topological order.
    pub selected: &'a [usize],
    pub expected: &'a LockedStages,
    pub rebuilt: &'a LockedStages,
    /// Stages the rebuild did not run because a dependency failed or a gate blocked them.
    pub blocked: &'a BTreeSet<String>,
    /// Finds the expected bytes of a differing output for a diff, when they are available.
    pub expected_bytes: &'a dyn Fn(&str, &Digest) -> Option<Vec<u8>>,
    /// Two variation builds rather than a commit's lock and its rebuild.
    pub vary: bool,
}

/// Compares the expected lock entries with the rebuilt ones, stage by stage in dependency order.
/// A stage whose outputs differ is a root cause unless one of its recorded inputs differs
/// because an upstream stage (through a data edge) diverged: then it is part of that cascade.
pub fn compare(input: &CompareInput) -> Comparison {
    let ctx = input.ctx;
    let mut comparison = Comparison {
        outputs: Vec::new(),
        findings: Vec::new(),
        first_divergent: None,
        diffs: Vec::new(),
        notes: Vec::new(),
    };
    // Stage index → the root cause its outputs descend from.
    let mut tainted: BTreeMap<usize, String> = BTreeMap::new();
    for &index in input.selected {
        let id = &ctx.ws.stages[index].id;
        let upstream = |data_only: bool| {
            ctx.graph
                .deps(index)
                .filter(|(_, kind)| !data_only || *kind == EdgeKind::Data)
                .filter_map(|(dep, _)| Some((dep, tainted.get(&dep)?.clone())))
                .min_by_key(|(dep, _)| ctx.graph.rank[*dep])
                .map(|(_, root)| root)
        };
        let row = |output: &str, expected, rebuilt, verdict| OutputRow {
            stage: id.clone(),
            output: output.to_string(),
            expected,
            rebuilt,
            verdict,
        };
        let mut rows = Vec::new();
        // (explanation, the root this descends from if it is a cascade)
        let mut problem: Option<(String, Option<String>)> = None;
        match (input.expected.get(id), input.rebuilt.get(id)) {
            (None, None) => continue,
            (None, Some(r)) => {
                for (path, out) in &r.outputs {
                    rows.push(row(path, None, Some(out.hash), Verdict::Unexpected));
                }
                problem = Some((
                    "built, but the reference lock has no entry for it: the lock was not updated after the pipeline changed".into(),
                    None,
                ));
            }
            (Some(e), None) => {
                let blocked = input.blocked.contains(id);
                for (path, out) in &e.outputs {
                    let verdict = match (out.volatile, blocked) {
                        (true, _) => Verdict::Volatile,
                        (false, true) => Verdict::Blocked,
                        (false, false) => Verdict::Missing,
                    };
                    rows.push(row(path, Some(out.hash), None, verdict));
                }
                match (blocked, upstream(false)) {
                    (_, Some(root)) => {
                        for r in rows.iter_mut().filter(|r| r.verdict == Verdict::Blocked) {
                            r.verdict = Verdict::Missing;
                        }
                        problem = Some((String::new(), Some(root)));
                    }
                    (true, None) => comparison.notes.push(format!(
                        "{id} was not built: a failed gate or stage before it blocked it, as at the reference"
                    )),
                    (false, None) if rows.iter().any(|r| !r.verdict.ok()) => {
                        problem = Some((
                            "recorded in the lock, but the rebuild did not produce it".into(),
                            None,
                        ))
                    }
                    (false, None) => {}
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
                    rows.push(row(path, eo.map(|o| o.hash), ro.map(|o| o.hash), verdict));
                }
                let differs = rows.iter().any(|r| !r.verdict.ok()) || e.gate != r.gate;
                if r.gate == Some(GateVerdict::Failed) && e.gate == r.gate {
                    comparison
                        .notes
                        .push(format!("gate {id} failed, as the reference records"));
                }
                if !input.vary && e.ingredients.key() != e.key {
                    problem = Some((
                        "the reference lock entry's key does not match its own ingredients: the lock was edited by hand".into(),
                        None,
                    ));
                } else if differs {
                    let inputs_differ = e.ingredients.inputs != r.ingredients.inputs;
                    problem = match upstream(true).filter(|_| inputs_differ) {
                        Some(root) => Some((String::new(), Some(root))),
                        None if e.gate != r.gate => Some((
                            format!("gate verdict {} → {}", gate_word(e.gate), gate_word(r.gate)),
                            None,
                        )),
                        None => Some((explain_divergence(e, r, input.vary), None)),
                    };
                }
            }
        }
        if let Some((explanation, cascade_from)) = problem {
            let root = match cascade_from {
                Some(root) => {
                    for row in rows.iter_mut().filter(|r| r.verdict == Verdict::Differs) {
                        row.verdict = Verdict::Cascade;
                    }
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: FindingKind::Cascade,
                        from: Some(root.clone()),
                        explanation: format!("downstream of {root}"),
                    });
                    root
                }
                None => {
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: FindingKind::Root,
                        from: None,
                        explanation,
                    });
                    if comparison.first_divergent.is_none() {
                        comparison.first_divergent = Some(id.clone());
                        comparison.diffs = diffs(input, &rows);
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

fn gate_word(gate: Option<GateVerdict>) -> &'static str {
    match gate {
        Some(GateVerdict::Passed) => "passed",
        Some(GateVerdict::Failed) => "failed",
        None => "none",
    }
}

/// Short diffs of the differing outputs of the first divergent stage.
fn diffs(input: &CompareInput, rows: &[OutputRow]) -> Vec<OutputDiff> {
    let labels = if input.vary {
        ("build 1", "build 2")
    } else {
        ("expected", "rebuilt")
    };
    let mut diffs = Vec::new();
    for row in rows.iter().filter(|r| r.verdict == Verdict::Differs) {
        let (Some(expected), Some(rebuilt)) = (row.expected, row.rebuilt) else {
            continue;
        };
        let path = input.ctx.root().join(&row.output);
        let diff = if path.is_dir() {
            Some(directory_diff(input, &row.output, &path, labels))
        } else {
            let rebuilt_bytes = std::fs::read(&path)
                .ok()
                .filter(|b| Digest::of_bytes(b) == rebuilt);
            match ((input.expected_bytes)(&row.output, &expected), rebuilt_bytes) {
                (Some(a), Some(b)) => text_diff(&a, &b, labels),
                (None, _) => Some(
                    "(no diff: the expected bytes are neither committed nor in the working tree; the lock holds only their hash)"
                        .to_string(),
                ),
                _ => None,
            }
        };
        if let Some(diff) = diff {
            diffs.push(OutputDiff {
                output: row.output.clone(),
                diff,
            });
        }
    }
    diffs
}

/// For a directory output: which of its files differ (when the reference files are at hand, as
/// in variation builds) and the diff of the first text one.
fn directory_diff(input: &CompareInput, output: &str, dir: &Path, labels: (&str, &str)) -> String {
    let unknown = Digest::of_bytes(b"");
    let mut differing = Vec::new();
    let mut first_diff = None;
    for entry in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        let inner = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let rel = format!("{output}/{}", inner.display());
        let Ok(rebuilt) = std::fs::read(entry.path()) else {
            continue;
        };
        match (input.expected_bytes)(&rel, &unknown) {
            Some(expected) if expected == rebuilt => {}
            Some(expected) => {
                if first_diff.is_none() {
                    first_diff = text_diff(&expected, &rebuilt, labels)
                        .map(|d| format!("{}:\n{d}", inner.display()));
                }
                differing.push(inner.display().to_string());
            }
            None => differing.push(format!("{} (new)", inner.display())),
        }
    }
    if differing.is_empty() {
        return "(a directory: --keep keeps both trees for a closer look)".into();
    }
    let mut text = format!("files that differ: {}", differing.join(", "));
    if let Some(diff) = first_diff {
        text.push('\n');
        text.push_str(&diff);
    }
    text
}

/// Why a stage whose upstream matched wrote different outputs.
fn explain_divergence(expected: &LockedStage, rebuilt: &LockedStage, vary: bool) -> String {
    let reference = if vary { "the first build" } else { "the lock" };
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
                .is_none_or(|i| i.hash != input.hash)
        })
        .map(|i| i.path.clone())
        .collect();
    if !inputs.is_empty() {
        return if vary {
            format!("input {} differs between the two builds", inputs.join(", "))
        } else {
            format!(
                "input {} differs from what {reference} records: the file is not what was built then (untracked, or the lock is stale)",
                inputs.join(", ")
            )
        };
    }
    let reasons = crate::key::Ingredients::diff(&expected.ingredients, &rebuilt.ingredients);
    if reasons.is_empty() {
        let mut text = String::from(
            "its inputs, command and params matched, but its outputs did not: the stage is not deterministic (time, randomness, an undeclared input)",
        );
        if !vary {
            text.push_str(", or the lock's output hash was edited");
        }
        text
    } else {
        let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        if vary {
            format!(
                "its inputs matched; its key ingredients differ between the builds: {}",
                reasons.join("; ")
            )
        } else {
            format!(
                "its inputs matched; its action changed: {} (toolchain drift, or the lock is stale)",
                reasons.join("; ")
            )
        }
    }
}

/// A unified diff of two texts (JSON included), at most [`DIFF_LINES`] lines; `None` for binary.
fn text_diff(expected: &[u8], rebuilt: &[u8], labels: (&str, &str)) -> Option<String> {
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
        .header(labels.0, labels.1)
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
    /// Versioned inputs outside git (pointer files) brought into the copy, and from where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pulled: Vec<(String, crate::pointer::Source)>,
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
    let files = crate::spec::pipeline_files(root).map_err(io_err(&root.join(PIPELINES_DIR)))?;
    Ok(files
        .iter()
        .map(|f| crate::spec::pipeline_name(f))
        .collect())
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
            let name = crate::spec::target_pipeline(r);
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

/// The lock of every pipeline at `root` that has one; each `chosen` pipeline must have one (the
/// others may hold stages the chosen ones need).
fn read_locks(
    root: &Path,
    chosen: &[String],
    what: &str,
) -> Result<Vec<(String, LockFile)>, VerifyError> {
    let mut locks = Vec::new();
    for name in pipeline_names(root)? {
        let rel = format!("{PIPELINES_DIR}/{name}.lock");
        match LockFile::read(&root.join(&rel)) {
            Ok(Some(lock)) => locks.push((name, lock)),
            Ok(None) if chosen.contains(&name) => {
                return Err(VerifyError::NoLock {
                    what: what.to_string(),
                    lock: rel,
                });
            }
            Ok(None) => {}
            Err(message) => {
                return Err(VerifyError::BadLock {
                    what: format!("{rel} at {what}"),
                    message,
                });
            }
        }
    }
    Ok(locks)
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
            remote: crate::context::RemoteOverrides {
                disabled: true,
                ..Default::default()
            },
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

/// Brings the pointed files of a workspace copy into place: from the user's working tree, else
/// the user's remote (the one remote read a verification makes, DECISIONS 18).
pub(crate) fn fill_pointers(
    copy: &Path,
    root: &Path,
) -> Result<Vec<(String, crate::pointer::Source)>, VerifyError> {
    let workspace = |e: crate::error::Error| VerifyError::Workspace(Box::new(e));
    if crate::pointer::find(copy).is_empty() {
        return Ok(Vec::new());
    }
    let settings = crate::context::remote_settings(root, &Default::default()).map_err(workspace)?;
    let remote = crate::remote::Remote::open(&settings).map_err(|e| workspace(e.into()))?;
    crate::pointer::fill_copy(copy, root, remote.as_ref()).map_err(workspace)
}

/// Stages a child build did not run because something before them failed or was blocked.
fn blocked_stages(build: &ChildBuild) -> BTreeSet<String> {
    build
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Blocked | Outcome::NotStarted))
        .map(|(s, _)| s.clone())
        .collect()
}

/// `verify-reproducible COMMIT`: rebuild `commit` from scratch and compare with its locks.
pub fn verify_commit(
    start: &Path,
    rev: &str,
    requested: &[String],
    keep: bool,
) -> Result<Verification, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let repo = Repository::find(&root)?;
    let commit = repo.resolve(rev)?;
    let what = format!("commit {}", repo.describe(&commit));
    let scratch = Scratch::new(keep)?;
    let result = verify_commit_in(&scratch, &root, &repo, &commit, &what, requested);
    scratch.finish();
    result
}

fn verify_commit_in(
    scratch: &Scratch,
    root: &Path,
    repo: &Repository,
    commit: &str,
    what: &str,
    requested: &[String],
) -> Result<Verification, VerifyError> {
    let tree = scratch.path().join(Conditions::plain().dir);
    std::fs::create_dir_all(&tree).map_err(io_err(&tree))?;
    repo.checkout_into(commit, &tree)?;
    let ws_root = tree.join(&repo.prefix);
    if !ws_root.join(PIPELINES_DIR).is_dir() {
        return Err(VerifyError::NoPipelines {
            what: what.to_string(),
            dir: format!("{}{PIPELINES_DIR}/", repo.prefix),
        });
    }
    let pipelines = choose_pipelines(&ws_root, requested, what)?;
    let pulled = fill_pointers(&ws_root, root)?;
    let locks = read_locks(&ws_root, &pipelines, what)?;
    let expected = stages_of(&locks);
    let mut drift = BTreeSet::new();
    for (_, lock) in &locks {
        drift.extend(lock.toolchain.drift(&Toolchain::current()));
    }
    // The expected bytes of an output, for a diff: the commit's own copy when the output is
    // committed, or the user's working tree when it holds exactly those bytes. Never the cache.
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
    let conditions = Conditions::plain();
    let build = child_build(&ws_root, &cache, &pipelines, &conditions)?;
    build.check(what)?;
    let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines)?;
    let rebuilt = rebuilt_locks(&ctx);
    for (id, reb) in &rebuilt {
        if let Some(exp) = expected.get(id) {
            for reason in crate::key::Ingredients::diff(&exp.ingredients, &reb.ingredients) {
                if reason.is_toolchain() {
                    drift.insert(format!("{id}: {reason}"));
                }
            }
        }
    }
    let lookup = |path: &str, hash: &Digest| -> Option<Vec<u8>> {
        committed.get(hash).cloned().or_else(|| {
            let bytes = std::fs::read(root.join(path)).ok()?;
            (Digest::of_bytes(&bytes) == *hash).then_some(bytes)
        })
    };
    let comparison = compare(&CompareInput {
        ctx: &ctx,
        selected: &selected,
        expected: &expected,
        rebuilt: &rebuilt,
        blocked: &blocked_stages(&build),
        expected_bytes: &lookup,
        vary: false,
    });
    Ok(Verification {
        mode: "commit",
        commit: Some(commit.to_string()),
        pipelines,
        pulled,
        drift: drift.into_iter().collect(),
        builds: vec![BuildSummary {
            conditions,
            cache: "private",
            stages: build.outcomes,
        }],
        reproducible: comparison.reproducible(),
        comparison,
    })
}

/// Copies the workspace's source files to `dest`: what git tracks or would track (without git,
/// every file), but never edgebuild's own directories (the cache, `.edgebuild/`), `.git/`, or
/// the declared outputs of stages.
pub fn copy_workspace(root: &Path, dest: &Path) -> Result<(), VerifyError> {
    // Declared outputs are skipped when the pipelines load; when they do not, the build of the
    // copy reports why.
    let outputs: BTreeSet<String> = Workspace::load(root)
        .map(|ws| {
            ws.stages
                .iter()
                .flat_map(|s| s.outputs.iter().map(|p| p.path.clone()))
                .collect()
        })
        .unwrap_or_default();
    let skipped = |rel: &str| {
        std::iter::once(rel)
            .chain(crate::spec::ancestors(rel))
            .any(|p| {
                outputs.contains(p) || (p != PIPELINES_DIR && crate::spec::RESERVED.contains(&p))
            })
    };
    let files = match Repository::find(root) {
        Ok(repo) => repo.working_files(root)?,
        Err(GitError::NotARepository(_)) => all_files(root, &skipped)?,
        Err(e) => return Err(e.into()),
    };
    for rel in files.iter().filter(|rel| !skipped(rel)) {
        let from = root.join(rel);
        let to = dest.join(rel);
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

/// Every file under `root` outside the `skipped` paths, relative to `root`.
fn all_files(root: &Path, skipped: &dyn Fn(&str) -> bool) -> Result<Vec<String>, VerifyError> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            rel.as_os_str().is_empty() || !skipped(&rel.to_string_lossy())
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
    let pipelines = choose_pipelines(&root, requested, "the working tree")?;
    let scratch = Scratch::new(keep)?;
    let result = verify_variations_in(&scratch, &root, pipelines);
    scratch.finish();
    result
}

fn verify_variations_in(
    scratch: &Scratch,
    root: &Path,
    pipelines: Vec<String>,
) -> Result<Verification, VerifyError> {
    let mut builds = Vec::new();
    let mut opened = Vec::new();
    let mut pulled = Vec::new();
    for (n, conditions) in [Conditions::reference(), Conditions::varied()]
        .into_iter()
        .enumerate()
    {
        let ws_root = scratch.path().join(conditions.dir);
        std::fs::create_dir_all(&ws_root).map_err(io_err(&ws_root))?;
        copy_workspace(root, &ws_root)?;
        pulled = fill_pointers(&ws_root, root)?;
        remove_locks(&ws_root)?;
        let cache = scratch.path().join(format!("cache-{n}"));
        let build = child_build(&ws_root, &cache, &pipelines, &conditions)?;
        build.check(&format!("the working tree (build {})", n + 1))?;
        let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines)?;
        opened.push((ctx, selected, blocked_stages(&build)));
        builds.push(BuildSummary {
            conditions,
            cache: "private",
            stages: build.outcomes,
        });
    }
    let (reference, _, _) = &opened[0];
    let (varied, selected, blocked) = &opened[1];
    let expected = rebuilt_locks(reference);
    let rebuilt = rebuilt_locks(varied);
    let reference_root: PathBuf = reference.root().to_path_buf();
    let lookup = |path: &str, _: &Digest| std::fs::read(reference_root.join(path)).ok();
    let comparison = compare(&CompareInput {
        ctx: varied,
        selected,
        expected: &expected,
        rebuilt: &rebuilt,
        blocked,
        expected_bytes: &lookup,
        vary: true,
    });
    Ok(Verification {
        mode: "vary",
        commit: None,
        pipelines,
        pulled,
        drift: Vec::new(),
        builds,
        reproducible: comparison.reproducible(),
        comparison,
    })
}

/// The human rendering: drift, the table, the findings and diffs, the verdict.
pub fn render(v: &Verification) -> String {
    let mut out = String::new();
    match &v.commit {
        Some(commit) => writeln!(
            out,
            "Rebuilt {} of commit {} from scratch (private cache, no remote).",
            v.pipelines.join(", "),
            &commit[..12.min(commit.len())]
        )
        .unwrap(),
        None => {
            let b = &v.builds[1].conditions;
            writeln!(
                out,
                "Built {} twice from scratch; the second build varied: working directory, TZ={}, LC_ALL={}, SOURCE_DATE_EPOCH={}, umask {:03o}, -j {}, {} thread(s).",
                v.pipelines.join(", "),
                b.stage_var("TZ"),
                b.stage_var("LC_ALL"),
                b.stage_var("SOURCE_DATE_EPOCH"),
                b.umask.unwrap_or_default(),
                b.jobs,
                b.threads
            )
            .unwrap()
        }
    }
    if v.commit.is_some() {
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
    let (expected, rebuilt) = if v.commit.is_some() {
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
        Verdict::Blocked => "blocked (not built)",
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
            FindingKind::Root => {
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
            FindingKind::Cascade => writeln!(
                out,
                "Cascade: {} differs because {} did",
                finding.stage,
                finding.from.as_deref().unwrap_or("?")
            )
            .unwrap(),
        }
    }
    for note in &v.comparison.notes {
        writeln!(out, "Note: {note}").unwrap();
    }
    let compared = v
        .comparison
        .outputs
        .iter()
        .filter(|r| r.verdict == Verdict::Match)
        .count();
    let volatile = v
        .comparison
        .outputs
        .iter()
        .filter(|r| r.verdict == Verdict::Volatile)
        .count();
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

/// Parses the `NAME=VALUE` variables that a variation build passes to `cmd` stages.
pub fn variation_env(assignments: &[String]) -> Vec<(String, OsString)> {
    assignments
        .iter()
        .filter_map(|a| {
            let (name, value) = a.split_once('=')?;
            Some((name.to_string(), OsString::from(value)))
        })
        .collect()
}
